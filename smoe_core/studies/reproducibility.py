"""Does a results folder come back? A fresh run's tables against committed ones, column by column, with the
machine's own measurements (times, memory, load, file checksums) set apart: the check behind issue 12's item 5
("the committed numbers do not all come back on another machine") and README "Reproducible builds".

- :func:`measured_columns`: the columns of a table that measure the machine rather than the method
  (:data:`MEASURED_COLUMN_PATTERNS`: wall and CPU times, milliseconds, peak memory and the ratios built on them,
  the load average, a checkpoint's SHA-256, which covers its timings) and the provenance columns that name the
  run rather than its numbers (``git_commit``, ``date``, ``package_version``). :data:`MEASURED_ROWS` and
  :data:`MEASURED_TABLE_COLUMNS`: rows and columns built on a timing (a claim about which method is fastest, a
  rank by time).
- :func:`compare_tables`, :func:`compare_folders`: every other cell must agree: text exactly, numbers within
  ``rtol`` / ``atol`` (NaN only where the other has NaN). The answer is one row per disagreeing column (empty
  when the folders agree), with the largest difference and how many rows differ.
- :func:`software_mismatches`: the recorded software (``manifest.json``'s ``software``,
  :func:`smoe_core.studies.results.software_versions`) against this process's. Exact agreement is claimed only
  for the same versions of the numeric libraries, compiler and glibc (a new numpy or compiler may round
  differently), on any x86-64 CPU, in the reproducible environment (:data:`smoe_core.render.build.REPRODUCIBLE_ENV`).

Tolerance (:data:`SMOKE_TOLERANCE`): zero. The committed ``results/smoke`` tables were written by ``smoe reproduce
--preset smoke --build reproducible``, and a fresh run of that command reproduces them bit for bit (measured here:
two runs; and one with libm's FMA variants, OpenBLAS's SkylakeX kernels and numpy's AVX-512 loops, which moved
Fig. 7's RBF gaps by up to 0.006 dB until the reproducible environment pinned them). The fast build makes no such
claim: its numbers follow the CPU (README).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .results import software_versions

#: regular expressions (searched in a column name) of columns that measure the machine
MEASURED_COLUMN_PATTERNS = (r"seconds", r"(^|_)ms($|_)", r"(^|_)time_s($|_)", r"peak_mb", r"memory_ratio",
                            r"speedup", r"load_avg", r"sha256")
#: provenance columns that name the run, not its numbers
RUN_COLUMNS = ("git_commit", "date", "package_version")
#: rows built on a timing: table key ("notebook/table") -> {column: value}
MEASURED_ROWS = {"edge_aligned/paper_claims_side_by_side": {"figure": "Fig. 6"}}
#: columns of one table built on a timing: table key -> column names
MEASURED_TABLE_COLUMNS = {"edge_aligned/fig6_time_to_convergence": ("rank",)}
#: (rtol, atol) of the smoke-preset check in the reproducible environment: exact
SMOKE_TOLERANCE = (0.0, 0.0)
#: the columns of :func:`compare_folders`' answer
DIFFERENCE_COLUMNS = ("table", "column", "kind", "max_abs_difference", "rows_differing", "rows")


def measured_columns(columns) -> list[str]:
    """The columns (of ``columns``) that measure the machine or name the run (module docstring)."""
    return [c for c in columns if c in RUN_COLUMNS or any(re.search(p, str(c)) for p in MEASURED_COLUMN_PATTERNS)]


def comparable_rows(df: pd.DataFrame, key: str) -> pd.DataFrame:
    """``df`` without the rows :data:`MEASURED_ROWS` lists for table ``key``."""
    drop = np.zeros(len(df), dtype=bool)
    for column, value in MEASURED_ROWS.get(key, {}).items():
        if column in df.columns:
            drop |= (df[column] == value).to_numpy()
    return df.loc[~drop].reset_index(drop=True)


def compare_tables(fresh: pd.DataFrame, committed: pd.DataFrame, key: str = "", *, rtol: float = 0.0,
                   atol: float = 0.0) -> list[dict]:
    """The columns where ``fresh`` and ``committed`` disagree (module docstring): one dict per column, in
    :data:`DIFFERENCE_COLUMNS`; ``kind`` is "columns" (different column sets), "rows" (different row counts),
    "numeric" or "text"."""
    if rtol < 0 or atol < 0:
        raise ValueError(f"rtol and atol must be >= 0, got {rtol} and {atol}")
    fresh, committed = comparable_rows(fresh, key), comparable_rows(committed, key)
    out = []
    if set(fresh.columns) != set(committed.columns):
        extra = sorted(set(fresh.columns) ^ set(committed.columns))
        out.append(dict(table=key, column=" ".join(map(str, extra)), kind="columns", max_abs_difference=np.nan,
                        rows_differing=np.nan, rows=len(fresh)))
    if len(fresh) != len(committed):
        out.append(dict(table=key, column="", kind="rows", max_abs_difference=np.nan,
                        rows_differing=abs(len(fresh) - len(committed)), rows=len(fresh)))
        return out
    skip = set(measured_columns(fresh.columns)) | set(MEASURED_TABLE_COLUMNS.get(key, ()))
    for c in [c for c in fresh.columns if c in committed.columns and c not in skip]:
        a, b = fresh[c], committed[c]
        if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
            x, y = a.to_numpy(np.float64), b.to_numpy(np.float64)
            nan = np.isnan(x) | np.isnan(y)
            bad = (np.isnan(x) != np.isnan(y)) | (~nan & ~np.isclose(x, y, rtol=rtol, atol=atol, equal_nan=False))
            if bad.any():
                d = np.abs(x - y)[~nan]
                out.append(dict(table=key, column=c, kind="numeric", max_abs_difference=float(d.max()) if d.size
                                else np.nan, rows_differing=int(bad.sum()), rows=len(x)))
        else:
            na, nb = a.isna().to_numpy(), b.isna().to_numpy()
            bad = (na != nb) | (~na & ~nb & (a.astype(object).astype(str).to_numpy() != b.astype(object).astype(str)
                                            .to_numpy()))
            if bad.any():
                out.append(dict(table=key, column=c, kind="text", max_abs_difference=np.nan,
                                rows_differing=int(bad.sum()), rows=len(a)))
    return out


def table_keys(folder) -> list[str]:
    """"notebook/table" of every results table under ``folder`` (a preset's folder, e.g. results/smoke), without
    the ``*.duplicates.csv`` files."""
    folder = Path(folder)
    return sorted(f"{p.parent.name}/{p.stem}" for p in folder.glob("*/*.csv") if not p.name.endswith(".duplicates.csv"))


def compare_folders(fresh, committed, *, rtol: float = 0.0, atol: float = 0.0) -> pd.DataFrame:
    """Every table of preset folder ``committed`` against the same table in ``fresh`` (a table missing from
    ``fresh`` is a difference of kind "missing"; tables only in ``fresh`` are ignored). Empty when they agree."""
    fresh, committed = Path(fresh), Path(committed)
    if not committed.is_dir():
        raise ValueError(f"committed must be a results folder of one preset, got {committed} (not a folder)")
    rows = []
    for key in table_keys(committed):
        f = fresh / f"{key}.csv"
        if not f.is_file():
            rows.append(dict(table=key, column="", kind="missing", max_abs_difference=np.nan, rows_differing=np.nan,
                             rows=np.nan))
            continue
        rows += compare_tables(pd.read_csv(f), pd.read_csv(committed / f"{key}.csv"), key, rtol=rtol, atol=atol)
    return pd.DataFrame(rows, columns=list(DIFFERENCE_COLUMNS))


def recorded_software(folder) -> dict:
    """notebook -> the ``software`` its manifest.json records (absent: {}), for a preset folder."""
    out = {}
    for m in sorted(Path(folder).glob("*/manifest.json")):
        out[m.parent.name] = json.loads(m.read_text()).get("software", {})
    return out


def software_mismatches(folder, current: dict | None = None) -> list[str]:
    """"notebook: name recorded X, here Y" for every recorded software version that differs from this process's
    (a manifest without ``software`` is one mismatch: it cannot be checked)."""
    current = software_versions() if current is None else current
    out = []
    for notebook, recorded in recorded_software(folder).items():
        if not recorded:
            out.append(f"{notebook}: no software versions recorded")
        for name, version in recorded.items():
            if current.get(name) != version:
                out.append(f"{notebook}: {name} recorded {version}, here {current.get(name)}")
    return out
