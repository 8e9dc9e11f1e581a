"""Metrics (against scikit-image and hand-computed values), image loading, the grid initializer and binning."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from smoe_core import load_image, metrics, render, save_image, tile_lists
from smoe_core.init import dominant_kernel, grid, grid_layout
from tests.conftest import random_model


def test_psnr_known_value():
    a = np.zeros((8, 8), np.float32)
    assert metrics.psnr(a, a + 0.1) == pytest.approx(20.0, abs=1e-5)
    assert metrics.psnr(a, a) == float("inf")


@pytest.mark.parametrize("shape", [(40, 50), (40, 50, 3)])
def test_ssim_torch_matches_skimage(shape):
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, shape)
    b = np.clip(a + rng.normal(0, 0.1, shape), 0, 1)
    ours = float(metrics.ssim_torch(torch.from_numpy(a), torch.from_numpy(b)))
    assert ours == pytest.approx(metrics.ssim(a, b), abs=1e-6)
    assert float(metrics.ssim_torch(torch.from_numpy(a), torch.from_numpy(a))) == pytest.approx(1.0)


@pytest.mark.parametrize("shape", [(40, 50), (40, 50, 3)])
def test_ssim_torch_with_a_reference_and_its_gradient(shape):
    """A reference prepared once (SSIMReference) gives scikit-image's value, and the gradient passes a float64
    gradcheck (finite differences) with and without it."""
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 1, shape)
    b = np.clip(a + rng.normal(0, 0.1, shape), 0, 1)
    ref = metrics.SSIMReference(torch.from_numpy(b))
    assert float(metrics.ssim_torch(torch.from_numpy(a), ref)) == pytest.approx(metrics.ssim(a, b), abs=1e-6)
    small = torch.from_numpy(a[:14, :15]).requires_grad_(True)
    tb = torch.from_numpy(b[:14, :15])
    for target in (tb, metrics.SSIMReference(tb)):
        assert torch.autograd.gradcheck(lambda x: metrics.ssim_torch(x, target), (small,), fast_mode=True)
    with pytest.raises(ValueError, match="same shape"):
        metrics.ssim_torch(torch.from_numpy(a[:-1]), ref)
    with pytest.raises(ValueError, match="image must be"):
        metrics.SSIMReference(b)


def test_load_image_gray_is_pil_luma(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    gray = load_image(tmp_path / "x.png")
    expect = np.asarray(ImageOps.grayscale(Image.fromarray(rgb)), np.float32) / 255
    assert gray.dtype == np.float32 and gray.shape == (10, 12)
    np.testing.assert_array_equal(gray, expect)
    color = load_image(tmp_path / "x.png", color=True)
    np.testing.assert_array_equal(color, rgb.astype(np.float32) / 255)


def test_test_images_load():
    img = load_image("peppers")
    assert img.shape == (512, 512) and 0 <= img.min() and img.max() <= 1
    assert load_image("flower", color=True).shape == (512, 768, 3)


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "nope.png")
    (tmp_path / "fake.png").write_text("hello")
    with pytest.raises(ValueError, match="cannot read"):
        load_image(tmp_path / "fake.png")


def test_save_image_roundtrip(tmp_path):
    img = np.linspace(0, 1, 30 * 20, dtype=np.float32).reshape(20, 30)
    save_image(tmp_path / "a.png", img)
    back = load_image(tmp_path / "a.png")
    assert np.abs(back - img).max() <= 0.5 / 255 + 1e-6
    with pytest.raises(ValueError, match="NaN"):
        save_image(tmp_path / "a.png", np.full((3, 3), np.nan))
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), back)  # untouched by the failed save


def test_grid_layout():
    assert grid_layout((512, 512), 1222) == (33, 37)
    kx, ky = grid_layout((512, 768), 2000)
    assert kx * ky <= 2000 and kx * ky >= 1900
    assert grid_layout((10, 10), 1) == (1, 1)


def test_grid_init_recovers_piecewise_constant_cells():
    """An image constant on each grid cell: every kernel dominates exactly its cell, so its expert is the
    cell's value, and the kernels sit at the cell centres with sigma = spacing / 2."""
    rng = np.random.default_rng(0)
    values = rng.uniform(0, 1, (4, 6))
    img = np.kron(values, np.ones((8, 8))).astype(np.float32)  # 32 x 48, cells 8 x 8
    m = grid(img, 24).model
    assert m.n_kernels == 24
    np.testing.assert_allclose(m.experts[:, 0], values.ravel(), atol=1e-6)
    np.testing.assert_allclose(m.mu[:7], [[3.5, 3.5], [11.5, 3.5], [19.5, 3.5], [27.5, 3.5], [35.5, 3.5],
                                          [43.5, 3.5], [3.5, 11.5]])
    np.testing.assert_allclose(m.chol[:, 0], 1 / 4.0)
    assert (m.pi == 1).all()
    dom = dominant_kernel(m, img.shape)
    np.testing.assert_array_equal(dom, np.kron(np.arange(24).reshape(4, 6), np.ones((8, 8), int)))


def test_grid_init_colour_and_bounds():
    img = load_image("parrot", color=True)[:64, :96]
    m = grid(img, 50).model
    assert m.n_channels == 3 and m.n_kernels <= 50
    assert (m.mu[:, 0] >= 0).all() and (m.mu[:, 0] <= 95).all() and (m.mu[:, 1] >= 0).all() and (m.mu[:, 1] <= 63).all()
    assert render(m).shape == (64, 96, 3)


@pytest.mark.parametrize("scale", [1.0, 2.0, 0.7])
def test_coverage_boxes_contain_their_ellipses(scale):
    """Every output pixel where q_j <= cutoff^2 lies in a tile whose list holds kernel j (brute force)."""
    m = random_model(K=30, H=40, W=52, seed=3, bandwidth=(0.1, 0.6))
    cutoff = 3.0
    lists = tile_lists(m, scale=scale, cutoff=cutoff, fill=0)
    Hs, Ws = lists.height, lists.width
    rr, cc = np.mgrid[0:Hs, 0:Ws]
    x, y = (cc + 0.5) / scale - 0.5, (rr + 0.5) / scale - 0.5
    starts, ids = lists.tile_start.numpy(), lists.tile_ids.numpy()
    tile_of = (rr // 16) * lists.tiles_x + (cc // 16)
    for j in range(m.n_kernels):
        a11, a21, a22 = m.chol[j].astype(np.float64)
        dx, dy = x - m.mu[j, 0], y - m.mu[j, 1]
        q = (a11 * dx + a21 * dy) ** 2 + (a22 * dy) ** 2
        need = np.unique(tile_of[q <= cutoff**2])
        for t in need:
            assert j in ids[starts[t]:starts[t + 1]], (j, t)


@pytest.mark.parametrize("scale,fill", [(1.0, 4), (2.0, 0), (0.6, 2)])
def test_compiled_binning_equals_torch_binning(monkeypatch, scale, fill):
    """The CPU build's counting sort and the torch path (used on GPUs) give identical CSR lists, including the
    kernels that fill empty tiles, for several models rendered together."""
    from smoe_core.render import binning
    from smoe_core.render import log_pi

    models = [random_model(K=k, H=50, W=70, seed=k, bandwidth=(0.1, 0.9)) for k in (5, 30, 60)]
    mu = torch.cat([torch.from_numpy(m.mu) for m in models])
    chol = torch.cat([torch.from_numpy(m.chol) for m in models])
    lp = log_pi(torch.cat([torch.from_numpy(m.pi) for m in models]))
    offsets = [0, 5, 35, 95]
    args = dict(tile=16, scale=scale, cutoff=3.0, fill=fill)
    H, W = round(50 * scale), round(70 * scale)
    compiled = binning.bin_kernels(mu, chol, lp, offsets, H, W, **args)
    monkeypatch.setattr(binning, "_cpu_library", lambda: None)
    reference = binning.bin_kernels(mu, chol, lp, offsets, H, W, **args)
    assert torch.equal(compiled.tile_start, reference.tile_start)
    assert torch.equal(compiled.tile_ids, reference.tile_ids)
    # kernels only ever appear in tiles of their own image
    model_of = torch.repeat_interleave(torch.arange(3), torch.tensor([5, 30, 60]))
    per_image = compiled.tiles_x * compiled.tiles_y
    tile_of_entry = compiled.tile_index_of_entries()
    assert torch.equal(model_of[compiled.tile_ids.long()], tile_of_entry // per_image)


def test_fallback_without_compiler(monkeypatch):
    """Where no C++ compiler is present, backend='tiled' warns and uses the PyTorch reference."""
    from smoe_core.render import cpu as cpu_build

    m = random_model(K=20, seed=4)
    expected = render(m, backend="cpu")
    from smoe_core.render import build as native_build

    monkeypatch.setattr(cpu_build, "_libs", {})  # no library of either build loaded yet
    monkeypatch.setattr(native_build, "find_compiler", lambda: None)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        out = render(m)
    np.testing.assert_allclose(out, expected, atol=2e-6)
    with pytest.raises(cpu_build.CPUBuildError, match="no C\\+\\+ compiler"):
        cpu_build.load()
