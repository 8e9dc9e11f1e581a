"""Kernel sources of the tiled SMoE renderer (R-SMoE), shipped as package data.

- ``smoe_tile.h``: the per-pixel forward/backward math, compiled for host and device.
- ``smoe_tile_cpu.cpp``: the CPU build (C++/OpenMP), compiled on first use by :mod:`smoe_core.render.cpu`, in
  one of two build modes (``$SMOE_BUILD``: fast, or reproducible with ``SMOE_REPRODUCIBLE`` defined; see
  :mod:`smoe_core.render.build`).
- ``smoe_tile_cuda.cu``: the GPU build, compiled by CuPy's RawModule in :mod:`smoe_core.render.cuda`.
- ``ssim_cpu.cpp``: SSIM against a fixed reference, forward and backward (the coding paper's training loss),
  compiled on first use by :mod:`smoe_core.tasks.coding.ssim_cpu`.
- ``mdbscan.cpp``: the sequential loops of the MDBSCAN segmentation (:mod:`smoe_core.segment`), compiled on
  first use by :mod:`smoe_core.segment.build`.
"""
from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent
