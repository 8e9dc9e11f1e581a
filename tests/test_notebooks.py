"""The parameterized notebooks run end to end under papermill at the `smoke` preset (tiny crops), writing
their tables, figures, executed notebook and report fragment; REPORT.md collects them."""
import pandas as pd
import pytest

from smoe_core.studies import reproduce
from smoe_core.studies.results import META_COLUMNS


@pytest.mark.parametrize("name", reproduce.available_notebooks())
def test_smoke_preset_runs_notebook(tmp_path, name):
    report = reproduce.reproduce("smoke", only=name, results_dir=tmp_path, progress=False)
    out = tmp_path / "smoke" / name
    assert (out / f"{name}.ipynb").is_file() and not (out / f"{name}.failed.ipynb").exists()
    tables = list(out.glob("*.csv"))
    assert tables
    for t in tables:
        df = pd.read_csv(t)
        assert set(META_COLUMNS) <= set(df.columns), t.name
    assert list(out.glob("*.png"))
    if name == "compare_initializers":  # the AS-SMoE variant and Table III's claim, checked per image
        claim = pd.read_csv(out / "table3_claim.csv")
        assert set(claim["variant"]) == {"paper_text", "authors_code_margin2"} and len(claim) == 8
        matched = pd.read_csv(out / "table3_matched_rivals.csv")
        variants = pd.read_csv(out / "table3_as_smoe_variants.csv").set_index("image")
        assert len(matched) == 8 and (matched["L_init"] <= matched["image"].map(variants["L_init"])).all()
        assert (claim["claim_holds"] == (claim["beats_both"] & claim["no_more_kernels"])).all()
    text = report.read_text()
    assert "## Preset `smoke`" in text and "| --- |" in text
    if name in ("compare_initializers", "as_smoe_segments"):  # the committed figures can be redrawn from the run
        from smoe_core.studies.redraw import redraw

        tables = {p: p.read_bytes() for p in out.glob("*.csv")}
        written = {p.name for p in redraw(tmp_path, "smoke", only=[name])}
        expected = ({"fig9c_runtime.png", "fig7_rbf_gap_by_setup.png", "fig8_initializations_peppers.png",
                     "fig7_rbf_vs_smoe_peppers.png", "fig9_psnr_vs_time.png"} if name == "compare_initializers"
                    else {"fig10_breakdown.png", "fig10_time_vs_workers.png"})
        assert expected <= written, sorted(written)
        assert {p: p.read_bytes() for p in out.glob("*.csv")} == tables


def test_unknown_notebook_and_preset(tmp_path):
    with pytest.raises(ValueError, match="unknown notebook"):
        reproduce.reproduce("smoke", only="nope", results_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown preset"):
        reproduce.notebook_parameters("compare_initializers", "huge", results_dir=tmp_path)


def test_every_notebook_defaults_to_the_default_seed():
    """`smoe reproduce` without --seed runs every notebook with DEFAULT_SEED: the notebooks' own default."""
    import papermill

    for name in reproduce.available_notebooks():
        params = papermill.inspect_notebook(str(reproduce.notebook_dir() / f"{name}.ipynb"))
        assert params["seed"]["default"] == str(reproduce.DEFAULT_SEED), name
        assert "seed" not in reproduce.notebook_parameters(name, "smoke", results_dir=".")
        assert reproduce.notebook_parameters(name, "smoke", results_dir=".", seed=7)["seed"] == 7


def test_every_preset_sets_only_parameters_of_its_notebook():
    """A preset key the notebook does not declare would be injected by papermill and silently ignored (a typo in
    ``grid_workers`` would run the quick preset serially)."""
    import papermill

    for name in reproduce.available_notebooks():
        declared = set(papermill.inspect_notebook(str(reproduce.notebook_dir() / f"{name}.ipynb")))
        for preset, params in reproduce.PRESETS[name].items():
            assert set(params) <= declared, (name, preset, sorted(set(params) - declared))
        assert {"workers", "scheduler", "preset", "results_dir"} <= declared, name


@pytest.mark.parametrize("bad", [-1, 2**31, 1.5, True, "1"])
def test_bad_seed_is_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="seed must be an integer"):
        reproduce.reproduce("smoke", only="r_smoe", results_dir=tmp_path, seed=bad)
    assert not (tmp_path / "smoke").exists()


def test_a_folder_of_another_seed_is_refused_before_any_notebook_runs(tmp_path, capsys):
    """Finished rows are found by configuration, not seed: a run with seed 1 into seed-0 results would skip
    every finished item and mix its own rows in. Refused before any notebook starts, nothing written."""
    import json

    from smoe_core.cli import main

    folder = tmp_path / "smoke" / "r_smoe"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"parameters": {"seed": 0}}))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match="holds the results of seed 0.*another results folder"):
        reproduce.reproduce("smoke", only=["edge_aligned", "r_smoe"], results_dir=tmp_path, seed=1)
    rc = main(["reproduce", "--preset", "smoke", "--only", "r_smoe", "--results", str(tmp_path), "--seed", "1",
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and len([ln for ln in err.splitlines() if ln.startswith("smoe: error:")]) == 1, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    reproduce.check_results_seed(folder, 0)  # the same seed goes on
    reproduce.check_results_seed(tmp_path / "smoke" / "edge_aligned", 1)  # no results yet: any seed
