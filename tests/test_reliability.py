"""Reliability: one run per results folder (a real OS lock, checked with real processes), no duplicate rows,
sizes bounded before work, one error line instead of a traceback, user images never taken for test images, and
the Python API refusing what it cannot use, by argument name."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from smoe_core import SMoE, fit, init, render
from smoe_core.cli import main
from smoe_core.io import TEST_IMAGES, data_dir, image_key
from smoe_core.studies.results import (LOCK_NAME, ResultsStore, duplicates_path, repair_table,
                                       results_lock)

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **extra)
    return env


def _errors(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("smoe: error:")]


def _png(path: Path, H=64, W=64, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((H, W)) * 255).astype(np.uint8)).save(path)
    return path


def _model(K=16, H=32, W=32, **kw) -> SMoE:
    img = np.random.default_rng(1).random((H, W)).astype(np.float32)
    return init.grid(img, K, **kw).model


# ---------------------------------------------------------------------- 2. one run per results folder
def _sleeping_notebook(folder: Path) -> Path:
    """A stand-in for compare_initializers.ipynb: takes the smoke preset's parameters, marks that it started,
    sleeps (so that it can be interrupted)."""
    from smoe_core.studies.reproduce import PRESETS

    names = list(PRESETS["compare_initializers"]["smoke"]) + ["preset", "results_dir", "workers", "scheduler"]
    params = nbformat.v4.new_code_cell("\n".join(f"{n} = None" for n in names))
    params.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell("import os, time\nopen(os.path.join(results_dir, 'started'), 'w').close()\n"
                                     "time.sleep(120)")
    nb = nbformat.v4.new_notebook(cells=[params, body])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    folder.mkdir()
    nbformat.write(nb, folder / "compare_initializers.ipynb")
    return folder


def test_second_run_refuses_or_waits_and_ctrl_c_is_one_line(tmp_path):
    """Process A holds the lock; B (``smoe reproduce``) refuses at once naming the folder and A's pid; C (with
    ``--wait``) waits, runs once A lets go, and on Ctrl-C (SIGINT to its process group, as a terminal sends)
    prints one error line, no kernel traceback, and exits 130."""
    results = tmp_path / "R"
    env = _env(SMOE_NOTEBOOK_DIR=str(_sleeping_notebook(tmp_path / "nbs")))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom smoe_core.studies.results import results_lock\n"
         f"with results_lock({str(results)!r}):\n    print('locked', flush=True)\n    sys.stdin.readline()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        cmd = [sys.executable, "-m", "smoe_core.cli", "reproduce", "--preset", "smoke", "--only",
               "compare_initializers", "--results", str(results), "--no-progress"]
        refused = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        # SIGINT at its default, as a program started from a terminal has it: a child inherits an ignored SIGINT
        # (whatever in this pytest process last set it), and Python then never raises KeyboardInterrupt
        waiting = subprocess.Popen(cmd + ["--wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=env, start_new_session=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        out, err = refused.communicate(timeout=120)
        assert refused.returncode == 1
        assert _errors(err) == [f"smoe: error: results folder {results} is in use by another run (pid {holder.pid}, "
                                f"since {json.loads((results / LOCK_NAME).read_text())['since']}); wait for it to "
                                "finish, or pass --wait to wait for it"], err
        assert "Traceback" not in err and not (results / "smoke").exists()  # refused before any work
        line = waiting.stderr.readline()
        assert line.startswith(f"waiting for results folder {results}, in use by another run (pid {holder.pid}")
        assert not (results / "started").exists()
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(timeout=30) == 0
        t0 = time.time()
        while not (results / "started").exists():
            assert waiting.poll() is None and time.time() - t0 < 120, waiting.stderr.read()
            time.sleep(0.1)
        assert json.loads((results / LOCK_NAME).read_text())["pid"] == waiting.pid
        time.sleep(0.5)
        os.killpg(waiting.pid, signal.SIGINT)
        out, err = waiting.communicate(timeout=60)
    finally:
        for p in (holder, locals().get("refused"), locals().get("waiting")):
            if p is not None and p.poll() is None:
                p.kill()
    assert waiting.returncode == 130
    assert _errors(err) == ["smoe: error: interrupted"], err
    assert "Traceback" not in err and "ZMQError" not in err, err
    with results_lock(results):  # released with the process
        pass


def test_lock_in_process(tmp_path):
    with results_lock(tmp_path) as path:
        assert path == tmp_path / LOCK_NAME
        assert json.loads(path.read_text())["pid"] == os.getpid()
    with results_lock(tmp_path):  # released
        pass


def _table(store, name, rows):
    pd.DataFrame(rows).to_csv(store.path(name), index=False)


def test_appending_an_existing_configuration_replaces_it(tmp_path):
    store = ResultsStore(tmp_path, "nb", "smoke")
    store.add_rows("t", [dict(image="a", method="grid", psnr=1.0)], replace_keys=["image", "method"])
    store.add_rows("t", [dict(image="b", method="grid", psnr=2.0)], replace_keys=["image", "method"])
    df = store.add_rows("t", [dict(image="a", method="grid", psnr=3.0)], replace_keys=["image", "method"])
    assert list(zip(df["image"], df["psnr"])) == [("b", 2.0), ("a", 3.0)]
    kept = pd.read_csv(duplicates_path(store.path("t")))  # nothing lost
    assert list(kept["psnr"]) == [1.0]


def test_rerun_repairs_duplicate_rows(tmp_path):
    """Two runs that raced on one folder: the second run's rows of every key come later (a second or more apart,
    or in the same second, right after the first's). A rerun keeps one set of rows per key (the latest), sets
    the others aside, and computes nothing again; an item that writes several rows keeps them all."""
    store = ResultsStore(tmp_path, "nb", "smoke")
    keys = ["image", "method"]
    first = [dict(image=i, method=m, variant="v", psnr=10.0 + k, date="2024-01-01T00:00:00")
             for k, (i, m) in enumerate([("a", "grid"), ("a", "kmeans"), ("b", "grid"), ("b", "kmeans")])]
    again = [dict(r, psnr=r["psnr"] + 0.5, date="2024-01-01T00:00:02") for r in first[:3]]
    same_second = dict(first[3], psnr=99.0)  # written right after the first's row, in the same second
    multi = [dict(image="c", method="grid", variant=v, psnr=1.0, date="2024-01-01T00:00:05") for v in "xyz"]
    _table(store, "t", first[:3] + [first[3], same_second] + again + multi)
    calls = []
    with pytest.warns(UserWarning, match="4 duplicate row"):
        df = store.run_grid("t", [dict(image=i, method=m) for i in "abc" for m in ("grid", "kmeans")],
                            lambda it: calls.append(it) or {"variant": "v", "psnr": 0.0}, keys, progress=False)
    assert [c["image"] + c["method"] for c in calls] == ["ckmeans"]  # only the missing item ran
    assert len(df) == 4 + 3 + 1 and not df[df["variant"] == "v"].duplicated(keys).any()
    by = df[df["image"].isin(["a", "b"])].set_index(["image", "method"])["psnr"]
    assert by.to_dict() == {("a", "grid"): 10.5, ("a", "kmeans"): 11.5, ("b", "grid"): 12.5, ("b", "kmeans"): 99.0}
    assert list(df[df["image"] == "c"]["variant"].iloc[:3]) == ["x", "y", "z"]
    assert len(pd.read_csv(duplicates_path(store.path("t")))) == 4
    assert repair_table(store.path("t"), keys) == 0  # repaired for good


def test_repair_says_when_it_cannot(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame(dict(image=["a", "a"], psnr=[1.0, 2.0])).to_csv(path, index=False)
    with pytest.raises(ValueError, match="no column method"):
        repair_table(path, ["image", "method"])


def test_grid_runs_a_repeated_item_once(tmp_path):
    store = ResultsStore(tmp_path, "nb", "smoke")
    calls = []
    df = store.run_grid("g", [dict(k=1), dict(k=1), dict(k=2)], lambda it: calls.append(it["k"]) or {"v": 0},
                        ["k"], progress=False)
    assert calls == [1, 2] and list(df["k"]) == [1, 2]


# ---------------------------------------------------------------------- 3. sizes bounded before work
@pytest.mark.parametrize("command", [
    ["fit", "{img}", "--kernels", "1000000000000"],
    ["fit", "{img}", "--kernels", "100000", "--init", "kmeans"],
    ["denoise", "{img}", "--kernels", "4097", "--out", "{tmp}/d.png"],
    ["upscale", "{img}", "--scale", "2", "--kernels", "100000", "--out", "{tmp}/u.png"],
])
def test_kernel_counts_are_bounded_by_the_pixels(tmp_path, capsys, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    img = _png(tmp_path / "img.png")
    argv = [a.format(img=img, tmp=tmp_path) for a in command] + ["--no-progress"]
    t0 = time.perf_counter()
    assert main(argv) == 2
    assert time.perf_counter() - t0 < 30
    n = command[command.index("--kernels") + 1]
    assert _errors(capsys.readouterr().err) == [
        f"smoe: error: --kernels {n} is more than one kernel per pixel of the 64 x 64 image (4096 pixels): "
        "give at most 4096"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.png"]


def test_initializers_and_tasks_bound_the_kernels():
    img = np.full((16, 16), 0.5, np.float32)
    for fn in (init.grid, init.kmeans, init.edge):
        with pytest.raises(ValueError, match="n_kernels 257 is more than one kernel per pixel"):
            fn(img, 257)
    assert init.grid(img, 256).model.n_kernels == 256  # one per pixel is allowed
    from smoe_core.tasks.denoise import denoise
    from smoe_core.tasks.superres import upscale
    from smoe_core.tasks.tilewise import fit_tilewise

    for call in (lambda: denoise(img, n_kernels=300, progress=False), lambda: upscale(img, 2, n_kernels=300),
                 lambda: fit_tilewise(img, 300, progress=False)):
        with pytest.raises(ValueError, match="n_kernels 300 is more than one kernel per pixel"):
            call()
    with pytest.raises(TypeError, match="n_kernels must be an integer"):
        init.grid(img, "16")


def test_bench_size_is_bounded(capsys):
    assert main(["bench", "--height", "100000", "--no-progress"]) == 2
    assert _errors(capsys.readouterr().err) == [
        "smoe: error: height x width = 100000 x 768 is 76800000 pixels, more than the largest image smoe_core loads "
        "(67108864 pixels, smoe_core.io.MAX_PIXELS)"]
    assert main(["bench", "--height", "32", "--width", "32", "--kernels", "1025", "--no-progress"]) == 2
    assert "kernels 1025 is more than one kernel per pixel" in capsys.readouterr().err


def test_memory_is_checked_before_work(monkeypatch):
    monkeypatch.setenv("SMOE_MAX_MEMORY", "100M")
    m = _model()
    with pytest.raises(ValueError, match=r"rendering 8192 x 8192 pixels needs at least .* more than the 100.0 MiB"):
        render(m, scale=256)
    img = np.zeros((4096, 4096), np.float32)
    with pytest.raises(ValueError, match="fitting 16 kernels to a 4096 x 4096 image needs at least"):
        fit(img, SMoE(m.mu, m.chol, m.pi, m.experts), iters=1, progress=False)
    monkeypatch.setenv("SMOE_MAX_MEMORY", "64G")
    assert render(m).shape == (32, 32)  # a small render is never refused


def test_info_does_not_allocate_the_image(tmp_path, capsys, monkeypatch):
    m = _model()
    SMoE(m.mu, m.chol, m.pi, m.experts, image_shape=(100000, 100000)).save(tmp_path / "huge.npz")
    import importlib

    def no_lists(*a, **k):
        raise AssertionError("tile lists of the whole image were built")

    monkeypatch.setattr(importlib.import_module("smoe_core.render"), "tile_lists", no_lists)
    t0 = time.perf_counter()
    assert main(["info", str(tmp_path / "huge.npz")]) == 0
    assert time.perf_counter() - t0 < 10
    out = capsys.readouterr().out
    assert "image shape: 100000 x 100000 (H x W)" in out
    assert "kernels per 16x16 tile: not computed (the image shape has more than 67108864 pixels" in out


# ---------------------------------------------------------------------- 4. one error line, not a traceback
def test_metadata_that_is_not_an_object(tmp_path, capsys):
    m = _model()
    path = tmp_path / "m.npz"
    np.savez(path, **{k: v for k, v in m.fields().items() if v is not None}, metadata=np.array("[1,2,3]"))
    assert main(["info", str(path)]) == 2
    assert _errors(capsys.readouterr().err) == [
        f"smoe: error: {path} is not an SMoE model file (its metadata is a JSON list, not an object)"]
    with pytest.raises(ValueError, match="not an object"):
        SMoE.load(path)


def test_closed_stdout_ends_quietly(tmp_path, monkeypatch, capsys):
    _model().save(tmp_path / "m.npz")
    r, w = os.pipe()
    os.close(r)  # the reader (`head -1`) has gone
    with open(w, "w") as broken:
        monkeypatch.setattr(sys, "stdout", broken)
        rc = main(["info", str(tmp_path / "m.npz")])
        monkeypatch.undo()
    assert rc == 141
    assert capsys.readouterr().err == ""


def test_images_are_handed_over_as_absolute_paths(tmp_path, monkeypatch):
    from smoe_core.studies.reproduce import notebook_parameters

    mine = _png(tmp_path / "mine.png")
    monkeypatch.chdir(tmp_path)
    params = notebook_parameters("compare_initializers", "smoke", results_dir="R",
                                 images=["mine.png", "Peppers", str(data_dir() / "peppers.png")])
    assert params["images"] == [str(mine.resolve()), "peppers", "peppers"]
    assert params["results_dir"] == str((tmp_path / "R").resolve())


def test_a_failed_notebook_is_one_line(tmp_path, monkeypatch, capsys):
    import papermill

    def failing(src, tmp, **kw):
        Path(tmp).write_text("{}")
        raise papermill.PapermillExecutionError(3, 4, "x = 1 / 0", "ZeroDivisionError", "division by zero", [])

    monkeypatch.setattr(papermill, "execute_notebook", failing)
    rc = main(["reproduce", "--preset", "smoke", "--only", "compare_initializers", "--results", str(tmp_path),
               "--no-progress"])
    failed = tmp_path / "smoke" / "compare_initializers" / "compare_initializers.failed.ipynb"
    assert rc == 1
    assert _errors(capsys.readouterr().err) == [
        f"smoe: error: notebook compare_initializers failed in cell 4: ZeroDivisionError: division by zero "
        f"(see {failed})"]
    assert failed.is_file()


# ---------------------------------------------------------------------- 5. a user's image is not a test image
def test_image_keys(tmp_path):
    packaged = data_dir() / "peppers.png"
    assert image_key("peppers") == image_key("Peppers") == image_key(packaged) == "peppers"
    copy = tmp_path / "copy" / "pep.png"
    copy.parent.mkdir()
    shutil.copy(packaged, copy)
    assert image_key(copy) == "peppers"  # the same bytes are the same image
    a, b = tmp_path / "a" / "peppers.png", tmp_path / "b" / "peppers.png"
    a.parent.mkdir(), b.parent.mkdir()
    _png(a, seed=1), _png(b, seed=2)
    ka, kb = image_key(a), image_key(b)
    assert ka.startswith("peppers-") and kb.startswith("peppers-") and ka != kb
    assert image_key(ka) == ka  # a key read back from a table stays itself
    assert image_key(tmp_path / "gone" / "peppers.png") not in TEST_IMAGES


def test_user_image_named_like_a_test_image_keeps_its_own_rows(tmp_path):
    """``--images /elsewhere/peppers.png`` beside the test image Peppers: two models, two rows, and only the test
    image's row beside the paper's Peppers numbers."""
    from smoe_core.studies import as_smoe_paper, common

    user = tmp_path / "elsewhere" / "peppers.png"
    user.parent.mkdir()
    _png(user, H=48, W=48)
    store = ResultsStore(tmp_path / "R", "compare_initializers", "smoke")
    items = common.grid_items(["peppers", str(user)], ["grid"], budgets={"peppers": 40}, crop=48,
                              model_dir=tmp_path / "models")
    both = as_smoe_paper.init_quality_table(store, items, progress=False)
    assert sorted(both["image"]) == sorted(["peppers", image_key(user)])
    rows = both.set_index("image")
    assert np.isfinite(rows.loc["peppers", "psnr_db_paper"])
    assert np.isnan(rows.loc[image_key(user), "psnr_db_paper"])
    models = sorted(p.name for p in (tmp_path / "models").glob("*.npz"))
    assert models == sorted(["peppers_grid_init.npz", f"{image_key(user)}_grid_init.npz"])


# ---------------------------------------------------------------------- 6. the API refuses what it cannot use
def test_model_checks_name_the_field():
    m = _model(K=4)
    with pytest.raises(ValueError, match="pi must be > 0 for at least one kernel"):
        SMoE(m.mu, m.chol, np.zeros(4, np.float32), m.experts)
    for col, name in ((0, "a11"), (2, "a22")):
        chol = m.chol.copy()
        chol[2, col] = 0
        with pytest.raises(ValueError, match=f"chol of kernel 2 has .*{name} = 0"):
            SMoE(m.mu, chol, m.pi, m.experts)
    for shape in ((-5, 10), (0, 3), (3, 32, 32), "32x32", (2.5, 3)):
        with pytest.raises(ValueError, match="image_shape must be"):
            SMoE(m.mu, m.chol, m.pi, m.experts, image_shape=shape)
    with pytest.raises(ValueError, match="chol must hold floating-point values, got dtype int32"):
        SMoE(m.mu, m.chol.astype(np.int32), m.pi, m.experts)
    with pytest.raises(ValueError, match="pi must hold floating-point values"):
        SMoE(*(torch.from_numpy(x) for x in (m.mu, m.chol)), torch.ones(4, dtype=torch.int32),
             torch.from_numpy(m.experts))
    chol = torch.from_numpy(m.chol.copy())
    chol[1, 2] = 0
    with pytest.raises(ValueError, match="chol of kernel 1"):
        SMoE(torch.from_numpy(m.mu), chol, torch.from_numpy(m.pi), torch.from_numpy(m.experts))


def test_render_shape_is_exactly_h_w():
    m = _model()
    for shape in ((3, 32, 32), "32x32", (32,), (32, 0), (32, 2.5)):
        with pytest.raises(ValueError, match="shape must be"):
            render(m, shape=shape)
    assert render(m, shape=(32, 16)).shape == (32, 16)
    assert render(m, shape=np.array([8, 8])).shape == (8, 8)


def test_fit_checks_its_arguments():
    img = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    m = _model()
    with pytest.raises(TypeError, match="lr must be a dict of learning rates"):
        fit(img, m, lr=-1.0, progress=False)
    with pytest.raises(ValueError, match=r"lr\['mu'\] must be >= 0"):
        fit(img, m, lr={"mu": -1.0}, progress=False)
    for kw, msg in ((dict(iters=-1), "iters must be >= 0"), (dict(iters=2.5), "iters must be an integer"),
                    (dict(sparsity=-1), "sparsity must be >= 0"), (dict(tol=float("nan")), "tol must be a finite"),
                    (dict(seconds=0), "seconds must be > 0"), (dict(window=0), "window must be >= 1")):
        with pytest.raises(ValueError, match=msg):
            fit(img, m, progress=False, **kw)
    with pytest.raises(ValueError, match=r"image values range over \[.*, 25[0-9.]*\], far outside \[0, 1\]"):
        fit(img * 255, m, iters=1, progress=False)
    with pytest.raises(ValueError, match="signed integer type int32"):
        fit((img * 255).astype(np.int32), m, iters=1, progress=False)


def test_uint8_image_is_scaled_like_img_as_float():
    u8 = (np.random.default_rng(0).random((32, 32)) * 255).round().astype(np.uint8)
    m = _model()
    a, ha = fit(u8, m, iters=5, tol=0, progress=False)
    b, hb = fit(u8 / 255, m, iters=5, tol=0, progress=False)
    np.testing.assert_array_equal(ha["psnr"], hb["psnr"])
    assert ha["psnr"].iloc[-1] > 5  # not the -38 dB of a 0-255 target
    np.testing.assert_array_equal(init.grid(u8, 16).model.experts, init.grid(u8 / 255, 16).model.experts)


def test_all_kernels_removed_names_the_cause():
    img = np.zeros((16, 16), np.float32)
    m = _model(K=4, H=16, W=16)
    rbf = SMoE(m.mu, m.chol, m.pi, np.full_like(m.experts, 0.8), rbf=True, image_shape=(16, 16))
    with pytest.raises(RuntimeError, match="the fit diverged at iteration 1: every kernel's pi fell to <= 0 with "
                                           r"sparsity 0; lower the learning rates \(lr\['pi'\]") as info:
        fit(img, rbf, lr={"pi": 10.0}, iters=5, progress=False)
    assert "sparsity (now" not in str(info.value)
    with pytest.raises(RuntimeError, match="sparsity removed every kernel"):
        fit(img, rbf, lr={"pi": 10.0}, sparsity=1.0, iters=5, progress=False)


def test_interrupt_watchdog_ends_a_stuck_run_with_one_line_unless_cancelled():
    code = ("import time\nfrom smoe_core.studies.reproduce import interrupt_watchdog\n"
            "t = interrupt_watchdog(0.5)\n{cancel}time.sleep(3)\nprint('finished')\n")
    stuck = subprocess.run([sys.executable, "-c", code.format(cancel="")], capture_output=True, text=True, timeout=60)
    assert stuck.returncode == 130 and stuck.stderr.strip() == "smoe: error: interrupted" and "finished" not in stuck.stdout
    ok = subprocess.run([sys.executable, "-c", code.format(cancel="t.cancel()\n")], capture_output=True, text=True,
                        timeout=60)
    assert ok.returncode == 0 and ok.stdout.strip() == "finished" and ok.stderr == ""
