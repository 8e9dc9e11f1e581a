"""N-SMoE training, checkpoints and the ``smoe nsmoe`` commands (smoe_core.tasks.nsmoe.train, .checkpoint, .infer):
a resumed run equals an uninterrupted one bit for bit, runs are deterministic under the seed, checkpoints round-trip
and every bad file gives one clear error, and upscale / denoise run a checkpoint trained for two steps here (16-bit
in, 16-bit out). Tiny runs only: the smoke preset's narrow network, one-block crops, one thread.
Skipped without pydicom-data (the training images)."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

pytest.importorskip("pydicom")
pytest.importorskip("data_store", reason="pydicom-data is not installed")

from smoe_core.cli import main  # noqa: E402
from smoe_core.io import bit_depth, load_image, save_image  # noqa: E402
from smoe_core.model import SMoE  # noqa: E402
from smoe_core.tasks.nsmoe import checkpoint as ck  # noqa: E402
from smoe_core.tasks.nsmoe import infer  # noqa: E402
from smoe_core.tasks.nsmoe import train as tr  # noqa: E402
from smoe_core.tasks.nsmoe.degrade import Degradation  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(task="sr2", **kw):
    """The smoke preset, shrunk further: 2 crops a step, 3 validation crops."""
    return tr.make_config(task, "smoke", **{"steps": 2, "batch": 2, "val_crops": 3, "val_every": 2,
                                            "checkpoint_every": 2, **kw})


def _errors(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("smoe: error:")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Checkpoints trained for two steps through the CLI (sr2, denoise)."""
    d = tmp_path_factory.mktemp("nsmoe_runs")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for task in ("sr2", "denoise"):
            rc = main(["nsmoe", "train", "--preset", "smoke", "--task", task, "--out", str(d / task), "--stop-at", "2",
                       "--no-progress"])
            assert rc == 0
            out[task] = d / task / f"{task}.ckpt"
        return out
    finally:
        torch.set_num_threads(n)


def _state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------- resume and determinism
@pytest.mark.parametrize("task", ["blind", "denoise"])
def test_resume_continues_to_the_straight_runs_weights_bit_for_bit(tmp_path, task):
    """6 steps straight against 3, then --resume for 3: the same weights, Adam state and losses exactly (the blind
    chain and the noise levels draw from the degradation's stream, which the checkpoint carries)."""
    cfg = tiny(task, steps=6, checkpoint_every=2, val_every=3)
    straight = tr.train(cfg, tmp_path / "a", progress=False)
    first = tr.train(cfg, tmp_path / "b", stop_at=3, progress=False)
    assert first.step == 3 and not first.finished and ck.load(first.checkpoint).step == 3
    resumed = tr.train(cfg, tmp_path / "b", resume=True, progress=False)
    assert resumed.finished and resumed.step == straight.step == 6
    a, b = ck.load(straight.checkpoint), ck.load(resumed.checkpoint)
    assert _state_equal(a.model, b.model)
    sa, sb = a.optimizer["state"], b.optimizer["state"]
    assert sa.keys() == sb.keys() and all(_state_equal(sa[k], sb[k]) for k in sa)
    for key in ("train", "val"):
        strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
        assert strip(a.meta["history"][key]) == strip(b.meta["history"][key])
    assert [r["step"] for r in a.meta["history"]["val"]] == [0, 3, 6]
    assert a.meta["rng"] == b.meta["rng"]


def test_resume_on_another_thread_count_warns_only_if_it_trains_on(tmp_path):
    """A checkpoint written with one torch thread and resumed with two: a run that trains on is warned (its bits may
    differ from an uninterrupted run), a finished one that is only read (as the N-SMoE notebook reads its networks)
    is not."""
    cfg = tiny(steps=4)
    tr.train(cfg, tmp_path, stop_at=2, progress=False)
    finished = tiny(steps=4)
    tr.train(finished, tmp_path / "done", progress=False)
    torch.set_num_threads(2)
    try:
        with pytest.warns(UserWarning, match="written with 1 torch threads, this run has 2"):
            assert tr.train(cfg, tmp_path, resume=True, progress=False).finished
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert tr.train(finished, tmp_path / "done", resume=True, progress=False).step == 4
    finally:
        torch.set_num_threads(1)


def test_same_seed_same_run_and_another_seed_another(tmp_path):
    r0 = tr.train(tiny(seed=5), tmp_path / "a", progress=False)
    r1 = tr.train(tiny(seed=5), tmp_path / "b", progress=False)
    r2 = tr.train(tiny(seed=6), tmp_path / "c", progress=False)
    m0, m1, m2 = (ck.load(r.checkpoint).model for r in (r0, r1, r2))
    assert _state_equal(m0, m1)
    assert not _state_equal(m0, m2)
    assert list(r0.history["loss"].dropna()) == list(r1.history["loss"].dropna())


def test_two_tasks_in_one_folder_keep_one_history_each(tmp_path):
    """The N-SMoE notebook trains every task into one ``checkpoints/`` folder: each task's history file is its own
    and equals the history its checkpoint holds (a single ``history.csv`` held only the last task's)."""
    runs = {task: tr.train(tiny(task), tmp_path, progress=False) for task in ("sr2", "denoise")}
    for task, run in runs.items():
        written = pd.read_csv(tr.history_path(tmp_path, task))
        from_ckpt = tr.history_frame(ck.load(run.checkpoint).meta["history"])
        pd.testing.assert_frame_equal(written, from_ckpt, check_dtype=False)
    assert not (tmp_path / "history.csv").exists()
    assert tr.history_path(tmp_path, "sr2").read_bytes() != tr.history_path(tmp_path, "denoise").read_bytes()


def test_schedule_halves_at_the_milestones_and_configs_are_checked():
    cfg = tr.make_config("sr4", "quick")
    steps = cfg.steps
    assert tr.learning_rate_at(cfg, 0) == cfg.learning_rate
    assert tr.learning_rate_at(cfg, steps // 2) == cfg.learning_rate / 2
    assert tr.learning_rate_at(cfg, int(0.9 * steps)) == cfg.learning_rate / 8
    assert cfg.network_config().width == 32 and cfg.scale == 4
    assert tr.make_config("denoise", "paper").scale == 1 and tr.make_config("blind", "quick").mode == "bsrgan_plus"
    for task in ("sr2", "sr4"):  # one kernel per LR px, decoding the residual over bicubic, test stride 8
        for preset in tr.PRESETS:
            net = tr.make_config(task, preset).network_config()
            assert (net.n_kernels, net.base, net.residual_experts, net.test_stride) == (256, "bicubic", False, 8), (
                task, preset)
    # blind trains towards the clean crop (the test's reference), the other tasks have no sharpening step
    blind = tr.make_config("blind", "quick")
    assert blind.sharpen is False and tr.training_degradation(blind).sharpen is False
    assert tr.training_degradation(tr.make_config("blind", "quick", sharpen=True)).sharpen is True
    with pytest.raises(ValueError, match="sharpen"):
        tr.make_config("blind", sharpen="no")
    for task in ("denoise", "blind"):  # the direct form
        net = tr.make_config(task, "quick").network_config()
        assert (net.n_kernels, net.base, net.residual_experts, net.test_stride) == (16, "none", True, 4)
    with pytest.raises(ValueError, match="task"):
        tr.make_config("sr3")
    with pytest.raises(ValueError, match="multiple of 3"):
        tr.make_config("denoise", val_crops=4)
    # the quick preset's estimate (module docstring): at the measured one-thread CPU times of a step (data
    # included) and of a validation pass, each task fits in half the hour, leaving a factor of two
    measured = {"sr2": (0.047, 0.08), "sr4": (0.053, 0.11), "denoise": (0.073, 0.52), "blind": (0.227, 0.97)}
    for task, (step_s, val_s) in measured.items():
        assert tr.estimate_seconds(tr.make_config(task, "quick"), step_s, val_s) < 1800, task
    step_s, val_s = tr.measure_step(tiny(), repeats=1)  # the measurement itself (smoke network)
    assert 0 < step_s < 30 and 0 < val_s < 30


def test_denoising_degradation_is_seeded_clipped_gaussian_at_scale_one():
    clean = np.full((64, 64), 0.5, np.float32)
    noisy, target = Degradation(1, "gaussian_noise", seed=0, noise_sigma=25)(clean)
    assert noisy.shape == clean.shape and np.array_equal(target, clean)
    assert abs(float(np.std(noisy - clean)) - 25 / 255) < 0.01
    again, _ = Degradation(1, "gaussian_noise", seed=0, noise_sigma=25)(clean)
    assert np.array_equal(noisy, again)
    lo, _ = Degradation(1, "gaussian_noise", seed=0, noise_sigma=(5, 50))(np.zeros((8, 8), np.float32))
    assert lo.min() >= 0  # clipped, as a stored image is
    with pytest.raises(ValueError, match="scale 1"):
        Degradation(2, "gaussian_noise")


# ---------------------------------------------------------------------- checkpoint files
def test_checkpoint_round_trip_and_header(tmp_path):
    meta = {"task": "sr2", "scale": 2, "step": 7, "total_steps": 9, "big": 2**100, "x": [0.1, 1e-300]}
    model = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    rng = torch.get_rng_state()
    path = ck.save(tmp_path / "c.ckpt", meta, model, {"state": {}, "param_groups": []}, rng)
    state = ck.load(path)
    assert state.meta == meta and state.step == 7 and state.task == "sr2"
    assert torch.equal(state.model["w"], model["w"]) and torch.equal(state.torch_rng, rng)
    raw = path.read_bytes()
    assert raw.startswith(ck.MAGIC)
    header = json.loads(raw[len(ck.MAGIC):].split(b"\n", 1)[0])
    assert header["format_version"] == ck.VERSION and len(header["sha256"]) == 64 and header["step"] == 7
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic write left nothing behind


def _rewrite_header(raw: bytes, **changes) -> bytes:
    head, payload = raw[len(ck.MAGIC):].split(b"\n", 1)
    header = dict(json.loads(head), **changes)
    return ck.MAGIC + ck.canonical(header) + b"\n" + payload


def test_bad_checkpoint_files_give_one_clear_error(tmp_path, runs, capsys):
    raw = runs["sr2"].read_bytes()
    flipped = bytearray(raw)
    flipped[-100] ^= 0x01
    cases = {
        "flipped.ckpt": (bytes(flipped), "corrupted"),
        "truncated.ckpt": (raw[: len(raw) // 2], "corrupted"),
        "header.ckpt": (_rewrite_header(raw, step=99), "corrupted"),
        "garbled.ckpt": (ck.MAGIC + b"{not json\n" + raw[-50:], "corrupted"),
        "v2.ckpt": (_rewrite_header(raw, format_version=2), "format version 2"),
        "png.ckpt": (b"\x89PNG\r\n\x1a\n" + bytes(100), "not an N-SMoE checkpoint"),
        "empty.ckpt": (b"", "not an N-SMoE checkpoint"),
    }
    for name, (data, words) in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(ck.CheckpointError, match=words) as info:
            ck.load(p)
        assert "\n" not in str(info.value) and str(p) in str(info.value), name
    # a payload with a right digest that is not ours (a pickle of a plain list)
    import io

    buf = io.BytesIO()
    torch.save([1, 2, 3], buf)
    fields = {"format_version": ck.VERSION, "payload_bytes": len(buf.getvalue())}
    p = tmp_path / "foreign.ckpt"
    p.write_bytes(ck.MAGIC + ck.canonical(dict(fields, sha256=ck.digest(fields, buf.getvalue()))) + b"\n"
                  + buf.getvalue())
    with pytest.raises(ck.CheckpointError, match="not a readable"):
        ck.load(p)
    with pytest.raises(ck.CheckpointError, match="directory"):
        ck.load(tmp_path)
    # through the CLI: one error line, status 2, nothing written
    img = tmp_path / "in.png"
    save_image(img, np.random.default_rng(0).random((20, 20)))
    capsys.readouterr()
    rc = main(["nsmoe", "upscale", str(img), "--scale", "2", "--out", str(tmp_path / "o.png"),
               "--checkpoint", str(tmp_path / "flipped.ckpt"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and len(_errors(err)) == 1 and "corrupted" in err and not (tmp_path / "o.png").exists()


def test_compact_encoder_checkpoint_is_under_20_mb(tmp_path):
    """The largest quick / paper network (the block encoder, ~1.1M parameters) with Adam's two moments: about
    13 MB."""
    cfg = tr.make_config("blind", "quick")
    net = tr.build_network(cfg)
    opt = torch.optim.Adam(net.parameters())
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # creates the moments
    meta = {"task": "blind", "scale": 2, "step": 1,
            "history": {"train": [{"step": i, "loss": 0.01} for i in range(800)]}}
    path = ck.save(tmp_path / "big.ckpt", meta, net.state_dict(), opt.state_dict(), torch.get_rng_state())
    size = path.stat().st_size
    assert 0.9e6 < net.n_parameters < 1.3e6
    assert 12 * net.n_parameters < size <= ck.SIZE_BUDGET, size


# ---------------------------------------------------------------------- inference and the CLI
def test_chunked_inference_equals_the_network_and_pads_small_images(runs):
    loaded = infer.load_network(runs["sr2"])
    img = np.random.default_rng(1).random((27, 35)).astype(np.float32)
    out, model = infer.restore(loaded.net, img, chunk=5, export=True, stride=4)
    with torch.no_grad():
        ref = loaded.net(torch.from_numpy(img)[None, None], stride=4)[0, 0].numpy()
    assert out.shape == ref.shape == (54, 70)
    assert np.abs(out - ref).max() < 1e-5
    # block rows at 0, 4, 8, 11; columns at 0, 4, 8, 12, 16, 19
    assert model.image_shape == (27, 35) and model.n_kernels == loaded.net.config.n_kernels * 4 * 6
    # by default the network's test stride (8 for the sr networks): rows at 0, 8, 11; columns at 0, 8, 16, 19
    out8, model8 = infer.restore(loaded.net, img, chunk=5, export=True)
    with torch.no_grad():
        ref8 = loaded.net(torch.from_numpy(img)[None, None], stride=8)[0, 0].numpy()
    assert np.abs(out8 - ref8).max() < 1e-5 and model8.n_kernels == loaded.net.config.n_kernels * 3 * 4
    small, _ = infer.restore(loaded.net, img[:9, :12])
    assert small.shape == (18, 24) and np.isfinite(small).all()


def _write(path, bits, shape=(24, 30)):
    y, x = np.mgrid[0:shape[0], 0:shape[1]]
    img = (0.2 + 0.6 * (x / shape[1])) * (1 + 0.1 * np.sin(y / 2)) / 1.1
    save_image(path, img, bits=bits)
    return path


@pytest.mark.parametrize("bits", [16, 8])
def test_cli_upscale_keeps_the_bit_depth_and_exports_kernels(tmp_path, runs, bits, capsys):
    src = _write(tmp_path / f"in{bits}.png", bits)
    assert bit_depth(src) == bits
    out, npz = tmp_path / "big.png", tmp_path / "kernels.npz"
    rc = main(["nsmoe", "upscale", str(src), "--scale", "2", "--out", str(out), "--checkpoint", str(runs["sr2"]),
               "--export-kernels", str(npz), "--chunk", "7", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    arr = np.asarray(Image.open(out))
    assert arr.shape == (48, 60) and arr.dtype == (np.uint16 if bits == 16 else np.uint8)
    loaded = infer.load_network(runs["sr2"])
    expect, _ = infer.restore(loaded.net, load_image(src))
    top = 65535 if bits == 16 else 255
    assert np.abs(arr / top - np.clip(expect, 0, 1)).max() <= 0.5 / top + 1e-6
    model = SMoE.load(npz)
    assert model.image_shape == (24, 30) and model.n_kernels > 0
    text = capsys.readouterr().out
    assert f"{bits}-bit" in text and "residual over the input's bicubic upscale" in text  # the sr2 net's base
    # a checkpoint of the other scale, or a denoising one, is refused with one line
    rc = main(["nsmoe", "upscale", str(src), "--scale", "4", "--out", str(tmp_path / "x4.png"),
               "--checkpoint", str(runs["sr2"]), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and len(_errors(err)) == 1 and "x2" in err and not (tmp_path / "x4.png").exists()
    assert "stride 8" in text  # the sr networks' test stride
    # --stride: the blocks' spacing, as restore(stride=...); outside 1 .. block size refused with one line
    fine = tmp_path / "fine.png"
    rc = main(["nsmoe", "upscale", str(src), "--scale", "2", "--out", str(fine), "--checkpoint", str(runs["sr2"]),
               "--stride", "4", "--no-progress"])
    assert rc == 0 and "stride 4" in capsys.readouterr().out
    expect4, _ = infer.restore(loaded.net, load_image(src), stride=4)
    assert np.abs(np.asarray(Image.open(fine)) / top - np.clip(expect4, 0, 1)).max() <= 0.5 / top + 1e-6
    assert np.abs(expect4 - expect).max() > 1e-4  # another stride, another average
    for bad in ("17", "0"):
        rc = main(["nsmoe", "upscale", str(src), "--scale", "2", "--out", str(tmp_path / "bad.png"),
                   "--checkpoint", str(runs["sr2"]), "--stride", bad, "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2 and len(_errors(err)) == 1 and "stride" in err and not (tmp_path / "bad.png").exists()


def test_cli_denoise_16_bit(tmp_path, runs, capsys):
    src = _write(tmp_path / "noisy.png", 16)
    out = tmp_path / "clean.png"
    for level in (["--sigma", "25"], ["--blind"]):
        rc = main(["nsmoe", "denoise", str(src), *level, "--out", str(out), "--checkpoint", str(runs["denoise"]),
                   "--no-progress"])
        assert rc == 0, capsys.readouterr().err
        arr = np.asarray(Image.open(out))
        assert arr.shape == (24, 30) and arr.dtype == np.uint16
    capsys.readouterr()
    rc = main(["nsmoe", "denoise", str(src), "--sigma", "80", "--out", str(tmp_path / "o.png"),
               "--checkpoint", str(runs["denoise"]), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and len(_errors(err)) == 1 and "5 to 50" in err
    rc = main(["nsmoe", "denoise", str(src), "--sigma", "25", "--out", str(tmp_path / "o.png"),
               "--checkpoint", str(runs["sr2"]), "--no-progress"])
    assert rc == 2 and "not a denoising one" in capsys.readouterr().err


def test_missing_checkpoint_is_one_line_naming_the_training_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SMOE_NSMOE_CHECKPOINTS", str(tmp_path / "none"))
    src = _write(tmp_path / "in.png", 8)
    for argv, task in ((["upscale", str(src), "--scale", "4"], "sr4"),
                       (["upscale", str(src), "--scale", "2", "--blind"], "blind"),
                       (["denoise", str(src), "--sigma", "15"], "denoise")):
        rc = main(["nsmoe", *argv, "--out", str(tmp_path / "o.png"), "--no-progress"])
        err = capsys.readouterr().err
        lines = _errors(err)
        assert rc == 2 and len(lines) == 1 and err.strip() == lines[0], err
        assert f"smoe nsmoe train --preset quick --task {task}" in lines[0] and f"{task}.ckpt" in lines[0]
        assert not (tmp_path / "o.png").exists()


def test_cli_train_refuses_to_overwrite_or_resume_nothing(tmp_path, runs, capsys):
    run_dir = runs["sr2"].parent
    rc = main(["nsmoe", "train", "--preset", "smoke", "--task", "sr2", "--out", str(run_dir), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and len(_errors(err)) == 1 and "--resume" in err
    rc = main(["nsmoe", "train", "--preset", "smoke", "--task", "sr4", "--out", str(tmp_path / "new"), "--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and "nothing to resume" in err and not (tmp_path / "new" / "sr4.ckpt").exists()
    rc = main(["nsmoe", "train", "--preset", "quick", "--task", "sr2", "--out", str(run_dir), "--resume"])
    assert rc == 2 and "preset smoke" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    rc = main(["nsmoe", "train", "--preset", "smoke", "--out", str(tmp_path / "file")])
    assert rc == 2 and "is a file" in capsys.readouterr().err
    rc = main(["nsmoe"])
    assert rc == 2 and "give an nsmoe command" in capsys.readouterr().err
    rc = main(["nsmoe", "train", "--preset", "smoke", "--encoder", "dense", "--out", str(tmp_path / "enc")])
    err = capsys.readouterr().err
    assert rc == 2 and len(_errors(err)) == 1 and "--encoder" in _errors(err)[0] and not (tmp_path / "enc").exists()


def test_cli_resume_takes_the_runs_seed_and_matches_the_straight_run(tmp_path, runs, capsys):
    """--stop-at 1, then --resume --stop-at 2 (no --seed: the run's): the fixture's two straight steps exactly."""
    out = tmp_path / "run"
    base = ["nsmoe", "train", "--preset", "smoke", "--task", "sr2", "--out", str(out), "--no-progress"]
    assert main(base + ["--stop-at", "1"]) == 0
    assert "continue with" in capsys.readouterr().out
    assert main(base + ["--resume", "--stop-at", "2"]) == 0
    a, b = ck.load(out / "sr2.ckpt"), ck.load(runs["sr2"])
    assert a.step == b.step == 2 and _state_equal(a.model, b.model)
    assert main(base + ["--resume", "--seed", "1"]) == 2
    assert "seed 0" in capsys.readouterr().err


def test_export_writes_a_weights_only_checkpoint_that_infers_and_never_resumes(tmp_path, runs, capsys):
    src = runs["sr2"]
    out = tmp_path / "ship" / "sr2.ckpt"
    assert main(["nsmoe", "export", str(src), "--out", str(out)]) == 0
    shipped = ck.load(out)
    full = ck.load(src)
    assert shipped.optimizer is None and shipped.torch_rng is None and shipped.meta["weights_only"] is True
    assert shipped.meta["exported_from"] == full.header["sha256"] and "rng" not in shipped.meta
    assert all(torch.equal(shipped.model[k], full.model[k]) for k in full.model)
    assert out.stat().st_size < 0.5 * src.stat().st_size
    x = np.random.default_rng(0).random((20, 20)).astype(np.float32)
    a, _ = infer.restore(infer.load_network(out).net, x)
    b, _ = infer.restore(infer.load_network(src).net, x)
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="weights-only"):
        tr.train(tiny(), out.parent, resume=True, progress=False)
    capsys.readouterr()
    for argv in (["nsmoe", "export", str(out), "--out", str(tmp_path / "again.ckpt")],
                 ["nsmoe", "export", str(src), "--out", str(src)],
                 ["nsmoe", "export", str(src), "--out", str(tmp_path / "x.pt")]):
        assert main(argv) == 2
        assert len(_errors(capsys.readouterr().err)) == 1
    assert not (tmp_path / "again.ckpt").exists() and not (tmp_path / "x.pt").exists()
    assert ck.load(src).optimizer is not None  # the source is untouched
