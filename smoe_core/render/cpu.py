"""The CPU build of the tiled renderer (raw_kernels/smoe_tile_cpu.cpp, C++/OpenMP): built and cached by
:func:`smoe_core.render.build.compile_cached` on first use, loaded with :mod:`ctypes`, and called by
:func:`forward` / :func:`backward` (rasterized R-SMoE; see :mod:`smoe_core.render.api`).

Two builds, by :func:`smoe_core.render.build.build_mode` (``$SMOE_BUILD``):

- ``"fast"`` (default, :data:`FAST_FLAGS`): ``-O3 -march=native -ffast-math``: the vector exp of libmvec, the
  backward's per-kernel sums vectorized (their order follows the vector width), FMA contraction where the CPU
  has FMA. Its cache key includes the CPU model and flags, so a library built on one CPU is never loaded on
  another; but its results differ between CPUs in the last bits, and a training run amplifies those.
- ``"reproducible"`` (:data:`REPRODUCIBLE_FLAGS`): ``-O3`` for the architecture's baseline
  (:func:`smoe_core.render.build.portable_arch_flags`), no fast-math, ``-ffp-contract=off``: every operation
  rounded as written, in source order (no reassociated sums, no FMA), scalar ``expf`` / ``logf`` from libm
  (the ``exp_gate`` clamp is kept, so the two builds compute the same function). The same machine code runs on
  every x86-64 CPU. It is slower (measured in README "Reproducible builds").

Each mode's library is loaded once per process (:func:`load` picks the mode in force at the call). Loading it
imports no torch (:mod:`.cpu_numpy` calls it on numpy arrays); :func:`forward` and :func:`backward`, which take
and return torch tensors, import torch when called.
"""
from __future__ import annotations

import ctypes
import threading
from pathlib import Path

from .abi import MAX_CHANNELS, grad_slots
from .build import check_build_mode, compile_cached, portable_arch_flags

#: flags of the fast build (this CPU's instruction set, fast-math)
FAST_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", "-shared", "-std=c++17"]
#: flags of the reproducible build (the architecture's baseline, IEEE arithmetic as written); the
#: architecture flags are added by :func:`flags`
REPRODUCIBLE_FLAGS = ["-O3", "-fno-fast-math", "-ffp-contract=off", "-fno-trapping-math", "-fno-math-errno",
                      "-DSMOE_REPRODUCIBLE", "-fopenmp", "-fPIC",
                      "-shared", "-std=c++17"]
SOURCE = "smoe_tile_cpu.cpp"
DEPENDS = ("smoe_tile.h",)


def flags(mode: str | None = None) -> list[str]:
    """The compiler flags of build ``mode`` (None: the mode in force, :func:`smoe_core.render.build.build_mode`)."""
    if check_build_mode(mode) == "fast":
        return list(FAST_FLAGS)
    return REPRODUCIBLE_FLAGS[:1] + portable_arch_flags() + REPRODUCIBLE_FLAGS[1:]


class CPUBuildError(RuntimeError):
    """The CPU build of the tiled renderer could not be compiled or loaded."""


_lock = threading.Lock()
_libs: dict[str, ctypes.CDLL] = {}


def build(mode: str | None = None) -> Path:
    """Compiles the CPU build of ``mode`` (None: the mode in force) if it is not cached yet; returns the path of
    the shared library (``smoe_tile_cpu_<key>.so`` for the fast build, ``smoe_tile_cpu_reproducible_<key>.so``
    for the reproducible one). Only the fast build's key includes the CPU model and flags."""
    mode = check_build_mode(mode)
    stem = "smoe_tile_cpu" if mode == "fast" else f"smoe_tile_cpu_{mode}"
    return compile_cached(SOURCE, flags(mode), depends=DEPENDS, stem=stem, error=CPUBuildError,
                          cpu_specific=mode == "fast")


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


def load(mode: str | None = None) -> ctypes.CDLL:
    """Returns the loaded CPU library of build ``mode`` (None: the mode in force), building it on first use.
    Raises CPUBuildError (ValueError for an unknown mode)."""
    mode = check_build_mode(mode)
    with _lock:
        if mode not in _libs:
            path = build(mode)
            try:
                lib = ctypes.CDLL(str(path))
            except OSError as exc:
                raise CPUBuildError(f"loading {path} failed: {exc}") from exc
            _declare(lib)
            _libs[mode] = lib
        return _libs[mode]


def available(mode: str | None = None) -> bool:
    """Whether the CPU build (of ``mode``; None: the mode in force) compiles and loads here."""
    try:
        load(mode)
        return True
    except CPUBuildError:
        return False


def _ptr(t) -> int | None:
    return None if t is None else t.data_ptr()


def forward(mu, chol, logpi, experts, slopes, lists, inv_scale, mode, n_threads):
    """(out (B, H, W, C), lse (B, H, W)): the forward pass over ``lists`` (:class:`~smoe_core.render.binning.
    TileLists`), with contiguous CPU tensors of one float dtype."""
    import torch

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
    import torch

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
