"""``smoe encode`` / ``smoe decode`` / ``smoe info`` on a .smoe file ([QSMoE] codec): the decoded image is the
encoder's own render of the quantized model, bit for bit; bad files give one ``smoe: error:`` line."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from smoe_core.cli import main
from smoe_core.io import load_image
from smoe_core.tasks.coding.codec import decode_image, encode_image, preset_schedule


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def errors(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("smoe: error:")]


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    d = tmp_path_factory.mktemp("coding")
    crop = load_image("peppers", color=True)[200:232, 180:220]
    src = d / "crop.png"
    Image.fromarray(np.round(crop * 255).astype(np.uint8)).save(src)
    torch.set_num_threads(1)
    out = d / "crop.smoe"
    rc = main(["encode", str(src), "--out", str(out), "--preset", "smoke", "--kernels", "60", "--no-progress"])
    assert rc == 0
    return d, src, out


def test_encode_decode_round_trip_is_bit_exact(coded, capsys):
    d, src, out = coded
    data = out.read_bytes()
    assert data[:4] == b"SMoE"
    image = load_image(src, color=True)
    # the same encoding in-process gives the same file and reports the decoded image
    again, rec = encode_image(image, preset="smoke", kernels=60)
    diff = [i for i in range(min(len(again), len(data))) if again[i] != data[i]]
    assert again == data, (len(again), len(data), diff[:10])
    assert rec["bytes"] == len(data)
    assert rec["bpp"] == pytest.approx(8 * len(data) / (32 * 40))
    decoded, info = decode_image(data)
    np.testing.assert_array_equal(decoded, rec["decoded"])
    dec_png = d / "dec.png"
    assert main(["decode", str(out), "--out", str(dec_png)]) == 0
    png = np.asarray(Image.open(dec_png)).astype(np.float32)
    np.testing.assert_array_equal(png, np.clip(np.round(rec["decoded"] * 255), 0, 255))
    assert info["image_shape"] == (32, 40) and info["n_active"] == rec["kernels"]
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "SMoE bitstream" in text and f"active kernels: {rec['kernels']}" in text and "bpp" in text


def test_decode_imports_no_torch_and_matches_the_torch_render(coded, tmp_path):
    """``smoe decode`` runs without importing torch (its import is most of a decode's time) and writes the image
    the in-process decoder gives; the torch renderers give the same image up to float rounding."""
    _, _, out = coded
    png = tmp_path / "dec.png"
    code = ("import sys; from smoe_core.cli import main; rc = main(['decode', sys.argv[1], '--out', sys.argv[2]]); "
            "print('torch' in sys.modules); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(out), str(png)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"
    decoded, _ = decode_image(out.read_bytes())
    np.testing.assert_array_equal(np.asarray(Image.open(png)).astype(np.float32),
                                  np.clip(np.round(decoded * 255), 0, 255))
    for backend in ("torch", "dense"):
        other, _ = decode_image(out.read_bytes(), backend=backend)
        np.testing.assert_allclose(other, decoded, rtol=0, atol=1e-4 if backend == "dense" else 2e-6)


def test_encode_prints_the_figures(coded, tmp_path, capsys):
    _, src, _ = coded
    capsys.readouterr()
    assert main(["encode", str(src), "--out", str(tmp_path / "x.smoe"), "--preset", "smoke", "--no-progress"]) == 0
    text = capsys.readouterr().out
    for field in ("kernels:", "bytes:", "bpp:", "PSNR:", "SSIM-611:"):
        assert field in text


@pytest.mark.parametrize("damage", ["truncated", "flipped", "version", "not_smoe", "empty", "npz"])
def test_bad_bitstreams_give_one_error_line(coded, tmp_path, capsys, damage):
    _, _, out = coded
    data = bytearray(out.read_bytes())
    bad = tmp_path / "bad.smoe"
    if damage == "truncated":
        bad.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flipped":
        data[len(data) // 2] ^= 0x10
        bad.write_bytes(bytes(data))
    elif damage == "version":
        data[4] = 99
        bad.write_bytes(bytes(data))
    elif damage == "not_smoe":
        bad.write_bytes(b"hello, world" * 10)
    elif damage == "empty":
        bad.write_bytes(b"")
    else:
        np.savez(tmp_path / "m.npz", mu=np.zeros((1, 2)))
        bad = tmp_path / "m.npz"
    capsys.readouterr()
    png = tmp_path / "never.png"
    rc = main(["decode", str(bad), "--out", str(png)])
    err = capsys.readouterr().err
    assert rc == 2 and len(errors(err)) == 1 and "Traceback" not in err, err
    assert not png.exists()
    if damage not in ("not_smoe", "empty", "npz"):
        rc = main(["info", str(bad)])
        err = capsys.readouterr().err
        assert rc == 2 and len(errors(err)) == 1, err


def test_encode_argument_errors(coded, tmp_path, capsys):
    _, src, _ = coded
    capsys.readouterr()
    assert main(["encode", str(src), "--out", str(tmp_path / "x.png"), "--preset", "smoke"]) == 2
    assert main(["encode", str(src), "--out", str(tmp_path / "x.smoe"), "--kernels", "10", "--lambda", "1"]) == 2
    assert main(["encode", str(src), "--out", str(tmp_path / "x.smoe"), "--kernels", "100000"]) == 2
    assert len(errors(capsys.readouterr().err)) == 3
    with pytest.raises(ValueError, match="preset"):
        preset_schedule("huge")
    with pytest.raises(ValueError, match="kernels or lam"):
        preset_schedule("smoke", kernels=3, lam=1.0)
    kw = preset_schedule("quick", lam=0.5, image_shape=(64, 64))
    k1k2 = 16 * 16
    assert kw["x_range"][0] == kw["x_range"][1] == pytest.approx((0.5 * k1k2) ** 0.5)
    assert preset_schedule("quick", image_shape=(512, 512))["target_kernels"] == round(16384 / 6)


def test_decode_and_info_import_no_initializers_pandas_or_optimizer(coded, tmp_path):
    """The decoder's start-up is most of its run time: ``smoe decode`` must not import the initializers
    (scipy.ndimage, the segmentation), pandas, scipy.optimize (the encoder's model fitting) or the N-SMoE trainer,
    and ``smoe info`` (which refits the paper's model rule, scipy.optimize) none of the others (checked in a fresh
    interpreter, where nothing was imported before)."""
    import subprocess
    import sys

    _, _, out = coded
    heavy = ["pandas", "scipy.optimize", "scipy.ndimage", "smoe_core.init", "smoe_core.tasks.nsmoe.train"]
    heavy_info = [m for m in heavy if m != "scipy.optimize"]
    code = ("import sys\nfrom smoe_core.cli import main\n"
            f"assert main(['decode', {str(out)!r}, '--out', {str(tmp_path / 'd.png')!r}]) == 0\n"
            f"print('LOADED', [m for m in {heavy!r} if m in sys.modules])\n"
            f"assert main(['info', {str(out)!r}]) == 0\n"
            f"print('LOADED', [m for m in {heavy_info!r} if m in sys.modules])\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("LOADED []") == 2, run.stdout[-500:]
    assert (tmp_path / "d.png").exists()


def test_lazy_choices_still_check_and_list_the_initializers(capsys):
    """``--init`` / ``--experts`` choices come from smoe_core.init on first use: a bad name is refused with one
    error line naming the registry's initializers, and the help lists them."""
    from smoe_core.init import EXPERT_RULES, INITIALIZERS

    def run(argv) -> int:
        try:
            return main(argv)
        except SystemExit as exc:  # --help
            return int(exc.code or 0)

    assert run(["fit", "peppers", "--kernels", "10", "--init", "nope"]) != 0
    err = errors(capsys.readouterr().err)
    assert len(err) == 1 and "nope" in err[0] and all(name in err[0] for name in INITIALIZERS)
    assert run(["fit", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in INITIALIZERS) and all(rule in text for rule in EXPERT_RULES)
    assert run(["nsmoe", "train", "--preset", "quick", "--task", "sr3"]) != 0
    err = errors(capsys.readouterr().err)
    assert len(err) == 1 and "sr3" in err[0] and "denoise" in err[0]
