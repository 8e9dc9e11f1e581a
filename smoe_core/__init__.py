"""smoe_core: Steered Mixture-of-Experts image regression.

The public API lives here:

- :class:`SMoE`: the model ([AS-SMoE] section II; [QSMoE] section 2).
- :func:`render`, :func:`render_many`: dense (global) and tiled (rasterized R-SMoE) renderers, differentiable.
- :func:`fit`: gradient-descent training (Adam, MSE/SSIM loss, L1 sparsity with kernel removal).
- :mod:`smoe_core.init`: initializers (``init.grid``).
- :mod:`smoe_core.metrics`: ``psnr``, ``ssim``.
- :func:`load_image`, :func:`save_image`: float images in [0, 1], (H, W) gray or (H, W, C) colour.
"""
import importlib

from . import metrics
from .io import load_image, save_image
from .model import SMoE
from .render import render, render_many, tile_lists
from .version import __version__

#: imported on first use (PEP 562): the initializers pull in scipy, pandas and the segmentation, and training pandas,
#: which a command such as ``smoe decode`` does not need (its start-up is most of its run time)
_LAZY = {"init": (".init", None), "fit": (".training", "fit")}


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = importlib.import_module(module, __name__)
        value = value if attr is None else getattr(value, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))

__all__ = ["SMoE", "render", "render_many", "tile_lists", "fit", "init", "metrics", "load_image", "save_image",
           "__version__"]
