"""AS-SMoE initializer (adaptive-segmentation paper, section IV): CBB geometry, export mapping (hand-computed),
Algorithm 1 (target, doubling, pi < 0 removal, batched == one at a time, determinism), the pipeline on
hand-made label maps, and Table I's function. Label maps are hand-made, so nothing here needs MDBSCAN."""
import math
import sys
import types

import numpy as np
import pytest

from smoe_core import SMoE, metrics, render
from smoe_core.init.as_smoe import (LocalModels, adaptive_kernel_adjustment, as_smoe, cbb_to_image, crop_cbbs,
                                    export_kernels)
from smoe_core.studies.as_smoe_segments import segment_epochs_table


def _scene(H=64, W=64, seed=0):
    """A gradient background (label 3), a bright rectangle (label 1) and a dark disk (label 2)."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[0:H, 0:W]
    img = 0.3 + 0.3 * cc / W
    labels = np.full((H, W), 3, np.int32)
    rect = (rr >= 8) & (rr < 28) & (cc >= 6) & (cc < 46)
    disk = (rr - 44) ** 2 + (cc - 40) ** 2 <= 12**2
    img[rect], labels[rect] = 0.85, 1
    img[disk], labels[disk] = 0.1, 2
    img = np.clip(img + rng.normal(0, 0.01, img.shape), 0, 1).astype(np.float32)
    return img, labels


def _local(mu, chol, pi, experts, slots):
    """A LocalModels built by hand (one entry per CBB)."""
    n = len(mu)
    return LocalModels(mu=[np.asarray(m, float) for m in mu], chol=[np.asarray(c, float) for c in chol],
                       pi=[np.asarray(p, float) for p in pi], experts=[np.asarray(e, float) for e in experts],
                       ids=np.arange(n), steps=np.ones(n, int), best_step=np.ones(n, int), psnr=np.zeros(n),
                       reached=np.zeros(n, bool), slots=np.asarray(slots), slots_at_best=np.asarray(slots), seconds=0.0)


# ---------------------------------------------------------------------- cropping and rescaling
def test_crop_box_is_centred_square_with_corona_and_zero_padding():
    img = np.ones((54, 54), np.float32)
    labels = np.full((54, 54), 2, np.int32)
    labels[10:30, 5:45] = 1  # 20 rows x 40 columns
    c = crop_cbbs(img, labels, cbb=32, corona=5)
    assert c.n == 2 and list(c.labels) == [1, 2]
    # segment 1: tb = 40 + 10 = 50, rows centred: 10 - (50 - 20) // 2 = -5, columns 5 - 5 = 0
    assert c.side[0] == 50 and tuple(c.origin[0]) == (-5, 0)
    assert c.scale[0] == pytest.approx(50 / 32)
    assert list(c.n_pixels) == [800, 54 * 54 - 800]
    # segment 2 is the whole frame: tb = 54 + 10 = 64 (s = 2) from (-5, -5); the 5-pixel zero border of the crop
    # becomes 2.5 CBB pixels: the first two CBB rows/columns are dark, the centre is 1
    assert c.side[1] == 64 and tuple(c.origin[1]) == (-5, -5)
    t = c.targets[1, ..., 0]
    assert t[0, 16] == pytest.approx(0.0, abs=1e-6) and t[1, 16] == pytest.approx(0.0, abs=0.02)
    assert t[16, 16] == pytest.approx(1.0, abs=1e-6) and t.min() >= 0 and t.max() <= 1
    # masks: CBB pixels whose nearest source pixel belongs to the segment (segment 1: inner rows 5/2..)
    assert c.masks[0].any() and not c.masks[0][0].any()
    assert c.targets.shape == (2, 32, 32, 1)


# ---------------------------------------------------------------------- export mapping
def test_cbb_to_image_hand_computed():
    # a 64-pixel box resized to 32: s = 2. CBB point (x=3, y=5) -> crop (3.5 * 2 - 0.5, 5.5 * 2 - 0.5) = (6.5, 10.5),
    # plus the crop origin (row 10, col 20) -> image (26.5, 20.5); sigma 3 in the CBB -> sigma 6
    mu, chol = cbb_to_image([[3.0, 5.0]], [[1 / 3, 0.0, 1 / 3]], (10, 20), 64, 32)
    np.testing.assert_allclose(mu, [[26.5, 20.5]])
    np.testing.assert_allclose(chol, [[1 / 6, 0.0, 1 / 6]])
    # a steered kernel: the covariance scales by s^2 (the paper's Sigma_s = s' Sigma with s' = s^2)
    A = np.array([[0.7, 0.2, 0.4]])
    _, A2 = cbb_to_image([[0.0, 0.0]], A, (0, 0), 96, 32)  # s = 3
    to_cov = lambda a: SMoE(np.zeros((1, 2)), a, np.ones(1), np.zeros((1, 1))).covariance()[0]
    np.testing.assert_allclose(to_cov(A2), 9.0 * to_cov(A), rtol=1e-10)
    # pixel centres: CBB pixel 0 averages crop pixels 0 and 1 (s = 2), whose centre is 0.5
    np.testing.assert_allclose(cbb_to_image([[0.0, 0.0]], A, (0, 0), 64, 32)[0], [[0.5, 0.5]])


def test_single_segment_global_render_is_the_upscaled_cbb_render():
    img = np.full((54, 54), 0.5, np.float32)
    labels = np.ones((54, 54), np.int32)  # one segment: tb = 64, origin (-5, -5), s = 2
    cbbs = crop_cbbs(img, labels, cbb=32, corona=5)
    rng = np.random.default_rng(3)
    K = 12
    mu = rng.uniform(4, 27, (K, 2))  # CBB positions that map inside the image: x_img = 2 x + 0.5 - 5
    chol = np.stack([rng.uniform(0.3, 0.6, K), rng.normal(0, 0.1, K), rng.uniform(0.3, 0.6, K)], 1)
    pi, experts = rng.uniform(0.5, 1.5, K), rng.uniform(0, 1, (K, 1))
    local = _local([mu], [chol], [pi], [experts], [K])
    ex = export_kernels(local, cbbs, labels)
    assert len(ex["pi"]) == K  # all inside the segment
    glob = SMoE(ex["mu"], ex["chol"], ex["pi"], ex["experts"], image_shape=(54, 54))
    cbb_model = SMoE(mu, chol, pi, experts, image_shape=(32, 32))
    up = render(cbb_model, backend="dense", scale=2.0)  # 64 x 64 over the crop, pixel centres as the export's
    np.testing.assert_allclose(render(glob, backend="dense"), up[5:59, 5:59], atol=1e-5)


def test_export_drops_kernels_outside_their_segment_and_with_pi_not_positive():
    img = np.zeros((64, 64), np.float32)
    labels = np.ones((64, 64), np.int32)
    labels[:, 32:] = 2  # segment 1: columns 0..31 (tb = 74), segment 2: columns 32..63
    cbbs = crop_cbbs(img, labels, cbb=32, corona=5)
    s, (r0, c0) = cbbs.scale[0], cbbs.origin[0]
    to_cbb = lambda x, y: [(x - c0 + 0.5) / s - 0.5, (y - r0 + 0.5) / s - 0.5]  # inverse of the export map
    mu = [to_cbb(10, 10), to_cbb(31.4, 20), to_cbb(31.6, 20), to_cbb(-3, 20), to_cbb(20, 30)]
    pi = [1.0, 1.0, 1.0, 1.0, -0.1]
    local = _local([mu, [[16.0, 16.0]]], [np.tile([0.5, 0.0, 0.5], (5, 1)), [[0.5, 0.0, 0.5]]],
                   [pi, [1.0]], [np.zeros((5, 1)), np.zeros((1, 1))], [5, 1])
    ex = export_kernels(local, cbbs, labels, pi_export="keep")
    # kept: (10, 10) and (31.4, 20); dropped: 31.6 rounds to column 32 (segment 2), -3 is outside the image,
    # and the pi < 0 kernel
    np.testing.assert_allclose(ex["mu"][ex["cbb"] == 0], [[10, 10], [31.4, 20]], atol=1e-9)
    assert list(ex["exported"]) == [2, 1]
    assert (ex["pi"] > 0).all()
    # pi export modes: "count" multiplies by the CBB's kernel count, "mean" divides by its mean pi
    np.testing.assert_allclose(export_kernels(local, cbbs, labels, pi_export="count")["pi"][:2], [5.0, 5.0])
    np.testing.assert_allclose(export_kernels(local, cbbs, labels, pi_export="mean")["pi"][:2], [1 / 0.78] * 2)


def test_export_cbb_keep_rule_tests_the_rounded_cbb_position_against_the_cbb_mask():
    """The authors' keep rule: a kernel's rounded CBB pixel must be set in the CBB's segment mask, which holds
    the label of that pixel's nearest source pixel. Near a boundary it keeps kernels the exact rule drops."""
    img = np.zeros((64, 64), np.float32)
    labels = np.ones((64, 64), np.int32)
    labels[:, 32:] = 2
    cbbs = crop_cbbs(img, labels, cbb=32, corona=5)
    s, (r0, c0) = cbbs.scale[0], cbbs.origin[0]
    assert (s, c0) == (74 / 32, -21)
    # CBB column 22 samples image column c0 + floor(22.5 * s) = -21 + 52 = 31 (segment 1), column 23 samples 33
    assert cbbs.masks[0, 16, 22] and not cbbs.masks[0, 16, 23]
    mu = [[22.49, 16.0],   # image x = c0 + 22.99 s - 0.5 = 31.66: rounds to column 32 (segment 2), CBB pixel 22
          [22.51, 16.0],   # CBB pixel 23: dropped by both rules
          [10.0, 16.0],    # well inside: kept by both
          [-0.6, 16.0]]    # rounds to CBB column -1, outside the CBB: dropped by the CBB rule
    local = _local([mu, [[16.0, 16.0]]], [np.tile([0.5, 0.0, 0.5], (4, 1)), [[0.5, 0.0, 0.5]]],
                   [[1.0] * 4, [1.0]], [np.zeros((4, 1)), np.zeros((1, 1))], [4, 1])
    image_rule = export_kernels(local, cbbs, labels, pi_export="keep")
    cbb_rule = export_kernels(local, cbbs, labels, pi_export="keep", keep_rule="cbb")
    x_image = c0 + (np.array(mu)[:, 0] + 0.5) * s - 0.5
    np.testing.assert_allclose(cbb_rule["mu"][cbb_rule["cbb"] == 0][:, 0], x_image[[0, 2]], atol=1e-9)
    np.testing.assert_allclose(image_rule["mu"][image_rule["cbb"] == 0][:, 0], x_image[[2]], atol=1e-9)
    assert list(cbb_rule["exported"]) == [2, 1]
    with pytest.raises(ValueError, match="mask_margin"):
        export_kernels(local, cbbs, labels, keep_rule="cbb", mask_margin=1)
    with pytest.raises(ValueError, match="keep_rule"):
        export_kernels(local, cbbs, labels, keep_rule="nearest")


# ---------------------------------------------------------------------- Algorithm 1
def _cbb_set():
    rng = np.random.default_rng(1)
    flat = np.full((32, 32), 0.4, np.float32)
    edge = np.full((32, 32), 0.2, np.float32)
    edge[:, 13:] = 0.8
    texture = rng.uniform(0, 1, (32, 32)).astype(np.float32)
    return flat, edge, texture


def test_algorithm1_reaches_target_on_easy_cbbs_and_doubles_on_a_hard_one():
    flat, edge, texture = _cbb_set()
    loc = adaptive_kernel_adjustment(np.stack([flat, edge, texture]), [5, 6, 7], target_psnr=30.0, epochs=40,
                                     checkpoint=10, max_kernels=40, progress=False)
    assert list(loc.reached) == [True, True, False]
    assert loc.steps[0] == 1 and loc.psnr[0] > 100  # experts from the crop: exact at once
    assert 1 < loc.steps[1] < 40 and loc.psnr[1] > 30.0  # stopped at the target
    assert loc.steps[2] == 40 and loc.slots[2] == 40  # 10 -> 20 -> 40, then the limit
    assert loc.n_kernels[2] > 20  # the record is a doubled model
    assert loc.psnr[2] < 30.0


def test_doubling_leaves_the_model_output_unchanged_without_jitter():
    _, edge, _ = _cbb_set()
    kw = dict(target_psnr=np.inf, checkpoint=5, max_kernels=20, jitter=0.0, sparsity=0.0, progress=False,
              lr={"mu": 0.0, "chol": 0.0, "pi": 0.0, "experts": 0.0})  # frozen parameters: only the doubling acts
    loc = adaptive_kernel_adjustment(edge[None], epochs=8, **kw)
    assert loc.slots[0] == 20
    ref = adaptive_kernel_adjustment(edge[None], epochs=8, **dict(kw, checkpoint=None))
    m2 = SMoE(loc.mu[0], loc.chol[0], loc.pi[0], loc.experts[0])
    m1 = SMoE(ref.mu[0], ref.chol[0], ref.pi[0], ref.experts[0])
    np.testing.assert_allclose(render(m2, (32, 32), backend="dense"), render(m1, (32, 32), backend="dense"), atol=1e-6)
    assert loc.pi[0].sum() == pytest.approx(ref.pi[0].sum())  # pi halved: sum(pi), hence the loss, unchanged


def test_kernels_with_negative_pi_are_dropped():
    _, edge, texture = _cbb_set()
    loc = adaptive_kernel_adjustment(np.stack([edge, texture]), target_psnr=np.inf, epochs=60, checkpoint=None,
                                     sparsity=1e-2, progress=False)
    assert all((p > 0).all() for p in loc.pi)
    assert (loc.n_kernels < loc.slots).all()  # some kernels' pi went below zero and were removed
    assert loc.n_kernels[0] <= 4 and loc.psnr[0] > 30  # two flat regions need few kernels


@pytest.mark.parametrize("backend", ["tiled", "dense"])
def test_batched_equals_one_cbb_at_a_time(backend):
    flat, edge, texture = _cbb_set()
    stack = np.stack([texture, edge, flat, texture[::-1].copy()])
    ids = [11, 3, 7, 2]
    kw = dict(target_psnr=27.0, epochs=24, checkpoint=8, max_kernels=40, sparsity=1e-3, seed=4, backend=backend,
              progress=False)
    batch = adaptive_kernel_adjustment(stack, ids, **kw)
    assert batch.reached[1] and not batch.reached[0]  # CBBs leave the batch at different times
    for b in range(len(ids)):
        one = adaptive_kernel_adjustment(stack[b:b + 1], [ids[b]], **kw)
        assert one.steps[0] == batch.steps[b] and one.slots[0] == batch.slots[b]
        assert one.n_kernels[0] == batch.n_kernels[b]
        for name in ("mu", "chol", "pi", "experts"):
            if backend == "tiled":  # per-tile arithmetic and a sequential gradient sum: bit for bit
                np.testing.assert_array_equal(getattr(one, name)[0], getattr(batch, name)[b])
            else:  # batched BLAS products round differently with the batch size (float32)
                np.testing.assert_allclose(getattr(one, name)[0], getattr(batch, name)[b], rtol=1e-3, atol=1e-4)
        if backend == "tiled":
            assert one.psnr[0] == batch.psnr[b]
        else:  # compare MSEs: rel 2.3e-4 is 1e-3 dB; abs 1e-12 (above 120 dB) absorbs float32 rounding of a
            # flat CBB fitted to ~150 dB, where 1e-18 of MSE is 0.01 dB
            assert 10 ** (-one.psnr[0] / 10) == pytest.approx(10 ** (-batch.psnr[b] / 10), rel=2.3e-4, abs=1e-12)


# ---------------------------------------------------------------------- the pipeline
def test_as_smoe_pipeline_kernels_land_in_their_segment_and_is_deterministic():
    img, labels = _scene()
    res = as_smoe(img, labels, epochs=60, progress=False)
    model, rec = res
    assert rec["method"] == "as_smoe" and rec["n_segments"] == 3 and rec["segmentation"] == "given"
    for key in ("seconds", "seconds_segmentation", "seconds_local", "n_local_kernels", "n_kernels",
                "mean_segment_psnr", "per_cbb"):
        assert key in rec
    assert rec["n_kernels"] == model.n_kernels == rec["per_cbb"]["n_exported"].sum()
    assert rec["n_local_kernels"] == rec["per_cbb"]["n_local_kernels"].sum() >= model.n_kernels
    assert model.image_shape == img.shape and (model.pi > 0).all()
    # every kept kernel lies (rounded) inside a segment, and the per-segment counts match the record
    r = np.floor(model.mu[:, 1] + 0.5).astype(int)
    c = np.floor(model.mu[:, 0] + 0.5).astype(int)
    assert ((r >= 0) & (r < 64) & (c >= 0) & (c < 64)).all()
    per = rec["per_cbb"].set_index("label")["n_exported"]
    for lab in (1, 2, 3):
        assert (labels[r, c] == lab).sum() == per[lab]
    assert metrics.psnr(render(model), img) > 15.0
    # determinism under a seed; another seed gives another model
    again, _ = as_smoe(img, labels, epochs=60, progress=False)
    for name in ("mu", "chol", "pi", "experts"):
        np.testing.assert_array_equal(getattr(again, name), getattr(model, name))
    other, _ = as_smoe(img, labels, epochs=60, seed=1, progress=False)
    assert other.n_kernels != model.n_kernels or not np.allclose(other.mu, model.mu)


def test_as_smoe_segments_lazily_with_mdbscan(monkeypatch):
    img, labels = _scene(32, 32)
    calls = []
    fake = types.ModuleType("smoe_core.segment")
    fake.mdbscan = lambda image, d_th=40: calls.append(d_th) or labels
    monkeypatch.setitem(sys.modules, "smoe_core.segment", fake)
    model, rec = as_smoe(img, d_th=33, epochs=5, progress=False)
    assert calls == [33] and rec["segmentation"] == "mdbscan" and rec["n_segments"] == len(np.unique(labels))


def test_segment_epochs_table():
    img, labels = _scene(48, 48)
    tab = segment_epochs_table({"scene": img}, epochs=(10, 20), labels={"scene": labels}, mode="fixed",
                               sparsity=0.0, progress=False)
    assert list(tab["image"]) == ["scene", "scene", "all", "all"]
    s = tab[tab.image == "scene"].set_index("epochs")
    assert s.loc[20, "mean_psnr"] >= s.loc[10, "mean_psnr"] and s.loc[20, "seconds"] > s.loc[10, "seconds"]
    assert (s["n_segments"] == 3).all() and (s["mean_kernels"] <= 10).all()
    alg = segment_epochs_table({"scene": img}, epochs=(10, 20), labels={"scene": labels}, progress=False)
    assert set(alg.columns) >= {"image", "epochs", "n_segments", "mean_psnr", "seconds"}


# ---------------------------------------------------------------------- Table I: why the paper's curve rises
def _unit_render(mu, chol, logpi, experts, n):
    """SMoE in [0, 1] coordinates of an n x n square, pixel centres (i + 0.5) / n, written out here (the
    authors' code's units; independent of the package's renderers)."""
    import torch

    c = (torch.arange(n, dtype=mu.dtype) + 0.5) / n
    y, x = torch.meshgrid(c, c, indexing="ij")
    dx, dy = x.reshape(-1, 1) - mu[:, 0], y.reshape(-1, 1) - mu[:, 1]
    q = (chol[:, 0] * dx + chol[:, 1] * dy) ** 2 + (chol[:, 2] * dy) ** 2
    w = torch.softmax(logpi - 0.5 * q, dim=1)
    return (w @ experts).reshape(n, n)


def _adam_steps_both_units(rates_px, steps=6, n=8):
    """Fits the same kernels to one n x n target for ``steps`` Adam steps twice: in [0, 1] coordinates with
    torch.optim.Adam at the authors' rates, and in pixel coordinates with the package's renderer and Adam at
    ``rates_px``. Returns (unit-run parameters mapped to pixels, pixel-run parameters)."""
    import torch

    from smoe_core.studies.as_smoe_segments import AUTHORS_UNIT_LR
    from smoe_core.training import Adam

    rng = np.random.default_rng(3)
    target = torch.tensor(rng.uniform(0, 1, (n, n)))
    mu_u = rng.uniform(0.1, 0.9, (3, 2))
    chol_u = np.column_stack([rng.uniform(4, 8, 3), rng.uniform(-2, 2, 3), rng.uniform(4, 8, 3)])
    pi, experts = np.array([0.3, 0.5, 0.2]), rng.uniform(0, 1, (3, 1))
    unit = {k: torch.tensor(v, requires_grad=True) for k, v in
            dict(mu=mu_u, chol=chol_u, pi=pi, experts=experts).items()}
    opt = torch.optim.Adam([dict(params=[unit[k]], lr=AUTHORS_UNIT_LR.get(k, 5e-3)) for k in unit])
    for _ in range(steps):
        opt.zero_grad()
        out = _unit_render(unit["mu"], unit["chol"], torch.log(unit["pi"]), unit["experts"], n)
        ((out - target) ** 2).mean().backward()
        opt.step()
    px = {k: torch.tensor(v, requires_grad=True) for k, v in
          dict(mu=mu_u * n - 0.5, chol=chol_u / n, pi=pi, experts=experts).items()}
    popt = Adam(px, dict(rates_px, pi=5e-3))
    for _ in range(steps):
        popt.zero_grad()
        m = SMoE(popt.params["mu"], popt.params["chol"], popt.params["pi"], popt.params["experts"])
        out = render(m, (n, n), backend="dense")
        ((out - target) ** 2).mean().backward()
        popt.step()
    mapped = dict(mu=unit["mu"].detach().numpy() * n - 0.5, chol=unit["chol"].detach().numpy() / n,
                  experts=unit["experts"].detach().numpy())
    return mapped, {k: popt.params[k].detach().numpy() for k in mapped}


def test_unit_rates_converted_to_pixels_make_the_same_steps():
    """The authors' [0, 1]-coordinate rates converted by unit_lr_to_pixels make, in pixel coordinates, the steps
    the authors' rates make in [0, 1] coordinates (an independent [0, 1] renderer and torch's Adam); the same
    numbers used as pixel rates do not."""
    from smoe_core.studies.as_smoe_segments import AUTHORS_UNIT_LR, unit_lr_to_pixels

    n = 8
    conv = unit_lr_to_pixels(AUTHORS_UNIT_LR, n)
    assert conv == pytest.approx({"mu": 1e-3 * n, "chol": 1.0 / n, "experts": 1e-3})
    start, _ = _adam_steps_both_units(conv, steps=0, n=n)
    mapped, px = _adam_steps_both_units(conv, n=n)
    _, raw = _adam_steps_both_units(AUTHORS_UNIT_LR, n=n)
    for k in mapped:
        moved = np.abs(mapped[k] - start[k]).max()
        assert moved > 1e-3
        # equal up to Adam's eps (added to gradients of another scale in each unit system)
        assert np.abs(px[k] - mapped[k]).max() <= 1e-3 * moved, k
        if k != "experts":  # the same numbers as pixel rates: other steps
            assert np.abs(raw[k] - mapped[k]).max() > 0.5 * moved, k


def test_table1_settings_factorial():
    from smoe_core.init.as_smoe import DEFAULT_LOCAL_LR
    from smoe_core.studies.as_smoe_segments import table1_settings

    st = table1_settings(16)
    assert len(st) == 9 and list(st)[0] == "ours"
    assert len({(v["experts"], v["rates"], v["sigma"]) for v in st.values()}) == 9
    ours = st["ours"]["kwargs"]
    assert ours == dict(experts_init="crop", lr=DEFAULT_LOCAL_LR, init_sigma=None)
    allthree = st["random experts + authors' rates + authors' sigma"]["kwargs"]
    assert allthree["experts_init"] == "random" and allthree["init_sigma"] == pytest.approx(0.035 * 16)
    assert allthree["lr"] == pytest.approx(dict(DEFAULT_LOCAL_LR, mu=0.016, chol=1 / 16, experts=1e-3))
    raw = [v for k, v in st.items() if "pixel rates" in k][0]["kwargs"]["lr"]
    assert raw["mu"] == 1e-3 and raw["chol"] == 1.0
    # the number of differences from ours never decreases along the order
    on = [sum(v[f] != o for f, o in (("experts", "crop"), ("rates", "ours"), ("sigma", "ours"))) for v in st.values()]
    assert on == sorted(on)


def test_table1_explanation_rows_and_starting_points():
    from smoe_core.studies.as_smoe_segments import table1_explanation

    img, labels = _scene(48, 48)
    names = ["ours", "authors' rates", "random experts", "random experts + authors' rates + authors' sigma"]
    runs = table1_explanation({"scene": img}, epochs=(8, 16), labels={"scene": labels}, settings=names,
                              seeds=(0, 1), target_psnr=60.0, checkpoint=8)
    assert len(runs) == len(names) * 2 * 3 and (runs["n_segments"] == 3).all()
    assert sorted(set(runs["epochs"])) == [1, 8, 16]
    # the recorded best PSNR never falls with the epochs
    for _, g in runs.groupby(["setting", "seed"]):
        assert np.all(np.diff(g.sort_values("epochs")["mean_psnr"].to_numpy()) >= -1e-9)
    # "ours" is segment_epochs_table's "all" rows
    ref = segment_epochs_table({"scene": img}, (1, 8, 16), labels={"scene": labels}, progress=False,
                               target_psnr=60.0, checkpoint=8)
    ref = ref[ref["image"] == "all"]
    got = runs[(runs["setting"] == "ours") & (runs["seed"] == 0)]
    np.testing.assert_allclose(got["mean_psnr"].to_numpy(), ref["mean_psnr"].to_numpy())
    start = runs[(runs["epochs"] == 1) & (runs["seed"] == 0)].set_index("setting")["mean_psnr"]
    # rates act from the first update on: the same initial state, the same starting PSNR
    assert start["ours"] == start["authors' rates"]
    # crop experts start on the piecewise-constant scene's values; random ones far below them
    assert start["random experts"] < start["ours"] - 3.0
    later = runs[(runs["epochs"] == 16) & (runs["seed"] == 0)].set_index("setting")["mean_psnr"]
    assert later["ours"] != later["authors' rates"]
    with pytest.raises(ValueError, match="unknown Table I settings"):
        table1_explanation({"scene": img}, epochs=(2,), labels={"scene": labels}, settings=["nope"])


def test_table1_explanation_summary_by_hand():
    import pandas as pd

    from smoe_core.studies.as_smoe_segments import table1_explanation_summary

    runs = pd.DataFrame([dict(setting=s, seed=sd, epochs=e, mean_psnr=v + sd)
                         for s, base in (("a", 10.0), ("b", 20.0)) for sd in (0, 2)
                         for e, v in ((1, base), (100, base + 1), (400, base + 4))])
    paper = pd.DataFrame(dict(epochs=[100, 200, 400], psnr_db=[12.0, 14.0, 16.0]))
    out = table1_explanation_summary(runs, paper).set_index("setting")
    assert list(out.index) == ["a", "b", "paper"]
    # means over the seeds 0 and 2: +1 dB
    assert out.loc["a", "psnr_start"] == 11.0 and out.loc["b", "psnr_400"] == 25.0
    assert out.loc["a", "rise"] == 3.0 and out.loc["paper", "rise"] == 4.0
    # a: (12 - 12, 15 - 16) -> rms sqrt(0.5); b: (22 - 12, 25 - 16) -> sqrt((100 + 81) / 2)
    assert out.loc["a", "rms_vs_paper"] == pytest.approx(math.sqrt(0.5))
    assert out.loc["b", "rms_vs_paper"] == pytest.approx(math.sqrt(90.5))
    assert np.isnan(out.loc["paper", "psnr_start"]) and out.loc["paper", "psnr_100"] == 12.0
    no_paper = table1_explanation_summary(runs, paper.assign(epochs=[5, 6, 7]))
    assert list(no_paper["setting"]) == ["a", "b"] and "rms_vs_paper" not in no_paper


def test_table1_explanation_text_concludes_only_from_the_numbers():
    import pandas as pd

    from smoe_core.studies.as_smoe_segments import table1_explanation_summary, table1_explanation_text, table1_settings

    st = table1_settings()
    paper = pd.DataFrame(dict(epochs=[100, 400], psnr_db=[18.0, 24.0]))

    def runs(near):  # the setting ``near`` on the paper's curve, every other one 3 dB above it
        return pd.DataFrame([dict(setting=k, experts=v["experts"], rates=v["rates"], sigma=v["sigma"], seed=0,
                                  epochs=e, mean_psnr=p + (0.0 if k == near else 3.0))
                             for k, v in st.items() for e, p in ((1, 10.0), (100, 18.0), (400, 24.0))])

    allthree = "random experts + authors' rates + authors' sigma"
    text = table1_explanation_text(table1_explanation_summary(runs(allthree), paper))
    assert f"Closest to the paper: {allthree}:" in text and "0.00 dB rms" in text
    assert "Conclusion:" in text and "Taken as pixel rates" in text
    # main effects: the all-three setting alone is 3 dB lower, so each factor's mean difference is -3/4 dB
    assert "random experts -0.75 dB at 100 epochs, rise +0.00 dB" in text
    text = table1_explanation_text(table1_explanation_summary(runs("ours"), paper))
    assert "Closest to the paper: ours:" in text and "Conclusion:" not in text
