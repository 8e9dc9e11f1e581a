"""The edge-aligned paper's experiments (smoe_core.studies.edge_paper), against known answers: on a synthetic straight
edge the Fig. 2 stages find segments along it and the kernel centres straddle it; Fig. 3's iteration 0 is the
image sampled at the centres (eq. 10) and its PSNR rises over the first iterations on a blurred black-to-white
edge; Fig. 5 items are deterministic under a seed, resumable and picklable; Fig. 6 and the claims table read
the right rows."""
import pickle

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from smoe_core.studies import edge_paper as es
from smoe_core import render
from smoe_core.init.edge import edge
from smoe_core.metrics import psnr
from smoe_core.studies.results import ResultsStore


def step_edge(H=64, W=64, angle=20.0, blur=1.0):
    """A black-to-white straight step through the image centre at ``angle`` degrees (x right, y down),
    anti-aliased and blurred; returns the image, the edge's unit normal and a point on it."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    t = np.deg2rad(angle)
    normal = np.array([-np.sin(t), np.cos(t)])
    centre = np.array([(W - 1) / 2, (H - 1) / 2])
    d = (xx - centre[0]) * normal[0] + (yy - centre[1]) * normal[1]
    v = ndimage.gaussian_filter(np.clip(d + 0.5, 0, 1), blur, mode="nearest")
    return v.astype(np.float32), normal, centre


@pytest.fixture(scope="module")
def stages():
    img, normal, centre = step_edge()
    return img, normal, centre, es.edge_stages(img, 24)


# ---------------------------------------------------------------------------------------------- Fig. 2
def test_stages_find_segments_along_the_edge(stages):
    img, normal, centre, st = stages
    ys, xs = np.nonzero(st["edges"])
    assert len(xs) > 20
    # every edge pixel and every line-segment centre lies on the edge line (within Canny's 1 px)
    assert np.abs((np.stack([xs, ys], 1) - centre) @ normal).max() <= 1.0
    seg = st["segments"]
    assert len(seg) > 10 and (seg["length"] >= 2).all()
    assert np.abs((seg[["x", "y"]].to_numpy() - centre) @ normal).max() <= 1.0
    # a 20 degree line (going right and down) is scanned mostly as runs in the two directions around it:
    # horizontal (0) and diagonal (1, 1) (45 degrees, y down); none along the other diagonal
    counts = seg["angle_deg"].value_counts()
    assert counts.get(0.0, 0) + counts.get(45.0, 0) > 0.8 * len(seg) and -45.0 not in counts
    assert set(seg["angle_deg"]) <= {0.0, 45.0, 90.0, -45.0}
    # reduction: at most max_pts = 12 segments, still on the line
    red = st["reduced"]
    assert 1 <= len(red) <= 12
    assert np.abs((red[["x", "y"]].to_numpy() - centre) @ normal).max() <= 1.0


def test_kernel_centres_straddle_the_edge_and_match_the_initializer(stages):
    img, normal, centre, st = stages
    c = st["centres"]
    assert c.shape == (2 * len(st["reduced"]), 2)
    side = ((c - centre) @ normal).reshape(-1, 2)
    assert (side[:, 0] * side[:, 1] < 0).all()  # each pair on both sides of the edge
    model, _ = edge(img, 24)
    np.testing.assert_allclose(c, np.asarray(model.mu), atol=1e-4)  # the same centres as the initializer
    row = es.stage_counts(st, "step")
    assert row["line_segments"] == len(st["segments"]) and row["kernels"] == len(c)
    assert row["edge_pixels"] == int(st["edges"].sum()) and row["reduced_segments"] == len(st["reduced"])
    fig = es.plot_stages({"step": (img, st)})
    assert len(fig.axes) == 4


def test_edge_parameters_rejects_unknown():
    assert es.edge_parameters()["delta_mu"] == 3.0 and es.edge_parameters(delta_mu=5)["delta_mu"] == 5
    with pytest.raises(TypeError):
        es.edge_parameters(nope=1)


# ---------------------------------------------------------------------------------------------- Fig. 3
def test_expert_iterations_iteration0_is_eq10_and_rises_on_a_clean_edge():
    img, _, _ = step_edge(angle=0.0, blur=1.0)
    t = es.expert_iterations_table({"step": img}, 6, budgets={"step": 24}, signs=("corrected",))
    assert t["iteration"].tolist() == list(range(7)) and (t["image"] == "step").all()
    model, rec = edge(img, 24, n_iter=0)  # iteration 0 only: experts m^(0)
    p0 = t.loc[t["iteration"] == 0, "psnr_db"].item()
    assert p0 == pytest.approx(es.iteration0_psnr(img, model), abs=1e-4)
    assert p0 == pytest.approx(psnr(render(model), img), abs=1e-4)
    # a blurred black-to-white edge: the clip stops the overshoot and the PSNR rises (module docstring)
    p = t.sort_values("iteration")["psnr_db"].to_numpy()
    assert (np.diff(p[:4]) >= -1e-6).all() and p[3] > p[0] + 0.05
    c = t.sort_values("iteration")["centre_mse"].to_numpy()
    assert c[3] < c[0]  # eq. 12 drives the model towards the image at the centres
    s = es.expert_iterations_summary(t)
    assert s.loc[0, "psnr_iter0_db"] == pytest.approx(p[0]) and s.loc[0, "psnr_best_db"] == pytest.approx(p.max())


def test_expert_iterations_both_signs_share_iteration0():
    img, _, _ = step_edge(angle=0.0)
    t = es.expert_iterations_table({"step": img}, 3, budgets={"step": 24})
    assert set(t["sign"]) == {"corrected", "printed"}
    i0 = t[t["iteration"] == 0].set_index("sign")["psnr_db"]
    assert i0["corrected"] == pytest.approx(i0["printed"])
    with pytest.raises(ValueError):
        es.expert_iterations_table({"step": img}, 1, budgets={"step": 24}, signs=("sideways",))


# ---------------------------------------------------------------------------------------------- Figs. 5, 6
def _items(tmp_path, **kw):
    return es.fig5_items(["peppers"], ["edge", "grid"], budget_factors=[0.5, 1.0], budgets={"peppers": 40},
                         crop=64, tile_iters=8, finetune_iters=8, model_dir=tmp_path / "models", **kw)


def test_fig5_items_keys_budgets_and_pickle(tmp_path):
    items = es.fig5_items(["peppers", "barbara"], budget_factors=[0.5, 1.0], as_smoe_d_th=[30], model_dir=tmp_path)
    pickle.loads(pickle.dumps(items))
    keys = [tuple(it[k] for k in es.FIG5_KEYS) for it in items]
    assert len(keys) == len(set(keys))
    by = {(it["image"], it["method"], it["budget_factor"]): it for it in items if it["method"] != "as_smoe"}
    assert by[("peppers", "edge", 1.0)]["budget"] == 1500 and by[("barbara", "grid", 0.5)]["budget"] == 1750
    assert by[("peppers", "edge", 1.0)]["default_point"] and not by[("peppers", "edge", 0.5)]["default_point"]
    # AS-SMoE: one item per threshold (the default d_th = 40 always included, and timed in Fig. 6)
    a = [(it["image"], it["d_th"], it["default_point"]) for it in items if it["method"] == "as_smoe"]
    assert a == [("peppers", 30, False), ("peppers", 40, True), ("barbara", 30, False), ("barbara", 40, True)]
    # the training settings are part of the key: a rerun with other settings does not reuse stale rows
    other = es.fig5_items(["peppers"], ["grid"], tile_iters=7, model_dir=tmp_path)
    assert other[0]["config"] != items[0]["config"] and "i7-" in other[0]["config"]
    configs = {it["method"]: it["config"] for it in items}
    assert configs["as_smoe"] == configs["grid"] + es.AS_SMOE_CONFIG_SUFFIX  # AS-SMoE's tiles start at pi = 1
    assert len({it["config"] for it in items if it["method"] != "as_smoe"}) == 1


def test_as_smoe_tile_is_as_smoe_with_every_pi_one():
    """The tile initializer of AS-SMoE keeps the kernels of smoe_core.init.as_smoe and sets pi = 1 (the start of
    the other initializers), which leaves the gating's pi ratios out; the render changes accordingly."""
    from smoe_core.init import as_smoe

    img = np.zeros((48, 48), np.float32)
    img[:, 20:] = 0.8
    img[30:, :] += 0.15
    labels = np.ones((48, 48), np.int32)
    labels[:, 20:] = 2
    labels[30:, :] += 2
    kw = dict(labels=labels, seed=3, epochs=40, progress=False)
    ref, _ = as_smoe(img, **kw)
    tile, rec = es.as_smoe_tile(img, 12, **kw)
    assert rec["pi_reset"] and tile.n_kernels == ref.n_kernels
    np.testing.assert_array_equal(np.asarray(tile.mu), np.asarray(ref.mu))
    np.testing.assert_array_equal(np.asarray(tile.chol), np.asarray(ref.chol))
    np.testing.assert_array_equal(np.asarray(tile.experts), np.asarray(ref.experts))
    assert (np.asarray(tile.pi) == 1).all() and not (np.asarray(ref.pi) == 1).all()
    assert es._tile_initializer("as_smoe") is es.as_smoe_tile and es._tile_initializer("grid") == "grid"


def test_fig5_items_deterministic_and_resumable(tmp_path):
    items = _items(tmp_path)
    a = es.run_fig5_item(items[1])
    b = es.run_fig5_item(items[1])
    timing = {"init_seconds", "tile_seconds", "finetune_seconds", "seconds", "training_seconds", "cpu_seconds"}
    assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    assert a["kernels"] <= a["kernels_merged"] <= items[1]["budget"] and a["psnr_db"] > 15
    assert es.fig5_model_path(items[1]).is_file()

    store = ResultsStore(tmp_path / "res", "edge_aligned", "test")
    calls = []

    def counted(item):
        calls.append((item["method"], item["budget"]))
        return es.run_fig5_item(item)

    store.run_grid("fig5_psnr_vs_kernels", items[:2], counted, es.FIG5_KEYS, progress=False)
    first = store.table("fig5_psnr_vs_kernels")
    store.run_grid("fig5_psnr_vs_kernels", items, counted, es.FIG5_KEYS, progress=False)
    assert calls == [(it["method"], it["budget"]) for it in items]  # the first two items ran once only
    df = es.kernels_vs_psnr_table(store, items, progress=False)  # all done: nothing recomputed
    assert len(calls) == len(items) and len(df) == len(items)
    assert df.iloc[:2]["psnr_db"].tolist() == first["psnr_db"].tolist()
    assert df.loc[1, "psnr_db"] == pytest.approx(a["psnr_db"], abs=1e-6)

    times = es.convergence_times(df)
    assert sorted(times["method"]) == ["edge", "grid"] and (times["image"] == "peppers").all()
    assert (times["seconds"] >= times["init_seconds"]).all() and sorted(times["rank"]) == [1, 2]
    expected = df[df["default_point"]].set_index("method")["psnr_db"]
    assert times.set_index("method")["psnr_db"].to_dict() == pytest.approx(expected.to_dict())


def test_edge_tile_falls_back_on_a_flat_tile():
    flat = np.full((32, 32), 0.4, np.float32)
    with pytest.raises(ValueError, match="no line segments"):
        edge(flat, 20)
    model, rec = es.edge_tile(flat, 20)
    assert model.n_kernels == 4 and rec["flat_tile"]
    assert psnr(render(model), flat) > 40


def test_psnr_at_kernels_and_claims():
    curve = pd.DataFrame(dict(kernels=[100, 400], psnr_db=[20.0, 24.0]))
    assert es.psnr_at_kernels(curve, 200) == pytest.approx(22.0)  # linear in log kernels
    assert np.isnan(es.psnr_at_kernels(curve, 50)) and np.isnan(es.psnr_at_kernels(curve, 800))
    fig5 = pd.DataFrame(dict(image="flower", method=["edge", "edge", "grid", "s_smoe"], kernels=[100, 400, 200, 300],
                             psnr_db=[20.0, 24.0, 21.0, 25.0], default_point=[False, True, True, True],
                             init_seconds=1.0, training_seconds=[1.0, 2.0, 5.0, 9.0], seconds=[2.0, 3.0, 6.0, 10.0],
                             converged=True))
    times = es.convergence_times(fig5)
    claims = es.paper_claims_table(fig5, times).set_index(["figure", "claim"])
    g = claims.loc[("Fig. 5", es.PAPER_CLAIMS["fig5_grid"])]
    assert g["difference"] == pytest.approx(3.0) and g["difference_equal_kernels"] == pytest.approx(1.0) and g["holds"]
    s = claims.loc[("Fig. 5", es.PAPER_CLAIMS["fig5_s_smoe"])]
    assert s["difference_equal_kernels"] == pytest.approx(20 + 4 * np.log(3) / np.log(4) - 25) and s["holds"]
    t = claims.loc[("Fig. 6", es.PAPER_CLAIMS["fig6"])]
    assert t["holds"] and t["difference"] == pytest.approx(3.0 - 6.0)
