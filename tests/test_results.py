"""Versioned, resumable result tables."""
import json

import pandas as pd

from smoe_core.results import META_COLUMNS, ResultsStore


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
