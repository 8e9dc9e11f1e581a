"""smoe_core: Steered Mixture-of-Experts image regression.

The public API lives here:

- :class:`SMoE`: the model (adaptive-segmentation paper section II; coding paper section 2).
- :func:`render`, :func:`render_many`: dense (global) and tiled (rasterized R-SMoE) renderers, differentiable.
- :func:`fit`: gradient-descent training (Adam, MSE/SSIM loss, L1 sparsity with kernel removal).
- :mod:`smoe_core.init`: initializers (``init.grid``).
- :mod:`smoe_core.metrics`: ``psnr``, ``ssim``.
- :func:`load_image`, :func:`save_image`: float images in [0, 1], (H, W) gray or (H, W, C) colour.
"""
__version__ = "0.1.0"

from . import init, metrics  # noqa: E402
from .io import load_image, save_image  # noqa: E402
from .model import SMoE  # noqa: E402
from .rendering import render, render_many, tile_lists  # noqa: E402
from .training import fit  # noqa: E402

__all__ = ["SMoE", "render", "render_many", "tile_lists", "fit", "init", "metrics", "load_image", "save_image",
           "__version__"]
