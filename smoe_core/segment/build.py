"""Builds and loads the compiled MDBSCAN loops (raw_kernels/mdbscan.cpp) for :mod:`smoe_core.segment.mdbscan`.

Built by :func:`smoe_core.render.build.compile_cached`, like the tiled renderer's CPU build: one compiler call,
cached under ``$SMOE_CACHE_DIR`` (default ``~/.cache/smoe_core``) by a hash of the source,
flags and compiler version, written to a temporary file and renamed atomically, loaded with :mod:`ctypes`.
The flags are portable (no ``-march=native``, no ``-ffast-math``, ``-ffp-contract=off``) so the floating-point
comparisons of the merge and strand steps are plain IEEE double, the same as the Python twin in :mod:`smoe_core.segment.mdbscan`.
They are the reproducible build's rules already, so there is one MDBSCAN library for both build modes
(:func:`smoe_core.render.build.build_mode` selects the tiled renderer's build only).
"""
from __future__ import annotations

import ctypes
import threading
from pathlib import Path

from ..render.build import compile_cached, find_compiler

SOURCE = "mdbscan.cpp"
FLAGS = ["-O2", "-ffp-contract=off", "-fPIC", "-shared", "-std=c++17"]
ABI_VERSION = 2


class MDBSCANBuildError(RuntimeError):
    """The compiled MDBSCAN loops could not be built or loaded (no C++ compiler, or it failed)."""


_lock = threading.Lock()
_lib = None


def build() -> Path:
    """Compiles raw_kernels/mdbscan.cpp if it is not cached yet; returns the shared library's path."""
    if find_compiler() is None:
        raise MDBSCANBuildError("MDBSCAN needs a C++ compiler for its pixel loops: none found (set $CXX or "
                                "install g++), or call smoe_core.segment.mdbscan(..., backend='python')")
    return compile_cached(SOURCE, FLAGS, stem="mdbscan", error=MDBSCANBuildError)


def _declare(lib: ctypes.CDLL) -> None:
    p, i32, f64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_double
    lib.mdbscan_segment.argtypes = [p, i32, i32, f64, i32, f64, i32, f64, i32, i32, p]
    lib.mdbscan_segment.restype = i32
    lib.mdbscan_abi_version.argtypes = []
    lib.mdbscan_abi_version.restype = i32


def load() -> ctypes.CDLL:
    """Returns the loaded library, building it on first use. Raises MDBSCANBuildError."""
    global _lib
    with _lock:
        if _lib is None:
            path = build()
            try:
                lib = ctypes.CDLL(str(path))
            except OSError as exc:
                raise MDBSCANBuildError(f"loading {path} failed: {exc}") from exc
            _declare(lib)
            if lib.mdbscan_abi_version() != ABI_VERSION:
                raise MDBSCANBuildError(f"{path} has ABI {lib.mdbscan_abi_version()}, expected {ABI_VERSION}")
            _lib = lib
        return _lib


def available() -> bool:
    try:
        load()
        return True
    except MDBSCANBuildError:
        return False
