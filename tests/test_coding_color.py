"""RGB <-> YUV of the coding task (OpenCV's float BGR2YUV coefficients)."""
import numpy as np
import pytest
import torch

from smoe_core.tasks.coding.color import rgb_to_yuv, yuv_to_rgb


def test_hand_computed_pixels():
    rgb = np.array([[1.0, 0.0, 0.0],      # red
                    [0.0, 0.0, 1.0],      # blue
                    [0.2, 0.4, 0.6],
                    [0.5, 0.5, 0.5]])     # gray: U = V = 0.5
    # red: Y = 0.299, U = 0.492 * (0 - 0.299) + 0.5, V = 0.877 * (1 - 0.299) + 0.5
    # blue: Y = 0.114, U = 0.492 * 0.886 + 0.5, V = 0.877 * -0.114 + 0.5
    # (0.2, 0.4, 0.6): Y = 0.0598 + 0.2348 + 0.0684 = 0.363, U = 0.492 * 0.237 + 0.5, V = 0.877 * -0.163 + 0.5
    expect = np.array([[0.299, 0.352892, 1.114777],
                       [0.114, 0.935912, 0.400022],
                       [0.363, 0.616604, 0.357049],
                       [0.5, 0.5, 0.5]])
    assert np.allclose(rgb_to_yuv(rgb), expect, atol=1e-12)
    assert np.allclose(yuv_to_rgb(expect), rgb, atol=1e-12)


def test_exact_inverse_numpy_and_torch():
    rng = np.random.default_rng(0)
    rgb = rng.uniform(0, 1, (17, 23, 3))
    assert np.abs(yuv_to_rgb(rgb_to_yuv(rgb)) - rgb).max() < 1e-14
    yuv = rng.uniform(0, 1, (5, 3))
    assert np.abs(rgb_to_yuv(yuv_to_rgb(yuv)) - yuv).max() < 1e-14
    t = torch.from_numpy(rgb)
    out = rgb_to_yuv(t)
    assert isinstance(out, torch.Tensor) and torch.allclose(out, torch.from_numpy(rgb_to_yuv(rgb)), atol=0, rtol=0)
    assert torch.abs(yuv_to_rgb(out) - t).max() < 1e-14
    f32 = rgb.astype(np.float32)
    assert rgb_to_yuv(f32).dtype == np.float32
    assert np.abs(yuv_to_rgb(rgb_to_yuv(f32)) - f32).max() < 1e-6


def test_torch_is_differentiable():
    x = torch.rand(4, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(rgb_to_yuv, (x,))
    assert torch.autograd.gradcheck(yuv_to_rgb, (x,))


def test_ranges_over_the_rgb_cube():
    corners = np.array([[r, g, b] for r in (0.0, 1.0) for g in (0.0, 1.0) for b in (0.0, 1.0)])
    yuv = rgb_to_yuv(corners)
    assert yuv[:, 0].min() == 0 and yuv[:, 0].max() == pytest.approx(1.0)
    assert yuv[:, 1].min() == pytest.approx(0.5 - 0.492 * 0.886)
    assert yuv[:, 1].max() == pytest.approx(0.5 + 0.492 * 0.886)
    assert yuv[:, 2].min() == pytest.approx(0.5 - 0.877 * 0.701)
    assert yuv[:, 2].max() == pytest.approx(0.5 + 0.877 * 0.701)


def test_argument_errors():
    with pytest.raises(ValueError, match="rgb"):
        rgb_to_yuv(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="rgb"):
        rgb_to_yuv(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="yuv"):
        yuv_to_rgb(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="yuv"):
        yuv_to_rgb(torch.zeros(2, 3, dtype=torch.int64))
