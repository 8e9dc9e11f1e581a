"""Builds and loads the CPU build of the tiled renderer (raw_kernels/smoe_tile_cpu.cpp).

The C++ source is compiled on first use with the system C++ compiler (``$CXX``, else ``g++``, ``c++`` or
``clang++``) and OpenMP, cached under ``$SMOE_CACHE_DIR`` (default ``~/.cache/smoe_core``) by a hash of the
sources, flags, compiler and CPU, and loaded with :mod:`ctypes`. No build system is involved: one compiler
call. ``-march=native`` is safe because the cache key includes the CPU model and flags.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from raw_kernels import KERNEL_DIR

FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", "-shared", "-std=c++17"]


class CPUBuildError(RuntimeError):
    """The CPU build of the tiled renderer could not be compiled or loaded."""


_lock = threading.Lock()
_lib = None


def find_compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_signature() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))][:2]
        return "\n".join(lines)
    except OSError:
        return platform.processor()


def cache_dir() -> Path:
    return Path(os.environ.get("SMOE_CACHE_DIR", Path.home() / ".cache" / "smoe_core"))


def compile_cached(source: str, flags: list[str], *, depends=(), stem: str, error=RuntimeError,
                   cpu_specific: bool = False) -> Path:
    """Compiles raw_kernels/<source> into a shared library unless it is cached; returns its path.

    The cache key hashes the source and ``depends`` (headers), the flags, the compiler's version and the machine
    (plus the CPU model and flags when ``cpu_specific``, e.g. for ``-march=native``). The library is written to
    a temporary file and renamed into place, so concurrent builders (Dask workers) never see a half-written
    file. Raises ``error`` when no compiler is found or the compilation fails.
    """
    compiler = find_compiler()
    if compiler is None:
        raise error("no C++ compiler found (set $CXX or install g++)")
    h = hashlib.sha256()
    for name in (source, *depends):
        h.update((KERNEL_DIR / name).read_bytes())
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    for part in (" ".join(flags), version, platform.machine(), _cpu_signature() if cpu_specific else ""):
        h.update(part.encode())
    path = cache_dir() / f"{stem}_{h.hexdigest()[:16]}.so"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    cmd = [compiler, *flags, f"-I{KERNEL_DIR}", str(KERNEL_DIR / source), "-o", tmp]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        os.unlink(tmp)
        raise error(f"compiling {KERNEL_DIR / source} failed:\n{proc.stderr[-4000:]}")
    os.replace(tmp, path)
    return path


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
    try:
        load()
        return True
    except CPUBuildError:
        return False
