"""Expert rules of the radial initializers (Grid, K-Means, S-SMoE) and the paper protocol of Table V."""
import numpy as np
import pandas as pd
import pytest

from smoe_core.studies import as_smoe_paper as as_paper
from smoe_core.studies import common
from smoe_core import init, render


def _image(seed=0, shape=(40, 48)):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 1.0, shape).astype(np.float32)


@pytest.mark.parametrize("method", ["grid", "kmeans", "s_smoe"])
def test_centre_rule_samples_the_pixel_nearest_each_centre(method):
    img = _image()
    kw = dict(labels=np.repeat(np.arange(4), 480).reshape(40, 48)) if method == "s_smoe" else {}
    model, _ = init.get_initializer(method)(img, 30, experts="centre", **kw)
    mu = np.asarray(model.mu, np.float64)
    r = np.clip(np.floor(mu[:, 1] + 0.5).astype(int), 0, 39)
    c = np.clip(np.floor(mu[:, 0] + 0.5).astype(int), 0, 47)
    np.testing.assert_array_equal(np.asarray(model.experts)[:, 0], img[r, c])


@pytest.mark.parametrize("method", ["grid", "kmeans"])
def test_random_rule_is_seeded_uniform_and_ignores_the_image(method):
    a, _ = init.get_initializer(method)(_image(0), 30, experts="random", seed=3)
    b, _ = init.get_initializer(method)(_image(0), 30, experts="random", seed=3)
    c, _ = init.get_initializer(method)(_image(0), 30, experts="random", seed=4)
    np.testing.assert_array_equal(a.experts, b.experts)
    assert not np.array_equal(a.experts, c.experts)
    e = np.asarray(a.experts)
    assert e.min() >= 0.0 and e.max() <= 1.0
    if method == "grid":  # the grid's layout does not depend on the image: same draw for another image
        d, _ = init.grid(_image(1), 30, experts="random", seed=3)
        np.testing.assert_array_equal(a.experts, d.experts)


def test_constant_image_known_answers():
    img = np.full((32, 32), 0.3, np.float32)
    for rule in ("mean", "centre"):
        model, _ = init.grid(img, 16, experts=rule)
        np.testing.assert_allclose(render(model), 0.3, atol=1e-6)
    model, _ = init.grid(img, 16, experts="random", seed=0)
    assert np.abs(render(model) - 0.3).max() > 0.05


def test_unknown_rule_is_rejected():
    with pytest.raises(ValueError, match="experts must be one of"):
        init.grid(_image(), 10, experts="median")


def test_paper_protocol_items_touch_only_radial_methods(tmp_path):
    items = common.grid_items(["peppers"], ["grid", "kmeans", "s_smoe", "as_smoe", "edge"], model_dir=tmp_path, seed=5)
    pitems = as_paper.paper_protocol_items(items)
    assert [it["method"] for it in pitems] == ["grid", "kmeans", "s_smoe"]
    for it in pitems:
        assert it["init_kwargs"][it["method"]]["experts"] == "random"
        assert it["tag"] == as_paper.PAPER_PROTOCOL
    # the original items are not modified, and the protocol's models are saved apart
    assert all("tag" not in it and "init_kwargs" not in it for it in items)
    assert common.model_path(tmp_path, pitems[0], "init") != common.model_path(tmp_path, items[0], "init")
    assert common.init_kwargs("grid", pitems[0])["seed"] == 5  # the random experts are drawn under the item's seed


def test_initial_ranking_on_a_hand_made_table():
    t = pd.DataFrame(dict(image=["a"] * 3 + ["b"] * 3, method=["grid", "kmeans", "as_smoe"] * 2,
                          psnr_db_ours=[12.0, 13.0, 14.0, 20.0, 19.0, 15.0]))
    r = as_paper.initial_ranking(t).set_index("image")
    assert bool(r.loc["a", "beats_all"]) and r.loc["a", "margin_db"] == pytest.approx(1.0)
    assert not bool(r.loc["b", "beats_all"]) and r.loc["b", "margin_db"] == pytest.approx(-5.0)


def test_table3_claim_on_hand_made_tables():
    """The claim holds only where AS-SMoE beats the better rival in PSNR *and* keeps no more kernels than the
    sparser rival; checked per variant and per baseline protocol."""
    ours = pd.DataFrame(dict(image=["a"] * 3 + ["b"] * 3, method=["grid", "kmeans", "as_smoe"] * 2,
                             psnr_db_ours=[30.0, 31.0, 29.0, 25.0, 24.0, 26.0], L_opt_ours=[1000, 900, 500] * 2))
    paper = pd.DataFrame(dict(image=["a", "a", "b", "b"], method=["grid", "kmeans"] * 2,
                              psnr_db=[28.0, 28.5, 25.0, 24.0], L_opt=[800, 850, 1000, 950]))
    variants = pd.DataFrame(dict(image=["a", "b"], variant=["wide", "wide"], psnr_db=[31.5, 27.0],
                                 L_opt=[950, 960]))
    c = as_paper.table3_claim(ours, paper, variants).set_index(["image", "variant", "protocol"])
    assert len(c) == 8
    r = c.loc[("a", "paper_text", "ours (region-mean experts)")]
    assert r["best_rival"] == "kmeans" and r["margin_db"] == pytest.approx(-2.0) and not r["claim_holds"]
    r = c.loc[("b", "paper_text", "ours (region-mean experts)")]
    assert r["beats_both"] and r["no_more_kernels"] and r["claim_holds"] and r["margin_db"] == pytest.approx(1.0)
    r = c.loc[("a", "paper_text", "paper (random experts)")]
    assert r["margin_db"] == pytest.approx(0.5) and r["claim_holds"]
    # more PSNR but more kernels than the sparser rival (900 / 800): the claim fails on kernels
    r = c.loc[("a", "wide", "ours (region-mean experts)")]
    assert r["beats_both"] and not r["no_more_kernels"] and not r["claim_holds"]
    r = c.loc[("b", "wide", "paper (random experts)")]
    assert r["beats_both"] and not r["no_more_kernels"]  # 960 > 950
    s = as_paper.claim_summary(c.reset_index()).set_index(["variant", "protocol"])
    assert s.loc[("paper_text", "ours (region-mean experts)"), "claim_holds"] == 1
    assert s.loc[("paper_text", "paper (random experts)"), "claim_holds"] == 2
    assert s.loc[("wide", "ours (region-mean experts)"), "beats_both"] == 2
    assert s.loc[("wide", "ours (region-mean experts)"), "claim_holds"] == 0
    pts = as_paper.claim_points(ours, paper, variants.assign(variant=["authors_code_margin1", "authors_code"]))
    assert len(pts) == 2 * 3 + 4 + 2 and set(pts.series) == {
        "grid (ours)", "kmeans (ours)", "AS-SMoE (paper text)", "grid (paper protocol)", "kmeans (paper protocol)",
        "AS-SMoE (authors' code, by export margin)"}
    assert pts[(pts.image == "b") & (pts.series == "kmeans (paper protocol)")][["L_opt", "psnr_db"]].values.tolist() \
        == [[950.0, 24.0]]
    # without the paper protocol's table only our protocol is checked
    assert set(as_paper.table3_claim(ours).protocol) == {"ours (region-mean experts)"}


def test_as_smoe_variant_items_tag_and_merge_kwargs():
    items = common.grid_items(["peppers"], ["grid", "as_smoe"], model_dir="m",
                          init_kwargs={"as_smoe": {"sparsity": 1e-3}})
    v = as_paper.as_smoe_variant_items(items)
    assert [it["variant"] for it in v] == ["authors_code", "authors_code_margin1", "authors_code_margin2",
                                           "authors_code_margin3"]
    assert v[2]["init_kwargs"]["as_smoe"] == dict(sparsity=1e-3, initial_kernels=20, epochs=900, checkpoint=300,
                                                  mask_margin=2)
    assert items[1]["init_kwargs"]["as_smoe"] == {"sparsity": 1e-3}  # the original item is untouched
    paths = {str(common.model_path("m", it, "init")) for it in v + items}
    assert len(paths) == 6


def test_matched_rivals_get_the_variants_kernel_count_and_join_the_claim():
    items = common.grid_items(["peppers", "parrot"], ["grid", "kmeans", "as_smoe"], model_dir="m")
    vt = pd.DataFrame(dict(image=["peppers", "peppers", "parrot"], variant=["v1", "v2", "v1"], L_init=[700, 900, 500],
                           psnr_db=[30.0, 31.0, 29.0], L_opt=[600, 800, 450]))
    m = as_paper.matched_rival_items(items, vt, variants=["v1"])
    assert len(m) == 2 * 2 * 2  # (grid, kmeans) x (peppers, parrot) x (ours, paper)
    assert {(it["image"], it["budget"]) for it in m} == {("peppers", 700), ("parrot", 500)}
    paper_items = [it for it in m if it["protocol"] == "paper"]
    assert all(it["init_kwargs"][it["method"]] == {"experts": "random"} for it in paper_items)
    assert all("experts" not in it.get("init_kwargs", {}).get(it["method"], {}) for it in m if it["protocol"] == "ours")
    assert len({str(common.model_path("m", it, "init")) for it in m + items}) == len(m) + len(items)
    with pytest.raises(ValueError, match="protocol"):
        as_paper.matched_rival_items(items, vt, protocols=("mine",))
    table3 = pd.DataFrame(dict(image=["peppers"] * 3, method=["grid", "kmeans", "as_smoe"], psnr_db=[32.0, 32.5, 27.0],
                               L_opt=[1200, 1250, 400]))
    matched = pd.DataFrame(dict(image=["peppers"] * 4, method=["grid", "kmeans"] * 2, variant=["v1"] * 4,
                                protocol=["ours", "ours", "paper", "paper"], psnr_db=[30.5, 29.0, 29.5, 29.9],
                                L_opt=[650, 640, 590, 610]))
    c = as_paper.table3_claim(table3, None, vt[vt.image == "peppers"], matched).set_index(["variant", "protocol"])
    r = c.loc[("v1", "paper (random experts), rivals at AS-SMoE's L_init")]
    assert r["best_rival"] == "kmeans" and r["margin_db"] == pytest.approx(0.1) and not r["no_more_kernels"]
    r = c.loc[("v1", "ours, rivals at AS-SMoE's L_init")]
    assert r["margin_db"] == pytest.approx(-0.5) and not r["claim_holds"]
    assert ("v2", "ours, rivals at AS-SMoE's L_init") not in c.index  # matched rivals only for their own variant
    pts = as_paper.claim_points(table3, None, vt, matched)
    assert (pts.series == "grid (paper protocol, at AS-SMoE's L_init)").sum() == 1


def test_variants_side_by_side_against_the_papers_as_smoe_row():
    v = pd.DataFrame(dict(image=["peppers", "peppers"], variant=["a", "b"], L_init=[900, 1300], L_opt=[700, 861],
                          psnr_db=[30.0, 32.0], ssim=[0.8, 0.9]))
    t = as_paper.variants_side_by_side(v).set_index("variant")
    # the paper's Table III, row 1, Peppers AS-SMoE: 861 kernels, 31.55 dB, SSIM 0.85
    assert t.loc["a", "psnr_db_paper"] == pytest.approx(31.55) and t.loc["a", "psnr_db_diff"] == pytest.approx(-1.55)
    assert t.loc["b", "L_opt_diff"] == 0 and t.loc["b", "ssim_diff"] == pytest.approx(0.05)
    assert as_paper.variants_side_by_side(pd.DataFrame()).empty
