"""Initializers: functions image -> SMoE ready for :func:`smoe_core.fit`.

- :func:`grid`: radial kernels of one bandwidth on a regular grid (segmentation paper Table II "Grid";
  coding paper "Initialization and Pre-Training").
"""
from .grid import dominant_kernel, grid, grid_layout

__all__ = ["grid", "grid_layout", "dominant_kernel"]
