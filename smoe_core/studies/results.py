"""Versioned, resumable experiment results: CSV tables and PNG figures under ``results/<preset>/<notebook>/``.

Every CSV row carries the package version, git commit, preset, seed, backend, build mode of the compiled
kernels, PyTorch's CPU capability and date of the run that made it (:data:`META_COLUMNS`); ``manifest.json``
records the parameters. Grids of experiments are resumable: ``run_grid`` skips the
items whose key columns are already in the table, and each finished item is appended at once, so an
interrupted run loses at most the item it was working on. Every write goes to a temporary file first and is
then renamed into place, so nothing half-written is ever left behind.

One configuration, one set of rows:

- :func:`results_lock`: a run of ``smoe reproduce`` holds an exclusive OS lock (``fcntl.flock``) on
  ``<results>/.smoe-results.lock`` for its whole run; a second run on the same folder refuses at once,
  naming the folder and the pid holding it (:class:`ResultsInUse`), or waits for it (``--wait``). The lock
  is released when the run ends, however it ends (the OS drops it with the process).
- ``run_grid`` appends the rows of an item with ``replace_keys``: rows already in the table for the same key
  (written meanwhile by a run that did not hold the lock) are replaced, not duplicated; and before it runs,
  it repairs a table that holds a key more than once (:func:`repair_table`). Rows removed either way are
  never lost: they are appended to ``<table>.duplicates.csv`` beside it.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import subprocess
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd

from ..io import atomic_write
from ..version import __version__

#: provenance columns of every row: ``build`` is the build mode of the compiled kernels ("fast" or
#: "reproducible", :func:`smoe_core.render.build.build_mode`) and ``cpu_capability`` the instruction set of
#: PyTorch's CPU kernels ("AVX512", "AVX2", "DEFAULT"; ``ATEN_CPU_CAPABILITY``), the two things besides the code
#: and the seed that change the last bits of a result (README "Reproducible builds")
META_COLUMNS = ("package_version", "git_commit", "preset", "seed", "backend", "build", "cpu_capability", "date")


def numeric_environment() -> dict:
    """{build, cpu_capability} of this process (:data:`META_COLUMNS`)."""
    import torch

    from ..render.build import build_mode

    return dict(build=build_mode(), cpu_capability=torch.backends.cpu.get_cpu_capability())


#: the distributions whose versions decide a result's last bits (recorded in every manifest.json, ``software``)
NUMERIC_DISTRIBUTIONS = ("torch", "numpy", "scipy", "scikit-image", "pillow", "pandas", "bm3d", "constriction",
                         "lpips", "stlpips-pytorch", "dask")


def software_versions() -> dict:
    """{python, glibc, compiler, and the version of each of :data:`NUMERIC_DISTRIBUTIONS` (None if absent)}: what,
    besides the code, the build and the CPU, a reproduction needs the same (README "Reproducible builds")."""
    import platform
    from importlib import metadata

    from ..render.build import compiler_version

    out = dict(python=platform.python_version(), glibc="-".join(platform.libc_ver()), compiler=compiler_version())
    for name in NUMERIC_DISTRIBUTIONS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


#: the /proc/cpuinfo fields that name a CPU model (:func:`cpu_identity`)
CPUINFO_FIELDS = (("vendor_id", "vendor"), ("cpu family", "family"), ("model", "model"), ("model name", "model_name"),
                  ("stepping", "stepping"))


def cpu_identity(cpuinfo: str | None = None) -> dict:
    """{vendor, family, model, model_name, stepping, flags}: the CPU this process runs on, from the first processor
    of Linux's ``/proc/cpuinfo`` (``cpuinfo``: its text, for tests); ``flags`` is the first 12 hex digits of the
    SHA-256 of the sorted feature flags, so two machines whose hypervisors expose different instruction sets differ.
    Libraries below our code pick their arithmetic by these (MKL's vector math behind ``torch.exp`` even under
    ``MKL_CBWR=COMPATIBLE``: :mod:`smoe_core.studies.reproducibility`), so exact agreement of a reproducible run is
    claimed for the same identity only. Elsewhere (no ``/proc/cpuinfo``): {"model_name": platform.processor()}."""
    import hashlib
    import platform

    if cpuinfo is not None and not isinstance(cpuinfo, str):
        raise TypeError(f"cpuinfo must be the text of /proc/cpuinfo or None, got {type(cpuinfo).__name__}")
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return dict(model_name=platform.processor() or platform.machine())
    first: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if first:
                break
            continue
        key, sep, value = line.partition(":")
        if sep:
            first.setdefault(key.strip(), value.strip())
    out = {name: first.get(field) for field, name in CPUINFO_FIELDS}
    flags = " ".join(sorted(first.get("flags", "").split()))
    out["flags"] = hashlib.sha256(flags.encode()).hexdigest()[:12] if flags else None
    return out


def git_commit(path: Path | None = None) -> str:
    """The repository's HEAD commit (with "+dirty" if tracked files outside results/ differ), or "unknown"
    outside a checkout (e.g. a regular ``pip install``). ``path``: a folder in the repository (default: the one
    holding this package)."""
    cwd = Path(path or Path(__file__).resolve().parents[2])
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return "unknown"
        # outputs under results/ do not make the code dirty (a run that clears results/ first is still clean)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)results"], cwd=cwd, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def atomic_write_text(path: Path, text: str) -> Path:
    """``text`` (UTF-8) written atomically (:func:`smoe_core.io.atomic_write`)."""
    return atomic_write(path, text.encode("utf-8"))


def atomic_write_csv(df: pd.DataFrame, path: Path) -> Path:
    """``df`` as CSV (no index) written atomically (:func:`smoe_core.io.atomic_write`)."""
    return atomic_write(path, df.to_csv(index=False).encode("utf-8"))


def rows_in_item_order(df: pd.DataFrame, keys: list[tuple], key_columns) -> pd.DataFrame:
    """``df`` with the rows whose key (``key_columns`` as strings) is one of ``keys`` moved, in the order of
    ``keys`` (the rows of one key keep their order), behind the other rows, which keep theirs: the table a serial
    run that appended the rows of ``keys`` one by one would have written. The index is ``df``'s, permuted."""
    rank = {k: i for i, k in enumerate(keys)}
    row_rank = [rank.get(k) for k in _row_keys(df, key_columns)]
    old = [i for i, r in enumerate(row_rank) if r is None]
    new = sorted((i for i, r in enumerate(row_rank) if r is not None), key=lambda i: (row_rank[i], i))
    return df.iloc[old + new]


# ---------------------------------------------------------------------- the results folder's lock
LOCK_NAME = ".smoe-results.lock"


class ResultsInUse(RuntimeError):
    """Another process holds the lock of a results folder (:func:`results_lock`)."""

    def __init__(self, folder: Path, holder: str):
        self.folder, self.holder = Path(folder), holder
        super().__init__(f"results folder {folder} is in use by another run ({holder}); wait for it to finish, "
                         "or pass --wait to wait for it")


def _lock_holder(path: Path) -> str:
    """What the lock file says about the process holding it: "pid N, since ..."."""
    for _ in range(20):  # the holder writes its pid right after taking the lock
        try:
            info = json.loads(path.read_text() or "null")
        except (OSError, ValueError):
            info = None
        if isinstance(info, dict) and "pid" in info:
            since = f", since {info['since']}" if info.get("since") else ""
            return f"pid {info['pid']}{since}"
        time.sleep(0.05)
    return "pid unknown"


@contextlib.contextmanager
def results_lock(folder, *, wait: bool = False, on_wait: Callable[[str], None] | None = None):
    """Holds the exclusive lock of results folder ``folder`` (created if missing) for the ``with`` block.

    When another process holds it: raises :class:`ResultsInUse` at once, or with ``wait=True`` calls
    ``on_wait(holder)`` and blocks until it is free. The lock file ``.smoe-results.lock`` records the holder's
    pid; it stays in the folder (removing it would let two runs lock two different files).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise OSError(exc.errno, f"cannot lock results folder {folder} ({exc.strerror})") from exc
            holder = _lock_holder(path)
            if not wait:
                raise ResultsInUse(folder, holder) from None
            if on_wait is not None:
                on_wait(holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        info = dict(pid=os.getpid(), since=_dt.datetime.now().isoformat(timespec="seconds"))
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


# ---------------------------------------------------------------------- duplicate rows
def _row_keys(df: pd.DataFrame, key_columns) -> list[tuple]:
    return [tuple(str(v) for v in row) for row in df[list(key_columns)].itertuples(index=False)]


def _writes(df: pd.DataFrame, key_columns) -> list[list[int]]:
    """The rows of ``df`` grouped into writes: one ``add_rows`` call appends the rows of one item at once, with
    one date, so a write is a run of consecutive rows with the same key and date. Two writes of the same item in
    the same second (two runs racing) run together; such a run is split again when it is made of equal
    consecutive chunks (the same labels: every column that is not a float, date or provenance column)."""
    keys = _row_keys(df, key_columns)
    dates = df["date"].astype(str).tolist() if "date" in df.columns else [""] * len(df)
    labels = [c for c in df.columns if c not in META_COLUMNS and not pd.api.types.is_float_dtype(df[c])]
    lab = [tuple(str(v) for v in row) for row in df[labels].itertuples(index=False)] if labels else [()] * len(df)
    runs: list[list[int]] = []
    for i in range(len(df)):
        if runs and keys[runs[-1][-1]] == keys[i] and dates[runs[-1][-1]] == dates[i]:
            runs[-1].append(i)
        else:
            runs.append([i])
    out = []
    for run in runs:
        n = len(run)
        for size in range(1, n // 2 + 1):  # the shortest chunk that repeats through the whole run
            if n % size == 0 and all(lab[run[j]] == lab[run[j % size]] for j in range(n)):
                out.extend(run[k:k + size] for k in range(0, n, size))
                break
        else:
            out.append(run)
    return out


def repair_table(path, key_columns) -> int:
    """Makes the table at ``path`` hold each key (``key_columns``) once: of several writes of one key (module
    docstring), the last is kept and the others are appended to ``<table>.duplicates.csv``. Returns the number
    of rows moved; ValueError when the table lacks a key column (it cannot tell its configurations apart)."""
    path = Path(path)
    if not path.is_file():
        return 0
    df = pd.read_csv(path)
    if df.empty:
        return 0
    missing = [k for k in key_columns if k not in df.columns]
    if missing:
        raise ValueError(f"cannot check {path} for duplicate rows: it has no column {', '.join(missing)} (written "
                         "by another version?); move it away to recompute it")
    keys = _row_keys(df, key_columns)
    last: dict[tuple, int] = {}
    writes = _writes(df, key_columns)
    for w, rows in enumerate(writes):
        last[keys[rows[0]]] = w
    drop = [i for w, rows in enumerate(writes) if last[keys[rows[0]]] != w for i in rows]
    if drop:
        _set_aside(path, df.iloc[drop])
        atomic_write_csv(df.drop(index=df.index[drop]).reset_index(drop=True), path)
        warnings.warn(f"{path}: {len(drop)} duplicate row(s) of {len({keys[i] for i in drop})} configuration(s) "
                      f"moved to {duplicates_path(path).name} (the latest row(s) of each kept)", stacklevel=2)
    return len(drop)


def duplicates_path(path) -> Path:
    """Where the rows removed from table ``path`` as duplicates go: ``<table>.duplicates.csv``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.duplicates.csv")


def _set_aside(path: Path, rows: pd.DataFrame) -> None:
    dup = duplicates_path(path)
    old = pd.read_csv(dup) if dup.is_file() else None
    atomic_write_csv(rows if old is None else pd.concat([old, rows], ignore_index=True), dup)


class ResultsStore:
    """Tables and figures of one notebook run: ``root/preset/notebook/``."""

    def __init__(self, root, notebook: str, preset: str, *, seed: int = 0, backend: str = "tiled",
                 parameters: dict | None = None):
        self.dir = Path(root) / preset / notebook
        self.dir.mkdir(parents=True, exist_ok=True)
        self.meta = dict(package_version=__version__, git_commit=git_commit(), preset=preset, seed=int(seed),
                         backend=backend, **numeric_environment())
        self.parameters = dict(parameters or {})
        import torch

        manifest = dict(self.meta, notebook=notebook, parameters=self.parameters, software=software_versions(),
                        cpu=cpu_identity(), torch_threads=torch.get_num_threads(),
                        written=_dt.datetime.now().isoformat(timespec="seconds"))
        atomic_write_text(self.dir / "manifest.json", json.dumps(manifest, indent=2, default=str) + "\n")

    def path(self, name: str, suffix: str = ".csv") -> Path:
        return self.dir / f"{name}{suffix}"

    def table(self, name: str) -> pd.DataFrame:
        p = self.path(name)
        return pd.read_csv(p) if p.exists() else pd.DataFrame()

    def add_rows(self, name: str, rows: Iterable[dict], replace_keys=None) -> pd.DataFrame:
        """Appends rows (with the run's metadata columns) to table ``name``; returns the whole table. With
        ``replace_keys`` (key columns), rows already in the table with the key of a new row are replaced (moved
        to ``<table>.duplicates.csv``), so a configuration is never in the table twice."""
        date = _dt.datetime.now().isoformat(timespec="seconds")
        new = pd.DataFrame([dict(r, **self.meta, date=date) for r in rows])
        if not self.path(name).exists():
            df = new
        else:
            old = self.table(name)
            if replace_keys is not None and len(old) and len(new) and all(k in old.columns for k in replace_keys):
                fresh = set(_row_keys(new, replace_keys))
                stale = [k in fresh for k in _row_keys(old, replace_keys)]
                if any(stale):
                    _set_aside(self.path(name), old[stale])
                    old = old[[not s for s in stale]]
            df = pd.concat([old, new], ignore_index=True)
        atomic_write_csv(df, self.path(name))
        return df

    def write_table(self, name: str, df: pd.DataFrame, with_meta: bool = True) -> Path:
        """Writes a whole table (a derived one, e.g. ours beside the paper's)."""
        if with_meta:
            df = df.assign(**self.meta, date=_dt.datetime.now().isoformat(timespec="seconds"))
        return atomic_write_csv(df, self.path(name))

    def done_keys(self, name: str, key_columns) -> set[tuple]:
        """The keys of table ``name``'s finished rows. A run from a clean commit does not count rows that name an
        uncommitted tree (``git_commit`` ending in ``+dirty``: no commit reproduces them) as finished, so
        :meth:`run_grid` redoes them and replaces them with rows that name its commit; a run from an uncommitted
        tree keeps them (its own rows would be ``+dirty`` again)."""
        df = self.table(name)
        if df.empty or any(k not in df.columns for k in key_columns):
            return set()
        if "git_commit" in df.columns and not str(self.meta["git_commit"]).endswith("+dirty"):
            df = df[~df["git_commit"].astype(str).str.endswith("+dirty")]
        return {tuple(str(v) for v in row) for row in df[list(key_columns)].itertuples(index=False)}

    def run_grid(self, name: str, items: Iterable[dict], fn: Callable[[dict], dict | list[dict]],
                 key_columns, *, progress: bool = True, workers: int | None = None, scheduler=None) -> pd.DataFrame:
        """Runs ``fn(item)`` for every item not yet in table ``name`` (by ``key_columns``; an item whose key
        repeats an earlier item's runs once), appending its row(s) as soon as it finishes; returns the table.
        The table is first repaired of duplicate keys (:func:`repair_table`). ``fn`` returns a row dict or a list of
        them. With ``workers``/``scheduler`` the items run on Dask (:func:`smoe_core.parallel.run_tasks`)."""
        from ..parallel import run_tasks, uses_dask

        items = list(items)
        repair_table(self.path(name), key_columns)
        done = self.done_keys(name, key_columns)
        todo, todo_keys, seen = [], [], set(done)
        for it in items:  # each key once, even if ``items`` repeats one
            key = tuple(str(it[k]) for k in key_columns)
            if key not in seen:
                seen.add(key)
                todo.append(it)
                todo_keys.append(key)

        def save(i, rows):
            rows = [rows] if isinstance(rows, dict) else list(rows)
            self.add_rows(name, [dict({k: todo[i][k] for k in key_columns}, **r) for r in rows],
                          replace_keys=key_columns)

        run_tasks(fn, todo, workers=workers, scheduler=scheduler, progress=progress, desc=name, on_result=save,
                  threads_per_task=None if not workers and scheduler is None else 1)
        df = self.table(name)
        if todo and uses_dask(workers, scheduler):  # Dask saves rows as they finish: put them in the items' order
            ordered = rows_in_item_order(df, todo_keys, key_columns)  # as a serial run appends them
            if not ordered.index.equals(df.index):
                df = ordered.reset_index(drop=True)
                atomic_write_csv(df, self.path(name))
        return df

    def save_figure(self, fig, name: str, dpi: int = 120) -> Path:
        return save_figure(fig, self.path(name, ".png"), dpi)


def save_figure(fig, path, dpi: int = 120) -> Path:
    """Writes ``fig`` to the PNG ``path`` atomically (a temporary file renamed into place) and closes it."""
    import matplotlib.pyplot as plt

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    os.replace(tmp, p)
    plt.close(fig)
    return p
