"""smoe_core: Steered Mixture-of-Experts image regression.

The public API lives here:

- :class:`SMoE`: the model ([AS-SMoE] section II; [QSMoE] section 2).
- :func:`render`, :func:`render_many`: dense (global) and tiled (rasterized R-SMoE) renderers, differentiable.
- :func:`fit`: gradient-descent training (Adam, MSE/SSIM loss, L1 sparsity with kernel removal).
- :mod:`smoe_core.init`: initializers (``init.grid``).
- :mod:`smoe_core.metrics`: ``psnr``, ``ssim``.
- :func:`load_image`, :func:`save_image`: float images in [0, 1], (H, W) gray or (H, W, C) colour.
"""
from . import init, metrics
from .io import load_image, save_image
from .model import SMoE
from .render import render, render_many, tile_lists
from .training import fit
from .version import __version__

__all__ = ["SMoE", "render", "render_many", "tile_lists", "fit", "init", "metrics", "load_image", "save_image",
           "__version__"]
