"""AS-SMoE initializer (adaptive-segmentation paper, section IV): CBB geometry, export mapping (hand-computed),
Algorithm 1 (target, doubling, pi < 0 removal, batched == one at a time, determinism), the pipeline on
hand-made label maps, and Table I's function. Label maps are hand-made, so nothing here needs MDBSCAN."""
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
