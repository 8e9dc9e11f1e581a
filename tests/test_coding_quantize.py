"""Quantizer of the coding paper (eqs. 13-15), ranges, pruning rule and fake quantization for QAT."""
import math

import numpy as np
import pytest
import torch

from smoe_core import SMoE, fit, render
from smoe_core.tasks.coding import quantize as Q
from smoe_core.tasks.coding.quantize import (PI_RANGE, FakeQuantizer, QuantSpec, active_mask, fake_quantize,
                                             from_indices, grid_centres, grid_shape, quantize_model, ranges, step,
                                             to_indices)

H, W = 20, 28
GRID = (7, 5)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def grid_model(seed=0, jitter=0.6, pi_low=0.0, color_space="yuv", C=3):
    """A constant-expert SMoE on the 7 x 5 grid of a 20 x 28 image, centres jittered around the grid."""
    rng = np.random.default_rng(seed)
    g = grid_centres((H, W), GRID)
    K = g.shape[0]
    mu = g + rng.normal(0, jitter, (K, 2))
    chol = np.stack([rng.uniform(0.3, 0.6, K), rng.normal(0, 0.1, K), rng.uniform(0.3, 0.6, K)], 1)
    pi = rng.uniform(pi_low, 2.0, K)
    experts = rng.uniform(0, 1, (K, C))
    m = SMoE(mu.astype(np.float32), chol.astype(np.float32), pi.astype(np.float32), experts.astype(np.float32),
             image_shape=(H, W), color_space=color_space)
    return m, g


def test_eq14_step_sign():
    # step (b - a)/(2^n - 1) > 0: the paper's printed (a - b)/(2^n - 1) would give non-positive indices
    assert step(0.0, 2.0, 4) == pytest.approx(2.0 / 15.0)
    assert step(-1.0, 3.0, 9) > 0
    idx = to_indices(np.array([0.0, 1.0, 2.0]), 0.0, 2.0, 4)
    assert idx.tolist() == [0, 8, 15]  # 1.0 / (2/15) = 7.5 rounds half to even: 8
    printed = (0.0 - 2.0) / 15
    assert np.round((2.0 - 0.0) / printed) == -15  # what eq. 14 as printed gives for the top value
    assert from_indices(np.array([15]), 0.0, 2.0, 4)[0] == pytest.approx(2.0)


@pytest.mark.parametrize("bits", [1, 4, 7, 9, 10, 16])
def test_round_trip_error_and_index_range(bits):
    rng = np.random.default_rng(bits)
    lo, hi = -1.7, 2.3
    v = rng.uniform(lo, hi, 5000)
    v[:2] = lo, hi
    idx = to_indices(v, lo, hi, bits)
    assert idx.dtype == np.int32
    assert idx.min() >= 0 and idx.max() <= 2**bits - 1
    assert idx[0] == 0 and idx[1] == 2**bits - 1
    back = from_indices(idx, lo, hi, bits)
    assert np.abs(back - v).max() <= step(lo, hi, bits) / 2 * (1 + 1e-9)
    # clipped values go to the ends
    out = to_indices(np.array([lo - 5, hi + 5]), lo, hi, bits)
    assert out.tolist() == [0, 2**bits - 1]


def test_degenerate_range():
    assert to_indices(np.array([0.0, 0.0]), 0.0, 0.0, 9).tolist() == [0, 0]
    assert from_indices(np.array([0]), 0.25, 0.25, 9).tolist() == [0.25]
    t = torch.zeros(4, requires_grad=True)
    y = fake_quantize(t, 0.0, 0.0, 9)
    y.sum().backward()
    assert torch.equal(y.detach(), torch.zeros(4)) and torch.equal(t.grad, torch.ones(4))


def test_argument_errors_name_the_argument():
    with pytest.raises(ValueError, match="bits"):
        to_indices([0.0], 0.0, 1.0, 0)
    with pytest.raises(ValueError, match="bits"):
        step(0.0, 1.0, 17)
    with pytest.raises(ValueError, match="lo/hi"):
        to_indices([0.0], 1.0, 0.0, 4)
    with pytest.raises(ValueError, match="indices"):
        from_indices(np.array([16]), 0.0, 1.0, 4)
    with pytest.raises(ValueError, match="pi_bits"):
        QuantSpec(pi_bits=0)
    with pytest.raises(ValueError, match="image_shape"):
        grid_shape((2, 100))
    m, g = grid_model()
    with pytest.raises(ValueError, match="grid_mu"):
        ranges(m, None, g[:3])
    with pytest.raises(ValueError, match="active"):
        ranges(m, np.zeros(m.n_kernels, bool), g)
    with pytest.raises(ValueError, match="grid_index"):
        quantize_model(m, np.zeros(m.n_kernels, int), GRID)
    with pytest.raises(ValueError, match="slopes"):
        quantize_model(m.replace(slopes=np.zeros((m.n_kernels, 3, 2), np.float32)), np.arange(m.n_kernels), GRID)
    with pytest.raises(ValueError, match="values"):
        fake_quantize(np.zeros(3), 0.0, 1.0, 4)


def test_grid_shape_and_centres():
    assert grid_shape((512, 512)) == (128, 128)
    assert grid_shape((21, 30)) == (7, 5)
    g = grid_centres((H, W), GRID)
    assert g.shape == (35, 2)
    # row-major: index = row * k1 + column; x = column, y = row
    assert g[1, 0] - g[0, 0] == pytest.approx(W / 7) and g[1, 1] == g[0, 1]
    assert g[7, 1] - g[0, 1] == pytest.approx(H / 5) and g[7, 0] == g[0, 0]
    assert g[0].tolist() == pytest.approx([W / 14 - 0.5, H / 10 - 0.5])


def test_pi_pruning_rule_threshold():
    spec = QuantSpec()
    thr = spec.pi_threshold()
    assert thr == pytest.approx(1 / 15)
    pi = np.array([-0.3, 0.0, thr * 0.999, thr, thr * 1.001, 1.0, 2.5])
    assert active_mask(pi, spec).tolist() == [False, False, False, False, True, True, True]


def test_pi_index_zero_has_no_weight_so_training_and_file_agree():
    # a kernel with pi just above 0 but below step/2 renders as if it were removed
    m, g = grid_model(seed=1, pi_low=0.2)
    pi = m.pi.copy()
    pi[[3, 10, 20]] = [0.05, 0.0, -0.4]
    m = m.replace(pi=pi)
    fq = FakeQuantizer(g)
    t = m.torch()
    shown = fq(dict(mu=t.mu, chol=t.chol, pi=t.pi, experts=t.experts))
    assert shown["pi"][[3, 10, 20]].tolist() == [0.0, 0.0, 0.0]
    full = render(SMoE(**{k: shown[k] for k in ("mu", "chol", "pi", "experts")}, image_shape=(H, W),
                       color_space="yuv"), backend="dense")
    q = quantize_model(m, np.arange(m.n_kernels), GRID)
    assert q.n_active == m.n_kernels - 3
    assert not q.active[[3, 10, 20]].any()
    decoded = render(q.to_model().torch(), backend="dense")
    assert torch.allclose(full, decoded, atol=1e-5)


def test_fake_quantizer_equals_encoder_quantization():
    m, g = grid_model(seed=2, pi_low=-0.5)
    fq = FakeQuantizer(g)
    t = m.torch()
    shown = fq(dict(mu=t.mu, chol=t.chol, pi=t.pi, experts=t.experts))
    q = quantize_model(m, np.arange(m.n_kernels), GRID)
    act = active_mask(m.pi)
    assert np.array_equal(fq.last_active, act) and np.array_equal(q.active, act)
    assert fq.last_ranges == q.ranges
    dec = q.to_model()
    for k in ("mu", "chol", "pi", "experts"):
        assert np.array_equal(shown[k].detach().numpy()[act], getattr(dec, k)), k


def test_ranges_are_active_min_max_rounded_outward_to_float32():
    m, g = grid_model(seed=3, pi_low=-1.0)
    act = active_mask(m.pi)
    r = ranges(m, act, g)
    assert set(r) == {"a_diag", "a21", "Y", "U", "V", "dmu_x", "dmu_y"}
    diag = m.chol[act][:, [0, 2]]
    assert r["a_diag"][0] <= diag.min() and r["a_diag"][1] >= diag.max()
    assert r["a_diag"][0] == pytest.approx(diag.min(), rel=1e-6)
    dmu = m.mu[act].astype(np.float64) - g[act]
    assert r["dmu_y"][0] <= dmu[:, 1].min() <= r["dmu_y"][0] + 1e-6
    assert r["U"][1] >= m.experts[act, 1].max()
    for lo, hi in r.values():
        assert float(np.float32(lo)) == lo and float(np.float32(hi)) == hi
    # inactive kernels do not widen the ranges
    big = m.experts.copy()
    big[~act, 0] = 50.0
    assert ranges(m.replace(experts=big), act, g)["Y"] == r["Y"]


def test_ste_gradient_is_identity_inside_zero_outside():
    v = torch.tensor([-0.5, 0.0, 0.3, 1.0, 1.99, 2.0, 2.7], dtype=torch.float64, requires_grad=True)
    w = torch.arange(1.0, 8.0, dtype=torch.float64)
    y = fake_quantize(v, 0.0, 2.0, 4)
    (g,) = torch.autograd.grad((w * y).sum(), v)
    assert g.tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0]
    # the forward value is the quantized one
    assert y.detach().tolist() == pytest.approx([0.0, 0.0, 4 / 15, 16 / 15, 2.0, 2.0, 2.0])


def test_fake_quantizer_jacobian_is_identity_for_active_kernels():
    m, g = grid_model(seed=4, pi_low=-0.3)
    t = m.torch(requires_grad=True)
    params = dict(mu=t.mu, chol=t.chol, pi=t.pi, experts=t.experts)
    shown = FakeQuantizer(g)(params)
    gen = torch.Generator().manual_seed(0)
    coef = {k: torch.randn(v.shape, generator=gen) for k, v in params.items()}
    loss = sum((coef[k] * shown[k]).sum() for k in params)
    grads = torch.autograd.grad(loss, [params[k] for k in params])
    act = torch.from_numpy(active_mask(m.pi))
    for (k, v), gr in zip(params.items(), grads):
        if k == "pi":  # pi in [0, 2] passes, clipped pi does not
            inside = (v >= 0) & (v <= 2)
            assert torch.equal(gr, coef[k] * inside)
        else:
            assert torch.allclose(gr[act], coef[k][act]), k


def test_fake_quantizer_with_fit_and_pruning_between_calls():
    m, g = grid_model(seed=5)
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 1, (H, W, 3)).astype(np.float32)
    fq = FakeQuantizer(g)
    out, hist = fit(img, m, iters=5, transform=fq, prune_below=-math.inf, progress=False, loss="ssim",
                    channel_weights=[6, 1, 1], tol=0)
    assert len(hist) == 5 and out.n_kernels == m.n_kernels
    assert not np.array_equal(out.experts, m.experts)  # full-precision values were updated
    # fit's own pruning would break the row alignment: a clear error, not a silent mismatch
    fq2 = FakeQuantizer(g)
    pi = m.pi.copy()
    pi[0] = -1.0
    with pytest.raises(ValueError, match="prune_below"):
        fit(img, m.replace(pi=pi), iters=3, transform=fq2, progress=False, tol=0)
    keep = active_mask(out.pi)
    keep[0] = False
    fq.keep(keep)
    assert fq.n_kernels == int(keep.sum())
    fq(dict(mu=torch.from_numpy(out.mu[keep]), chol=torch.from_numpy(out.chol[keep]),
            pi=torch.from_numpy(out.pi[keep]), experts=torch.from_numpy(out.experts[keep])))


def test_quantized_model_is_sorted_by_grid_index_and_validates():
    m, _ = grid_model(seed=6)
    perm = np.random.default_rng(1).permutation(m.n_kernels)
    q = quantize_model(m.subset(perm), perm, GRID)
    q0 = quantize_model(m, np.arange(m.n_kernels), GRID)
    assert q.equal_indices(q0)
    assert q.indices["pi"].min() >= 1
    with pytest.raises(ValueError, match="indices"):
        Q.QuantizedSMoE(q.image_shape, q.color_space, q.grid, q.spec, q.active, q.ranges,
                        dict(q.indices, a11=q.indices["a11"] + 600))
    with pytest.raises(ValueError, match="active"):
        Q.QuantizedSMoE(q.image_shape, q.color_space, q.grid, q.spec, q.active[:-1], q.ranges, q.indices)


def test_gray_and_rgb_channels():
    m, _ = grid_model(seed=7, color_space="gray", C=1)
    q = quantize_model(m, np.arange(m.n_kernels), GRID)
    assert "L" in q.indices and q.to_model().n_channels == 1
    m, _ = grid_model(seed=7, color_space="rgb", C=3)
    assert set(quantize_model(m, np.arange(m.n_kernels), GRID).indices) >= {"R", "G", "B"}
    assert PI_RANGE == (0.0, 2.0)
