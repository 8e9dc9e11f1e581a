"""One compile-and-cache helper for every C++ source in raw_kernels/ (the tiled renderer's CPU build,
:mod:`smoe_core.render.cpu`, and the MDBSCAN loops, :mod:`smoe_core.segment.build`), and the build mode.

A source is compiled on first use with the system C++ compiler (``$CXX``, else ``g++``, ``c++`` or
``clang++``), cached under ``$SMOE_CACHE_DIR`` (default ``~/.cache/smoe_core``) by a hash of the sources,
flags, compiler and machine, and loaded with :mod:`ctypes` by its caller. No build system is involved: one
compiler call.

**Build modes** (:func:`build_mode`, ``$SMOE_BUILD``): ``"fast"`` (the default) compiles the tiled renderer for
this CPU with ``-march=native -ffast-math``: vector exp from libmvec, reassociated sums whose order depends on
the vector width, fused multiply-adds where the CPU has them, so its last bits differ between CPUs.
``"reproducible"`` compiles for the baseline of the architecture (``-march=x86-64 -mtune=generic`` on x86-64)
with IEEE semantics (no fast-math, ``-ffp-contract=off``: every operation rounded as written, in source order,
no FMA contraction), so the compiled code does the same arithmetic on every machine of the architecture. The
two modes have different flags and library names, hence different cache keys: their libraries never mix. The
mode is read from the environment each time a library is loaded (:func:`set_build_mode` sets it for this
process and the processes it starts: Dask workers, notebook kernels). What the reproducible mode cannot fix is
outside the compiled code: glibc's libm picks FMA variants of ``expf`` / ``logf`` per CPU and PyTorch picks its
kernels per CPU (``ATEN_CPU_CAPABILITY``); README "Reproducible builds" gives the measured consequences.
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


#: the build modes (module docstring)
BUILD_MODES = ("fast", "reproducible")
#: the environment variable that selects the build mode
BUILD_ENV = "SMOE_BUILD"


#: glibc tunable that hides FMA and AVX2 from glibc's ifunc selection (libm then uses its SSE2 variants of ``exp``,
#: ``log``, ``pow``, ...): how libm behaves on an x86-64 CPU without FMA, and so on every x86-64 CPU
NO_FMA_LIBM = "glibc.cpu.hwcaps=-AVX2,-FMA,-FMA4,-AVX"

#: the environment of a reproducible run (``smoe reproduce --build reproducible`` sets it for its notebooks):
#: the reproducible build, PyTorch's baseline kernels (``ATEN_CPU_CAPABILITY=default``: the same code on every
#: x86-64 CPU instead of the AVX2 / AVX-512 kernels picked per CPU), MKL's CPU-independent code path
#: (``MKL_CBWR=COMPATIBLE``), oneDNN (PyTorch's convolutions) held to SSE4.1 (``ONEDNN_MAX_CPU_ISA``), and numpy
#: held to its baseline: its SIMD loops to the baseline it was built for (``NPY_ENABLE_CPU_FEATURES=X86_V2``:
#: numpy 2.4's baseline, so no AVX2 / AVX-512 variants of ``exp``, ``log``, ...) and its OpenBLAS to the
#: Nehalem (SSE4.2) kernels (``OPENBLAS_CORETYPE``; else OpenBLAS picks Haswell kernels on this AMD CPU and
#: SkylakeX kernels on an Intel AVX-512 CPU, and that alone moved the RBF least-squares weights of
#: ``compare_initializers``' Fig. 7 by 0.006 dB in a smoke run: :mod:`smoe_core.studies.reproducibility`); and one
#: thread per process (PyTorch splits its reductions by the thread count, so a machine with more cores would sum
#: in another order; Dask workers still run in parallel). The variables are read when torch and numpy start: set
#: them before importing either. glibc's libm held to its SSE2 variants (``GLIBC_TUNABLES``, :data:`NO_FMA_LIBM`):
#: numpy's baseline loops call libm, whose FMA variants round differently (measured: the same smoke run with libm's
#: FMA and SSE2 variants moved Fig. 7's AS-RBF PSNR by 0.001 dB).
REPRODUCIBLE_ENV = {BUILD_ENV: "reproducible", "ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE",
                    "ONEDNN_MAX_CPU_ISA": "SSE41", "NPY_ENABLE_CPU_FEATURES": "X86_V2",
                    "OPENBLAS_CORETYPE": "Nehalem", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                    "OPENBLAS_NUM_THREADS": "1", "GLIBC_TUNABLES": NO_FMA_LIBM}


def build_mode() -> str:
    """The build mode of the compiled kernels: ``$SMOE_BUILD`` ("fast" when unset or empty); ValueError for
    any other value."""
    mode = os.environ.get(BUILD_ENV, "").strip().lower() or "fast"
    if mode not in BUILD_MODES:
        raise ValueError(f"${BUILD_ENV} must be one of {', '.join(BUILD_MODES)}, got {os.environ[BUILD_ENV]!r}")
    return mode


def check_build_mode(mode: str | None) -> str:
    """``mode`` checked (None: :func:`build_mode`)."""
    if mode is None:
        return build_mode()
    if mode not in BUILD_MODES:
        raise ValueError(f"build mode must be one of {', '.join(BUILD_MODES)}, got {mode!r}")
    return mode


def set_build_mode(mode: str) -> str:
    """Selects the build mode for this process and the processes it starts (sets ``$SMOE_BUILD``); returns the
    previous mode. Libraries already loaded stay loaded; the next load picks the library of the new mode."""
    previous = build_mode()
    os.environ[BUILD_ENV] = check_build_mode(mode)
    return previous


def portable_arch_flags() -> list[str]:
    """The flags that pin code generation to the baseline of this architecture (empty where the compiler's
    default target is already the baseline): on x86-64 ``-march=x86-64 -mtune=generic`` (SSE2, no FMA; a
    compiler configured for a newer default, e.g. x86-64-v2, is overridden)."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        return ["-march=x86-64", "-mtune=generic"]
    return []


def find_compiler() -> str | None:
    """The C++ compiler to use: ``$CXX``, else the first of g++, c++, clang++ on the PATH (None if none)."""
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def compiler_version(compiler: str | None = None) -> str:
    """The first line of ``compiler --version`` (default: :func:`find_compiler`), "" when there is none."""
    compiler = compiler or find_compiler()
    if compiler is None:
        return ""
    try:
        out = version_output(compiler)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.splitlines()[0].strip() if out.strip() else ""


def version_output(compiler: str) -> str:
    """The whole output of ``compiler --version`` (part of :func:`compile_cached`'s cache key)."""
    return subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout


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
    version = version_output(compiler)
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
