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
  differently), in the reproducible environment (:data:`smoe_core.render.build.REPRODUCIBLE_ENV`).
- :func:`cpu_mismatches`: the recorded CPU (``manifest.json``'s ``cpu``, :func:`smoe_core.studies.results.cpu_identity`)
  against this one. Every table is claimed exactly on the same CPU model; on another, only
  :data:`CROSS_CPU_TABLES`.

Tolerance (:data:`SMOKE_TOLERANCE`): zero. The committed ``results/smoke`` tables were written by ``smoe reproduce
--preset smoke --build reproducible``, and a fresh run of that command on the same machine reproduces them bit for
bit (measured: two runs; and one with libm's FMA variants, OpenBLAS's SkylakeX kernels and numpy's AVX-512 loops,
which moved Fig. 7's RBF gaps by up to 0.006 dB until the reproducible environment pinned them). The fast build
makes no such claim: its numbers follow the CPU (README).

**Across CPUs the reproducible environment is not exact** (measured in session 20). The fixture written on an AMD
EPYC (AVX-512) was rerun from its own commit (61914cf, ``as_smoe_segments``) and from a later one (e028a2a, every
notebook) on an Intel Xeon (family 6 model 167, AVX-512 with FP16 / BF16), same software: 58 of the 74 tables
differed, from 1e-9 dB (r_smoe's denoising) to 3.7 dB (Fig. 7's RBF gaps, an optimization whose discrete choices
amplify the first difference) and 2 kernels in counts. The untrained N-SMoE x4 network's validation PSNR already
differed by 1.8e-9 dB while the x2 one's was equal, so the difference enters in single values, not everywhere.
The cause we found is MKL's vector math (VML), which PyTorch calls for ``exp``, ``log``, ``erf``, ``tanh``, ...
on CPU tensors whatever ``ATEN_CPU_CAPABILITY`` says: on the Intel machine ``torch.exp`` of a million floats gives
other bits under ``MKL_CBWR`` AVX2, AVX512 / AUTO and COMPATIBLE (= SSE4_2 = SSE2 there) and differs from libm's
``expf`` in 218 of 20,000 values, and ``python -m smoe_core.studies.determinism fingerprint fit as_smoe`` (at
14a8054, whose AMD numbers README "Reproducible builds" gives) moves with ``MKL_CBWR`` alone (AS-SMoE
initialization 16.71 / 16.73 / 16.85 dB under AVX2 / COMPATIBLE / AVX512), though the AS-SMoE initialization makes
no BLAS, LAPACK or oneDNN call (``MKL_VERBOSE``, ``ONEDNN_VERBOSE``: none). None of the Intel branches gives the AMD
machine's COMPATIBLE result (fit 33.1337 dB, 829 kernels; Intel: 33.1553 dB, 832), so MKL's "compatible" path is
not the same code on the two vendors. Not proven: that VML is the only difference (that would need the AMD machine
again). What does agree across the two CPUs (:data:`CROSS_CPU_TABLES`) is what no VML call reaches: segment counts
and sizes, the edge paper's stages and expert iterations, the JPEG / JPEG 2000 baselines, the paper-protocol
initializations.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .results import cpu_identity, software_versions

#: regular expressions (searched in a column name) of columns that measure the machine
MEASURED_COLUMN_PATTERNS = (r"seconds", r"(^|_)ms($|_)", r"(^|_)time_s($|_)", r"peak_mb", r"memory_ratio",
                            r"speedup", r"load_avg", r"sha256", r"_vs_serial", r"processes_used")
#: provenance columns that name the run, not its numbers
RUN_COLUMNS = ("git_commit", "date", "package_version")
#: rows built on a timing: table key ("notebook/table") -> {column: value}
MEASURED_ROWS = {"edge_aligned/paper_claims_side_by_side": {"figure": "Fig. 6"}}
#: columns of one table built on a timing: table key -> column names
MEASURED_TABLE_COLUMNS = {"edge_aligned/fig6_time_to_convergence": ("rank",)}
#: the smoke tables measured to agree exactly across two CPUs (AMD EPYC and Intel Xeon, both AVX-512) in the
#: reproducible environment (module docstring): on a CPU other than the fixture's, these are the claim
CROSS_CPU_TABLES = ("as_smoe_segments/fig4_segment_counts", "as_smoe_segments/fig4_segment_sizes",
                    "coding/baseline_points", "coding/prefilter", "coding/smoe_points_in_range",
                    "compare_initializers/table5_paper_protocol", "edge_aligned/fig2_stage_counts",
                    "edge_aligned/fig3_expert_iterations", "edge_aligned/fig3_summary")
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


def compare_folders(fresh, committed, *, rtol: float = 0.0, atol: float = 0.0, tables=None) -> pd.DataFrame:
    """Every table of preset folder ``committed`` (or only those of ``tables``, keys "notebook/table", each of which
    must be in ``committed``) against the same table in ``fresh`` (a table missing from ``fresh`` is a difference of
    kind "missing"; tables only in ``fresh`` are ignored). Empty when they agree."""
    fresh, committed = Path(fresh), Path(committed)
    if not committed.is_dir():
        raise ValueError(f"committed must be a results folder of one preset, got {committed} (not a folder)")
    keys = table_keys(committed)
    if tables is not None:
        tables = [tables] if isinstance(tables, str) else tables
        if not isinstance(tables, (list, tuple, set, frozenset)) or not all(isinstance(t, str) for t in tables):
            raise ValueError('tables must be a table key ("notebook/table") or a list of them')
        absent = [t for t in tables if t not in keys]
        if absent:
            raise ValueError(f"tables: not in {committed}: {', '.join(absent)}")
        keys = [k for k in keys if k in tables]
    rows = []
    for key in keys:
        f = fresh / f"{key}.csv"
        if not f.is_file():
            rows.append(dict(table=key, column="", kind="missing", max_abs_difference=np.nan, rows_differing=np.nan,
                             rows=np.nan))
            continue
        rows += compare_tables(pd.read_csv(f), pd.read_csv(committed / f"{key}.csv"), key, rtol=rtol, atol=atol)
    return pd.DataFrame(rows, columns=list(DIFFERENCE_COLUMNS))


def recorded_manifests(folder) -> dict:
    """notebook -> its manifest.json (a dict), for a preset folder."""
    if not Path(folder).is_dir():
        raise ValueError(f"folder must be a results folder of one preset, got {folder} (not a folder)")
    return {m.parent.name: json.loads(m.read_text()) for m in sorted(Path(folder).glob("*/manifest.json"))}


def recorded_software(folder) -> dict:
    """notebook -> the ``software`` its manifest.json records (absent: {}), for a preset folder."""
    return {notebook: manifest.get("software", {}) for notebook, manifest in recorded_manifests(folder).items()}


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


def cpu_mismatches(folder, current: dict | None = None) -> list[str]:
    """"notebook: CPU recorded X, here Y" for every manifest of preset folder ``folder`` whose recorded ``cpu``
    (:func:`smoe_core.studies.results.cpu_identity`) differs from ``current`` (default: this CPU's); a manifest
    without one is a mismatch too (it cannot be checked)."""
    current = cpu_identity() if current is None else current
    out = []
    for notebook, manifest in recorded_manifests(folder).items():
        recorded = manifest.get("cpu")
        if not recorded:
            out.append(f"{notebook}: no CPU recorded")
        elif recorded != current:
            out.append(f"{notebook}: CPU recorded {recorded}, here {current}")
    return out


# ---------------------------------------------------------------------- the spread of repeated runs
#: the claims tables and how to read them: table key -> (key columns, margin column, verdict column)
CLAIM_TABLES = {
    "compare_initializers/table3_claim": (("image", "variant", "protocol"), "margin_db", "claim_holds"),
    "compare_initializers/table3_row2_claim": (("image", "variant", "protocol"), "margin_db", "claim_holds"),
    "compare_initializers/table5_ranking": (("image", "protocol"), "margin_db", "beats_all"),
    "edge_aligned/paper_claims_side_by_side": (("image", "figure", "claim"), "difference", "holds"),
    "coding/claims": (("claim", "image"), "value", "holds"),
    "n_smoe/targets": (("criterion",), "measured", "holds"),
}


def _verdict(v) -> float:
    """True / False / NaN from a verdict cell (bool, "True" / "False" text, or missing)."""
    if isinstance(v, (bool, np.bool_)):
        return float(v)
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return float(v.strip().lower() == "true")
    return np.nan


def value_spread(runs: dict, *, keys: dict | None = None) -> pd.DataFrame:
    """How far each number of a preset's tables moves over repeated runs under perturbations (``runs``: name ->
    preset folder, e.g. {"fast, 2 threads": "x/quick", "reproducible": "y/quick"}; every folder ran the same
    notebooks from one commit; a table is compared over the runs that have it, if two or more). One row per
    (table, numeric column) with machine measurements set apart (:func:`measured_columns`): the runs compared,
    rows compared (rows are matched by position; tables whose row counts differ between runs are reported with
    ``rows`` NaN), and the largest and median per-row range (max - min over the runs)."""
    if len(runs) < 2:
        raise ValueError(f"runs must name at least two results folders, got {len(runs)}")
    folders = {name: Path(f) for name, f in runs.items()}
    for name, f in folders.items():
        if not f.is_dir():
            raise ValueError(f"runs[{name!r}] is not a folder: {f}")
    keys = sorted(set.union(*(set(table_keys(f)) for f in folders.values())))
    out = []
    for key in keys:
        frames = [comparable_rows(pd.read_csv(f / f"{key}.csv"), key) for f in folders.values()
                  if (f / f"{key}.csv").is_file()]
        if len(frames) < 2:
            continue
        skip = set(measured_columns(frames[0].columns)) | set(MEASURED_TABLE_COLUMNS.get(key, ()))
        cols = [c for c in frames[0].columns if c not in skip and all(c in fr.columns for fr in frames)
                and all(pd.api.types.is_numeric_dtype(fr[c]) for fr in frames)]
        same_rows = len({len(fr) for fr in frames}) == 1
        for c in cols:
            if not same_rows:
                out.append(dict(table=key, column=c, runs=len(frames), rows=np.nan, max_range=np.nan,
                                median_range=np.nan))
                continue
            m = np.stack([fr[c].to_numpy(np.float64) for fr in frames])
            ok = ~np.isnan(m).any(0)
            rng = (m.max(0) - m.min(0))[ok] if ok.any() else np.array([])
            out.append(dict(table=key, column=c, runs=len(frames), rows=int(ok.sum()),
                            max_range=float(rng.max()) if rng.size else np.nan,
                            median_range=float(np.median(rng)) if rng.size else np.nan))
    return pd.DataFrame(out, columns=["table", "column", "runs", "rows", "max_range", "median_range"])


def claim_spread(runs: dict, reference: str | None = None, claims: dict | None = None) -> pd.DataFrame:
    """Every paper claim of the preset folders ``runs`` (name -> folder; see :func:`value_spread`) under the
    perturbations they stand for: one row per claim (table and its key columns, joined as ``item``), the margin of
    the ``reference`` run (default: the first), the lowest and highest margin over the runs, their range
    (``margin_spread``), the verdict of every run (``verdicts``: "name=True; ..."), and ``status``:

    - "holds" / "fails": the same verdict in every run where it was decided;
    - "undecided": the runs disagree (the claim's margin lies inside the spread the perturbations cause);
    - "not decided": no run gives a verdict (a claim without a verdict, e.g. one the paper gives no number for).

    Claims present in only some runs are compared over those; a claims table that only one run has is left out
    (one run has no spread to report). ``claims``: the claims tables (default :data:`CLAIM_TABLES`)."""
    if len(runs) < 2:
        raise ValueError(f"runs must name at least two results folders, got {len(runs)}")
    claims = CLAIM_TABLES if claims is None else claims
    reference = reference or next(iter(runs))
    if reference not in runs:
        raise ValueError(f"reference must be one of the runs {list(runs)}, got {reference!r}")
    out = []
    for key, (key_cols, margin, verdict) in claims.items():
        per_run = {}
        for name, folder in runs.items():
            path = Path(folder) / f"{key}.csv"
            if path.is_file():
                df = pd.read_csv(path)
                if all(c in df.columns for c in (*key_cols, margin, verdict)):
                    per_run[name] = df
        if len(per_run) < 2:  # a claims table of one run only (a notebook the other runs left out): no spread
            continue
        items = []
        for df in per_run.values():
            for k in df[list(key_cols)].astype(str).itertuples(index=False):
                if tuple(k) not in items:
                    items.append(tuple(k))
        for item in items:
            margins, verdicts = {}, {}
            for name, df in per_run.items():
                sel = (df[list(key_cols)].astype(str) == pd.Series(item, index=list(key_cols))).all(axis=1)
                if sel.any():
                    row = df.loc[sel].iloc[-1]
                    margins[name] = pd.to_numeric(pd.Series([row[margin]]), errors="coerce").iloc[0]
                    verdicts[name] = _verdict(row[verdict])
            decided = [v for v in verdicts.values() if not np.isnan(v)]
            status = ("not decided" if not decided else "holds" if all(decided) else
                      "fails" if not any(decided) else "undecided")
            vals = np.array([m for m in margins.values() if not pd.isna(m)], dtype=np.float64)
            out.append(dict(table=key, item=" / ".join(item), margin=margins.get(reference, np.nan),
                            margin_min=float(vals.min()) if vals.size else np.nan,
                            margin_max=float(vals.max()) if vals.size else np.nan,
                            margin_spread=float(vals.max() - vals.min()) if vals.size else np.nan,
                            runs=len(verdicts),
                            verdicts="; ".join(f"{n}={'-' if np.isnan(v) else bool(v)}" for n, v in verdicts.items()),
                            status=status))
    return pd.DataFrame(out, columns=["table", "item", "margin", "margin_min", "margin_max", "margin_spread", "runs",
                                      "verdicts", "status"])


def run_provenance(runs: dict) -> pd.DataFrame:
    """One row per (run, notebook) of the preset folders ``runs``: the commit, build, PyTorch CPU capability and
    torch thread count their manifests record (None where a manifest predates the field)."""
    rows = []
    for name, folder in runs.items():
        for m in sorted(Path(folder).glob("*/manifest.json")):
            info = json.loads(m.read_text())
            rows.append(dict(run=name, notebook=m.parent.name, git_commit=info.get("git_commit"),
                             build=info.get("build"), cpu_capability=info.get("cpu_capability"),
                             torch_threads=info.get("torch_threads")))
    return pd.DataFrame(rows, columns=["run", "notebook", "git_commit", "build", "cpu_capability", "torch_threads"])


#: the heading of a spread's report fragment when none is given
DEFAULT_SPREAD_TITLE = "runs under perturbations"
#: what the runs of a spread are, when none is said
DEFAULT_SPREAD_ABOUT = "The same notebooks from one commit"


def spread_report(claims: pd.DataFrame, values: pd.DataFrame, provenance: pd.DataFrame, runs: dict, *,
                  title: str = DEFAULT_SPREAD_TITLE, about: str = DEFAULT_SPREAD_ABOUT) -> str:
    """The report fragment of a spread: what was run, how the claims fare under it, and the numbers that move
    most (markdown). ``title`` ends the heading ("How far the numbers move: <title>"); ``about`` says what the
    runs are (the sentence goes on with "run as <the run names>"), e.g. "The quick preset at three seeds on one
    machine"."""
    from .common import markdown_table

    for name, text in (("title", title), ("about", about)):
        if not isinstance(text, str) or not text.strip() or "\n" in text:
            raise ValueError(f"{name} must be one line of text, got {text!r}")
    counts = claims["status"].value_counts()
    names = ", ".join(f"`{n}`" for n in runs)
    lines = [f"## How far the numbers move: {title.strip()}\n",
             f"{about.strip()}, run as {names} "
             "(`python -m smoe_core.studies.reproducibility spread`; machine measurements such as times are set "
             "apart). A claim is **undecided** when its verdict differs between these runs: its margin lies inside "
             "the spread they cause.\n",
             markdown_table(provenance) + "\n",
             "Claims: " + ", ".join(f"{int(counts.get(k, 0))} {k}" for k in ("holds", "fails", "undecided",
                                                                                "not decided")) + ".\n"]
    undecided = claims[claims["status"] == "undecided"]
    if len(undecided):
        lines += ["### Undecided claims\n", markdown_table(undecided.drop(columns=["runs"]), floatfmt=".3f") + "\n"]
    lines += ["### Every claim\n", markdown_table(claims.drop(columns=["runs"]), floatfmt=".3f") + "\n"]
    moved = values[values["max_range"] > 0].sort_values("max_range", ascending=False)
    lines += [f"### Numbers that move ({len(moved)} of {len(values)} columns; the 25 largest ranges)\n",
              markdown_table(moved.head(25), floatfmt=".4g") + "\n"]
    return "\n".join(lines)


# ---------------------------------------------------------------------- command line
def main(argv=None) -> int:
    """``python -m smoe_core.studies.reproducibility compare FRESH COMMITTED`` (exit 1 when they differ) or
    ``... spread NAME=FOLDER NAME=FOLDER ... --out DIR [--title T] [--about A]`` (writes claim_spread.csv,
    value_spread.csv, runs.csv and report.md, which results/REPORT.md includes when DIR is
    results/reproducibility or a folder in it)."""
    import argparse

    from .results import atomic_write_csv, atomic_write_text

    ap = argparse.ArgumentParser(prog="python -m smoe_core.studies.reproducibility", description=main.__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="a fresh preset folder against a committed one")
    c.add_argument("fresh")
    c.add_argument("committed")
    c.add_argument("--rtol", type=float, default=0.0)
    c.add_argument("--atol", type=float, default=0.0)
    s = sub.add_parser("spread", help="claims and values over runs under perturbations")
    s.add_argument("runs", nargs="+", metavar="NAME=FOLDER", help="preset folders of one commit's runs")
    s.add_argument("--out", required=True, help="folder for claim_spread.csv and value_spread.csv")
    s.add_argument("--title", default=DEFAULT_SPREAD_TITLE, help="the report's heading: 'How far the numbers "
                   "move: TITLE'")
    s.add_argument("--about", default=DEFAULT_SPREAD_ABOUT, help="what the runs are (one sentence, before "
                   "'run as NAMES')")
    args = ap.parse_args(argv)
    try:
        if args.command == "compare":
            diff = compare_folders(args.fresh, args.committed, rtol=args.rtol, atol=args.atol)
            print("the folders agree" if diff.empty else diff.to_string(index=False))
            return 0 if diff.empty else 1
        runs = {}
        for spec in args.runs:
            name, sep, folder = spec.partition("=")
            if not sep or not name or not folder:
                raise ValueError(f"runs: expected NAME=FOLDER, got {spec!r}")
            runs[name] = folder
        claims, values, prov = claim_spread(runs), value_spread(runs), run_provenance(runs)
        report = spread_report(claims, values, prov, runs, title=args.title, about=args.about)
        out = Path(args.out)
        atomic_write_csv(claims, out / "claim_spread.csv")
        atomic_write_csv(values, out / "value_spread.csv")
        atomic_write_csv(prov, out / "runs.csv")
        atomic_write_text(out / "report.md", report)
        print(claims["status"].value_counts().to_string())
        return 0
    except ValueError as e:
        print(f"smoe: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
