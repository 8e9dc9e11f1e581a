"""The parameterized notebooks (papermill) that reproduce the papers' tables and figures.

This folder is installed as the package-data package ``smoe_core.notebooks`` (pyproject.toml maps it), so
``smoe reproduce`` finds the notebooks from a checkout and from a regular ``pip install .`` alike
(:func:`smoe_core.studies.reproduce.notebook_dir`). It holds no code.
"""
