"""R-SMoE experiments (smoe_core.studies.r_smoe_paper): the four model variants, kernels evaluated per block, FLOPs per pixel,
speed/memory per iteration, and the Fig. 4/5, denoising and super-resolution grid items. Each test checks an
independent reference (a numpy formula, a brute-force count, the renderer's source, the existing experiments);
everything runs on crops of at most 48 x 48 pixels and a few iterations."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import smoe_core as smoe
from smoe_core.studies import r_smoe_paper as rs
from smoe_core.studies import r_smoe_restoration as restoration
from smoe_core.studies.common import load_case
from smoe_core.parallel import torch_threads

ROOT = Path(__file__).resolve().parents[1]


def _model(K, H, W, C=1, seed=0, sigma=(2.0, 6.0), rotate=True, corner=None):
    """K random steered kernels over H x W (or inside the top-left ``corner`` x ``corner`` box)."""
    rng = np.random.default_rng(seed)
    hi = [W - 1, H - 1] if corner is None else [corner, corner]
    mu = rng.uniform([0, 0], hi, (K, 2))
    s = rng.uniform(*sigma, (K, 2))
    chol = np.stack([1 / s[:, 0], rng.normal(0, 0.15, K) if rotate else np.zeros(K), 1 / s[:, 1]], 1)
    pi = rng.uniform(0.5, 1.5, K)
    experts = rng.uniform(0, 1, (K, C))
    return smoe.SMoE(mu.astype(np.float32), chol.astype(np.float32), pi.astype(np.float32),
                     experts.astype(np.float32), image_shape=(H, W))


def _plain_gaussian_sum(mu, chol, amp, H, W):
    """sum_j amp_j exp(-1/2 (x - mu_j)^T Sigma_j^-1 (x - mu_j)) at every pixel centre, with Sigma_j^-1 built as a
    full 2 x 2 matrix from the Cholesky factor (float64 numpy)."""
    mu, chol, amp = (np.asarray(a, np.float64) for a in (mu, chol, amp))
    A = np.zeros((len(mu), 2, 2))
    A[:, 0, 0], A[:, 1, 0], A[:, 1, 1] = chol[:, 0], chol[:, 1], chol[:, 2]
    P = A @ A.transpose(0, 2, 1)
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    pts = np.stack([x.ravel(), y.ravel()], 1)  # (HW, 2)
    d = pts[:, None, :] - mu[None, :, :]  # (HW, K, 2)
    q = np.einsum("pki,kij,pkj->pk", d, P, d)
    out = np.exp(-0.5 * q) @ amp  # (HW, C)
    return out.reshape(H, W, -1)


# ---------------------------------------------------------------------- the variants
@pytest.mark.parametrize("C", [1, 3])
def test_gaussian_image_variant_is_a_plain_sum_of_gaussians(C):
    """A tiny model: the GaussianImage variant (pi folded into the colours, pi = 1, no normalization) renders,
    tiled and dense, exactly the hand-computed sum of anisotropic Gaussians with amplitude pi_j * e_j."""
    H, W = 12, 10
    init = _model(5, H, W, C=C, seed=3, sigma=(3.0, 5.0))
    gi = rs.variant_model(init, "gaussian_image")
    assert gi.rbf and np.array_equal(gi.pi, np.ones(5, np.float32))
    ref = _plain_gaussian_sum(init.mu, init.chol, init.experts * init.pi[:, None], H, W)
    ref = ref[..., 0] if C == 1 else ref
    for backend in ("tiled", "dense", "torch"):
        got = smoe.render(gi, backend=backend)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6, err_msg=backend)
    # and it is not the SMoE: normalization changes the render
    assert np.abs(smoe.render(rs.variant_model(init, "smoe")) - ref).max() > 1e-2


def test_unnormalized_variants_start_at_the_least_squares_gain():
    """With the image given, the RBF-type variants' experts are scaled by the one gain that best fits the image
    (the residual is orthogonal to the render); both start from the same render when pi = 1 (Grid)."""
    img = load_case("peppers", 32)
    init = rs.initial_model(img, 36)
    assert np.all(init.pi == 1)
    gi, rbf = rs.variant_model(init, "gaussian_image", img), rs.variant_model(init, "rbf", img)
    r = smoe.render(gi).astype(np.float64)
    assert abs(float(((r - img) * r).sum())) < 1e-3 * float((r * r).sum())
    np.testing.assert_allclose(smoe.render(rbf), r, atol=1e-6)
    unscaled = smoe.render(rs.variant_model(init, "gaussian_image")).astype(np.float64)
    gain = float((unscaled * img).sum() / (unscaled * unscaled).sum())
    np.testing.assert_allclose(gi.experts, init.experts * gain, rtol=1e-5)
    assert 0.4 < gain < 0.9  # a grid with spacing 2 sigma sums to about pi/2


def test_variant_settings():
    init = _model(6, 16, 16)
    assert [rs.backend_of(v) for v in rs.VARIANTS] == ["tiled", "dense", "tiled", "tiled"]
    assert [rs.variant_model(init, v).rbf for v in rs.VARIANTS] == [False, False, True, True]
    assert rs.variant_lr("gaussian_image", {"mu": 0.2}) == {"mu": 0.2, "pi": 0.0}
    assert rs.variant_lr("rbf") == {}
    np.testing.assert_array_equal(smoe.render(rs.variant_model(init, "smoe")), smoe.render(init))
    with pytest.raises(ValueError):
        rs.variant_model(init, "splat")


def test_gaussian_image_pi_stays_fixed_during_fit_and_rbf_pi_trains():
    img = load_case("parrot", 32, color=True)
    init = rs.initial_model(img, 25)
    gi, hist = rs.fit_variant(img, init, "gaussian_image", iters=12)
    assert len(hist) == 12 and gi.rbf and gi.n_kernels == init.n_kernels
    np.testing.assert_array_equal(gi.pi, np.ones(init.n_kernels, np.float32))
    assert not np.allclose(gi.experts, rs.variant_model(init, "gaussian_image", img).experts)
    assert hist.psnr.iloc[-1] > hist.psnr.iloc[0]
    rbf, _ = rs.fit_variant(img, init, "rbf", iters=12)
    assert np.abs(rbf.pi - 1).max() > 1e-3


# ---------------------------------------------------------------------- kernels per block and FLOPs
def _brute_force_counts(model, H, W, tile=16, cutoff=5.0, fill=4):
    """Per tile (row-major): the kernels whose box mu +- cutoff * sqrt(diag(Sigma)) contains a pixel centre of
    the tile, Sigma = inv(P) in float64; empty tiles get min(fill, K). Also the pixels of each tile."""
    P = model.precision().astype(np.float64)
    S = np.linalg.inv(P)
    hx, hy = cutoff * np.sqrt(S[:, 0, 0]), cutoff * np.sqrt(S[:, 1, 1])
    mu = model.mu.astype(np.float64)
    counts, pixels = [], []
    for ty in range(math.ceil(H / tile)):
        r0, r1 = ty * tile, min(H, ty * tile + tile) - 1
        for tx in range(math.ceil(W / tile)):
            c0, c1 = tx * tile, min(W, tx * tile + tile) - 1
            n = 0
            for k in range(model.n_kernels):
                xs = math.ceil(max(mu[k, 0] - hx[k], c0)) <= math.floor(min(mu[k, 0] + hx[k], c1))
                ys = math.ceil(max(mu[k, 1] - hy[k], r0)) <= math.floor(min(mu[k, 1] + hy[k], r1))
                n += xs and ys
            counts.append(n if n else min(fill, model.n_kernels))
            pixels.append((r1 - r0 + 1) * (c1 - c0 + 1))
    return np.array(counts, float), np.array(pixels, float)


@pytest.mark.parametrize("case", ["covering", "corner"])
def test_kernels_per_block_is_the_brute_force_count(case):
    """Mean over the 16 x 16 tiles (partial border tiles included) of the kernels whose cutoff box meets the
    tile, computed independently from Sigma = P^-1; the corner case has empty tiles, which get 4 kernels."""
    H, W = 45, 70
    if case == "covering":
        model = _model(40, H, W, seed=1, sigma=(1.0, 4.0))
    else:
        model = _model(12, H, W, seed=2, sigma=(0.5, 1.5), corner=12)
    counts, pixels = _brute_force_counts(model, H, W)
    if case == "corner":
        assert (counts == 4).sum() >= 5  # the fill path is exercised
    st = rs.kernel_stats(model, variant="smoe")
    assert st["kernels_per_block"] == pytest.approx(counts.mean(), abs=1e-12)
    assert st["kernels_per_pixel"] == pytest.approx((counts * pixels).sum() / (H * W), abs=1e-9)
    assert rs.kernels_per_block(model) == st["kernels_per_block"]
    assert rs.kernels_per_block(model, variant="global") == model.n_kernels


def test_kernels_per_block_of_tile_aligned_image_is_per_pixel_mean():
    model = _model(30, 48, 64, seed=4)
    st = rs.kernel_stats(model)
    assert st["kernels_per_block"] == pytest.approx(st["kernels_per_pixel"])


def test_ops_per_kernel_counts_and_flops_formula():
    assert [rs.ops_per_kernel(C) for C in (1, 3)] == [21, 25]  # 19 + 2C
    assert [rs.ops_per_kernel(C, rbf=True) for C in (1, 3)] == [20, 24]  # 18 + 2C
    assert rs.ops_per_kernel(1, linear=True) == 25 and rs.ops_per_kernel(3, rbf=True, linear=True) == 36
    for variant, rbf in (("smoe", False), ("global", False), ("rbf", True), ("gaussian_image", True)):
        for C in (1, 3):
            m = rs.variant_model(_model(20, 40, 40, C=C, seed=C), variant)
            st = rs.kernel_stats(m, variant=variant)
            assert st["ops_per_kernel"] == (19 if not rbf else 18) + 2 * C
            assert st["flops_per_pixel"] == pytest.approx(st["kernels_per_pixel"] * st["ops_per_kernel"])
            if variant == "global":
                assert st["flops_per_pixel"] == 20 * st["ops_per_kernel"]


def test_log_weight_op_count_matches_the_header():
    """The 12 operations of log_weight are the arithmetic operators and the comparison in the body of
    smoe_tile.h's log_weight; the other counted lines are in the CPU forward loop as written."""
    src = (ROOT / "raw_kernels" / "smoe_tile.h").read_text()
    start = src.index("SMOE_HD T log_weight(")
    body = src[src.index("{", start) + 1:src.index("\n}", start)]
    ops = sum(len(re.findall(pat, body)) for pat in (r" \+ ", r" - ", r" \* ", r" < "))
    assert ops == rs.LOG_WEIGHT_OPS == 12
    cpu = (ROOT / "raw_kernels" / "smoe_tile_cpu.cpp").read_text()
    for line in ("mx[p] = std::max(mx[p], Lj[p]);",
                 # exp_gate is the exp: its clamp only keeps the vector exp off its slow path (the source's comment)
                 "const T l = Lj[p], mxv = mxp[p];",  # loads (not counted), then the test and the exp's argument
                 "const T w = (mxv < below) ? T(0) : exp_gate<T>(l - mxv);",
                 "Sp[p] += w;",
                 "const T dx = pxp[p] - mux, dy = pyp[p] - muy;",
                 "accp[c * tp + p] += w * smoe::expert_value<T, LIN>(e, sl, c, dx, dy);"):
        assert line in cpu, line


# ---------------------------------------------------------------------- speed and memory
def test_memory_probes_see_known_allocations():
    x = torch.ones(1000, requires_grad=True)
    w = torch.full((1000,), 2.0)
    assert rs.saved_tensor_bytes(lambda: (x * w).sum(), exclude=[x]) == 4000
    assert rs.saved_tensor_bytes(lambda: (x * w).sum(), exclude=[x, w]) == 0

    def allocate():
        t = torch.empty(64 * 2**20 // 4)
        t.fill_(1.0)  # touch every page
        return float(t[-1])

    mb, how = rs.measure_peak_mb(allocate)
    assert how in ("vmhwm", "ru_maxrss")
    if how == "vmhwm":
        assert 60 <= mb < 200


@pytest.mark.parametrize("channels, memory", [("gray", "subprocess"), ("rgb", "inprocess")])
def test_speed_memory_item_gives_sane_numbers_for_both_backends(channels, memory):
    item = rs.speed_memory_items(["peppers"], [64], channels=[channels], crop=48, repeats=2, memory=memory)[0]
    rows = rs.run_speed_memory_item(item)
    assert [r["renderer"] for r in rows] == ["tiled", "dense"]
    C = 3 if channels == "rgb" else 1
    for r in rows:
        assert r["kernels_model"] == 64 and (r["height"], r["width"]) == (48, 48) and r["threads"] == 1
        assert 0 < r["best_ms"] <= r["median_ms"] < 60_000
        assert r["peak_mb"] >= 0 and math.isfinite(r["peak_mb"])
        assert r["memory_method"].split()[0] in ("vmhwm", "ru_maxrss") and memory[:2] in r["memory_method"]
        assert r["repeats"] == 2
        # autograd keeps at least the loss residual (H, W, C) for backward
        assert r["saved_mb"] * 2**20 >= 48 * 48 * C * 4
    tiled, dense = rows
    # the tiled renderer also keeps its output and per-pixel normalizer
    assert tiled["saved_mb"] * 2**20 >= 48 * 48 * (2 * C + 1) * 4
    assert dense["pairs"] == 48 * 48 * 64 and 0 < tiled["pairs"] <= dense["pairs"]
    assert dense["kernels_per_block"] == 64 and tiled["kernels_per_block"] <= 64
    runs = pd.DataFrame([dict(image="peppers", channels=channels, kernels=64, **r) for r in rows])
    table = rs.speed_memory_table(runs)
    assert len(table) == 1
    assert table["speedup"].iloc[0] == pytest.approx(dense["best_ms"] / tiled["best_ms"])


def test_dense_pass_needs_more_memory_than_tiled_in_a_fresh_process():
    """128 x 128 pixels, 1024 kernels: the dense renderer's chunk graphs (16M pixel-kernel pairs) against the
    tiled renderer's per-pixel arrays; measured in a fresh subprocess."""
    item = rs.speed_memory_items(["peppers"], [1024], channels=["gray"], crop=128, repeats=1)[0]
    mem = rs._memory_in_subprocess(item, 1)
    (tp, ts, th), (dp, ds, dh) = mem["tiled"], mem["dense"]
    if th == "vmhwm" and dh == "vmhwm":
        assert dp > 10 * max(tp, 1.0) and dp > 50
    assert ts > 0 and ds > 0


# ---------------------------------------------------------------------- Figs. 4 and 5
def test_fig4_fig5_experiments_run_and_are_deterministic(tmp_path):
    items = rs.quality_items(["peppers"], [16, 36], channels=["gray", "rgb"], crop=32, iters=6, perceptual=False)
    assert len(items) == 2 * 2 * 4 and all(isinstance(it, dict) for it in items)
    with torch_threads(1):
        a4 = rs.fig4_experiment(items, progress=False)
        b4 = rs.fig4_experiment(items, progress=False)
        a5 = rs.fig5_experiment(items, progress=False)
    pd.testing.assert_frame_equal(a4, b4)
    assert set(a4["variant"]) == set(rs.VARIANTS) and len(a4) == 16
    assert np.isfinite(a4["psnr"]).all() and (a4["psnr"] > 10).all()
    g = a4[a4["variant"] == "global"]
    assert (g["kernels_per_block"] == g["kernels"]).all()
    assert (a4[a4["variant"] != "global"]["kernels_per_block"] <= a4[a4["variant"] != "global"]["kernels"]).all()
    # the same runs feed Fig. 5
    m = a4.merge(a5, on=["image", "channels", "variant", "kernels"], suffixes=("_4", "_5"))
    np.testing.assert_array_equal(m["psnr_4"], m["psnr_5"])
    assert ((a5["ssim"] > 0) & (a5["ssim"] <= 1)).all()
    # with a results store: resumable, and a second call fits nothing new
    from smoe_core.studies.results import ResultsStore

    store = ResultsStore(tmp_path, "r_smoe", "test")
    with torch_threads(1):
        s4 = rs.fig4_experiment(items[:4], store, progress=False)
        rows_before = len(store.table("quality_runs"))
        rs.fig5_experiment(items[:4], store, progress=False)
    assert rows_before == 4 == len(store.table("quality_runs"))
    assert len(rs.fig4_experiment(items[:2], store, progress=False)) == 2  # only the rows of the items asked for
    same = a4[(a4.channels == "gray") & (a4.kernels == 16)].sort_values("variant")
    np.testing.assert_array_equal(s4.sort_values(["variant"])["psnr"].to_numpy(), same["psnr"].to_numpy())
    summary = rs.fig4_summary(pd.concat([store.table("quality_runs")]))
    assert {"smoe_minus_gi_db", "flops_smoe_over_gi", "smoe_minus_global_db"} <= set(summary.columns)


# ---------------------------------------------------------------------- denoising and super-resolution items
def test_denoise_items_reproduce_denoising_experiment_and_keep_outputs(tmp_path):

    window = (4, 20, 8, 24)
    items = restoration.denoise_items(["peppers", "flower"], [25], channels=["gray"], crop=32, models=2, iters=5,
                             baselines=["tv"], out_dir=tmp_path, save_images=["flower"], window=window)
    got = restoration.denoise_runs(items, progress=False)
    ref = restoration.denoising_experiment({n: load_case(n, 32) for n in ("peppers", "flower")}, [25], models=(1, 2),
                                  iters=5, baselines=["tv"], progress=False)
    np.testing.assert_allclose(got["psnr"], ref["psnr"], rtol=1e-12)
    np.testing.assert_allclose(got["ssim"], ref["ssim"], rtol=1e-12)
    assert list(got["method"]) == list(ref["method"])
    assert restoration.load_outputs(items[0], "denoise") == {}  # peppers: not kept
    outs = restoration.load_outputs(items[1], "denoise")
    assert {"clean", "s25_noisy", "s25_smoe S=1", "s25_smoe S=2", "s25_tv"} <= set(outs)
    assert outs["s25_tv"].shape == (16, 16)
    np.testing.assert_array_equal(outs["clean"], load_case("flower", 32)[4:20, 8:24])
    fig = restoration.denoise_crops_figure(items[1], got)
    assert fig is not None and len(fig.axes) >= 5


def test_superres_items_reproduce_superres_experiment():

    items = restoration.superres_items(["peppers"], [2, 3], channels=["rgb"], crop=30, iters=5)
    got = restoration.superres_runs(items, progress=False)
    ref = restoration.superres_experiment({"peppers": load_case("peppers", 30, color=True)}, [2, 3],
                                 methods=("smoe", "bicubic", "lanczos"), iters=5, progress=False)
    assert list(got["method"]) == list(ref["method"])
    np.testing.assert_allclose(got["psnr"], ref["psnr"], rtol=1e-12)
    np.testing.assert_allclose(got["ssim"], ref["ssim"], rtol=1e-12)
