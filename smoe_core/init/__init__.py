"""Initializers: functions image -> SMoE ready for :func:`smoe_core.fit`.

- :func:`grid`: radial kernels of one bandwidth on a regular grid (segmentation paper Table II "Grid";
  coding paper "Initialization and Pre-Training").
- :func:`s_smoe`: radial kernels placed at random inside MDBSCAN segments (the earlier segmentation init).
- :func:`as_smoe`: the adaptive segmentation-based initialization (segments -> CBBs -> Algorithm 1 -> export).
- :func:`kmeans`: block-based K-Means (Verhack et al.; Table II "K-Means").
- :func:`edge`: edge-aligned kernel pairs with experts by iteration (edge-aligned paper, section III).

Every initializer takes an image (float in [0, 1], (H, W) or (H, W, C)) and its own parameters and returns
an :class:`InitResult` ``(model, record)``: the SMoE ready for fit, and a dict of what it did (method,
seconds, n_kernels, and method-specific figures) that notebooks can tabulate.
"""
from typing import Callable

from ._result import InitResult
from .grid import dominant_kernel, grid, grid_layout
from .as_smoe import as_smoe, segment_epochs_table
from .edge import edge
from .kmeans import kmeans
from .s_smoe import kernel_counts, place_kernels, s_smoe

#: name -> initializer ``fn(image, n_kernels, **kwargs) -> InitResult``. Built-ins and the user's own
#: (:func:`register_initializer`) are used alike by the CLI, tile-wise training and the notebooks.
INITIALIZERS: dict[str, Callable[..., InitResult]] = {"grid": grid, "kmeans": kmeans, "edge": edge}


def _s_smoe_budget(image, n_kernels=None, **kwargs) -> InitResult:
    """S-SMoE with the kernel budget split over segments by area (``n_kernels=None``: 4 per segment)."""
    return s_smoe(image, n_kernels=n_kernels, **kwargs)


def _as_smoe_adaptive(image, n_kernels=None, **kwargs) -> InitResult:
    """AS-SMoE chooses its kernel count itself (Algorithm 1): the budget ``n_kernels`` is not used."""
    return as_smoe(image, **kwargs)


INITIALIZERS["s_smoe"] = _s_smoe_budget
INITIALIZERS["as_smoe"] = _as_smoe_adaptive


def register_initializer(name: str, fn: Callable[..., InitResult], *, overwrite: bool = False) -> None:
    """Makes ``fn(image, n_kernels, **kwargs) -> InitResult`` available by ``name``."""
    if not callable(fn):
        raise TypeError(f"initializer {name!r} must be callable")
    if name in INITIALIZERS and not overwrite and INITIALIZERS[name] is not fn:
        raise ValueError(f"an initializer named {name!r} exists; pass overwrite=True to replace it")
    INITIALIZERS[name] = fn


def get_initializer(name_or_fn) -> Callable[..., InitResult]:
    """The initializer registered as ``name_or_fn`` (or the function itself)."""
    if callable(name_or_fn):
        return name_or_fn
    try:
        return INITIALIZERS[name_or_fn]
    except KeyError:
        raise ValueError(f"unknown initializer {name_or_fn!r} (known: {', '.join(sorted(INITIALIZERS))})") from None


__all__ = ["InitResult", "INITIALIZERS", "register_initializer", "get_initializer", "grid", "grid_layout",
           "dominant_kernel", "s_smoe", "kernel_counts", "place_kernels", "as_smoe", "segment_epochs_table", "kmeans", "edge"]
