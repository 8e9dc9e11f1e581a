"""Parallel execution of independent work -- per-tile and per-segment fits -- on Dask (adaptive-segmentation
paper section VI, Fig. 10: initialization time vs the number of parallel devices).

``run_tasks(fn, items, workers=..., scheduler=...)`` returns ``[fn(item) for item in items]``:

- serially in this process when ``workers`` is None/0/1 and no scheduler is given;
- on a ``dask.distributed.LocalCluster`` of ``workers`` processes (one thread each) otherwise;
- on an existing cluster when ``scheduler`` is its address (``"tcp://host:8786"``) or a ``Client``.

Dask starts its worker processes with "spawn", which imports the calling script again: a script that calls
this with workers must keep its work under ``if __name__ == "__main__":`` (the ``smoe`` command and notebooks
need nothing).

Our clusters keep glibc's own malloc trim threshold in the workers (:func:`local_cluster`). Dask sets
``MALLOC_TRIM_THRESHOLD_=65536`` in every worker it spawns, so that freed memory goes back to the OS at once; our
tasks allocate and free arrays of megabytes all the time, and with that setting each one is unmapped and faulted in
again: the AS-SMoE initializations of the four test images took 1.6-1.8x as long in one process with Dask's value as
with glibc's default (9.6-10.9 s against 5.9-7.4 s, one thread, this machine), which made Fig. 10's Dask runs slower
than the serial one (:func:`smoe_core.studies.as_smoe_segments.fig10_breakdown` measures both).

Identical results: every task runs with ``torch.set_num_threads(threads_per_task)`` (default 1) whether it
runs here or on a worker, so reductions inside torch happen in the same order, and with the BLAS libraries
numpy and scipy load (OpenBLAS) held to the same number of threads (:func:`blas_threads`, threadpoolctl):
OpenBLAS splits its dot products and norms by its thread count, which is the machine's core count unless
pinned, and scipy's LSQR (the RBF start of the segmentation paper's Fig. 7) then gave weights differing by
4e-6 between one and two threads, which the global optimization after it grew to 1.9 dB; the tiled renderer's
gradients do not depend on the thread count at all (one gradient row per tile entry, summed in a fixed
order). Each task gets its own seed from its item, never from shared global state.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable

import torch
from tqdm.auto import tqdm


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Temporarily sets torch's intra-op thread count (None: leave it)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def blas_threads(n: int | None):
    """Temporarily holds the BLAS libraries loaded in this process (numpy's and scipy's OpenBLAS) to ``n``
    threads (threadpoolctl; None: leave them)."""
    if n is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=int(n), user_api="blas"):
        yield


#: wrappers ``fn -> fn'`` applied to every task function that goes to Dask, so that state a fresh worker process
#: lacks travels with the task (:func:`add_worker_context`; smoe_core.init adds one for the initializers registered
#: at run time, e.g. in a notebook)
WORKER_CONTEXT: list[Callable] = []


def add_worker_context(wrap: Callable[[Callable], Callable]) -> None:
    """Registers ``wrap``: :func:`run_tasks` calls ``fn = wrap(fn)`` before it ships ``fn`` to Dask workers (not
    for a serial run, whose process has the state already). Registering the same wrapper twice has no effect."""
    if not callable(wrap):
        raise TypeError(f"wrap must be callable, got {type(wrap).__name__}")
    if wrap not in WORKER_CONTEXT:
        WORKER_CONTEXT.append(wrap)


def _call(item, fn, threads):
    with torch_threads(threads), blas_threads(threads):
        return fn(item)


def local_cluster(workers: int, *, dask_malloc_trim: bool = False):
    """A ``dask.distributed.LocalCluster`` of ``workers`` one-thread processes, no dashboard. The workers keep
    glibc's malloc trim threshold unless ``dask_malloc_trim`` (Dask's default, 64 KiB: module docstring)."""
    import dask
    from dask.distributed import LocalCluster

    if int(workers) < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    settings = {} if dask_malloc_trim else {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
    with dask.config.set(settings):
        return LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True, dashboard_address=None,
                            silence_logs=40)


def uses_dask(workers: int | None, scheduler) -> bool:
    return scheduler is not None or (workers is not None and int(workers) > 1)


def run_tasks(fn: Callable[[Any], Any], items: Iterable, *, workers: int | None = None, scheduler=None,
              threads_per_task: int | None = 1, progress: bool = True, desc: str = "tasks",
              on_result: Callable[[int, Any], None] | None = None) -> list:
    """``[fn(item) for item in items]``, serially or on Dask (see the module docstring); results in order.

    ``fn`` must be picklable (a module-level function, or anything cloudpickle handles) and so must the items.
    ``on_result(index, result)`` is called in this process as each task finishes (e.g. to save it at once).
    """
    items = list(items)
    if not uses_dask(workers, scheduler):
        out = []
        for i, it in enumerate(tqdm(items, desc=desc, disable=not progress)):
            out.append(_call(it, fn, threads_per_task))
            if on_result is not None:
                on_result(i, out[-1])
        return out
    from dask.distributed import Client, as_completed

    for wrap in WORKER_CONTEXT:
        fn = wrap(fn)
    own_cluster = None
    if scheduler is None:
        own_cluster = local_cluster(int(workers))
        client = Client(own_cluster)
    elif isinstance(scheduler, Client):
        client = scheduler
    else:
        client = Client(scheduler)
    try:
        futures = client.map(_call, items, fn=fn, threads=threads_per_task, pure=False)
        index = {f.key: i for i, f in enumerate(futures)}
        results: list = [None] * len(items)
        with tqdm(total=len(items), desc=desc, disable=not progress) as bar:
            for fut in as_completed(futures):
                i = index[fut.key]
                results[i] = fut.result()
                if on_result is not None:
                    on_result(i, results[i])
                bar.update(1)
        return results
    finally:
        if client is not scheduler:
            client.close()
        if own_cluster is not None:
            own_cluster.close()
