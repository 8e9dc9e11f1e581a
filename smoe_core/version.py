"""The package version (one place; written into model files and result tables)."""
__version__ = "0.1.0"
