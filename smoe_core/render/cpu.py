"""The CPU build of the tiled renderer (raw_kernels/smoe_tile_cpu.cpp, C++/OpenMP): built and cached by
:func:`smoe_core.render.build.compile_cached` on first use, loaded with :mod:`ctypes`, and called by
:func:`forward` / :func:`backward` (rasterized R-SMoE; see :mod:`smoe_core.render.api`).

``-march=native`` is safe because the cache key includes the CPU model and flags.
"""
from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import torch

from .abi import MAX_CHANNELS, grad_slots
from .build import compile_cached

FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", "-shared", "-std=c++17"]


class CPUBuildError(RuntimeError):
    """The CPU build of the tiled renderer could not be compiled or loaded."""


_lock = threading.Lock()
_lib = None


def build() -> Path:
    """Compiles the CPU build if it is not cached yet; returns the path of the shared library."""
    return compile_cached("smoe_tile_cpu.cpp", FLAGS, depends=("smoe_tile.h",), stem="smoe_tile_cpu",
                          error=CPUBuildError, cpu_specific=True)


def _declare(lib: ctypes.CDLL) -> None:
    p, i32 = ctypes.c_void_p, ctypes.c_int
    for suffix, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        fwd = getattr(lib, f"smoe_tile_forward_{suffix}")
        fwd.argtypes = [p, p, p, p, p, p, p, i32, i32, i32, i32, i32, real, i32, p, p, i32]
        fwd.restype = i32
        bwd = getattr(lib, f"smoe_tile_backward_{suffix}")
        bwd.argtypes = [p, p, p, p, p, p, p, i32, i32, i32, i32, i32, real, i32, p, p, p, p, i32]
        bwd.restype = i32
    lib.smoe_bin_count.argtypes = [i32, p, i32, i32, i32, p]
    lib.smoe_bin_count.restype = ctypes.c_int64
    lib.smoe_bin_fill.argtypes = [i32, p, i32, i32, i32, i32, p, p, p, p]
    lib.smoe_bin_fill.restype = i32


def load() -> ctypes.CDLL:
    """Returns the loaded CPU library, building it on first use. Raises CPUBuildError."""
    global _lib
    with _lock:
        if _lib is None:
            path = build()
            try:
                lib = ctypes.CDLL(str(path))
            except OSError as exc:
                raise CPUBuildError(f"loading {path} failed: {exc}") from exc
            _declare(lib)
            _lib = lib
        return _lib


def available() -> bool:
    """Whether the CPU build compiles and loads here."""
    try:
        load()
        return True
    except CPUBuildError:
        return False


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def forward(mu, chol, logpi, experts, slopes, lists, inv_scale, mode, n_threads):
    """(out (B, H, W, C), lse (B, H, W)): the forward pass over ``lists`` (:class:`~smoe_core.render.binning.
    TileLists`), with contiguous CPU tensors of one float dtype."""
    lib = load()
    fn = lib.smoe_tile_forward_f64 if mu.dtype == torch.float64 else lib.smoe_tile_forward_f32
    B, H, W, C = lists.batch, lists.height, lists.width, experts.shape[1]
    out = torch.empty(B, H, W, C, dtype=mu.dtype)
    lse = torch.empty(B, H, W, dtype=mu.dtype)
    rc = fn(_ptr(mu), _ptr(chol), _ptr(logpi), _ptr(experts), _ptr(slopes), _ptr(lists.tile_start), _ptr(lists.tile_ids),
            B, H, W, C, lists.tile, inv_scale, mode, _ptr(out), _ptr(lse), n_threads)
    if rc != 0:
        raise ValueError(f"the tiled renderer supports 1 to {MAX_CHANNELS} channels, got {C}")
    return out, lse


def backward(mu, chol, logpi, experts, slopes, lists, inv_scale, mode, grad_out, out, lse, n_threads):
    """Per-(tile, kernel) gradient rows (n_pairs, :func:`~smoe_core.render.abi.grad_slots`)."""
    lib = load()
    fn = lib.smoe_tile_backward_f64 if mu.dtype == torch.float64 else lib.smoe_tile_backward_f32
    C = experts.shape[1]
    g = torch.empty(lists.tile_ids.numel(), grad_slots(C, slopes is not None), dtype=mu.dtype)
    rc = fn(_ptr(mu), _ptr(chol), _ptr(logpi), _ptr(experts), _ptr(slopes), _ptr(lists.tile_start), _ptr(lists.tile_ids),
            lists.batch, lists.height, lists.width, C, lists.tile, inv_scale, mode, _ptr(grad_out), _ptr(out), _ptr(lse),
            _ptr(g), n_threads)
    if rc != 0:
        raise ValueError(f"the tiled renderer supports 1 to {MAX_CHANNELS} channels, got {C}")
    return g
