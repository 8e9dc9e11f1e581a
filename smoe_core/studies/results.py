"""Versioned, resumable experiment results: CSV tables and PNG figures under ``results/<preset>/<notebook>/``.

Every CSV row carries the package version, git commit, preset, seed, backend and date of the run that made
it; ``manifest.json`` records the parameters. Grids of experiments are resumable: ``run_grid`` skips the
items whose key columns are already in the table, and each finished item is appended at once, so an
interrupted run loses at most the item it was working on. Every write goes to a temporary file first and is
then renamed into place, so nothing half-written is ever left behind.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd

from ..version import __version__

META_COLUMNS = ("package_version", "git_commit", "preset", "seed", "backend", "date")


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
                                ":(exclude)results"], cwd=cwd, capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def atomic_write_text(path: Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def atomic_write_csv(df: pd.DataFrame, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


class ResultsStore:
    """Tables and figures of one notebook run: ``root/preset/notebook/``."""

    def __init__(self, root, notebook: str, preset: str, *, seed: int = 0, backend: str = "tiled",
                 parameters: dict | None = None):
        self.dir = Path(root) / preset / notebook
        self.dir.mkdir(parents=True, exist_ok=True)
        self.meta = dict(package_version=__version__, git_commit=git_commit(), preset=preset, seed=int(seed),
                         backend=backend)
        self.parameters = dict(parameters or {})
        manifest = dict(self.meta, notebook=notebook, parameters=self.parameters,
                        written=_dt.datetime.now().isoformat(timespec="seconds"))
        atomic_write_text(self.dir / "manifest.json", json.dumps(manifest, indent=2, default=str) + "\n")

    def path(self, name: str, suffix: str = ".csv") -> Path:
        return self.dir / f"{name}{suffix}"

    def table(self, name: str) -> pd.DataFrame:
        p = self.path(name)
        return pd.read_csv(p) if p.exists() else pd.DataFrame()

    def add_rows(self, name: str, rows: Iterable[dict]) -> pd.DataFrame:
        """Appends rows (with the run's metadata columns) to table ``name``; returns the whole table."""
        date = _dt.datetime.now().isoformat(timespec="seconds")
        new = pd.DataFrame([dict(r, **self.meta, date=date) for r in rows])
        df = pd.concat([self.table(name), new], ignore_index=True) if self.path(name).exists() else new
        atomic_write_csv(df, self.path(name))
        return df

    def write_table(self, name: str, df: pd.DataFrame, with_meta: bool = True) -> Path:
        """Writes a whole table (a derived one, e.g. ours beside the paper's)."""
        if with_meta:
            df = df.assign(**self.meta, date=_dt.datetime.now().isoformat(timespec="seconds"))
        return atomic_write_csv(df, self.path(name))

    def done_keys(self, name: str, key_columns) -> set[tuple]:
        df = self.table(name)
        if df.empty or any(k not in df.columns for k in key_columns):
            return set()
        return {tuple(str(v) for v in row) for row in df[list(key_columns)].itertuples(index=False)}

    def run_grid(self, name: str, items: Iterable[dict], fn: Callable[[dict], dict | list[dict]],
                 key_columns, *, progress: bool = True, workers: int | None = None, scheduler=None) -> pd.DataFrame:
        """Runs ``fn(item)`` for every item not yet in table ``name`` (by ``key_columns``), appending its row(s)
        as soon as it finishes; returns the table. ``fn`` returns a row dict or a list of them. With
        ``workers``/``scheduler`` the items run on Dask (:func:`smoe_core.parallel.run_tasks`)."""
        from ..parallel import run_tasks

        items = list(items)
        done = self.done_keys(name, key_columns)
        todo = [it for it in items if tuple(str(it[k]) for k in key_columns) not in done]

        def save(i, rows):
            rows = [rows] if isinstance(rows, dict) else list(rows)
            self.add_rows(name, [dict({k: todo[i][k] for k in key_columns}, **r) for r in rows])

        run_tasks(fn, todo, workers=workers, scheduler=scheduler, progress=progress, desc=name, on_result=save,
                  threads_per_task=None if not workers and scheduler is None else 1)
        return self.table(name)

    def save_figure(self, fig, name: str, dpi: int = 120) -> Path:
        p = self.path(name, ".png")
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp.png")
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        os.replace(tmp, p)
        return p
