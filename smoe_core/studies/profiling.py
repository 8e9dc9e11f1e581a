"""Measuring the machine while a study runs: peak resident memory (from /proc, with the kernel's high-water
mark reset), the bytes autograd saves for backward, the load average. Used by ``smoe bench`` and the R-SMoE
speed and memory table (:mod:`.r_smoe_paper`); Linux gives exact figures, elsewhere ``ru_maxrss`` stands in.
"""
from __future__ import annotations

import ctypes
import gc
import os
import resource
import sys

import torch


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024.0 * 1024.0) if sys.platform == "darwin" else r / 1024.0


def load_average() -> float:
    """The 1-minute load average (other processes competing for the cores make timings noisy); NaN if unknown."""
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return float("nan")


_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:
            _LIBC = False
    return _LIBC or None


def _proc_status_mb() -> dict:
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0]) / 1024.0
    except OSError:
        pass
    return out


def _reset_peak() -> bool:
    """Returns freed heap memory and resets the kernel's RSS high-water mark; False where impossible."""
    gc.collect()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return "VmHWM" in _proc_status_mb()


def measure_peak_mb(fn) -> tuple[float, str]:
    """(MiB the resident memory grew to above its level before ``fn()``, method) -- see module docstring."""
    if _reset_peak():
        before = _proc_status_mb()["VmRSS"]
        fn()
        return max(0.0, _proc_status_mb()["VmHWM"] - before), "vmhwm"
    before = peak_rss_mb()
    fn()
    return max(0.0, peak_rss_mb() - before), "ru_maxrss"


def saved_tensor_bytes(fn, exclude=()) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn()`` runs (``exclude``: tensors whose
    storages are not counted, e.g. the parameters)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude if t is not None}
    seen: dict[int, int] = {}

    def pack(t):
        try:
            st = t.untyped_storage()
            ptr = st.data_ptr()
            if ptr not in skip:
                seen[ptr] = max(seen.get(ptr, 0), st.nbytes())
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return int(sum(seen.values()))
