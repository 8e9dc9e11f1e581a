"""Bounds checked before any work starts, so that a request that cannot be met fails at once with a message
naming the argument, instead of hanging, exhausting memory or producing a meaningless model.

The rules (every public entry point that takes these sizes applies them):

- **Kernels**: at most one kernel per pixel of the image a model is fitted to, ``1 <= n_kernels <= H * W``
  (:func:`check_kernels`). A budget above that buys nothing (kernels beyond one per pixel carry no new
  information) and, for the grid layout, costs time linear in the budget.
- **Memory**: a lower estimate of the memory a render or a fit needs (the images and per-pixel buffers it
  cannot do without, :func:`smoe_core.render.render_bytes`, :func:`smoe_core.training.fit_bytes`) must not
  exceed the memory available (:func:`available_memory`: the kernel's ``MemAvailable``, further bounded by
  the cgroup's limit; ``$SMOE_MAX_MEMORY`` overrides, e.g. ``2G``). The estimate errs low: a request it lets
  through may still run out of memory, but one it refuses could not have run.
- **Image size**: images loaded from files are bounded by :data:`smoe_core.io.MAX_PIXELS` (from the header,
  before decoding); ``smoe bench`` applies the same bound to its synthetic sizes.
"""
from __future__ import annotations

import math
import numbers
import os
import re

MEMORY_ENV = "SMOE_MAX_MEMORY"
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def format_bytes(n: float) -> str:
    """``n`` bytes as a short human-readable size ("1.5 GiB")."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def parse_bytes(text: str) -> int:
    """``"2G"``, ``"512M"``, ``"1.5GiB"``, ``"1000000"`` -> bytes (ValueError otherwise)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"${MEMORY_ENV} must be a size such as 2G or 512M, got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_available() -> int | None:
    """What the cgroup (v2) still allows: memory.max - memory.current, or None without a limit."""
    try:
        with open("/proc/self/cgroup") as f:
            rel = next((ln.split(":", 2)[2].strip() for ln in f if ln.startswith("0::")), None)
        if rel is None:
            return None
        base = os.path.join("/sys/fs/cgroup", rel.lstrip("/"))
        with open(os.path.join(base, "memory.max")) as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open(os.path.join(base, "memory.current")) as f:
            current = int(f.read().strip())
        return max(0, int(limit) - current)
    except (OSError, ValueError, StopIteration, IndexError):
        return None


def available_memory() -> int | None:
    """Bytes of memory a new allocation can count on (module docstring), or None when unknown."""
    env = os.environ.get(MEMORY_ENV)
    if env:
        return parse_bytes(env)
    found = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    return min(found) if found else None


#: requests estimated below this are never refused (and cost no look-up: renders run once per training step)
MEMORY_CHECK_FLOOR = 64 * 2**20


def check_memory(nbytes: float, what: str) -> None:
    """ValueError when ``what`` needs (at least) ``nbytes``, more than :func:`available_memory`."""
    if nbytes < MEMORY_CHECK_FLOOR:
        return
    avail = available_memory()
    if avail is not None and nbytes > avail:
        raise ValueError(f"{what} needs at least {format_bytes(nbytes)} of memory, more than the "
                         f"{format_bytes(avail)} available")


def check_shape(shape, name: str = "shape") -> tuple[int, int]:
    """``shape`` as (H, W): a sequence of exactly two positive integers (integral floats allowed); ValueError
    naming ``name`` otherwise (a string such as "32x32", a bool or a 3-item (C, H, W) is refused, not cut short)."""
    bad = ValueError(f"{name} must be (H, W), two positive integers, got {shape!r}")
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__len__") or len(shape) != 2:
        raise bad
    out = []
    for v in shape:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise bad
        if not (math.isfinite(float(v)) and float(v).is_integer() and v >= 1):
            raise bad
        out.append(int(v))
    return out[0], out[1]


def check_count(value, name: str, *, minimum: int = 0) -> int:
    """``value`` as an int >= ``minimum``: an integer, or a float with an integral value (not a bool, a string or
    a fraction); else TypeError / ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if not isinstance(value, numbers.Integral) and not (math.isfinite(value) and float(value).is_integer()):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def check_number(value, name: str, *, minimum: float | None = None, positive: bool = False) -> float:
    """``value`` as a finite float (>= ``minimum``, or > 0 with ``positive``); else TypeError / ValueError
    naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and not v > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}, got {value!r}")
    return v


def check_kernels(n_kernels, shape, name: str = "n_kernels") -> int:
    """``n_kernels`` as an int in [1, H * W] for an image of ``shape`` (H, W[, C]): at most one kernel per
    pixel (module docstring)."""
    n = check_count(n_kernels, name, minimum=1)
    H, W = int(shape[0]), int(shape[1])
    if n > H * W:
        raise ValueError(f"{name} {n} is more than one kernel per pixel of the {H} x {W} image "
                         f"({H * W} pixels): give at most {H * W}")
    return n
