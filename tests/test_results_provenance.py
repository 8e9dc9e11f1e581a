"""Committed results name the commit that made them (issue 12, item 1): no row of a table in results/ may come
from an uncommitted tree (``+dirty``), and every commit a row names must be in the repository's history, so that
checking it out reproduces the row; and no committed quick or paper table may be one the current code no longer
writes, or hold rows of a configuration it no longer runs (checked against results/smoke, which the current code
reproduces exactly: tests/test_reproducibility.py); and every table of a paper notebook names one commit."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"


def result_tables() -> list[Path]:
    out = []
    for path in sorted(RESULTS.rglob("*.csv")):
        with open(path, encoding="utf-8") as f:
            if "git_commit" in f.readline().split(","):
                out.append(path)
    return out


def _commits(path: Path) -> set[str]:
    return set(pd.read_csv(path, usecols=["git_commit"], dtype=str)["git_commit"].dropna())


TABLES = result_tables()


def test_there_are_tables_to_check():
    assert len(TABLES) >= 50 and all(p.stat().st_size > 0 for p in TABLES)


@pytest.mark.parametrize("path", TABLES, ids=lambda p: str(p.relative_to(RESULTS)))
def test_no_row_comes_from_an_uncommitted_tree(path):
    dirty = sorted(c for c in _commits(path) if c.endswith("+dirty"))
    assert not dirty, f"{path.relative_to(ROOT)}: rows from uncommitted trees {dirty}"


def _git(*args) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False).stdout.strip()


def test_every_named_commit_is_in_the_history():
    if _git("rev-parse", "--is-inside-work-tree") != "true" or _git("rev-parse", "--is-shallow-repository") == "true":
        pytest.skip("needs the repository's full history")
    named = set().union(*(_commits(p) for p in TABLES))
    missing = []
    for c in sorted(named):
        sha = c.removesuffix("+dirty")
        if _git("cat-file", "-t", sha) != "commit":
            missing.append(c)
    assert not missing, f"commits named in results/ but not in the history: {missing}"


#: quick / paper tables the smoke preset does not write, and why (a switch the smoke preset leaves off)
PRESET_ONLY_TABLES = {
    "compare_initializers/table3_paper_protocol": "paper_protocol_final: Table III from the paper's random experts",
    "compare_initializers/table3_paper_protocol_side_by_side": "paper_protocol_final, as above",
}
#: configuration columns: their values in a quick / paper table must be values the current code writes
CONFIG_COLUMNS = ("method", "variant", "protocol", "training", "gating", "init", "task")
#: values the smoke preset does not write, and why: (table, column) -> {value: reason}
PRESET_ONLY_VALUES = {
    ("compare_initializers/table3_claim", "protocol"): {"paper (random experts)": "paper_protocol_final"},
    ("compare_initializers/table3_claim_summary", "protocol"): {"paper (random experts)": "paper_protocol_final"},
    ("r_smoe/denoise_runs", "method"): {"smoe S=8": "the notebook's default fusion_models = 8 (smoke: 2)"},
}


def preset_tables() -> list[Path]:
    return [p for preset in ("quick", "paper") for p in sorted((RESULTS / preset).glob("*/*.csv"))
            if not p.name.endswith(".duplicates.csv")]


@pytest.mark.parametrize("path", preset_tables(), ids=lambda p: str(p.relative_to(RESULTS)))
def test_committed_tables_are_tables_the_code_writes(path):
    """Every quick / paper table is one the smoke preset writes too (or is listed in PRESET_ONLY_TABLES), and its
    configuration columns hold only values the smoke preset writes or the preset's own parameters name."""
    import json

    from smoe_core.studies import reproduce

    key = f"{path.parent.name}/{path.stem}"
    smoke = RESULTS / "smoke" / path.parent.name / path.name
    if not smoke.is_file():
        assert key in PRESET_ONLY_TABLES, f"{path.relative_to(RESULTS)}: no current notebook writes this table"
        return
    preset = path.parent.parent.name
    params = json.dumps(reproduce.notebook_parameters(path.parent.name, preset, results_dir=RESULTS))
    ours, current = pd.read_csv(path), pd.read_csv(smoke)
    for c in CONFIG_COLUMNS:
        if c in ours.columns and c in current.columns:
            allowed = set(current[c].dropna().astype(str)) | set(PRESET_ONLY_VALUES.get((key, c), {}))
            stale = {v for v in set(ours[c].dropna().astype(str)) - allowed if json.dumps(v) not in params}
            assert not stale, f"{path.relative_to(RESULTS)}: {c} values no current configuration runs: {sorted(stale)}"


#: paper notebooks whose rows may name more than one commit, and why
PAPER_MULTI_COMMIT = {
    "coding": "its eight trainings resume from state files across sessions (README); each rate point names the commit "
              "that finished its training, and a later run over all four images keeps finished baseline rows",
}


def paper_notebooks() -> list[Path]:
    return sorted(p for p in (RESULTS / "paper").glob("*") if p.is_dir())


@pytest.mark.parametrize("folder", paper_notebooks(), ids=lambda p: p.name)
def test_a_paper_notebooks_rows_name_one_commit(folder):
    """Issue 12, item 1: the paper preset is rerun from a clean commit, one notebook at a time, so every table of a
    paper notebook names the same commit (a rerun in pieces, ``--images``, from one commit included)."""
    if folder.name in PAPER_MULTI_COMMIT:
        pytest.skip(PAPER_MULTI_COMMIT[folder.name])
    tables = [p for p in TABLES if p.parent == folder]
    if not tables:
        pytest.skip("no tables yet: only the state of a run in progress (e.g. n_smoe's training checkpoints)")
    commits = {str(p.relative_to(RESULTS)): sorted(_commits(p)) for p in tables}
    named = set().union(*map(set, commits.values()))
    assert len(named) == 1, f"{folder.relative_to(ROOT)}: rows name {sorted(named)}: {commits}"
