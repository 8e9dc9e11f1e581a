"""smoe_core: Steered Mixture-of-Experts image regression.

The public API lives here:

- :class:`SMoE`: the model ([AS-SMoE] section II; [QSMoE] section 2).
- :func:`render`, :func:`render_many`: dense (global) and tiled (rasterized R-SMoE) renderers, differentiable.
- :func:`fit`: gradient-descent training (Adam, MSE/SSIM loss, L1 sparsity with kernel removal).
- :mod:`smoe_core.init`: initializers (``init.grid``).
- :mod:`smoe_core.metrics`: ``psnr``, ``ssim``.
- :func:`load_image`, :func:`save_image`: float images in [0, 1], (H, W) gray or (H, W, C) colour.
"""
from . import render as _render_package  # noqa: F401
from .io import load_image, save_image
from .lazy import lazy_exports
from .version import __version__

# The subpackage smoe_core.render (torch-free to import) is loaded first and its name unbound, so that the
# attribute ``render`` of this package is the function (imported lazily below), not the subpackage: the import
# system binds a subpackage's name in its parent once, when the subpackage is first loaded.
del globals()["render"]

#: imported on first use (PEP 562): the model, the renderers and the metrics import torch, the initializers
#: scipy, pandas and the segmentation, training pandas; a command such as ``smoe decode`` needs none of them
#: (its start-up would be most of its run time)
__getattr__, __dir__ = lazy_exports(__name__, globals(), {
    "init": ".init", "fit": ".training:fit", "metrics": ".metrics", "SMoE": ".model:SMoE", "render": ".render:render",
    "render_many": ".render:render_many", "tile_lists": ".render:tile_lists"})

__all__ = ["SMoE", "render", "render_many", "tile_lists", "fit", "init", "metrics", "load_image", "save_image",
           "__version__"]
