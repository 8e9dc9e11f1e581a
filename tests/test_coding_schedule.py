"""The coding paper's training schedule: initialization, learning-rate conversion, sparsity schedule, and a
short end-to-end run whose pruned, quantized result is what the file decodes to."""
import math

import numpy as np
import pytest
import torch

from smoe_core import SMoE, render
from smoe_core.io import load_image
from smoe_core.tasks.coding import bitstream as B
from smoe_core.tasks.coding.color import rgb_to_yuv
from smoe_core.tasks.coding.loss import ssim611
from smoe_core.tasks.coding.quantize import FakeQuantizer, grid_centres, quantize_model
from smoe_core.tasks.coding.schedule import (PAPER_LR, grid_init, kernel_snapshots_due, pixel_learning_rates,
                                             sparsity_schedule, train)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def crop(h=32, w=40):
    return load_image("peppers", color=True)[220:220 + h, 200:200 + w]


def test_pixel_learning_rates():
    r = pixel_learning_rates((512, 512))
    assert r == pytest.approx({"mu": 0.512, "chol": 1 / 512, "pi": 1e-4, "experts": 1e-3})
    s = pixel_learning_rates((512, 512), optimizer="sgd")
    assert s == pytest.approx({"mu": 1e-3 * 512**2, "chol": 1 / 512**2, "pi": 1e-4, "experts": 1e-3})
    # non-square: the geometric mean of the sides
    assert pixel_learning_rates((200, 800))["mu"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="optimizer"):
        pixel_learning_rates((8, 8), optimizer="rmsprop")
    with pytest.raises(ValueError, match="rates"):
        pixel_learning_rates((8, 8), {"mu": 1.0})


def test_adam_rate_conversion_keeps_the_kernel_shape_invariant():
    """One Adam-sized step in [0, 1] coordinates and its converted step in pixels give the same kernel."""
    S = 64.0
    A_unit, mu_unit = 40.0, 0.3
    A_pix, mu_pix = A_unit / S, mu_unit * S
    lr = pixel_learning_rates((64, 64))
    A_unit2, mu_unit2 = A_unit + PAPER_LR["chol"], mu_unit + PAPER_LR["mu"]
    A_pix2, mu_pix2 = A_pix + lr["chol"], mu_pix + lr["mu"]
    assert A_pix2 == pytest.approx(A_unit2 / S) and mu_pix2 == pytest.approx(mu_unit2 * S)


def test_sparsity_schedule():
    lam = sparsity_schedule((128, 128))
    assert lam.shape == (50,)
    x = np.sqrt(lam * 128 * 128)
    assert x[0] == pytest.approx(0.1) and x[-1] == pytest.approx(15.0)
    assert np.allclose(np.diff(x), (15 - 0.1) / 49)
    with pytest.raises(ValueError, match="steps"):
        sparsity_schedule((4, 4), steps=0)
    with pytest.raises(ValueError, match="grid"):
        sparsity_schedule((0, 4))


def test_grid_init():
    yuv = rgb_to_yuv(crop(34, 41).astype(np.float64))
    m, gi, grid = grid_init(yuv)
    assert grid == (10, 8) and m.n_kernels == 80 and np.array_equal(gi, np.arange(80))
    assert np.allclose(m.mu, grid_centres((34, 41), grid))
    assert np.allclose(m.chol[0], [2 / 4.1, 0.0, 2 / 4.25]) and np.all(m.pi == 1)
    # kernel (row 1, column 2) covers rows 5..8 ((r + 0.5) * 8 / 34 in [1, 2)) and columns 9..12
    rows = [r for r in range(34) if int((r + 0.5) * 8 / 34) == 1]
    cols = [c for c in range(41) if int((c + 0.5) * 10 / 41) == 2]
    expect = yuv[rows][:, cols].reshape(-1, 3).mean(0)
    assert np.allclose(m.experts[1 * 10 + 2], expect, atol=1e-6)
    with pytest.raises(ValueError, match="image_yuv"):
        grid_init(np.zeros((8, 8)))


def test_train_end_to_end_prunes_and_matches_the_file():
    img = crop()
    seen = []
    # a short schedule: fewer, faster sparsification steps than the paper's (pi rate 0.01, not 2e-5) and a
    # lambda range scaled to this 80-kernel grid, so that some but not all kernels are removed
    r = train(img, pretrain_iters=40, sparsify_steps=6, sparsify_iters=15, finetune_iters=5,
              sparsify_pi_rate=0.01, x_range=(0.05, 0.3), prune_every=5, callback=seen.append)
    h = r.history
    assert list(h.phase.unique()) == ["pretrain", "sparsify", "finetune"]
    assert len(h) == 40 + 6 * 15 + 5 == len(seen)
    assert np.all(np.diff(h.n_kernels.to_numpy()) <= 0)
    pre = h[h.phase == "pretrain"]
    assert pre.loss.iloc[-1] < pre.loss.iloc[0] - 0.02  # the SSIM-611 loss goes down
    sp = h[h.phase == "sparsify"]
    assert np.allclose(sp.groupby("step").sparsity.first().to_numpy(), sparsity_schedule((10, 8), 6, (0.05, 0.3)))
    assert 20 < r.quantized.n_active < 80 and r.model.n_kernels == r.quantized.n_active == len(r.grid_index)
    assert r.quantized.indices["pi"].min() >= 1
    # the quantized model is the encoder's quantization of the full-precision one, and decodes exactly
    assert r.quantized.equal_indices(quantize_model(r.model, r.grid_index, r.grid))
    q2, _ = B.decode(r.bitstream())
    assert q2.equal_indices(r.quantized)
    # training's last view (fake quantization) renders like the decoded file
    fq = FakeQuantizer(grid_centres((32, 40), r.grid)[r.grid_index])
    t = r.model.torch()
    shown = fq({k: getattr(t, k) for k in ("mu", "chol", "pi", "experts")})
    seen_by_training = render(SMoE(**shown, image_shape=(32, 40), color_space="yuv"))
    decoded = render(q2.to_model().torch())
    assert torch.allclose(seen_by_training, decoded, atol=1e-5)
    assert r.ssim611 == pytest.approx(ssim611(decoded, rgb_to_yuv(img.astype(np.float64))), abs=1e-6)
    assert r.ssim611 > pre.ssim611.iloc[-1] - 0.05  # pruning kept most of the quality
    with pytest.raises(RuntimeError, match="removed every kernel"):
        train(img, pretrain_iters=2, sparsify_steps=3, sparsify_iters=40, finetune_iters=0, sparsify_pi_rate=0.05,
              x_range=(5.0, 40.0))


def test_train_finetune_sgd_uses_converted_rates():
    img = crop()
    r = train(img, pretrain_iters=3, sparsify_steps=0, sparsify_iters=0, finetune_iters=3, finetune_optimizer="sgd")
    assert list(r.history.phase.unique()) == ["pretrain", "finetune"]
    r2 = train(img, pretrain_iters=3, sparsify_steps=0, sparsify_iters=0, finetune_iters=3,
               finetune_optimizer="adam")
    assert not np.array_equal(r.model.mu, r2.model.mu)


def test_train_argument_errors():
    img = crop()
    with pytest.raises(ValueError, match="image"):
        train(img[..., 0])
    with pytest.raises(ValueError, match="image"):
        train(img * 2)
    with pytest.raises(ValueError, match="pretrain_iters"):
        train(img, pretrain_iters=-1)
    with pytest.raises(ValueError, match="finetune_optimizer"):
        train(img, finetune_optimizer="lbfgs")
    with pytest.raises(ValueError, match="prune_every"):
        train(img, prune_every=0)
    with pytest.raises(ValueError, match="spec"):
        train(img, spec=(9, 7, 10, 4))
    assert math.isfinite(PAPER_LR["chol"])


SHORT = dict(pretrain_iters=30, sparsify_steps=6, sparsify_iters=15, finetune_iters=5, sparsify_pi_rate=0.01,
             x_range=(0.05, 0.3), prune_every=5)


def test_snapshots_are_fine_tuned_points_of_the_path_and_leave_it_unchanged():
    img = crop()
    plain = train(img, **SHORT)
    r = train(img, snapshots=[1, 3, 5], **SHORT)
    # the path continues as without snapshots (a snapshot works on a copy)
    np.testing.assert_array_equal(r.model.mu, plain.model.mu)
    assert r.quantized.equal_indices(plain.quantized)
    assert [s.label for s in r.snapshots] == ["step 1", "step 3", "step 5"]
    counts = [s.quantized.n_active for s in r.snapshots]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]  # fewer kernels along the path
    h = r.history
    for s in r.snapshots:
        ft = h[(h.point == s.label) & (h.phase == "finetune")]
        assert len(ft) == SHORT["finetune_iters"]
        q2, _ = B.decode(s.bitstream())  # every rate point is a decodable file
        assert q2.equal_indices(s.quantized)
    sizes = [len(s.bitstream()) for s in r.snapshots]
    assert sizes[0] > sizes[-1]
    with pytest.raises(ValueError, match="snapshots"):
        train(img, snapshots=[6], **SHORT)


def test_kernel_snapshots_due_by_hand():
    """Targets 600, 400, 250, 150 along the counts 1024, 1024, 590, 580, 400, 300, 100, 90, 10: a snapshot at 590
    (600 reached), at 400 (400 reached: at most, not below), none at 300, one at 100 for both 250 and 150
    (labelled 150, the smallest), nothing after."""
    targets, taken, taken_at = [250, 600, 150, 400], set(), {}
    for n in (1024, 1024, 590, 580, 400, 300, 100, 90, 10):
        due = kernel_snapshots_due(n, targets, taken)
        if due:
            taken_at[n] = due
            taken.update(due)
    assert taken_at == {590: [600], 400: [400], 100: [250, 150]}
    assert kernel_snapshots_due(5, [], set()) == [] and kernel_snapshots_due(5, None, set()) == []
    assert kernel_snapshots_due(np.int64(10), np.array([10, 20]), {20}) == [10]  # numpy integers are integers
    for bad in ([0], [-3], [2.5], [True], "12", 7):
        with pytest.raises(ValueError, match="snapshot_kernels"):
            kernel_snapshots_due(10, bad, set())
    for bad in (-1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="n_kernels"):
            kernel_snapshots_due(bad, [5], set())
    with pytest.raises(ValueError, match="snapshot_kernels"):
        train(crop(), snapshot_kernels=[10, 0], **SHORT)


def test_snapshots_by_kernel_count_follow_the_path():
    """Kernel-count snapshots are taken at the first pruning (every ``prune_every`` iterations and at the end of
    each step) that leaves at most each target, read independently from the path's history: after a pruning at
    iteration i of step s, the next iteration of the path renders exactly the kernels left."""
    img = crop()
    plain = train(img, **SHORT)
    h = plain.history[(plain.history.point == "final") & (plain.history.phase == "sparsify")].reset_index(drop=True)
    # the pruning points in path order and the kernel count each one leaves
    after = []
    for i, r in h.iterrows():
        if r.iteration % SHORT["prune_every"] == 0 or r.iteration == SHORT["sparsify_iters"]:
            left = int(h.n_kernels[i + 1]) if i + 1 < len(h) else plain.quantized.n_active
            after.append(((int(r.step), int(r.iteration)), left))
    counts = [n for _, n in after]
    assert counts[0] > counts[-1] and len(set(counts)) >= 4  # the path removes kernels in several prunings
    # targets: the counts left by three prunings and two values in between
    distinct = sorted(set(counts), reverse=True)
    targets = [distinct[1], distinct[1] - 1, distinct[len(distinct) // 2], distinct[-1] + 1, distinct[-1]]
    expected = {}
    for t in targets:  # per target: the first pruning that leaves at most t kernels
        where = next(w for w, n in after if n <= t)
        expected.setdefault(where, []).append(t)
    r = train(img, snapshot_kernels=targets, **SHORT)
    # the path continues as without snapshots (a snapshot works on a copy)
    np.testing.assert_array_equal(r.model.mu, plain.model.mu)
    assert r.quantized.equal_indices(plain.quantized)
    got = {(s.step, s.iteration): s.label for s in r.snapshots}
    assert got == {w: f"kernels {min(ts)}" for w, ts in expected.items()}
    for s in r.snapshots:
        assert s.quantized.n_active <= int(s.label.split()[1])
        ft = r.history[(r.history.point == s.label) & (r.history.phase == "finetune")]
        assert len(ft) == SHORT["finetune_iters"]
        q2, _ = B.decode(s.bitstream())
        assert q2.equal_indices(s.quantized)
    assert r.step == SHORT["sparsify_steps"] - 1 and r.iteration == SHORT["sparsify_iters"]


def test_target_kernels_stops_the_sparsification():
    img = crop()
    full = train(img, **SHORT)
    per_step = full.history[full.history.phase == "sparsify"].groupby("step").n_kernels.last()
    target = int(per_step.iloc[-2]) + 2  # reached one step before the end of the full path
    stop = int(per_step[per_step <= target].index[0])
    r = train(img, target_kernels=target, **SHORT)
    sp = r.history[r.history.phase == "sparsify"]
    assert sorted(sp.step.unique()) == list(range(stop + 1)) and stop + 1 < SHORT["sparsify_steps"]
    assert r.quantized.n_active <= target < int(per_step.iloc[0])
    assert r.quantized.n_active > full.quantized.n_active
    # the stopping step's state is the final point: a snapshot rule that would take it there does not repeat it
    both = train(img, target_kernels=target, snapshots=[stop], snapshot_kernels=[target], **SHORT)
    assert both.step == stop and both.quantized.equal_indices(r.quantized)
    assert all(s.label == f"kernels {target}" and s.iteration < SHORT["sparsify_iters"] for s in both.snapshots)


def test_post_training_quantization_trains_without_fake_quantization():
    img = crop()
    qat = train(img, **SHORT)
    ptq = train(img, quantize=False, **SHORT)
    assert not np.array_equal(qat.model.mu, ptq.model.mu)
    # PTQ's full-precision model is what QAT would render without quantization; its file is the quantization
    assert ptq.quantized.equal_indices(quantize_model(ptq.model, ptq.grid_index, ptq.grid))
    q2, _ = B.decode(ptq.bitstream())
    assert q2.equal_indices(ptq.quantized)


class _Stop(Exception):
    pass


def test_an_interrupted_training_resumes_to_the_uninterrupted_result(tmp_path):
    """A run stopped in the middle of a sparsification step and started again with the same checkpoint gives the
    same snapshots, final point, files and history (but the times) as a run never stopped; the checkpoint of
    other settings, and damaged checkpoints, are refused with the file's name."""
    from smoe_core.tasks.coding import schedule as S

    img = crop()
    kw = dict(pretrain_iters=40, sparsify_steps=6, sparsify_iters=15, finetune_iters=5, sparsify_pi_rate=0.01,
              x_range=(0.05, 0.3), prune_every=5, snapshot_kernels=[78, 70, 60, 50, 40])
    straight = train(img, **kw)
    ck = tmp_path / "run.ckpt"
    rows = []

    def stop_in_step_5(row):  # after a snapshot was taken (step 4) and saved with the state
        rows.append(row)
        if row["phase"] == "sparsify" and row["step"] == 5 and row["iteration"] == 3:
            raise _Stop

    with pytest.raises(_Stop):
        train(img, checkpoint=ck, callback=stop_in_step_5, **kw)
    state = S.load_checkpoint(ck)
    assert state["done_step"] == 4 and len(state["rows"]) == 40 + 5 * 15 + 5 and len(state["snaps"]) == 1
    seen = []
    resumed = train(img, checkpoint=ck, callback=seen.append, **kw)
    assert seen[0]["phase"] == "sparsify" and seen[0]["step"] == 5 and seen[0]["iteration"] == 1  # not from 0
    assert [p.bitstream() for p in resumed.snapshots] == [p.bitstream() for p in straight.snapshots]
    assert len(straight.snapshots) >= 2 and resumed.bitstream() == straight.bitstream()
    assert [p.label for p in resumed.snapshots] == [p.label for p in straight.snapshots]
    cols = [c for c in straight.history.columns if c != "seconds"]
    assert resumed.history[cols].equals(straight.history[cols])
    assert resumed.seconds >= resumed.history.seconds.iloc[-1] > 0
    # other settings: refused, the file kept
    with pytest.raises(ValueError, match="another image or other settings"):
        train(img, checkpoint=ck, **dict(kw, finetune_iters=6))
    with pytest.raises(ValueError, match="another image or other settings"):
        train(img[::-1].copy(), checkpoint=ck, **kw)
    # damaged files: every truncation and byte flip is caught before unpickling (a fixed seed)
    data = ck.read_bytes()
    rng = np.random.default_rng(0)
    bad = tmp_path / "bad.ckpt"
    for i in range(300):
        if i % 3 == 0:
            mutated = data[:int(rng.integers(0, len(data)))]
        else:
            b = bytearray(data)
            j = int(rng.integers(0, len(b)))
            b[j] ^= int(rng.integers(1, 256))
            mutated = bytes(b)
        bad.write_bytes(mutated)
        with pytest.raises(ValueError, match="bad.ckpt"):
            S.load_checkpoint(bad)
    bad.write_bytes(b"PK\x03\x04" + data[4:])
    with pytest.raises(ValueError, match="not a coding training checkpoint"):
        S.load_checkpoint(bad)
