"""The N-SMoE study (smoe_core.studies.nsmoe_paper): the test crops, degradations, metrics, tables and figures,
against hand-made cases and scikit-image."""
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from skimage.metrics import structural_similarity

from smoe_core.studies import nsmoe_paper as ns
from smoe_core.tasks import superres as sr
from smoe_core.tasks.nsmoe import train as tr
from smoe_core.tasks.nsmoe.infer import load_network, restore

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _smoke_checkpoint(tmp_path_factory, task: str, steps: int, batch: int, val_crops: int) -> Path:
    """A checkpoint of ``task`` after ``steps`` smoke steps on one torch thread (a network to run, not to measure)."""
    d = tmp_path_factory.mktemp(f"nsmoe_{task}")
    cfg = tr.make_config(task, "smoke", steps=steps, batch=batch, val_crops=val_crops, val_every=steps,
                         checkpoint_every=steps)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tr.train(cfg, d, progress=False)
    finally:
        torch.set_num_threads(n)
    return d / f"{task}.ckpt"


@pytest.fixture(scope="module")
def smoke_ckpt(tmp_path_factory):
    """An sr2 checkpoint of two smoke steps."""
    return _smoke_checkpoint(tmp_path_factory, "sr2", steps=2, batch=2, val_crops=3)


@pytest.fixture(scope="module")
def smoke_blind(tmp_path_factory):
    """A blind checkpoint of one smoke step."""
    return _smoke_checkpoint(tmp_path_factory, "blind", steps=1, batch=1, val_crops=1)


def test_crop_is_the_window_of_most_detail(monkeypatch):
    img = np.full((96, 120), 0.5, np.float32)
    rng = np.random.default_rng(0)
    img[40:72, 64:96] = rng.random((32, 32))  # the only texture, on the 8 px corner grid of a 32 px crop
    monkeypatch.setattr(ns.data, "load", lambda name: img)
    monkeypatch.setattr(ns.data, "SPLITS", {"test": ("x",)})
    out = ns.test_crop("x", 32)
    assert out.shape == (32, 32) and np.array_equal(out, img[40:72, 64:96])
    assert ns.test_crop("x", 34).shape == (32, 32)  # a multiple of 4
    assert ns.test_crop("x", None).shape == (96, 120)
    with pytest.raises(ValueError, match="crop"):
        ns.test_crop("x", 16)
    with pytest.raises(ValueError, match="test images"):
        ns.test_images(["y"])


def test_quality_matches_scikit_image_and_the_pair_range_rule():
    rng = np.random.default_rng(1)
    ref = (0.2 + 0.5 * rng.random((40, 40))).astype(np.float32)  # values in [0.2, 0.7]
    pred = np.clip(ref + 0.05 * rng.standard_normal(ref.shape), 0, 1).astype(np.float32)
    q = ns.quality(pred, ref, perceptual=False)
    mse = float(np.mean((pred.astype(np.float64) - ref) ** 2))
    assert q["psnr"] == pytest.approx(10 * math.log10(1 / mse), abs=1e-6)
    assert q["ssim"] == pytest.approx(structural_similarity(pred.astype(np.float64), ref.astype(np.float64),
                                                            data_range=1.0), abs=1e-9)
    r = float(max(pred.max(), ref.max()) - min(pred.min(), ref.min()))
    assert q["psnr_pair"] == pytest.approx(10 * math.log10(r * r / mse), abs=1e-6)
    assert q["psnr_pair"] < q["psnr"]  # the pair's range is below 1
    assert ns.quality(np.full_like(ref, 2.0), ref, perceptual=False)["psnr"] == pytest.approx(
        10 * math.log10(1 / float(np.mean((1.0 - ref.astype(np.float64)) ** 2))))  # clipped to [0, 1] first
    with pytest.raises(ValueError, match="shape"):
        ns.quality(pred[:-1], ref, perceptual=False)


def test_degradations_are_the_training_ones_and_seeded():
    hr = np.random.default_rng(2).random((64, 64)).astype(np.float32)
    lr, ref = ns.degraded_input("sr4", hr, "a")
    r2, l2 = sr.downsample(hr, 4)
    assert np.array_equal(lr, l2) and np.array_equal(ref, r2) and lr.shape == (16, 16)
    flat = np.full((128, 128), 0.5, np.float32)
    n1, clean = ns.degraded_input("denoise", flat, "a", 25, seed=3)
    n2, _ = ns.degraded_input("denoise", flat, "a", 25, seed=3)
    n3, _ = ns.degraded_input("denoise", flat, "b", 25, seed=3)
    assert np.array_equal(n1, n2) and not np.array_equal(n1, n3) and np.array_equal(clean, flat)
    assert float(np.std(n1 - flat)) == pytest.approx(25 / 255, rel=0.03)
    b1, t1 = ns.degraded_input("blind", hr, "a", seed=4)
    b2, _ = ns.degraded_input("blind", hr, "a", seed=4)
    assert np.array_equal(b1, b2) and b1.shape == (32, 32) and np.array_equal(t1, hr)  # no sharpening of the target
    with pytest.raises(ValueError, match="task"):
        ns.degraded_input("sr3", hr, "a")


def _rows():
    rows = []
    for task, sigma, base in (("sr2", 0, "bicubic"), ("denoise", 25, "noisy")):
        for img, b in (("a", 30.0), ("b", 20.0)):
            rows.append(dict(task=task, image=img, sigma=sigma, method=base, psnr=b, ssim=0.8, psnr_pair=b,
                             ssim_pair=0.8, seconds=0.0))
            gain = {"a": 2.0, "b": -0.5}[img] if task == "sr2" else 7.0
            rows.append(dict(task=task, image=img, sigma=sigma, method="nsmoe", psnr=b + gain, ssim=0.81,
                             psnr_pair=b, ssim_pair=0.8, seconds=1.0))
            rows.append(dict(task=task, image=img, sigma=sigma, method="smoe", psnr=b + 1.0, ssim=0.8,
                             psnr_pair=b, ssim_pair=0.8, seconds=1.0))
    rows.append(dict(task="denoise", image="a", sigma=25, method="bm3d", psnr=37.2, ssim=0.9, psnr_pair=0, ssim_pair=0,
                     seconds=1.0))
    rows.append(dict(task="denoise", image="b", sigma=25, method="bm3d", psnr=27.6, ssim=0.9, psnr_pair=0, ssim_pair=0,
                     seconds=1.0))
    return pd.DataFrame(rows)


def test_summary_gains_wins_and_targets_by_hand():
    t = ns.summary(_rows())
    sr2 = t[(t.task == "sr2") & (t.method == "nsmoe")].iloc[0]
    assert sr2["gain_db"] == pytest.approx(0.75) and sr2["wins"] == 1 and sr2["psnr"] == pytest.approx(25.75)
    assert sr2["ssim_gain"] == pytest.approx(0.01)
    dn = t[(t.task == "denoise") & (t.method == "nsmoe")].iloc[0]
    assert dn["gain_db"] == pytest.approx(7.0) and dn["wins"] == 2
    g = ns.targets(t).set_index("criterion")
    assert g.loc["sr2: mean PSNR >= bicubic + 1.5 dB", "holds"] == False  # noqa: E712 (0.75 dB)
    assert g.loc["sr2: better than bicubic on all but at most one image (2)", "holds"] == True  # noqa: E712
    assert g.loc["denoise sigma 25: mean PSNR >= noisy + 6.0 dB", "holds"] == True  # noqa: E712
    within = g.loc["denoise sigma 25: mean PSNR within 0.5 dB of BM3D (difference)"]
    assert within["measured"] == pytest.approx(32.0 - 32.4) and within["holds"] == True  # noqa: E712
    assert math.isnan(g.loc["sr4: mean PSNR >= bicubic + 0.7 dB", "measured"])  # no sr4 rows


def _draw_rows():
    """Two images, three draws: nsmoe gains a: 1, 2, 3 dB; b: 0, -1, 1 dB (per-draw means 0.5, 0.5, 2.0)."""
    rows = []
    for img, gains in (("a", [1.0, 2.0, 3.0]), ("b", [0.0, -1.0, 1.0])):
        for d, g in enumerate(gains):
            rows += [dict(task="blind", image=img, draw=d, method="bicubic", psnr=25.0 + d, ssim=0.5, seconds=0.0),
                     dict(task="blind", image=img, draw=d, method="nsmoe", psnr=25.0 + d + g, ssim=0.6, seconds=1.0)]
    return pd.DataFrame(rows)


def test_draw_summary_and_the_blind_target_by_hand():
    d = ns.draw_summary(_draw_rows())
    assert len(d) == 1
    r = d.iloc[0]
    per_draw = np.array([0.5, 0.5, 2.0])
    assert (r["draws"], r["images"], r["wins"]) == (3, 2, 1)  # b's mean gain is 0: not a win
    assert r["gain_db"] == pytest.approx(1.0) and r["ssim_gain"] == pytest.approx(0.1)
    assert r["draw_sd"] == pytest.approx(per_draw.std(ddof=1))
    assert r["standard_error"] == pytest.approx(per_draw.std(ddof=1) / math.sqrt(3))
    assert (r["worst_draw"], r["best_draw"]) == (pytest.approx(0.5), pytest.approx(2.0))
    # the blind criterion: decided on the draws' mean (1.0 >= 1.0, but within two standard errors), draw 0 beside
    table = pd.DataFrame([dict(task="blind", sigma=0, method="nsmoe", gain_db=0.5, images=2, wins=1, ssim_gain=0.1,
                               psnr=25.5)])
    g = ns.targets(table, d).set_index("criterion")
    many = g.loc["blind: mean PSNR >= bicubic + 1.0 dB (mean over 3 degradation draws per image)"]
    assert many["measured"] == pytest.approx(1.0) and many["holds"] == True  # noqa: E712
    assert many["standard_error"] == pytest.approx(r["standard_error"]) and many["within_spread"] == True  # noqa: E712
    one = g.loc["blind: mean PSNR >= bicubic + 1.0 dB (draw 0 only)"]
    assert one["measured"] == pytest.approx(0.5) and one["holds"] == False  # noqa: E712
    assert math.isnan(one["standard_error"]) and math.isnan(one["within_spread"])
    # without draws: the single criterion as before
    assert "blind: mean PSNR >= bicubic + 1.0 dB" in ns.targets(table).set_index("criterion").index


def test_draw_items_reuse_the_main_grid_input_for_draw_zero(smoke_blind, tmp_path, monkeypatch):
    img = np.random.default_rng(7).random((64, 64)).astype(np.float32)
    monkeypatch.setattr(ns.data, "load", lambda name: img)
    monkeypatch.setattr(ns.data, "SPLITS", {"test": ("x",)})
    grid = ns.draw_items(None, crop=32, checkpoint_dir=smoke_blind.parent, draws=2, seed=3)
    assert [(g["draw"], g["method"]) for g in grid] == [(0, "bicubic"), (0, "nsmoe"), (1, "bicubic"), (1, "nsmoe")]
    main = {g["method"]: g for g in ns.items(["blind"], None, crop=32, checkpoint_dir=smoke_blind.parent, seed=3,
                                             smoe=False, authors_gating=False)}
    for g in grid[:2]:  # draw 0: the main grid's input and numbers
        assert ns.run_draw_item(g)["psnr"] == pytest.approx(ns.run_item(main[g["method"]])["psnr"], abs=1e-9)
    assert ns.run_draw_item(grid[2])["psnr"] != pytest.approx(ns.run_draw_item(grid[0])["psnr"], abs=1e-6)
    for bad in (0, 2.5, True, "8"):
        with pytest.raises(ValueError, match="draws"):
            ns.draw_items(None, crop=32, checkpoint_dir=None, draws=bad)
    with pytest.raises(ValueError, match="task"):
        ns.draw_items(None, crop=32, checkpoint_dir=None, draws=2, task="sr2")


def test_the_grid_on_two_dask_workers_gives_the_serial_numbers(smoke_blind, tmp_path):
    """The quick preset runs the grids on two Dask workers (``grid_workers``): every item runs with one torch
    thread either way (smoe_core.parallel), so the rows are the same to the last bit."""
    pytest.importorskip("dask.distributed")
    pytest.importorskip("pydicom")
    from smoe_core.parallel import run_tasks

    grid = ns.draw_items(None, crop=32, checkpoint_dir=smoke_blind.parent, draws=1)[:4]
    grid += ns.items(["blind"], ns.test_images(None)[:1], crop=32, checkpoint_dir=smoke_blind.parent, smoe=False)
    fns = [ns.run_draw_item] * 4 + [ns.run_item] * (len(grid) - 4)

    def call(pair):
        return pair[0](pair[1])

    serial = [f(g) for f, g in zip(fns, grid)]
    on_dask = run_tasks(call, list(zip(fns, grid)), workers=2, progress=False)
    assert [(r["psnr"], r["ssim"]) for r in serial] == [(r["psnr"], r["ssim"]) for r in on_dask]


def test_checkpoint_lookup_names_the_training_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="smoe nsmoe train --preset quick --task sr4"):
        ns.checkpoint_for("sr4", tmp_path)
    with pytest.raises(ValueError, match="task"):
        ns.checkpoint_for("sr8", tmp_path)
    (tmp_path / "sr2.ckpt").write_bytes(b"x")
    found, missing = ns.available_checkpoints(["sr2", "sr4"], tmp_path)
    assert found == {"sr2": tmp_path / "sr2.ckpt"} and list(missing) == ["sr4"] and "train" in missing["sr4"]


def test_authors_gating_swap_decodes_the_same_kernels(smoke_ckpt):
    net = load_network(smoke_ckpt).net
    x = np.random.default_rng(5).random((24, 24)).astype(np.float32)
    ours, _ = restore(net, x)
    theirs, _ = restore(net, x, gating="authors")
    with torch.no_grad():
        ref = net(torch.from_numpy(x)[None, None], stride=net.config.test_stride, gating="authors")[0, 0].numpy()
    assert np.allclose(theirs, ref, atol=1e-5) and not np.allclose(ours, theirs, atol=1e-3)
    with pytest.raises(ValueError, match="gating"):
        restore(net, x, gating="softmax")


def test_run_item_and_figures(smoke_ckpt, tmp_path, monkeypatch):
    img = np.random.default_rng(6).random((64, 64)).astype(np.float32)
    monkeypatch.setattr(ns.data, "load", lambda name: img)
    monkeypatch.setattr(ns.data, "SPLITS", {"test": ("x",)})
    grid = ns.items(["sr2"], None, crop=32, checkpoint_dir=smoke_ckpt.parent, smoe=False, output_dir=tmp_path)
    assert [g["method"] for g in grid] == ["bicubic", "nsmoe", "bicubic_torch", "nsmoe_authors_gating"]
    row = ns.run_item(grid[0])
    hr = ns.test_crop("x", 32)
    ref, lr = sr.downsample(hr, 2)
    assert row["psnr"] == pytest.approx(ns.quality(sr.pil_resize(lr, ref.shape, "bicubic"), ref, False)["psnr"])
    # the networks' base: torch's bicubic (a = -0.75), another interpolation than PIL's (a = -0.5)
    import torch
    import torch.nn.functional as F

    base = F.interpolate(torch.from_numpy(lr)[None, None], size=ref.shape, mode="bicubic", align_corners=False)
    row_t = ns.run_item(grid[2])
    assert row_t["psnr"] == pytest.approx(ns.quality(np.clip(base[0, 0].numpy(), 0, 1), ref, False)["psnr"])
    assert row_t["psnr"] != pytest.approx(row["psnr"], abs=1e-3)
    out = np.load(ns.output_path(tmp_path, grid[0]))
    assert out.shape == (32, 32)
    hist = ns.training_history({"sr2": smoke_ckpt})
    assert list(hist["step"]) == [0, 2] and set(hist["task"]) == {"sr2"}
    fig = ns.training_figure(hist)
    assert len(fig.axes) == 1 and "dB" in fig.axes[0].get_ylabel()
    fig = ns.crops_figure({"bicubic": out, "copy": ref}, ref, window=16, title="t")
    assert len(fig.axes) == 3 and "inf dB" in fig.axes[2].get_title()
    fig = ns.kernels_figure(smoke_ckpt, lr)
    assert len(fig.axes) == 2 and len(fig.axes[0].collections) == 1  # the ellipses
    summary = ns.checkpoint_summary({"sr2": smoke_ckpt})
    assert summary.loc[0, "step"] == 2 and len(summary.loc[0, "sha256"]) == 12


def test_block_ceiling_starts_at_the_grid_and_improves():
    pytest.importorskip("pydicom")
    start = ns.block_ceiling("sr2", 16, crops=2, iters=0)
    fit = ns.block_ceiling("sr2", 16, crops=2, iters=40)
    assert start["baseline_psnr"] == fit["baseline_psnr"] and start["crops"] == 2
    assert fit["per_block_psnr"] > start["per_block_psnr"] + 1.0
    assert fit["stitched_psnr"] > start["stitched_psnr"] + 1.0
    with pytest.raises(ValueError, match="task"):
        ns.block_ceiling("sr3")
    # the residual form starts exactly at torch's bicubic upscale (experts 0) and improves on it
    import torch.nn.functional as F

    from smoe_core.tasks.nsmoe import train as nt

    val = nt.validation_set(nt.make_config("sr2", "quick"))
    bicubic = F.interpolate(val.lr[:2], scale_factor=2, mode="bicubic", align_corners=False)[:, 0].numpy()
    start = ns.block_ceiling("sr2", 16, base="bicubic", crops=2, iters=0)
    assert start["stitched_psnr"] == pytest.approx(nt.mean_psnr(bicubic, val.hr[:2]), abs=1e-4)
    fit = ns.block_ceiling("sr2", 16, base="bicubic", crops=2, iters=100)
    assert fit["stitched_psnr"] > start["stitched_psnr"] + 0.3 and fit["base"] == "bicubic"
    with pytest.raises(ValueError, match="base"):
        ns.block_ceiling("sr2", base="lanczos")


def test_shipped_checkpoints_are_finished_quick_runs_and_the_denoiser_denoises():
    """Every checkpoint in smoe_core/data/nsmoe is a weights-only export of a finished quick-preset run, under
    20 MB; the shipped denoiser gains at least 6 dB over the noisy input at sigma 25 on a held-out test window."""
    pytest.importorskip("pydicom")
    from smoe_core.io import PACKAGE_DATA
    from smoe_core.tasks.nsmoe import checkpoint as ck

    folder = PACKAGE_DATA / "nsmoe"
    shipped = sorted(folder.glob("*.ckpt"))
    for path in shipped:
        state = ck.load(path)
        m = state.meta
        assert m["weights_only"] is True and state.optimizer is None, path.name
        assert m["preset"] == "quick" and m["step"] == m["total_steps"] and path.stem == m["task"], path.name
        assert path.stat().st_size <= ck.SIZE_BUDGET
    if not any(p.stem == "denoise" for p in shipped):
        pytest.skip("no shipped denoising checkpoint")
    base = dict(task="denoise", image="693_UNCR.dcm", sigma=25, crop=64, seed=0, checkpoint_dir=str(folder),
                smoe_iters=None, smoe_models=8, output_dir=None)
    noisy = ns.run_item(dict(base, method="noisy"))
    net = ns.run_item(dict(base, method="nsmoe"))
    assert net["psnr"] >= noisy["psnr"] + 6.0, (net["psnr"], noisy["psnr"])
