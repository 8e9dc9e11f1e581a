"""The rasterized SMoE forward pass ([R-SMoE] Fig. 3; [AS-SMoE] eqs. 1-5) on numpy arrays, without torch: the
binning of :mod:`.binning` written again in numpy, and the forward pass of the CPU build (:mod:`.cpu`,
raw_kernels/smoe_tile_cpu.cpp) called through :mod:`ctypes`.

Why it exists: a decoder's start-up is most of its run time. ``smoe decode`` of a 512 x 512 file with 16384
kernels spends about 0.1 s decoding and rendering and 3.3-3.9 s importing torch (measured on a 2-core AMD EPYC).
This module renders with numpy and the compiled library alone, so :func:`smoe_core.tasks.coding.codec.decode_image`
never imports torch.

It computes what ``render(model, backend="cpu")`` computes, with the same library and the same tile lists:

- The coverage boxes, tile rectangles and empty-tile centres use the float32 operations of
  :func:`.binning.bin_kernels` in the same order (numpy >= 2 keeps a Python float operand in float32, as torch
  does), so the tile lists are the same integers.
- The ``fill`` kernels of an empty tile are the ones with the largest log-weight at its centre; ties are broken
  by the lower kernel index (torch's ``topk`` leaves the order of ties unspecified, so on an exact tie the two
  binnings may pick different kernels of equal weight).
- log(pi) is numpy's float32 log, -inf where pi <= 0 (:func:`.api.log_pi` uses torch's). The two logs may
  differ in the last bit on some CPUs, and then so may the rendered value: the tests compare the two renders to
  1e-6 and the tile lists exactly. A decoder and the encoder that measures the decoded image both call this
  module, so they agree bit for bit.

Forward only (no gradients), CPU only, float32 (or float64), constant or linear experts, SMoE or RBF gating;
one model per call.
"""
from __future__ import annotations

import os

import numpy as np

from ..limits import check_memory
from . import cpu
from .abi import MAX_CHANNELS, MODE_RBF, MODE_SMOE
from .options import DEFAULT_CUTOFF, DEFAULT_FILL, DEFAULT_TILE, check_shape, check_tiling, output_shape, render_bytes


def available() -> bool:
    """Whether the CPU build compiles and loads here (the module needs it; there is no numpy fallback)."""
    return cpu.available()


def log_pi_numpy(pi: np.ndarray) -> np.ndarray:
    """log(pi) where pi > 0, -inf elsewhere, in pi's dtype."""
    pi = np.asarray(pi)
    tiny = np.finfo(pi.dtype).tiny
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pi > 0, np.log(np.maximum(pi, tiny)), -np.inf).astype(pi.dtype)


def box_half_sizes_numpy(chol: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`.binning.box_half_sizes` in numpy: half width and half height of each coverage box (inf where
    the kernel is degenerate)."""
    a11, a21, a22 = np.abs(chol[:, 0]), chol[:, 1], np.abs(chol[:, 2])
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        hx = cutoff * np.sqrt(a21 * a21 + a22 * a22) / (a11 * a22)
        hy = cutoff / a22
    hx = np.where(np.isfinite(hx), hx, np.inf).astype(chol.dtype)
    hy = np.where(np.isfinite(hy), hy, np.inf).astype(chol.dtype)
    return hx, hy


def fill_empty_tiles_numpy(counts, mu, chol, logpi, tiles_x, tiles_y, tile, scale, fill):
    """(tile, kernel) int32 pairs for the tiles no box touches: each gets the ``fill`` kernels with the largest
    log-weight log(pi_j) - q_j / 2 at its centre (ties: the lower kernel index first), sorted by tile then
    kernel. One model (the batch of :func:`.binning.bin_kernels` is 1 here)."""
    empty = np.flatnonzero(counts == 0)
    n = mu.shape[0]
    if empty.size == 0 or n == 0 or fill <= 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    ty, tx = empty // tiles_x, empty % tiles_x
    dt = mu.dtype.type
    # the centre of the tile in output pixels, mapped to image coordinates: float32 arithmetic (torch's default
    # dtype, in which binning computes it), then mu's precision
    cx = ((((tx * tile).astype(np.float32) + tile / 2.0 - 0.5) + 0.5) / scale - 0.5).astype(dt)
    cy = ((((ty * tile).astype(np.float32) + tile / 2.0 - 0.5) + 0.5) / scale - 0.5).astype(dt)
    k = min(fill, n)
    tiles, kernels = [], []
    chunk = max(1, 2**22 // n)
    ids = np.arange(n)
    for s in range(0, empty.size, chunk):
        px, py = cx[s:s + chunk, None], cy[s:s + chunk, None]
        dx, dy = px - mu[None, :, 0], py - mu[None, :, 1]
        u = chol[:, 0] * dx + chol[:, 1] * dy
        v = chol[:, 2] * dy
        lw = logpi - dt(0.5) * (u * u + v * v)
        # the k largest, ties by kernel index: lexsort's last key is the primary one
        order = np.lexsort((np.broadcast_to(ids, lw.shape), -lw), axis=1)[:, :k]
        tiles.append(np.repeat(empty[s:s + chunk], k))
        kernels.append(np.sort(order, axis=1).ravel())
    return np.concatenate(tiles).astype(np.int32), np.concatenate(kernels).astype(np.int32)


def bin_kernels_numpy(mu, chol, logpi, height: int, width: int, *, tile: int = DEFAULT_TILE, scale: float = 1.0,
                      cutoff: float = DEFAULT_CUTOFF, fill: int = DEFAULT_FILL) -> tuple[np.ndarray, np.ndarray]:
    """The per-tile kernel lists of one model, ``(tile_start (n_tiles + 1,), tile_ids (nnz,))`` int32 (CSR), as
    :func:`.binning.bin_kernels` builds them on the CPU (module docstring)."""
    lib = cpu.load()
    n = mu.shape[0]
    tiles_x, tiles_y = (width + tile - 1) // tile, (height + tile - 1) // tile
    n_tiles = tiles_x * tiles_y
    hx, hy = box_half_sizes_numpy(chol, cutoff)
    # output pixel c' samples x = (c' + 0.5)/s - 0.5, so x in [lo, hi] <=> c' in [(lo + 0.5)s - 0.5, (hi + 0.5)s - 0.5]
    big = float(4 * max(width, height) + 16)
    with np.errstate(invalid="ignore", over="ignore"):
        c_lo = np.ceil(np.clip((mu[:, 0] - hx + 0.5) * scale - 0.5, -big, big))
        c_hi = np.floor(np.clip((mu[:, 0] + hx + 0.5) * scale - 0.5, -big, big))
        r_lo = np.ceil(np.clip((mu[:, 1] - hy + 0.5) * scale - 0.5, -big, big))
        r_hi = np.floor(np.clip((mu[:, 1] + hy + 0.5) * scale - 0.5, -big, big))
    visible = ((c_hi >= 0) & (c_lo <= width - 1) & (r_hi >= 0) & (r_lo <= height - 1) & (c_lo <= c_hi)
               & (r_lo <= r_hi))
    rect = np.zeros((n, 5), np.int32)
    for col, v, top in ((0, c_lo, width), (1, c_hi, width), (2, r_lo, height), (3, r_hi, height)):
        rect[:, col] = np.clip(np.where(visible, v, 0), 0, top - 1) // tile  # 0 for hidden kernels (skipped)
    rect[:, 4] = np.where(visible, 0, -1)
    counts = np.empty(n_tiles, np.int32)
    total = lib.smoe_bin_count(n, rect.ctypes.data, tiles_x, tiles_y, n_tiles, counts.ctypes.data)
    if total >= 2**31:
        raise RuntimeError("too many (tile, kernel) pairs for int32 indices; use a larger tile or a smaller cutoff")
    ft, fk = fill_empty_tiles_numpy(counts, mu, chol, logpi, tiles_x, tiles_y, tile, scale, fill)
    tile_start = np.empty(n_tiles + 1, np.int32)
    tile_ids = np.empty(int(total) + ft.size, np.int32)
    lib.smoe_bin_fill(n, rect.ctypes.data, tiles_x, tiles_y, n_tiles, ft.size, ft.ctypes.data, fk.ctypes.data,
                      tile_start.ctypes.data, tile_ids.ctypes.data)
    return tile_start, tile_ids


def _field(x, name: str, shape_tail: tuple, dtype) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1 + len(shape_tail) or tuple(a.shape[1:]) != shape_tail or not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name} must be a float array of shape (K, {', '.join(map(str, shape_tail))}), "
                         f"got {a.dtype} {a.shape}" if shape_tail else
                         f"{name} must be a float array of shape (K,), got {a.dtype} {a.shape}")
    a = np.ascontiguousarray(a, dtype=dtype)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite")
    return a


def render_numpy(mu, chol, pi, experts, shape, *, slopes=None, rbf: bool = False, scale: float = 1.0,
                 tile: int = DEFAULT_TILE, cutoff: float = DEFAULT_CUTOFF, fill: int = DEFAULT_FILL,
                 n_threads: int | None = None) -> np.ndarray:
    """The rasterized render of one SMoE given by its fields (numpy): ``mu`` (K, 2) centres (x, y) in pixels,
    ``chol`` (K, 3) the (a11, a21, a22) of A (P = A A^T), ``pi`` (K,), ``experts`` (K, C), optional ``slopes``
    (K, C, 2), over native ``shape`` (H, W) rendered at ``scale``. Returns float (H', W') for one channel, else
    (H', W', C), in the fields' precision (float32 unless ``mu`` is float64). ``n_threads``: the library's
    OpenMP threads (default: the CPUs this process may use; the result does not depend on it).

    Raises ValueError naming the argument for malformed fields, CPUBuildError when the CPU build is not
    available, and :class:`smoe_core.limits` errors for a render that cannot fit in memory."""
    H0, W0 = check_shape(shape)
    H, W = output_shape((H0, W0), scale)
    check_tiling(tile, cutoff, fill)
    dtype = np.float64 if np.asarray(mu).dtype == np.float64 else np.float32
    mu = _field(mu, "mu", (2,), dtype)
    K = mu.shape[0]
    if K == 0:
        raise ValueError("the model has no kernels")
    chol, pi = _field(chol, "chol", (3,), dtype), _field(pi, "pi", (), dtype)
    ex = np.asarray(experts)
    if ex.ndim != 2 or not 1 <= ex.shape[1] <= MAX_CHANNELS:
        raise ValueError(f"experts must be a float array of shape (K, C) with 1 <= C <= {MAX_CHANNELS}, "
                         f"got {ex.dtype} {ex.shape}")
    C = ex.shape[1]
    experts = _field(ex, "experts", (C,), dtype)
    if slopes is not None:
        slopes = _field(slopes, "slopes", (C, 2), dtype)
    for name, a in (("chol", chol), ("pi", pi), ("experts", experts), ("slopes", slopes)):
        if a is not None and a.shape[0] != K:
            raise ValueError(f"{name} must have one row per kernel ({K}), got {a.shape[0]}")
    check_memory(render_bytes((H0, W0), C, K, scale=scale, tile=tile, fill=fill), f"rendering {H} x {W} pixels")
    if n_threads is None:
        n_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    logpi = log_pi_numpy(pi)
    tile_start, tile_ids = bin_kernels_numpy(mu, chol, logpi, H, W, tile=tile, scale=float(scale), cutoff=cutoff,
                                             fill=fill)
    lib = cpu.load()
    fn = lib.smoe_tile_forward_f64 if dtype == np.float64 else lib.smoe_tile_forward_f32
    out = np.empty((1, H, W, C), dtype)
    lse = np.empty((1, H, W), dtype)
    rc = fn(mu.ctypes.data, chol.ctypes.data, logpi.ctypes.data, experts.ctypes.data,
            None if slopes is None else slopes.ctypes.data, tile_start.ctypes.data, tile_ids.ctypes.data,
            1, H, W, C, tile, 1.0 / float(scale), MODE_RBF if rbf else MODE_SMOE, out.ctypes.data, lse.ctypes.data,
            max(1, int(n_threads)))
    if rc != 0:  # pragma: no cover - the channel count is checked above
        raise ValueError(f"the tiled renderer supports 1 to {MAX_CHANNELS} channels, got {C}")
    out = out[0]
    return out[..., 0] if C == 1 else out


__all__ = ["available", "render_numpy", "bin_kernels_numpy", "log_pi_numpy", "box_half_sizes_numpy",
           "fill_empty_tiles_numpy"]
