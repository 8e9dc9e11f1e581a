"""The ``smoe`` command line: fit / render / info / bench, and its error handling (one ``smoe: error:`` line,
no traceback, nothing clobbered)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import smoe_core
from smoe_core import SMoE, init, load_image, render
from smoe_core.studies.bench import COLUMNS, tiled_pairs
from smoe_core.cli import INITIALIZERS, main
from smoe_core.metrics import psnr

H, W, K = 32, 40, 20


def _write_test_png(path: Path) -> Path:
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    img = 0.15 + 0.6 * x / (W - 1)
    img = np.where(np.hypot(x - 26, y - 14) < 8, 0.9, img)
    Image.fromarray(np.round(img * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A tiny image, and a model fitted to it through the CLI (with its render and history)."""
    d = tmp_path_factory.mktemp("fit")
    img = _write_test_png(d / "disk.png")
    out = d / "model.npz"
    rc = main(["fit", str(img), "--kernels", str(K), "--init", "grid", "--iters", "40", "--no-progress",
               "--out", str(out), "--history", str(d / "history.csv")])
    assert rc == 0
    return dict(dir=d, image=img, model=out, png=d / "model.png", history=d / "history.csv")


def _errors(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("smoe: error:")]


# ---------------------------------------------------------------------- fit
def test_fit_writes_model_render_and_history(fitted):
    image = load_image(fitted["image"])
    model = SMoE.load(fitted["model"])
    assert model.image_shape == (H, W)
    out = render(model)
    assert out.shape == (H, W)
    initial = render(init.grid(image, K).model)
    assert psnr(out, image) > psnr(initial, image) + 0.5
    png = np.asarray(Image.open(fitted["png"]))
    assert png.shape == (H, W)
    assert np.abs(png / 255.0 - out).max() <= 0.5 / 255 + 1e-6  # the PNG is the model's render
    hist = pd.read_csv(fitted["history"])
    assert len(hist) == 40 and {"iteration", "psnr", "n_kernels"} <= set(hist.columns)


def test_fit_summary_and_default_output_path(tmp_path, monkeypatch, capsys):
    img = _write_test_png(tmp_path / "grad.png")
    monkeypatch.chdir(tmp_path)
    assert main(["fit", str(img), "--kernels", "12", "--init", "grid", "--iters", "3", "--no-progress"]) == 0
    text = capsys.readouterr().out
    for key in ("PSNR:", "SSIM:", "kernels: 12 -> 12", "iterations: 3", "seconds:"):
        assert key in text
    assert (tmp_path / "results" / "fit" / "grad_grid_12.npz").is_file()
    assert (tmp_path / "results" / "fit" / "grad_grid_12.png").is_file()
    assert not list((tmp_path / "results" / "fit").glob(".*"))  # no temporary files left behind


def test_fit_color(tmp_path):
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = np.linspace(0, 255, W).astype(np.uint8)
    rgb[8:24, 10:30, 2] = 200
    Image.fromarray(rgb).save(tmp_path / "input.png")
    out = tmp_path / "rgb.npz"
    assert main(["fit", str(tmp_path / "input.png"), "--kernels", "8", "--color", "--iters", "2", "--no-progress",
                 "--out", str(out)]) == 0
    m = SMoE.load(out)
    assert m.n_channels == 3 and m.color_space == "rgb"
    assert np.asarray(Image.open(tmp_path / "rgb.png")).shape == (H, W, 3)


def test_init_registry_drives_choices(tmp_path, capsys):
    assert "grid" in INITIALIZERS
    rc = main(["fit", str(_write_test_png(tmp_path / "a.png")), "--kernels", "4", "--init", "nope"])
    assert rc == 2
    assert len(_errors(capsys.readouterr().err)) == 1


# ---------------------------------------------------------------------- render and info
def test_render_scale_2(fitted, tmp_path, capsys):
    out = tmp_path / "sub" / "x2.png"
    assert main(["render", str(fitted["model"]), "--scale", "2", "--out", str(out)]) == 0
    assert np.asarray(Image.open(out)).shape == (2 * H, 2 * W)
    out2 = tmp_path / "shape.png"
    assert main(["render", str(fitted["model"]), "--shape", "16", "20", "--scale", "1.5", "--backend", "torch",
                 "--out", str(out2)]) == 0
    assert np.asarray(Image.open(out2)).shape == (24, 30)


def test_info(fitted, capsys):
    assert main(["info", str(fitted["model"])]) == 0
    text = capsys.readouterr().out
    assert f"kernels: {K}" in text
    assert f"image shape: {H} x {W}" in text
    assert "kernels per 16x16 tile: mean" in text
    assert "sigma" in text and "pi: min" in text


# ---------------------------------------------------------------------- bad input
def _bad_models(src: Path, d: Path) -> dict[str, Path]:
    with np.load(src) as z:
        arrays = {k: np.array(z[k]) for k in z.files}
    nan = dict(arrays)
    nan["mu"] = nan["mu"].copy()
    nan["mu"][0, 0] = np.nan
    np.savez(d / "nan.npz", **nan)
    zero = {k: (v[:0] if v.ndim else v) for k, v in arrays.items()}
    np.savez(d / "zero.npz", **zero)
    (d / "corrupt.npz").write_bytes(b"this is not a model\n" * 10)
    (d / "truncated.npz").write_bytes(src.read_bytes()[:200])
    meta = json.loads(str(arrays["metadata"]))
    assert "format_version" in meta  # the hand-written files carry the same keys as a real one
    return {p: d / f"{p}.npz" for p in ("nan", "zero", "corrupt", "truncated")}


BAD_CASES = {
    "missing image": ["fit", "{dir}/missing.png", "--kernels", "4", "--out", "{out_npz}"],
    "text file as png": ["fit", "{dir}/x.png", "--kernels", "4", "--out", "{out_npz}"],
    "corrupt model": ["render", "{corrupt}", "--out", "{out_png}"],
    "truncated model": ["render", "{truncated}", "--out", "{out_png}"],
    "nan in mu": ["render", "{nan}", "--out", "{out_png}"],
    "zero kernels": ["render", "{zero}", "--out", "{out_png}"],
    "scale 0": ["render", "{model}", "--scale", "0", "--out", "{out_png}"],
    "scale negative": ["render", "{model}", "--scale=-2", "--out", "{out_png}"],
    "bad shape": ["render", "{model}", "--shape", "0", "5", "--out", "{out_png}"],
    "missing model": ["render", "{dir}/nothing.npz", "--out", "{out_png}"],
    "info nan": ["info", "{nan}"],
    "info corrupt": ["info", "{corrupt}"],
    "info zero": ["info", "{zero}"],
    # fails at run time, after initializing: every kernel is removed at the first step
    "fit removes all kernels": ["fit", "{image}", "--kernels", "4", "--iters", "3", "--lr-pi", "10",
                                "--sparsity", "1", "--no-progress", "--out", "{out_npz}"],
}


@pytest.fixture(scope="module")
def bad_inputs(fitted):
    d = fitted["dir"] / "bad"
    d.mkdir()
    (d / "x.png").write_text("not an image\n")
    paths = {k: str(v) for k, v in _bad_models(fitted["model"], d).items()}
    return dict(paths, dir=str(d), model=str(fitted["model"]), image=str(fitted["image"]))


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_one_error_line_nothing_clobbered(case, bad_inputs, tmp_path, capsys):
    out_npz, out_png = tmp_path / "keep.npz", tmp_path / "keep.png"
    out_npz.write_bytes(b"precious model bytes")
    out_png.write_bytes(b"precious image bytes")
    argv = [a.format(out_npz=out_npz, out_png=out_png, **bad_inputs) for a in BAD_CASES[case]]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc in (1, 2), err
    assert len(_errors(err)) == 1, err
    assert "Traceback" not in err
    assert out_npz.read_bytes() == b"precious model bytes"
    assert out_png.read_bytes() == b"precious image bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.npz", "keep.png"]  # no temporaries left


def test_fit_refuses_to_overwrite_its_input(tmp_path, capsys):
    img = _write_test_png(tmp_path / "same.png")
    before = img.read_bytes()
    assert main(["fit", str(img), "--kernels", "4", "--iters", "1", "--no-progress",
                 "--out", str(tmp_path / "same.npz")]) == 2
    assert len(_errors(capsys.readouterr().err)) == 1
    assert img.read_bytes() == before


# ---------------------------------------------------------------------- subprocess (the real entry point)
def _smoe_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "smoe"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "smoe_core.cli"]


def test_entry_point_subprocess(fitted, bad_inputs, tmp_path):
    ok = subprocess.run(_smoe_cmd() + ["info", str(fitted["model"])], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert f"kernels: {K}" in ok.stdout
    keep = tmp_path / "keep.png"
    keep.write_bytes(b"old")
    bad = subprocess.run([sys.executable, "-m", "smoe_core.cli", "render", bad_inputs["nan"], "--out", str(keep)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert len(_errors(bad.stderr)) == 1 and "Traceback" not in bad.stderr
    assert "mu" in _errors(bad.stderr)[0]
    assert keep.read_bytes() == b"old"


# ---------------------------------------------------------------------- bench
def test_bench_tiny_writes_csv(tmp_path, capsys):
    out = tmp_path / "bench" / "bench.csv"
    assert main(["bench", "--height", "32", "--width", "48", "--kernels", "10", "20", "--repeats", "1",
                 "--no-progress", "--out", str(out)]) == 0
    df = pd.read_csv(out)
    assert list(df.columns) == COLUMNS
    assert {"package_version", "date", "backend", "threads", "best_ms", "pairs_per_s", "mean_list_length"} <= set(df.columns)
    assert len(df) == 4 and set(df.backend) == {"tiled", "dense"}
    assert (df.package_version.astype(str) == smoe_core.__version__).all()
    assert (df.threads == torch.get_num_threads()).all()
    dense = df[df.backend == "dense"]
    assert (dense.pairs == 32 * 48 * dense.kernels).all()
    assert (df.best_ms > 0).all()
    text = capsys.readouterr().out
    assert "dense/tiled" in text and "tiled ms" in text


def test_bench_coding_times_the_training_iteration(tmp_path, capsys):
    from smoe_core.studies.bench import CODING_COLUMNS, run_coding_benchmark

    out = tmp_path / "bench_coding.csv"
    assert main(["bench", "--coding", "--height", "32", "--width", "40", "--repeats", "2", "--out", str(out)]) == 0
    df = pd.read_csv(out)
    assert list(df.columns) == CODING_COLUMNS and len(df) == 1
    r = df.iloc[0]
    # the paper's grid: floor(W / 4) x floor(H / 4) kernels
    assert r.kernels == 10 * 8 and r.repeats == 2 and r.warmup == 2 and bool(r.quantize) and r.image == "lena"
    assert 0 < r.best_cpu_ms <= r.median_cpu_ms and 0 < r.best_wall_ms <= r.median_wall_ms
    assert "process time per iteration" in capsys.readouterr().out
    assert main(["bench", "--no-quantize", "--height", "32", "--width", "32"]) == 2
    assert "--no-quantize goes with --coding" in capsys.readouterr().err
    with pytest.raises(ValueError, match="repeats"):
        run_coding_benchmark(32, 32, repeats=0)
    with pytest.raises(ValueError, match="pixels"):
        run_coding_benchmark(100_000, 100_000)


def test_tiled_pairs_counts_partial_tiles():
    img = np.linspace(0, 1, 37 * 50, dtype=np.float32).reshape(37, 50)  # partial tiles on both edges
    m = init.grid(img, 30).model
    lists = smoe_core.tile_lists(m)
    counts = lists.counts.numpy()
    expect = 0
    for ty in range(lists.tiles_y):
        for tx in range(lists.tiles_x):
            h = min(16, 37 - 16 * ty)
            w = min(16, 50 - 16 * tx)
            expect += counts[ty * lists.tiles_x + tx] * h * w
    assert tiled_pairs(lists) == expect


def test_fit_experts_rule_reaches_the_initializer(tmp_path, capsys):
    """--experts random gives the grid initializer's seeded random experts (known: the direct call's model)."""
    img = _write_test_png(tmp_path / "disk.png")
    out = tmp_path / "m.npz"
    rc = main(["fit", str(img), "--kernels", str(K), "--init", "grid", "--experts", "random", "--seed", "7",
               "--iters", "0", "--no-progress", "--out", str(out)])
    assert rc == 0
    direct, _ = init.grid(load_image(img), K, experts="random", seed=7)
    np.testing.assert_array_equal(SMoE.load(out).experts, direct.experts)


def test_fit_segmenting_init_uses_d_th(tmp_path, capsys):
    """--d-th reaches the segmentation: the model equals the direct S-SMoE call on MDBSCAN labels at that
    threshold, and differs between a fine and a coarse threshold."""
    from smoe_core.studies.common import segmentation_labels

    img = _write_test_png(tmp_path / "disk.png")
    models = {}
    for d_th in (5.0, 250.0):
        out = tmp_path / f"s{d_th:g}.npz"
        assert main(["fit", str(img), "--kernels", str(K), "--init", "s_smoe", "--d-th", f"{d_th:g}", "--iters", "0",
                     "--no-progress", "--out", str(out)]) == 0
        models[d_th] = SMoE.load(out)
        direct, _ = init.get_initializer("s_smoe")(load_image(img), K, labels=segmentation_labels(img, d_th), seed=0)
        np.testing.assert_array_equal(models[d_th].mu, direct.mu)
    assert len(np.unique(segmentation_labels(img, 5.0))) > len(np.unique(segmentation_labels(img, 250.0)))
    assert not np.array_equal(models[5.0].mu, models[250.0].mu)


def test_fit_tiles_trains_and_merges(tmp_path, capsys):
    img = _write_test_png(tmp_path / "disk.png")
    out = tmp_path / "t.npz"
    rc = main(["fit", str(img), "--kernels", str(K), "--init", "grid", "--tiles", "2", "1", "--tile-iters", "5",
               "--iters", "3", "--no-progress", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "2 tiles trained and merged" in text
    m = SMoE.load(out)
    mu = np.asarray(m.mu)
    # kernels of both tiles, placed back in image coordinates
    assert (mu[:, 0] < W / 2).any() and (mu[:, 0] >= W / 2).any()


@pytest.mark.parametrize("argv, message", [
    (["--init", "edge", "--experts", "random"], "--experts applies to"),
    (["--init", "grid", "--d-th", "40"], "--d-th applies to"),
    (["--init", "kmeans", "--workers", "2"], "--workers/--scheduler apply to"),
])
def test_fit_options_that_do_not_apply_are_refused(argv, message, tmp_path, capsys):
    img = _write_test_png(tmp_path / "disk.png")
    rc = main(["fit", str(img), "--kernels", str(K), "--iters", "0", "--no-progress", "--out",
               str(tmp_path / "x.npz"), *argv])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()
