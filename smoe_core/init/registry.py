"""The registry of initializers: every initializer, built-in or the user's, with the facts about it that the
CLI, the tasks and the paper studies need, declared once here (nothing else inspects signatures or keeps its
own list of names).

An initializer is a function ``fn(image, n_kernels, **kwargs) -> InitResult`` (:class:`.result.InitResult`).
Its :class:`InitializerInfo` says:

- ``takes_seed``: it accepts ``seed=`` (random placement, random experts, K-Means starts...); callers pass
  their seed to these and only these.
- ``segments``: it works on a segmentation and accepts ``labels=`` (an (H, W) label map) and ``d_th=`` (the
  MDBSCAN threshold used when no labels are given).
- ``picks_own_count``: the kernel budget ``n_kernels`` is not used (AS-SMoE's Algorithm 1 chooses its count);
  callers pass ``None`` and tables report the count it chose.
- ``count_optional``: ``n_kernels=None`` is accepted and means the initializer's own rule (S-SMoE: 4 kernels per
  segment).
- ``expert_rules``: the values its ``experts=`` option accepts (empty: it has no such option).
- ``parallel``: it accepts ``workers=`` / ``scheduler=`` (Dask) and ``progress=``.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable

from .result import InitResult


@dataclass(frozen=True)
class InitializerInfo:
    """What an initializer is (module docstring)."""

    name: str
    fn: Callable[..., InitResult] = field(repr=False)
    takes_seed: bool = False
    segments: bool = False
    picks_own_count: bool = False
    count_optional: bool = False
    expert_rules: tuple[str, ...] = ()
    parallel: bool = False
    description: str = ""

    def budget(self, n_kernels):
        """The kernel budget to pass: ``None`` for an initializer that picks its own count."""
        return None if self.picks_own_count else n_kernels

    def seed_kwargs(self, seed: int) -> dict:
        """``{"seed": seed}`` if it takes a seed, else ``{}``."""
        return {"seed": int(seed)} if self.takes_seed else {}


class InitializerRegistry(Mapping):
    """name -> initializer function (a read-only mapping), with :meth:`info` for the facts about each."""

    def __init__(self):
        self._infos: dict[str, InitializerInfo] = {}
        self._builtin: dict[str, InitializerInfo] = {}

    def __getitem__(self, name: str) -> Callable[..., InitResult]:
        return self._infos[name].fn

    def __iter__(self):
        return iter(self._infos)

    def __len__(self) -> int:
        return len(self._infos)

    def info(self, name_or_fn) -> InitializerInfo:
        """The facts about a registered initializer, by name or by its function. A function that is not
        registered gets the defaults of :class:`InitializerInfo` (no seed, no segments, uses its budget)."""
        if callable(name_or_fn):
            for info in self._infos.values():
                if info.fn is name_or_fn:
                    return info
            return InitializerInfo(name=getattr(name_or_fn, "__name__", "custom"), fn=name_or_fn)
        try:
            return self._infos[name_or_fn]
        except KeyError:
            raise ValueError(f"unknown initializer {name_or_fn!r} (known: {', '.join(sorted(self._infos))})") from None

    def names(self, **facts) -> tuple[str, ...]:
        """The names of the initializers with the given facts, e.g. ``names(segments=True)``."""
        return tuple(n for n, i in self._infos.items() if all(getattr(i, k) == v for k, v in facts.items()))

    def remove(self, name: str) -> None:
        if name not in self._infos:
            raise ValueError(f"unknown initializer {name!r} (known: {', '.join(sorted(self._infos))})")
        del self._infos[name]

    def mark_builtin(self) -> None:
        """Records the initializers registered so far as smoe_core's own (:meth:`user_infos` leaves them out)."""
        self._builtin = dict(self._infos)

    def user_infos(self) -> tuple[InitializerInfo, ...]:
        """The initializers registered at run time (a user's, or a built-in name registered again with another
        function): what a fresh process, such as a Dask worker, does not know."""
        return tuple(i for n, i in self._infos.items() if self._builtin.get(n) is not i)

    def add(self, info: InitializerInfo, *, overwrite: bool = False) -> None:
        if info.name in self._infos and not overwrite and self._infos[info.name].fn is not info.fn:
            raise ValueError(f"an initializer named {info.name!r} exists; pass overwrite=True to replace it")
        self._infos[info.name] = info


#: All initializers by name (``INITIALIZERS["grid"](image, 1000)``; ``INITIALIZERS.info("grid")``).
INITIALIZERS = InitializerRegistry()


def register_initializer(name: str, fn: Callable[..., InitResult], *, overwrite: bool = False, takes_seed=False,
                         segments=False, picks_own_count=False, count_optional=False, expert_rules=(),
                         parallel=False, description: str = "") -> InitializerInfo:
    """Makes ``fn(image, n_kernels, **kwargs) -> InitResult`` available by ``name`` to the CLI (``--init``),
    tile-wise training, denoising, super-resolution and the notebooks, with the facts of
    :class:`InitializerInfo`; returns them."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"name must be an identifier-like string, got {name!r}")
    if not callable(fn):
        raise TypeError(f"initializer {name!r} must be callable")
    info = InitializerInfo(name=name, fn=fn, takes_seed=bool(takes_seed), segments=bool(segments),
                           picks_own_count=bool(picks_own_count), count_optional=bool(count_optional),
                           expert_rules=tuple(expert_rules), parallel=bool(parallel), description=description)
    INITIALIZERS.add(info, overwrite=overwrite)
    return info


class CarryInitializers:
    """``fn(item)`` run after registering ``infos`` in the process it runs in.

    A Dask worker is a fresh process: it imports smoe_core and knows the built-in initializers only, so a grid
    over an initializer registered in a notebook (the ``compare_initializers`` notebook's own ``wide_grid``) failed
    there with "unknown initializer". :func:`smoe_core.parallel.run_tasks` wraps every task function it ships to
    Dask in this (:func:`carry_initializers`, registered by smoe_core.init with
    :func:`smoe_core.parallel.add_worker_context`); the registered functions travel with it (cloudpickle ships a
    notebook's function by value)."""

    def __init__(self, fn: Callable, infos):
        self.fn, self.infos = fn, tuple(infos)

    def __call__(self, item):
        for info in self.infos:
            INITIALIZERS.add(info, overwrite=True)
        return self.fn(item)


def carry_initializers(fn: Callable) -> Callable:
    """``fn``, wrapped so that the initializers registered at run time (:meth:`InitializerRegistry.user_infos`)
    are registered in whatever process runs it (:class:`CarryInitializers`); ``fn`` itself when there are none."""
    infos = INITIALIZERS.user_infos()
    return CarryInitializers(fn, infos) if infos else fn


def unregister_initializer(name: str) -> None:
    """Removes the initializer registered as ``name`` (a user's; ValueError for an unknown name)."""
    INITIALIZERS.remove(name)


def get_initializer(name_or_fn) -> Callable[..., InitResult]:
    """The initializer registered as ``name_or_fn`` (or the function itself)."""
    if callable(name_or_fn):
        return name_or_fn
    return INITIALIZERS.info(name_or_fn).fn


def initializer_info(name_or_fn) -> InitializerInfo:
    """The facts about an initializer (:meth:`InitializerRegistry.info`)."""
    return INITIALIZERS.info(name_or_fn)
