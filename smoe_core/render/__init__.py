"""The SMoE renderer: dense (global, "G-SMoE") and tiled (rasterized, "R-SMoE") forward and backward passes.

Modules, in the style of a functional API over autograd wrappers over kernel sources:

- :mod:`.api`: :func:`render`, :func:`render_many`, :func:`tile_lists` (the public entry points; backends).
- :mod:`.dense`: the dense renderer in torch (the reference; also the batched pass AS-SMoE's Algorithm 1 uses).
- :mod:`.binning`: kernel coverage boxes and per-tile kernel lists (:class:`TileLists`).
- :mod:`.autograd`: :class:`TiledRender`, the autograd function over the compiled builds.
- :mod:`.cpu`, :mod:`.cuda`: the two compiled builds of raw_kernels/smoe_tile.h (C++/OpenMP; CuPy NVRTC).
- :mod:`.reference`: the pure-PyTorch reference of the tiled kernel, which the tests compare the builds with.
- :mod:`.cpu_numpy`: the CPU build's forward pass on numpy arrays, without torch (the decoder of ``smoe decode``).
- :mod:`.options`: backends, tiling defaults, output shapes and the memory estimate of a render (no torch).
- :mod:`.abi`: constants shared with raw_kernels/smoe_tile.h; :mod:`.build`: compile-and-cache of C++ sources.

Papers: [AS-SMoE] eqs. 1-5 (the model), [R-SMoE] Fig. 3 (tiling); see :mod:`smoe_core.papers`.
"""
from ..lazy import lazy_exports
from .options import BACKENDS, DEFAULT_CUTOFF, DEFAULT_FILL, DEFAULT_TILE, check_shape, output_shape, render_bytes

#: names imported on first use (PEP 562): they import torch, which the torch-free decoder render
#: (:mod:`.cpu_numpy`, ``smoe decode``) does without
__getattr__, __dir__ = lazy_exports(__name__, globals(), {
    **{name: f".api:{name}" for name in ("gpu_visible", "log_pi", "render", "render_many", "render_tiled_batch",
                                          "resolve_backend", "tile_lists")},
    "TileLists": ".binning:TileLists", "bin_kernels": ".binning:bin_kernels"})

__all__ = ["render", "render_many", "render_tiled_batch", "tile_lists", "TileLists", "bin_kernels", "output_shape",
           "resolve_backend", "log_pi", "gpu_visible", "check_shape", "render_bytes", "BACKENDS", "DEFAULT_TILE",
           "DEFAULT_CUTOFF", "DEFAULT_FILL"]
