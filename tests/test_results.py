"""Versioned, resumable result tables."""
import json

import pandas as pd

from smoe_core.studies.results import META_COLUMNS, ResultsStore


def test_rows_carry_metadata_and_manifest(tmp_path):
    store = ResultsStore(tmp_path, "nb", "smoke", seed=3, backend="cpu", parameters={"images": ["peppers"]})
    store.add_rows("t", [{"image": "peppers", "psnr": 30.0}])
    df = store.table("t")
    assert set(META_COLUMNS) <= set(df.columns)
    assert df.loc[0, "preset"] == "smoke" and df.loc[0, "seed"] == 3 and df.loc[0, "backend"] == "cpu"
    manifest = json.loads((tmp_path / "smoke" / "nb" / "manifest.json").read_text())
    assert manifest["parameters"] == {"images": ["peppers"]}
    assert not list((tmp_path / "smoke" / "nb").glob(".*tmp*"))


def test_run_grid_resumes_without_redoing(tmp_path):
    store = ResultsStore(tmp_path, "nb", "quick")
    calls = []

    def work(item):
        calls.append(item["k"])
        if item["k"] == 3 and len(calls) < 5:
            raise KeyboardInterrupt  # an interruption in the middle of the grid
        return {"value": item["k"] ** 2}

    items = [{"k": k, "d": 40} for k in range(5)]
    try:
        store.run_grid("g", items, work, ["k", "d"], progress=False)
    except KeyboardInterrupt:
        pass
    assert list(store.table("g")["k"]) == [0, 1, 2]
    df = ResultsStore(tmp_path, "nb", "quick").run_grid("g", items, work, ["k", "d"], progress=False)
    assert calls == [0, 1, 2, 3, 3, 4]
    assert list(df["value"]) == [0, 1, 4, 9, 16]
    assert isinstance(df, pd.DataFrame)


def test_a_clean_run_redoes_rows_of_an_uncommitted_tree(tmp_path):
    """Rows naming a +dirty tree count as finished for another dirty run, not for a clean one, which replaces them
    with rows naming its commit (in place of hand-editing the table)."""
    calls = []

    def work(item):
        calls.append(item["k"])
        return {"value": 10 * item["k"]}

    def store(commit):
        s = ResultsStore(tmp_path, "nb", "paper")
        s.meta["git_commit"] = commit
        return s

    items = [{"k": k} for k in range(3)]
    store("abc1234+dirty").run_grid("g", items[:2], work, ["k"], progress=False)
    store("fed4321").run_grid("g", items[2:], work, ["k"], progress=False)
    store("abc1234+dirty").run_grid("g", items, work, ["k"], progress=False)  # a dirty run: all three are done
    assert calls == [0, 1, 2]
    store("fed4321").run_grid("g", items, work, ["k"], progress=False)
    assert calls == [0, 1, 2, 0, 1]  # k = 2 already names a clean commit
    df = store("fed4321").run_grid("g", items, work, ["k"], progress=False)
    assert calls == [0, 1, 2, 0, 1]
    assert sorted(df["k"]) == [0, 1, 2] and set(df["git_commit"]) == {"fed4321"}
    assert sorted(df["value"]) == [0, 10, 20]


def test_notebook_parameters_images_override_runs_a_preset_in_pieces(tmp_path):
    from smoe_core.studies.reproduce import PRESETS, notebook_parameters

    base = notebook_parameters("compare_initializers", "paper", results_dir=tmp_path)
    piece = notebook_parameters("compare_initializers", "paper", results_dir=tmp_path, images=["peppers"])
    assert piece["images"] == ["peppers"] and len(base["images"]) == 4
    # everything else is the preset's, and the registry itself is not modified
    assert {k: v for k, v in piece.items() if k != "images"} == {k: v for k, v in base.items() if k != "images"}
    assert len(PRESETS["compare_initializers"]["paper"]["images"]) == 4


def test_reproduce_refuses_an_unknown_image_before_running(tmp_path, capsys):
    from smoe_core.cli import main

    rc = main(["reproduce", "--preset", "smoke", "--images", str(tmp_path / "missing.png"), "--results",
               str(tmp_path / "r")])
    assert rc == 2
    assert "smoe: error:" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_git_commit_ignores_outputs_under_results(tmp_path):
    import subprocess

    from smoe_core.studies.results import git_commit

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "t.csv").write_text("a\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    clean = git_commit(tmp_path)
    assert len(clean) == 12 and not clean.endswith("+dirty")
    (tmp_path / "results" / "t.csv").unlink()  # a run that clears its results folder first
    assert git_commit(tmp_path) == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == clean + "+dirty"


def _slow_first(item):
    import time

    time.sleep(1.5 if item["k"] == 0 else 0.0)
    return [{"part": p, "value": item["k"] * 10 + p} for p in range(2)]


def test_rows_in_item_order_moves_only_the_given_keys():
    from smoe_core.studies.results import rows_in_item_order

    df = pd.DataFrame({"k": [9, 2, 1, 2, 8], "v": [0, 1, 2, 3, 4]})
    out = rows_in_item_order(df, [("1",), ("2",)], ["k"])
    assert list(out["v"]) == [0, 4, 2, 1, 3]  # the others first, in their order; then k = 1, then k = 2 (in order)
    assert list(rows_in_item_order(df, [], ["k"])["v"]) == [0, 1, 2, 3, 4]


def test_a_grid_on_dask_writes_the_serial_table(tmp_path):
    """Dask saves each item's rows as it finishes (item 0 finishes last here); the table ends in the items' order,
    behind the rows of an earlier run, as a serial run writes it."""
    import pytest

    pytest.importorskip("dask.distributed")
    items = [{"k": k} for k in range(4)]
    tables = []
    for workers in (None, 2):
        store = ResultsStore(tmp_path / str(workers), "nb", "quick")
        store.run_grid("g", [{"k": 7}], _slow_first, ["k"], progress=False)  # an earlier run's rows
        tables.append(store.run_grid("g", items, _slow_first, ["k"], progress=False, workers=workers))
    cols = ["k", "part", "value"]
    assert list(tables[0]["k"]) == [7, 7, 0, 0, 1, 1, 2, 2, 3, 3]
    pd.testing.assert_frame_equal(tables[0][cols], tables[1][cols])
