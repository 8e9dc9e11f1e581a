"""Builds and loads the compiled MDBSCAN loops (raw_kernels/mdbscan.cpp) for :mod:`smoe_core.segment`.

Same approach as :mod:`smoe_core._cpu_build` (whose ``find_compiler`` and ``cache_dir`` it reuses): one
compiler call, cached under ``$SMOE_CACHE_DIR`` (default ``~/.cache/smoe_core``) by a hash of the source,
flags and compiler version, written to a temporary file and renamed atomically, loaded with :mod:`ctypes`.
The flags are portable (no ``-march=native``, no ``-ffast-math``, ``-ffp-contract=off``) so the floating-point
comparisons of the merge and strand steps are plain IEEE double, the same as the Python twin in segment.py.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
import threading
from pathlib import Path

from raw_kernels import KERNEL_DIR

from ._cpu_build import cache_dir, find_compiler

SOURCE = "mdbscan.cpp"
FLAGS = ["-O2", "-ffp-contract=off", "-fPIC", "-shared", "-std=c++17"]
ABI_VERSION = 2


class MDBSCANBuildError(RuntimeError):
    """The compiled MDBSCAN loops could not be built or loaded (no C++ compiler, or it failed)."""


_lock = threading.Lock()
_lib = None


def library_path(compiler: str) -> Path:
    h = hashlib.sha256((KERNEL_DIR / SOURCE).read_bytes())
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    for part in (" ".join(FLAGS), version, platform.machine()):
        h.update(part.encode())
    return cache_dir() / f"mdbscan_{h.hexdigest()[:16]}.so"


def build(verbose: bool = False) -> Path:
    """Compiles raw_kernels/mdbscan.cpp if it is not cached yet; returns the shared library's path."""
    compiler = find_compiler()
    if compiler is None:
        raise MDBSCANBuildError("MDBSCAN needs a C++ compiler for its pixel loops: none found (set $CXX or "
                                "install g++), or call smoe_core.segment.mdbscan(..., backend='python')")
    path = library_path(compiler)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    cmd = [compiler, *FLAGS, str(KERNEL_DIR / SOURCE), "-o", tmp]
    if verbose:
        print(" ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        os.unlink(tmp)
        raise MDBSCANBuildError(f"compiling {KERNEL_DIR / SOURCE} failed:\n{proc.stderr[-4000:]}")
    os.replace(tmp, path)  # atomic: concurrent builders never see a half-written file
    return path


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
