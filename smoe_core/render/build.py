"""One compile-and-cache helper for every C++ source in raw_kernels/ (the tiled renderer's CPU build,
:mod:`smoe_core.render.cpu`, and the MDBSCAN loops, :mod:`smoe_core.segment.build`).

A source is compiled on first use with the system C++ compiler (``$CXX``, else ``g++``, ``c++`` or
``clang++``), cached under ``$SMOE_CACHE_DIR`` (default ``~/.cache/smoe_core``) by a hash of the sources,
flags, compiler and machine, and loaded with :mod:`ctypes` by its caller. No build system is involved: one
compiler call.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from raw_kernels import KERNEL_DIR


def find_compiler() -> str | None:
    """The C++ compiler to use: ``$CXX``, else the first of g++, c++, clang++ on the PATH (None if none)."""
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def cpu_signature() -> str:
    """The CPU model and feature flags (part of the cache key of ``-march=native`` builds)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))][:2]
        return "\n".join(lines)
    except OSError:
        return platform.processor()


def cache_dir() -> Path:
    """Where compiled libraries are cached: ``$SMOE_CACHE_DIR``, default ``~/.cache/smoe_core``."""
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
    for part in (" ".join(flags), version, platform.machine(), cpu_signature() if cpu_specific else ""):
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
