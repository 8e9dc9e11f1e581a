"""RBF networks from an initializer's kernels ([AS-SMoE] Fig. 7): least-squares RBF weights with pi folded
(:mod:`smoe_core.init.rbf_weights`), the RBF start of the global optimization (the fix: it used to keep the SMoE's
experts and only switch the model to RBF), AS-RBF (Algorithm 1 with the RBF network), the Fig. 7 setup items and
gap table, Table III row 2's items, and the tile-wise initial model of the edge paper's Fig. 7."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from smoe_core import SMoE, render
from smoe_core.init import as_smoe, grid
from smoe_core.init.as_smoe import rbf_initial_pi
from smoe_core.init.rbf_weights import kernel_design_matrix, rbf_least_squares
from smoe_core.io import resolve_image_path
from smoe_core.metrics import psnr
from smoe_core.render import render_tiled_batch
from smoe_core.render.dense import render_dense_batch, square_features
from smoe_core.studies import as_smoe_paper, common
from smoe_core.tasks.tilewise import initial_tilewise_model, split_budget, tile_rectangles
from tests.conftest import random_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_design_matrix_columns_are_the_kernels():
    m = random_model(K=12, H=18, W=22, seed=3, bandwidth=(0.3, 0.6))
    A = kernel_design_matrix(m, (18, 22)).toarray()
    yy, xx = np.mgrid[0:18, 0:22]
    P = m.precision().astype(np.float64)
    for j in range(m.n_kernels):
        dx, dy = xx - float(m.mu[j, 0]), yy - float(m.mu[j, 1])
        q = P[j, 0, 0] * dx * dx + 2 * P[j, 0, 1] * dx * dy + P[j, 1, 1] * dy * dy
        expect = np.where(q <= 25.0, np.exp(-0.5 * q), 0.0)  # Mahalanobis radius 5, as the tiled renderer
        np.testing.assert_allclose(A[:, j].reshape(18, 22), expect, atol=1e-12)


def test_least_squares_recovers_the_weights_of_an_rbf_image():
    truth = random_model(K=10, H=24, W=30, seed=5, spread=-3.0, bandwidth=(0.25, 0.4), rbf=True)
    truth = truth.replace(pi=np.ones(10, np.float32), experts=np.random.default_rng(1).uniform(0.1, 0.6, (10, 1))
                          .astype(np.float32))
    image = render(truth, (24, 30), backend="dense").astype(np.float64)
    fitted = rbf_least_squares(truth.replace(experts=np.zeros((10, 1), np.float32)), image, damp=0.0)
    assert fitted.rbf and np.all(fitted.pi == 1.0)
    np.testing.assert_allclose(fitted.experts, truth.experts, atol=2e-3)


def test_the_rbf_start_is_least_squares_not_the_smoe_experts():
    """The bug: the RBF network started from the SMoE's pi and experts, which are not RBF weights; where kernels
    overlap unevenly (pi up to 3 here, as AS-SMoE's exported pis) that start is far off. The default start now
    solves the weights, which can only be at least as good (least squares)."""
    rng = np.random.default_rng(0)
    image = np.clip(np.add.outer(np.linspace(0.2, 0.8, 32), np.linspace(0, 0.2, 40)), 0, 1)
    model = random_model(K=60, H=32, W=40, seed=2, bandwidth=(0.15, 0.5))
    model = model.replace(pi=rng.uniform(0.1, 3.0, 60).astype(np.float32))
    switched = common.rbf_start_model(model, image, "switch")
    fitted = common.rbf_start_model(model, image)
    assert switched.rbf and fitted.rbf
    np.testing.assert_array_equal(switched.experts, model.experts)
    p_switch, p_fit = psnr(render(switched), image), psnr(render(fitted), image)
    assert p_fit > p_switch + 5.0
    with pytest.raises(ValueError, match="rbf_start"):
        common.rbf_start_model(model, image, "pi_folded")


def test_run_global_starts_the_rbf_network_from_least_squares_weights(tmp_path):
    item = dict(image="peppers", method="grid", budget=16, d_th=40, crop=32, seed=0, model_dir=str(tmp_path),
                iters=1, sparsity=0.0, lr={k: 0.0 for k in ("mu", "chol", "pi", "experts")}, tol=1e-6)
    common.run_init(item)
    image = common.load_case("peppers", 32)
    init = SMoE.load(common.model_path(tmp_path, item, "init"))
    row = common.run_global(dict(item, rbf=True))  # zero learning rates: the final model is the start
    assert row["psnr_db"] == pytest.approx(psnr(render(rbf_least_squares(init, image)), image), abs=1e-3)
    switched = common.run_global(dict(item, rbf=True, rbf_start="switch"))
    assert switched["psnr_db"] < row["psnr_db"] - 1.0


def test_rbf_initial_pi_makes_the_kernels_sum_to_about_one():
    cbb, L = 32, 16
    sigma = cbb / (2 * math.sqrt(L))
    c = (np.arange(4) + 0.5) * cbb / 4 - 0.5
    mu = np.array([(x, y) for y in c for x in c])
    yy, xx = np.mgrid[0:cbb, 0:cbb]
    total = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2)) for x, y in mu)
    inner = total[8:24, 8:24] * rbf_initial_pi(cbb, L, sigma)
    assert 0.85 < inner.mean() < 1.15


def test_batched_rbf_renders_agree():
    rng = np.random.default_rng(4)
    B, L, cbb = 3, 6, 16
    mu = torch.tensor(rng.uniform(0, cbb - 1, (B, L, 2)), dtype=torch.float32)
    chol = torch.tensor(np.tile([0.4, 0.0, 0.4], (B, L, 1)) + rng.normal(0, 0.03, (B, L, 3)), dtype=torch.float32)
    logpi = torch.tensor(np.log(rng.uniform(0.3, 1.5, (B, L))), dtype=torch.float32)
    experts = torch.tensor(rng.uniform(0, 1, (B, L, 1)), dtype=torch.float32)
    feats, centre = square_features(cbb)
    dense = render_dense_batch(mu, chol, logpi, experts, feats, centre, rbf=True)
    tiled = render_tiled_batch(mu, chol, logpi, experts, cbb, rbf=True)
    np.testing.assert_allclose(tiled.numpy(), dense.numpy(), atol=1e-4)
    smoe = render_dense_batch(mu, chol, logpi, experts, feats, centre)
    assert float((smoe - dense).abs().max()) > 0.05  # the RBF is not the SMoE


def test_as_rbf_fits_rbf_networks_and_keeps_their_pis():
    image = np.clip(np.add.outer(np.linspace(0.1, 0.9, 40), np.zeros(40)), 0, 1).astype(np.float32)
    image[:, 20:] = 1.0 - image[:, 20:]
    labels = np.zeros((40, 40), int)
    labels[:, 20:] = 1
    with pytest.raises(ValueError, match="pi_export='keep'"):
        as_smoe(image, labels, rbf=True, pi_export="count", progress=False)
    kw = dict(epochs=60, checkpoint=None, progress=False)
    rbf, rec = as_smoe(image, labels, rbf=True, **kw)
    smoe, _ = as_smoe(image, labels, **kw)
    assert rbf.rbf and not smoe.rbf and rec["settings"]["pi_export"] == "keep" and rec["settings"]["rbf"]
    p_rbf = psnr(render(rbf), image)
    assert p_rbf > psnr(render(common.rbf_start_model(smoe, image, "switch")), image)  # fitted as an RBF


def test_the_rbf_export_with_pis_kept_reproduces_the_cbb_function():
    """Export geometry (IV-B) on an RBF: with pi kept, the up-sampled kernels take at every image point the value
    the CBB's RBF took at the corresponding CBB point (CBB pixel i is image pixel 3 i + 1 for tb / cbb = 3)."""
    from smoe_core.init.as_smoe import cbb_to_image

    local = random_model(K=14, H=16, W=16, seed=7, rbf=True, bandwidth=(0.3, 0.7))
    mu, chol = cbb_to_image(local.mu, local.chol, (0, 0), 48, 16)
    exported = SMoE(mu.astype(np.float32), chol.astype(np.float32), local.pi, local.experts, rbf=True,
                    image_shape=(48, 48))
    big = render(exported, (48, 48), backend="dense")
    np.testing.assert_allclose(big[1::3, 1::3], render(local, (16, 16), backend="dense"), atol=1e-5)
    scaled = exported.replace(pi=exported.pi * 4)  # what pi_export="count" does to an RBF: the output scales
    assert float(np.abs(render(scaled, (48, 48), backend="dense") - 4 * big).max()) < 1e-4


def test_rbf_setup_items_keep_models_apart():
    items = common.grid_items(["peppers"], ["grid", "kmeans", "as_smoe"], model_dir="/tmp/m")
    variants = as_smoe_paper.as_smoe_variant_items(items, {"authors_code_margin2": as_smoe_paper.AS_SMOE_VARIANTS[
        "authors_code_margin2"]})
    ritems = as_smoe_paper.rbf_setup_items(items, ("switch", "least_squares", "rbf_local"), variant_items=variants)
    got = {(it["method"], it["variant"], it["setup"]) for it in ritems}
    assert got == {("kmeans", "-", "switch"), ("kmeans", "-", "least_squares"), ("as_smoe", "paper_text", "switch"),
                   ("as_smoe", "paper_text", "least_squares"), ("as_smoe", "paper_text", "rbf_local"),
                   ("as_smoe", "authors_code_margin2", "least_squares")}
    paths = {common.model_path("/tmp/m", it, "rbf") for it in ritems}
    assert len(paths) == len(ritems)
    assert all(it["rbf"] for it in ritems)
    local = [it for it in ritems if it["setup"] == "rbf_local"]
    assert local[0]["init_kwargs"]["as_smoe"]["rbf"] is True
    variant = [it for it in ritems if it["variant"] == "authors_code_margin2"][0]
    assert variant["base_tag"] == "as_authors_code_margin2" and variant["rbf_start"] == "least_squares"
    with pytest.raises(ValueError, match="unknown RBF setup"):
        as_smoe_paper.rbf_setup_items(items, ("folded",))


def test_rbf_setup_items_run_a_setup_on_the_images_it_names():
    items = common.grid_items(["peppers", "parrot"], ["kmeans", "as_smoe"], model_dir="/tmp/m")
    setups = ("switch", "least_squares", "rbf_local")
    ritems = as_smoe_paper.rbf_setup_items(items, setups, setup_images={"switch": ["parrot"], "rbf_local": []})
    got = sorted((it["image"], it["method"], it["setup"]) for it in ritems)
    assert got == [("parrot", "as_smoe", "least_squares"), ("parrot", "as_smoe", "switch"),
                   ("parrot", "kmeans", "least_squares"), ("parrot", "kmeans", "switch"),
                   ("peppers", "as_smoe", "least_squares"), ("peppers", "kmeans", "least_squares")]
    path = str(resolve_image_path("parrot"))  # an image named by its packaged file's path is the same image
    assert ritems == as_smoe_paper.rbf_setup_items(items, setups, setup_images={"switch": [path], "rbf_local": []})
    with pytest.raises(ValueError, match="setup_images: unknown RBF setup"):
        as_smoe_paper.rbf_setup_items(items, setups, setup_images={"folded": ["parrot"]})
    with pytest.raises(ValueError, match="setup_images: expected"):
        as_smoe_paper.rbf_setup_items(items, setups, setup_images={"switch": "parrot"})


def test_rbf_gap_table_pairs_setups_and_subtracts():
    setups = pd.DataFrame([
        dict(image="peppers", method="kmeans", variant="-", setup="switch", L_init=100, init_psnr_db=10.0, L_opt=90,
             psnr_db=26.0),
        dict(image="peppers", method="kmeans", variant="-", setup="least_squares", L_init=100, init_psnr_db=20.0,
             L_opt=95, psnr_db=29.0),
        dict(image="peppers", method="as_smoe", variant="paper_text", setup="switch", L_init=50, init_psnr_db=0.0,
             L_opt=45, psnr_db=20.0),
        dict(image="peppers", method="as_smoe", variant="paper_text", setup="rbf_local", L_init=70, init_psnr_db=3.0,
             L_opt=66, psnr_db=24.5)])
    table3 = pd.DataFrame([dict(image="peppers", method="kmeans", psnr_db_ours=31.0),
                           dict(image="peppers", method="as_smoe", psnr_db_ours=27.0)])
    gaps = as_smoe_paper.rbf_gap_table(setups, table3).set_index("as_setup")
    assert gaps.loc["switch", "km_setup"] == "switch" and gaps.loc["rbf_local", "km_setup"] == "least_squares"
    assert gaps.loc["switch", "as_rbf_minus_km_rbf_db"] == pytest.approx(-6.0)
    assert gaps.loc["rbf_local", "as_rbf_minus_km_rbf_db"] == pytest.approx(-4.5)
    assert gaps.loc["rbf_local", "as_smoe_minus_as_rbf_db"] == pytest.approx(2.5)
    assert gaps.loc["rbf_local", "as_smoe_minus_km_smoe_db"] == pytest.approx(-4.0)
    assert gaps.loc["rbf_local", "paper_as_rbf_minus_km_rbf_db"] == as_smoe_paper.PAPER_FIG7_GAINS_DB[
        "as_rbf_minus_km_rbf"]
    summary = as_smoe_paper.rbf_gap_summary(gaps.reset_index())
    assert list(summary["as_rbf_above_km_rbf"]) == [0, 0]
    text = as_smoe_paper.rbf_finding(summary)
    assert "-6.00 dB" in text and "-4.50 dB" in text


def test_row2_items_are_the_segmenting_initializers_at_d_th_50():
    items = common.grid_items(["peppers", "parrot"], ["grid", "kmeans", "s_smoe", "as_smoe"], model_dir="/tmp/m")
    row2 = as_smoe_paper.row2_items(items, 50)
    assert [(it["image"], it["method"], it["d_th"]) for it in row2] == [
        ("peppers", "s_smoe", 50), ("peppers", "as_smoe", 50), ("parrot", "s_smoe", 50), ("parrot", "as_smoe", 50)]
    row1 = {common.model_path("/tmp/m", it, "final") for it in items}
    assert not row1 & {common.model_path("/tmp/m", it, "final") for it in row2}  # row 2 never overwrites row 1


def test_initial_tilewise_model_is_each_tile_initialized_and_moved():
    image = np.random.default_rng(0).uniform(0, 1, (40, 50)).astype(np.float32)
    model = initial_tilewise_model(image, 60, initializer="grid", tiles=(2, 2))
    rects = tile_rectangles((40, 50), (2, 2))
    budgets = split_budget(60, [(y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in rects])
    mus = [grid(image[y0:y1, x0:x1], k)[0].mu + np.array([x0, y0], np.float32)
           for (y0, y1, x0, x1), k in zip(rects, budgets)]
    np.testing.assert_allclose(model.mu, np.concatenate(mus))
    assert model.image_shape == (40, 50)
