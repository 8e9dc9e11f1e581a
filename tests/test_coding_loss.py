"""SSIM-611 loss of the coding paper against scikit-image, gradients, and agreement with fit's SSIM loss."""
import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from smoe_core import SMoE, fit, render
from smoe_core.io import load_image
from smoe_core.tasks.coding.color import rgb_to_yuv
from smoe_core.tasks.coding import ssim_cpu
from smoe_core.tasks.coding.loss import YUV_WEIGHTS, ssim611, ssim611_loss, ssim611_target, weighted_ssim


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def skimage_ssim(a, b):
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)


def test_matches_skimage_per_channel_on_a_yuv_image():
    target = rgb_to_yuv(load_image("peppers", color=True)[100:164, 220:300].astype(np.float64))
    rng = np.random.default_rng(0)
    rec = target + rng.normal(0, [0.05, 0.02, 0.08], target.shape)
    rec[:20] = np.clip(rec[:20] * 0.7, 0, 1)
    per = [skimage_ssim(rec[..., c], target[..., c]) for c in range(3)]
    assert len(set(np.round(per, 3))) == 3  # the channels differ, so the weights matter
    expect = (6 * per[0] + per[1] + per[2]) / 8
    got = ssim611(rec, target)
    assert got == pytest.approx(expect, abs=1e-10)
    t = weighted_ssim(torch.from_numpy(rec), torch.from_numpy(target), weights=(1, 0, 0))
    assert float(t) == pytest.approx(per[0], abs=1e-10)
    loss = ssim611_loss(torch.from_numpy(rec), torch.from_numpy(target))
    assert float(loss) == pytest.approx(1 - expect, abs=1e-10)
    assert ssim611(target, target) == pytest.approx(1.0)


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(12, 13, 3, dtype=torch.float64, generator=gen)
    rec = (target + 0.1 * torch.randn(12, 13, 3, dtype=torch.float64, generator=gen)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: ssim611_loss(x, target), (rec,), fast_mode=True)
    # and one full directional check: d/dt L(x + t v) at t = 0 by central differences
    v = torch.randn(rec.shape, dtype=torch.float64, generator=gen)
    (g,) = torch.autograd.grad(ssim611_loss(rec, target), rec)
    eps = 1e-6
    with torch.no_grad():
        fd = (ssim611_loss(rec + eps * v, target) - ssim611_loss(rec - eps * v, target)) / (2 * eps)
    assert float((g * v).sum()) == pytest.approx(float(fd), rel=1e-6)


def test_prepared_target_gives_the_same_loss_and_gradient():
    """A target prepared once (its blurred statistics kept) gives the value and the gradient of the plain call,
    which the tests above check against scikit-image and finite differences."""
    target = torch.from_numpy(rgb_to_yuv(load_image("peppers", color=True)[100:164, 220:300].astype(np.float64)))
    gen = torch.Generator().manual_seed(3)
    rec = (target + 0.05 * torch.randn(target.shape, dtype=torch.float64, generator=gen)).requires_grad_(True)
    plain = ssim611_loss(rec, target)
    (g_plain,) = torch.autograd.grad(plain, rec)
    prepared = ssim611_target(target)
    fast = ssim611_loss(rec, prepared)
    (g_fast,) = torch.autograd.grad(fast, rec)
    assert float(fast.detach()) == pytest.approx(float(plain.detach()), abs=1e-12)
    assert torch.allclose(g_fast, g_plain, rtol=1e-9, atol=1e-15)
    # float32 renders against a prepared float32 target: the training loop's case
    t32, r32 = target.float(), rec.detach().float()
    assert float(ssim611_loss(r32, ssim611_target(t32))) == pytest.approx(float(ssim611_loss(r32, t32)), abs=1e-6)
    with pytest.raises(ValueError, match="reference's shape"):
        ssim611_loss(rec[:-1], prepared)
    with pytest.raises(ValueError, match="SSIM window"):
        ssim611_target(torch.zeros(8, 12, 3))


def test_compiled_kernel_matches_the_torch_ssim_and_finite_differences():
    """The compiled SSIM (impl="kernel", the training loop's) against the torch SSIM: the value and gradient in
    float32 and float64, gradcheck in float64, and the same bits on one and two threads."""
    target = torch.from_numpy(rgb_to_yuv(load_image("peppers", color=True)[100:164, 220:300].astype(np.float64)))
    gen = torch.Generator().manual_seed(4)
    noisy = target + 0.05 * torch.randn(target.shape, dtype=torch.float64, generator=gen)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-6)):
        t, rec = ssim611_target(target.to(dtype)), noisy.to(dtype).requires_grad_(True)
        by = {impl: ssim611_loss(rec, t, impl=impl) for impl in ("kernel", "torch")}
        grads = {impl: torch.autograd.grad(v, rec)[0] for impl, v in by.items()}
        assert abs(float(by["kernel"].detach()) - float(by["torch"].detach())) < tol
        rel = float((grads["kernel"] - grads["torch"]).abs().max() / grads["torch"].abs().max())
        assert rel < (1e-10 if dtype == torch.float64 else 2e-5)
    small = ssim611_target(target[:12, :13])
    x = noisy[:12, :13].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: ssim611_loss(z, small, impl="kernel"), (x,), fast_mode=True)
    x32 = noisy.float().requires_grad_(True)
    t32 = ssim611_target(target.float())
    runs = []
    for threads in (1, 2):
        per = ssim_cpu.ssim_per_channel(x32, t32, n_threads=threads)
        runs.append((per.detach(), torch.autograd.grad(per.sum(), x32)[0]))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    with pytest.raises(ValueError, match="impl='kernel' needs a target from ssim611_target"):
        ssim611_loss(x32, target.float(), impl="kernel")
    with pytest.raises(ValueError, match="impl must be one of"):
        ssim611_loss(x32, t32, impl="fast")


def test_same_loss_as_fit_with_channel_weights():
    """fit(loss='ssim', channel_weights=6:1:1) minimizes the same quantity (its first recorded loss)."""
    rng = np.random.default_rng(1)
    H, W = 16, 20
    img = rgb_to_yuv(rng.uniform(0, 1, (H, W, 3))).astype(np.float32)
    K = 12
    m = SMoE(rng.uniform(0, [W, H], (K, 2)).astype(np.float32), np.tile(np.float32([0.3, 0.0, 0.3]), (K, 1)),
             np.ones(K, np.float32), rng.uniform(0, 1, (K, 3)).astype(np.float32), image_shape=(H, W),
             color_space="yuv")
    _, hist = fit(img, m, iters=1, loss="ssim", channel_weights=YUV_WEIGHTS, progress=False, tol=0)
    rec = render(m.torch())
    assert hist["loss"].iloc[0] == pytest.approx(float(ssim611_loss(rec, torch.from_numpy(img))), abs=1e-5)


def test_argument_errors():
    a = torch.zeros(12, 12, 3)
    with pytest.raises(ValueError, match="rec"):
        ssim611_loss(np.zeros((12, 12, 3)), a)
    with pytest.raises(ValueError, match="target"):
        ssim611_loss(a, torch.zeros(12, 12))
    with pytest.raises(ValueError, match="SSIM window"):
        ssim611_loss(torch.zeros(8, 12, 3), torch.zeros(8, 12, 3))
    with pytest.raises(ValueError, match="same shape"):
        ssim611_loss(a, torch.zeros(13, 12, 3))
    with pytest.raises(ValueError, match="weights"):
        weighted_ssim(a, a, weights=(1, -1, 1))
    with pytest.raises(ValueError, match="weights"):
        weighted_ssim(a, a, weights=(1, 1))
    with pytest.raises(ValueError, match="rec"):
        ssim611(np.zeros((12, 12, 3), np.uint8), np.zeros((12, 12, 3)))
