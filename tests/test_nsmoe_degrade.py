"""The N-SMoE degradation model (smoe_core.tasks.nsmoe.degrade): each step on a known image, and the whole chain's
size, range and determinism under a seed."""
from __future__ import annotations

import numpy as np
import pytest

from smoe_core.tasks.nsmoe import degrade as dg


def _grating(H=96, W=96, fy=0.0, fx=0.125, amp=0.3):
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    return 0.5 + amp * np.cos(2 * np.pi * (fy * y + fx * x))


@pytest.mark.parametrize("kernel", [dg.isotropic_gaussian_kernel(9, 1.3),
                                    dg.anisotropic_gaussian_kernel(15, 0.7, 5.0, 0.8),
                                    dg.anisotropic_gaussian_kernel(7, 2.0, 0.0, 0.0)])
@pytest.mark.parametrize("freq", [(0.0, 0.125), (0.1, 0.05), (0.25, 0.25)])
def test_blur_scales_a_sinusoid_by_the_kernels_transfer_function(kernel, freq):
    assert np.isclose(kernel.sum(), 1.0) and np.allclose(kernel, kernel[::-1, ::-1])
    img = _grating(fy=freq[0], fx=freq[1])
    out = dg.blur(img, kernel)
    H = dg.transfer_function(kernel, *freq)
    assert abs(H.imag) < 1e-9  # centred symmetric kernel: real response
    m = kernel.shape[0]  # away from the mirrored borders the convolution is exact
    inner = (slice(m, -m), slice(m, -m))
    assert np.allclose(out[inner] - 0.5, H.real * (img[inner] - 0.5), atol=1e-5)


def test_blur_lowers_high_frequencies_more_than_low_ones():
    k = dg.isotropic_gaussian_kernel(11, 1.5)
    lo, hi = dg.transfer_function(k, 0, 0.05).real, dg.transfer_function(k, 0, 0.3).real
    assert 1 > lo > hi >= 0 and np.isclose(dg.transfer_function(k, 0, 0).real, 1.0)
    # anisotropic: less blur across the short axis (l2) than along the long one (l1)
    ka = dg.anisotropic_gaussian_kernel(15, 0.0, 6.0, 0.5)
    assert dg.transfer_function(ka, 0.2, 0).real > dg.transfer_function(ka, 0, 0.2).real
    # a delta kernel (variance 0) leaves the image alone
    img = _grating()
    assert np.allclose(dg.blur(img, dg.isotropic_gaussian_kernel(5, 0.0)), img, atol=1e-6)


def test_gaussian_speckle_and_poisson_noise_have_their_standard_deviations():
    rng = np.random.default_rng(0)
    flat = np.full((256, 256), 0.5)
    for sigma in (2 / 255, 25 / 255):
        d = dg.add_gaussian_noise(flat, sigma, rng) - flat
        assert abs(d.mean()) < 3 * sigma / 256 + 1e-4 and abs(d.std() / sigma - 1) < 0.03
    d = dg.add_speckle_noise(flat, 0.08, rng) - flat  # std x sigma = 0.04
    assert abs(d.std() / 0.04 - 1) < 0.03
    for peak in (100.0, 1000.0):
        d = dg.add_poisson_noise(flat, peak, rng) - flat  # variance x / peak
        assert abs(d.std() / np.sqrt(0.5 / peak) - 1) < 0.03 and abs(d.mean()) < 0.002
    # dark pixels get less speckle and Poisson noise
    dark = np.full((256, 256), 0.05)
    assert dg.add_speckle_noise(dark, 0.08, rng).std() < 0.1 * 0.04


def test_jpeg_changes_the_image_more_at_low_quality():
    img = np.clip(_grating(64, 64, 0.07, 0.19) + 0.05 * np.random.default_rng(1).normal(size=(64, 64)), 0, 1)
    q95, q30 = dg.jpeg(img, 95), dg.jpeg(img, 30)
    assert q95.shape == img.shape and q95.dtype == np.float32 and 0 <= q30.min() and q30.max() <= 1
    e95, e30 = np.abs(q95 - img).mean(), np.abs(q30 - img).mean()
    assert 0 < e95 < e30 and e30 > 0.01


def test_resize_sizes_and_methods():
    img = _grating(40, 60)
    for m in dg.RESIZE_METHODS:
        assert dg.resize(img, (20, 30), m).shape == (20, 30)
        assert dg.resize(img, (57, 91), m).shape == (57, 91)
    flat = np.full((10, 12), 0.3)
    assert np.allclose(dg.resize(flat, (7, 5), "bicubic"), 0.3, atol=1e-6)
    with pytest.raises(ValueError):
        dg.resize(img, (5, 5), "lanczos")
    rng = np.random.default_rng(0)
    shapes = {dg.random_resize(img, rng, 2).shape for _ in range(40)}
    assert any(s[0] > 40 for s in shapes) and any(s[0] < 40 for s in shapes)
    assert all(10 <= s[0] <= 80 for s in shapes)  # up at most x2, down at least 0.5 / s


def test_usm_sharpens_edges_and_leaves_flat_areas():
    img = np.full((80, 80), 0.3)
    img[:, 40:] = 0.7
    out = dg.usm_sharpen(img)
    assert np.allclose(out[:, :5], 0.3) and np.allclose(out[:, -5:], 0.7, atol=1e-3)  # far from the edge
    assert out[:, 37].mean() < 0.3 and out[:, 42].mean() > 0.7  # overshoot on both sides of the edge
    assert 0 <= out.min() and out.max() <= 1


def test_step_order_is_a_permutation_with_jpeg_between_the_rounds_when_not_shuffled():
    rng = np.random.default_rng(3)
    for _ in range(20):
        o = dg.step_order(rng, shuffle_prob=0.0)
        assert sorted(o) == list(range(13)) and o[:2] == [0, 1] and o[6:9] == [6, 7, 8]
        assert sorted(o[2:6]) == [2, 3, 4, 5] and sorted(o[9:]) == [9, 10, 11, 12]
    assert sorted(dg.step_order(rng, shuffle_prob=1.0)) == list(range(13))


@pytest.mark.parametrize("scale", [2, 4])
def test_bsrgan_plus_size_range_and_determinism(scale):
    hr = np.clip(_grating(98, 70, 0.03, 0.05), 0, 1)
    deg = dg.Degradation(scale, seed=7)
    log = []
    lr, target = deg(hr, log=log)
    assert target.shape == (98 - 98 % scale, 70 - 70 % scale)
    assert lr.shape == (target.shape[0] // scale, target.shape[1] // scale)
    assert lr.dtype == np.float32 and 0 <= lr.min() and lr.max() <= 1
    assert log[-2:] == ["resize_to_lr", "jpeg"]
    steps = log[:-2]  # blur, resize and Gaussian noise twice and one JPEG always; Poisson, speckle at p 0.1
    assert all(steps.count(n) == 2 for n in ("blur", "resize", "gaussian_noise")) and steps.count("jpeg") == 1
    assert set(steps) <= set(dg.STEPS) - {"isp"}
    # reusable: a second call draws a new degradation; a fresh object with the seed repeats the sequence
    lr2, _ = deg(hr)
    again = dg.Degradation(scale, seed=7)
    assert np.array_equal(again(hr)[0], lr) and np.array_equal(again(hr)[0], lr2)
    assert not np.array_equal(lr, lr2)
    deg.reset()
    assert np.array_equal(deg(hr)[0], lr)
    assert not np.array_equal(dg.Degradation(scale, seed=8)(hr)[0], lr)


def test_sharpened_target_and_plain_mode():
    hr = np.full((64, 64), 0.2)
    hr[:, 32:] = 0.8
    _, target = dg.Degradation(2, seed=0)(hr)
    assert target[:, 30].mean() < 0.2 and target[:, 33].mean() > 0.8
    _, plain = dg.Degradation(2, seed=0, sharpen=False)(hr)
    assert np.array_equal(plain, hr.astype(np.float32))
    lr, t = dg.Degradation(2, mode="bicubic_blur")(hr)
    assert lr.shape == (32, 32) and np.array_equal(t, hr.astype(np.float32))
    lr_blur, _ = dg.Degradation(2, mode="bicubic_blur", blur_sigma=1.5)(hr)
    assert np.abs(np.diff(lr_blur, axis=1)).max() < np.abs(np.diff(lr, axis=1)).max()  # a softer edge
    a = dg.Degradation(2, mode="bicubic_blur", blur_sigma=(0.5, 2.0), seed=1)
    assert not np.array_equal(a(hr)[0], a(hr)[0])
    with pytest.raises(ValueError):
        dg.Degradation(2, mode="gan")
    with pytest.raises(ValueError):
        dg.Degradation(1.5)
