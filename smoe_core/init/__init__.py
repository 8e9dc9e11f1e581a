"""Initializers: functions image -> SMoE ready for :func:`smoe_core.fit`.

- :func:`grid`: radial kernels of one bandwidth on a regular grid ([AS-SMoE] Table II "Grid"; [QSMoE]
  "Initialization and Pre-Training").
- :func:`s_smoe`: radial kernels placed at random inside MDBSCAN segments (the earlier segmentation init).
- :func:`as_smoe`: the adaptive segmentation-based initialization (segments -> CBBs -> Algorithm 1 -> export).
- :func:`kmeans`: block-based K-Means (Verhack et al.; [AS-SMoE] Table II "K-Means").
- :func:`edge`: edge-aligned kernel pairs with experts by iteration ([EDGE] section III).

Every initializer takes an image (float in [0, 1], (H, W) or (H, W, C)) and its own parameters and returns
an :class:`InitResult` ``(model, record)``: the SMoE ready for fit, and a dict of what it did (method,
seconds, n_kernels, and method-specific figures) that notebooks can tabulate. The registry
(:mod:`.registry`: :data:`INITIALIZERS`, :func:`initializer_info`) says what each one is. Papers are cited by
the keys of :mod:`smoe_core.papers`.
"""
from ..parallel import add_worker_context
from .as_smoe import as_smoe
from .edge import edge
from .grid import EXPERT_RULES, dominant_kernel, grid, grid_layout
from .kmeans import kmeans
from .registry import (INITIALIZERS, InitializerInfo, carry_initializers, get_initializer, initializer_info,
                       register_initializer, unregister_initializer)
from .result import InitResult
from .s_smoe import kernel_counts, place_kernels, s_smoe


def s_smoe_budget(image, n_kernels=None, **kwargs) -> InitResult:
    """S-SMoE with the kernel budget split over segments by area (``n_kernels=None``: 4 per segment)."""
    return s_smoe(image, n_kernels=n_kernels, **kwargs)


def as_smoe_adaptive(image, n_kernels=None, **kwargs) -> InitResult:
    """AS-SMoE chooses its kernel count itself (Algorithm 1): the budget ``n_kernels`` is not used."""
    return as_smoe(image, **kwargs)


register_initializer("grid", grid, takes_seed=True, expert_rules=EXPERT_RULES,
                     description="radial kernels on a regular grid")
register_initializer("kmeans", kmeans, takes_seed=True, expert_rules=EXPERT_RULES,
                     description="block-based K-Means centres")
register_initializer("edge", edge, description="edge-aligned kernel pairs, experts by iteration")
register_initializer("s_smoe", s_smoe_budget, takes_seed=True, segments=True, count_optional=True,
                     expert_rules=EXPERT_RULES, description="radial kernels at random inside MDBSCAN segments")
register_initializer("as_smoe", as_smoe_adaptive, takes_seed=True, segments=True, picks_own_count=True,
                     count_optional=True, parallel=True,
                     description="adaptive segmentation-based initialization (Algorithm 1)")
INITIALIZERS.mark_builtin()
add_worker_context(carry_initializers)  # a Dask worker learns the initializers registered here at run time

__all__ = ["InitResult", "INITIALIZERS", "InitializerInfo", "register_initializer", "get_initializer",
           "initializer_info", "unregister_initializer", "carry_initializers", "grid", "grid_layout",
           "dominant_kernel", "s_smoe", "kernel_counts", "place_kernels", "as_smoe", "kmeans", "edge", "EXPERT_RULES"]
