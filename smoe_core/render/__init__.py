"""The SMoE renderer: dense (global, "G-SMoE") and tiled (rasterized, "R-SMoE") forward and backward passes.

Modules, in the style of a functional API over autograd wrappers over kernel sources:

- :mod:`.api`: :func:`render`, :func:`render_many`, :func:`tile_lists` (the public entry points; backends).
- :mod:`.dense`: the dense renderer in torch (the reference; also the batched pass AS-SMoE's Algorithm 1 uses).
- :mod:`.binning`: kernel coverage boxes and per-tile kernel lists (:class:`TileLists`).
- :mod:`.autograd`: :class:`TiledRender`, the autograd function over the compiled builds.
- :mod:`.cpu`, :mod:`.cuda`: the two compiled builds of raw_kernels/smoe_tile.h (C++/OpenMP; CuPy NVRTC).
- :mod:`.reference`: the pure-PyTorch reference of the tiled kernel, which the tests compare the builds with.
- :mod:`.abi`: constants shared with raw_kernels/smoe_tile.h; :mod:`.build`: compile-and-cache of C++ sources.

Papers: [AS-SMoE] eqs. 1-5 (the model), [R-SMoE] Fig. 3 (tiling); see :mod:`smoe_core.papers`.
"""
from .api import (BACKENDS, DEFAULT_CUTOFF, DEFAULT_FILL, DEFAULT_TILE, check_shape, gpu_visible, log_pi, output_shape,
                  render, render_bytes, render_many, render_tiled_batch, resolve_backend, tile_lists)
from .binning import TileLists, bin_kernels

__all__ = ["render", "render_many", "render_tiled_batch", "tile_lists", "TileLists", "bin_kernels", "output_shape",
           "resolve_backend", "log_pi", "gpu_visible", "check_shape", "render_bytes", "BACKENDS", "DEFAULT_TILE", "DEFAULT_CUTOFF", "DEFAULT_FILL"]
