"""The options of a render, without torch: the backends (described in :mod:`.api`), the tiling defaults
([R-SMoE] Fig. 3; the choices are explained in :mod:`.binning`), the output shape at a scale, the checks of a
native shape and of the tiling options, and the lower memory estimate that :mod:`smoe_core.limits` checks before
a render starts. Shared by the torch renderers (:mod:`.api`), the torch-free decoder render (:mod:`.cpu_numpy`)
and the CLI's choices.
"""
from __future__ import annotations

import math

from ..limits import check_count, check_number, check_shape

BACKENDS = ("tiled", "cpu", "cuda", "torch", "dense")
DEFAULT_TILE = 16
DEFAULT_CUTOFF = 5.0
DEFAULT_FILL = 4


def output_shape(shape, scale: float) -> tuple[int, int]:
    """(H, W) of a render of native ``shape`` at ``scale``: round(shape * scale), at least 1 (ValueError for a
    scale that is not a positive finite number)."""
    H, W = int(shape[0]), int(shape[1])
    try:
        ok = not isinstance(scale, (str, bytes, bool)) and float(scale) > 0 and math.isfinite(float(scale))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    return max(1, int(round(H * scale))), max(1, int(round(W * scale)))


def check_tiling(tile, cutoff, fill) -> None:
    """ValueError naming the option unless ``tile`` >= 1 and ``fill`` >= 0 are integers and ``cutoff`` > 0."""
    check_count(tile, "tile", minimum=1)
    check_number(cutoff, "cutoff", positive=True)
    check_count(fill, "fill", minimum=0)


def render_bytes(shape, channels: int, n_kernels: int, *, scale: float = 1.0, tile: int = DEFAULT_TILE,
                 fill: int = DEFAULT_FILL, batch: int = 1, training: bool = False) -> int:
    """A lower estimate of the memory (bytes) a render of ``batch`` images of ``shape`` (H, W) at ``scale``
    needs: the float32 output and its numpy copy (or, with ``training``, the output, its gradient and the
    loss's residual), at least ``fill`` kernel ids per tile, and the kernels' parameters
    (:mod:`smoe_core.limits`)."""
    H, W = output_shape(shape, scale)
    pixels = batch * H * W
    tiles = batch * (-(-H // tile)) * (-(-W // tile))
    images = 3 if training else 2
    return int(4 * pixels * channels * images + 4 * tiles * (1 + max(fill, 1)) + 64 * n_kernels)


__all__ = ["BACKENDS", "DEFAULT_TILE", "DEFAULT_CUTOFF", "DEFAULT_FILL", "output_shape", "check_shape", "check_tiling",
           "render_bytes"]
