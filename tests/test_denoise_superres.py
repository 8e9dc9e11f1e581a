"""Denoising with multi-model fusion and native super-resolution (smoe_core.tasks.denoise, smoe_core.tasks.superres), the
colour path of grid + fit + render, and the ``smoe denoise`` / ``smoe upscale`` commands. Each test checks a
known answer; the fits are tiny (tens of iterations on images of at most 64 x 64) to keep the file fast."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

import smoe_core as smoe
from smoe_core.studies import r_smoe_restoration as restoration
from smoe_core.tasks import denoise as dn
from smoe_core.tasks import superres as sr
from smoe_core.cli import main
from smoe_core.metrics import psnr


def _smooth(H, W, C=None):
    """A smooth analytic image in [0.1, 0.9] (a gentle gradient and a long-wave ripple)."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    f = 0.5 + 0.25 * np.sin(2 * np.pi * x / (1.5 * W)) * np.cos(2 * np.pi * y / (1.7 * H)) + 0.1 * (x / W - y / H)
    if C is not None:
        f = np.stack([f, 1 - f, 0.5 + 0.3 * (f - 0.5)], -1)[..., :C]
    return f.astype(np.float32)


def _piecewise(n=64):
    """A 64 x 64 piecewise-smooth image: a gradient background, a bright disk and a dark square."""
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    img = 0.25 + 0.35 * x / (n - 1)
    img = np.where(np.hypot(x - 0.62 * n, y - 0.38 * n) < 0.22 * n, 0.85, img)
    img = np.where((np.abs(x - 0.27 * n) < 0.14 * n) & (np.abs(y - 0.7 * n) < 0.14 * n), 0.1, img)
    return img.astype(np.float32)


# ---------------------------------------------------------------------- shifts and fusion arithmetic
def test_shift_schedule_is_the_authors_formula():
    got = dn.shift_schedule(10)
    assert got == [(2 * (s // 8), 2 * (s % 8)) for s in range(10)]
    assert got == [(0, 0), (0, 2), (0, 4), (0, 6), (0, 8), (0, 10), (0, 12), (0, 14), (2, 0), (2, 2)]
    assert dn.shift_schedule(1) == [(0, 0)]  # a single model is unshifted
    assert len(set(dn.shift_schedule(64))) == 64 and max(max(s) for s in dn.shift_schedule(64)) == 14
    with pytest.raises(ValueError):
        dn.shift_schedule(0)


@pytest.mark.parametrize("border", dn.BORDERS)
def test_shift_and_unshift_are_inverse(border):
    """A perfect 'model' (the frame itself) is shifted back onto the image exactly, and the coverage is all
    pixels (reflect, roll) or exactly the overlap (crop)."""
    rng = np.random.default_rng(0)
    img = rng.random((20, 23, 3)).astype(np.float32)
    for dy, dx in dn.shift_schedule(12):
        frame, _ = dn.shifted_frame(img, dy, dx, border)
        back, weight = dn.unshift(frame, img.shape, dy, dx, border)
        cover = weight > 0
        assert np.array_equal(back[cover], img[cover])
        if border == "crop":
            assert frame.shape[:2] == (20 - dy, 23 - dx)
            assert cover.sum() == (20 - dy) * (23 - dx) and cover[dy:, dx:].all()
        else:
            assert cover.all()
        if border == "reflect":
            assert frame.shape[:2] == (20 + dy, 23 + dx)
            if dy:
                assert np.array_equal(frame[dy - 1, dx:], img[1])  # mirror about the first row, edge not repeated
        if border == "roll" and dx:
            assert np.array_equal(frame[:, 0], np.roll(img[:, -dx], dy, axis=0))  # the wrap


def test_fuse_averages_only_covering_models():
    a, b = np.full((3, 4), 1.0, np.float32), np.full((3, 4), 3.0, np.float32)
    wa, wb = np.ones((3, 4), np.float32), np.zeros((3, 4), np.float32)
    wb[1:, 1:] = 1
    out = dn.fuse([a, b], [wa, wb])
    assert np.allclose(out[0], 1.0) and np.allclose(out[:, 0], 1.0) and np.allclose(out[1:, 1:], 2.0)
    with pytest.raises(ValueError):
        dn.fuse([a], [np.zeros((3, 4), np.float32)])


# ---------------------------------------------------------------------- noise
def test_add_noise_sigma_seed_and_clipping():
    img = np.full((128, 128), 0.5, np.float32)
    n1, n2 = dn.add_noise(img, 25, seed=3), dn.add_noise(img, 25, seed=3)
    assert n1.dtype == np.float32 and np.array_equal(n1, n2)
    assert not np.array_equal(n1, dn.add_noise(img, 25, seed=4))
    assert abs((n1 - img).std() - 25 / 255) < 0.003 and abs((n1 - img).mean()) < 0.002
    edge = np.zeros((64, 64), np.float32)
    assert dn.add_noise(edge, 25, seed=0).min() < 0  # not clipped by default
    assert dn.add_noise(edge, 25, seed=0, clip=True).min() == 0.0


# ---------------------------------------------------------------------- denoising
def test_fusion_of_a_noise_free_smooth_image_gives_it_back():
    img = _smooth(32, 32)
    clean, record = dn.denoise(img, models=4, n_kernels=36, iters=60, progress=False)
    assert clean.shape == img.shape and record["models"] == 4 and len(record["fits"]) == 4
    assert [f["shift"] for f in record["fits"]] == dn.shift_schedule(4)
    assert psnr(clean, img) > 38.0


@pytest.fixture(scope="module")
def noisy_case():
    """64 x 64 piecewise-smooth, sigma 25 (seed 7), and 6 shifted fits of it (run once for the tests below).
    (Seeds 7, 8, 9 gave single -> fused 30.24 -> 30.94, 29.95 -> 31.21, 29.64 -> 30.80 dB; noisy 20.3 dB.)"""
    img = _piecewise(64)
    noisy = dn.add_noise(img, 25, seed=7)
    fits = dn.fit_shifted_models(noisy, 6, n_kernels=64, iters=250, init="grid", seed=0, border="reflect", workers=None,
                       scheduler=None, progress=False, fit_kwargs={})
    return img, noisy, fits


def test_fusion_beats_a_single_model_and_the_noisy_input(noisy_case):
    img, noisy, fits = noisy_case
    single = np.clip(fits[0]["image"], 0, 1)
    fused = np.clip(dn.fuse([f["image"] for f in fits], [f["weight"] for f in fits]), 0, 1)
    p_noisy, p_single, p_fused = psnr(noisy, img), psnr(single, img), psnr(fused, img)
    assert p_single > p_noisy + 4.0
    assert p_fused > p_single + 0.4


def test_denoise_single_model_is_the_first_fit_and_is_deterministic(noisy_case):
    img, noisy, fits = noisy_case
    one, rec = dn.denoise(noisy, models=1, n_kernels=64, iters=250, progress=False)
    assert rec["method"] == "smoe" and rec["shifts"] == [(0, 0)]
    assert np.array_equal(one, np.clip(fits[0]["image"], 0, 1))  # S = 1 is model s = 0 of every fusion
    two_a, _ = dn.denoise(noisy, models=2, n_kernels=64, iters=15, seed=5, progress=False)
    two_b, rec_b = dn.denoise(noisy, models=2, n_kernels=64, iters=15, seed=5, progress=False)
    assert np.array_equal(two_a, two_b)
    assert [f["seed"] for f in rec_b["fits"]] == [5, 6]


def test_denoise_on_dask_equals_serial():
    """The S fits are independent seeded tasks: two Dask worker processes give the serial result exactly."""
    img = dn.add_noise(_piecewise(32), 25, seed=0)
    serial, _ = dn.denoise(img, models=3, n_kernels=16, iters=10, progress=False)
    dask, rec = dn.denoise(img, models=3, n_kernels=16, iters=10, progress=False, workers=2)
    assert np.array_equal(serial, dask) and len(rec["fits"]) == 3


def test_denoise_rejects_bad_arguments():
    img = _smooth(16, 16)
    for kw in (dict(models=0), dict(models=65), dict(models=2.5), dict(border="wrap"), dict(n_kernels=0)):
        with pytest.raises(ValueError):
            dn.denoise(img, progress=False, iters=1, **kw)


def test_baselines_denoise_and_bm3d_missing_is_clear(monkeypatch):
    img = _piecewise(48)
    noisy = dn.add_noise(img, 25, seed=1)
    for method in ("nlm", "tv"):
        out = dn.denoise_baseline(noisy, 25, method)
        assert out.shape == img.shape and psnr(out, img) > psnr(noisy, img) + 4
    out = dn.denoise_baseline(np.stack([noisy] * 3, -1), 25, "tv")
    assert out.shape == (48, 48, 3)
    monkeypatch.setitem(sys.modules, "bm3d", None)  # as if the package were not installed
    with pytest.raises(ImportError, match="pip install bm3d"):
        dn.denoise_baseline(noisy, 25, "bm3d")
    df = restoration.denoising_experiment({"p": img[:32, :32]}, sigmas=(25,), models=(), baselines=("bm3d", "tv"),
                                 progress=False)
    row = df[df.method == "bm3d"].iloc[0]
    assert np.isnan(row.psnr) and "pip install bm3d" in row.note
    with pytest.raises(ValueError):
        dn.denoise_baseline(noisy, 25, "median")


def test_bm3d_baseline_when_installed():
    pytest.importorskip("bm3d")
    img = _piecewise(32)
    noisy = dn.add_noise(img, 25, seed=2)
    assert psnr(dn.denoise_baseline(noisy, 25, "bm3d"), img) > psnr(noisy, img) + 6


def test_denoising_experiment_table():
    img = _smooth(24, 24)
    df = restoration.denoising_experiment({"a": img, "b": img[:20]}, sigmas=(15, 50), models=(1, 2), iters=5,
                                 baselines=("tv",), progress=False)
    assert list(df.columns) == ["image", "sigma", "method", "models", "psnr", "ssim", "seconds", "note"]
    assert len(df) == 2 * 2 * 4
    assert set(df.method) == {"noisy", "smoe S=1", "smoe S=2", "tv"}
    noisy = df[df.method == "noisy"].set_index(["image", "sigma"]).psnr
    assert noisy[("a", 15)] > noisy[("a", 50)] + 8  # 20 log10(50/15) = 10.5 dB apart (no clipping)


# ---------------------------------------------------------------------- colour path
def test_grid_fit_render_on_rgb():
    img = _smooth(24, 28, C=3)
    model, _ = smoe.init.grid(img, 30)
    assert model.n_channels == 3 and model.color_space == "rgb"
    fitted, hist = smoe.fit(img, model, iters=40, progress=False)
    out = smoe.render(fitted)
    assert out.shape == (24, 28, 3)
    assert psnr(out, img) > psnr(smoe.render(model), img) + 1
    assert smoe.render(fitted, scale=2).shape == (48, 56, 3)
    clean, _ = dn.denoise(dn.add_noise(img, 15, seed=0), models=2, n_kernels=30, iters=10, progress=False)
    assert clean.shape == img.shape
    big, rec = sr.upscale(img, 1.5, n_kernels=30, iters=10)
    assert big.shape == (36, 42, 3) and rec["model"].n_channels == 3


# ---------------------------------------------------------------------- super-resolution
def test_upscale_a_smooth_function_beats_nearest_neighbour():
    """f sampled at LR pixel centres; the x3 reference samples the same f at the HR pixel centres, which are at
    LR coordinates (c' + 0.5) / 3 - 0.5 (the renderer's and PIL's convention)."""
    s, n = 3, 20

    def f(x, y):  # LR pixel coordinates
        return 0.5 + 0.3 * np.sin(x / 3.0) * np.cos(y / 4.0) + 0.01 * x

    yl, xl = np.mgrid[0:n, 0:n].astype(np.float64)
    lr = f(xl, yl).astype(np.float32)
    yh, xh = np.mgrid[0:n * s, 0:n * s].astype(np.float64)
    hr = f((xh + 0.5) / s - 0.5, (yh + 0.5) / s - 0.5).astype(np.float32)
    big, rec = sr.upscale(lr, s, n_kernels=100, iters=100)
    assert big.shape == hr.shape and rec["output_shape"] == hr.shape
    nearest = sr.pil_resize(lr, hr.shape, "nearest")
    core = (slice(s, -s), slice(s, -s))
    assert psnr(big[core], hr[core]) > psnr(nearest[core], hr[core]) + 3
    assert psnr(big[core], hr[core]) > 32
    big2, _ = sr.upscale(lr, s, n_kernels=100, iters=100)
    assert np.array_equal(big, big2)  # deterministic
    assert sr.upscale(lr, 2.5, n_kernels=16, iters=2)[0].shape == (50, 50)  # non-integer scales


def test_degradation_crop_and_shave():
    img = np.full((23, 30), 0.4, np.float32)
    hr, lr = sr.downsample(img, 4)
    assert hr.shape == (20, 28) and lr.shape == (5, 7)
    assert np.allclose(lr, 0.4, atol=1e-6)  # a constant stays constant
    # bicubic reproduces linear functions: away from the borders, LR pixel i holds the ramp at its centre,
    # HR column (i + 0.5) s - 0.5 (the pixel-centre alignment the renderer's scale also uses)
    ramp = np.tile(np.arange(32, dtype=np.float32), (8, 1))
    for s in (2, 4):
        lr = sr.downsample(ramp / 32, s)[1][0] * 32
        inner = np.arange(2, 32 // s - 2)
        assert np.allclose(lr[inner], (inner + 0.5) * s - 0.5, atol=1e-4)
    assert sr.shave_border(np.zeros((10, 12)), 2).shape == (6, 8)
    with pytest.raises(ValueError):
        sr.crop_to_multiple(img, 2.5)


def test_superres_experiment_table():
    img = _smooth(26, 26)
    df = restoration.superres_experiment({"s": img}, scales=(2,), n_kernels=60, iters=40, progress=False)
    assert list(df.columns) == ["image", "scale", "method", "psnr", "ssim", "seconds", "hr_shape", "lr_shape",
                                "shave", "note"]
    assert list(df.method) == list(sr.METHODS) and set(df.shave) == {2}
    assert df.iloc[0].hr_shape == (26, 26) and df.iloc[0].lr_shape == (13, 13)
    p = df.set_index("method").psnr
    assert p["bicubic"] > p["nearest"] and p["smoe"] > p["nearest"]


# ---------------------------------------------------------------------- command line
def _png(path, arr):
    Image.fromarray(np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8)).save(path)
    return path


def _errors(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("smoe: error:")]


def test_cli_denoise_and_upscale_write_images(tmp_path, capsys):
    noisy = _png(tmp_path / "noisy.png", dn.add_noise(_piecewise(32), 25, seed=0, clip=True))
    out = tmp_path / "sub" / "clean.png"
    assert main(["denoise", str(noisy), "--out", str(out), "--models", "2", "--kernels", "16", "--iters", "5",
                 "--no-progress"]) == 0
    assert np.asarray(Image.open(out)).shape == (32, 32)
    assert "denoised:" in capsys.readouterr().out
    rgb = _png(tmp_path / "rgb.png", _smooth(16, 20, C=3))
    assert main(["denoise", str(rgb), "--out", str(tmp_path / "c.png"), "--models", "1", "--kernels", "8",
                 "--iters", "3", "--color", "--no-progress"]) == 0
    assert np.asarray(Image.open(tmp_path / "c.png")).shape == (16, 20, 3)
    assert main(["upscale", str(noisy), "--scale", "2", "--out", str(tmp_path / "big.png"), "--kernels", "16",
                 "--iters", "3", "--no-progress"]) == 0
    assert np.asarray(Image.open(tmp_path / "big.png")).shape == (64, 64)
    assert main(["upscale", str(rgb), "--scale", "1.5", "--out", str(tmp_path / "big.png"), "--kernels", "8",
                 "--iters", "2", "--color", "--no-progress"]) == 0
    assert np.asarray(Image.open(tmp_path / "big.png")).shape == (24, 30, 3)
    assert not list(tmp_path.rglob(".*tmp*"))  # no temporary files left


@pytest.mark.parametrize("argv", [
    ["denoise", "{d}/missing.png", "--out", "{out}"],
    ["denoise", "{d}/text.png", "--out", "{out}"],
    ["denoise", "{img}", "--out", "{out}", "--models", "65"],
    ["denoise", "{img}", "--out", "{out}", "--models", "0"],
    ["denoise", "{img}", "--out", "{img}"],
    ["denoise", "{img}", "--out", "{d}/clean.npz"],
    ["denoise", "{img}", "--out", "{out}", "--workers", "2", "--scheduler", "tcp://x:1"],
    ["upscale", "{img}", "--scale", "0", "--out", "{out}"],
    ["upscale", "{img}", "--scale", "nan", "--out", "{out}"],
    ["upscale", "{img}", "--scale", "1e6", "--out", "{out}"],
    ["upscale", "{img}", "--out", "{out}"],
    ["upscale", "{d}/text.png", "--scale", "2", "--out", "{out}"],
])
def test_cli_bad_input_fails_cleanly(tmp_path, capsys, argv):
    img = _png(tmp_path / "img.png", _smooth(12, 12))
    (tmp_path / "text.png").write_text("not an image\n")
    out = tmp_path / "out.png"
    out.write_bytes(b"keep me")
    before = img.read_bytes()
    args = [a.format(d=tmp_path, img=img, out=out) for a in argv]
    rc = main(args + ["--no-progress"] if argv[0] in ("denoise", "upscale") else args)
    assert rc == 2
    err = capsys.readouterr().err
    assert len(_errors(err)) == 1 and "Traceback" not in err
    assert out.read_bytes() == b"keep me" and img.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.png", "out.png", "text.png"]
