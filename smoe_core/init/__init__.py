"""Initializers: functions image -> SMoE ready for :func:`smoe_core.fit`.

- :func:`grid`: radial kernels of one bandwidth on a regular grid (segmentation paper Table II "Grid";
  coding paper "Initialization and Pre-Training").

Every initializer takes an image (float in [0, 1], (H, W) or (H, W, C)) and its own parameters and returns
an :class:`InitResult` ``(model, record)``: the SMoE ready for fit, and a dict of what it did (method,
seconds, n_kernels, and method-specific figures) that notebooks can tabulate.
"""
from ._result import InitResult
from .grid import dominant_kernel, grid, grid_layout

__all__ = ["InitResult", "grid", "grid_layout", "dominant_kernel"]
