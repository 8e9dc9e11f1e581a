"""Training: our Adam against torch.optim.Adam, pruning and compaction, determinism, losses, stopping."""
import importlib

import numpy as np
import pytest
import torch

from smoe_core import SMoE, fit, metrics, render
from smoe_core.init import grid
from smoe_core.training import Adam


def smooth_image(H=48, W=64, C=1):
    yy, xx = np.mgrid[0:H, 0:W]
    chans = [0.5 + 0.3 * np.sin(xx / (6.0 + c) + yy / 9.0) + 0.15 * (xx > W / 2) for c in range(C)]
    img = np.clip(np.stack(chans, -1), 0, 1).astype(np.float32)
    return img[..., 0] if C == 1 else img


def test_adam_matches_torch_adam():
    torch.manual_seed(0)
    a = {"x": torch.randn(5, 3, requires_grad=True), "y": torch.randn(5, requires_grad=True)}
    b = {k: v.detach().clone().requires_grad_(True) for k, v in a.items()}
    ours = Adam(a, {"x": 0.01, "y": 0.1})
    ref = torch.optim.Adam([{"params": [b["x"]], "lr": 0.01}, {"params": [b["y"]], "lr": 0.1}])
    for step in range(7):
        for p, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            loss = (p["x"] ** 3).sum() + (p["y"].sin() * p["x"][:, 0]).sum()
            loss.backward()
            opt.step()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_adam_keep_compacts_state():
    p = {"x": torch.randn(6, 2, requires_grad=True)}
    opt = Adam(p, {"x": 0.1})
    (p["x"] ** 2).sum().backward()
    opt.step()
    m_before = opt.m["x"].clone()
    mask = torch.tensor([True, False, True, True, False, True])
    opt.keep(mask)
    assert opt.params["x"].shape == (4, 2) and opt.params["x"].is_leaf and opt.params["x"].requires_grad
    torch.testing.assert_close(opt.m["x"], m_before[mask])


def test_fit_improves_and_reports_history():
    img = smooth_image()
    m0 = grid(img, 48).model
    p0 = metrics.psnr(render(m0), img)
    m, hist = fit(img, m0, iters=60, progress=False, tol=0)
    p1 = metrics.psnr(render(m), img)
    assert p1 > p0 + 3.0
    assert list(hist.columns) == ["iteration", "seconds", "loss", "mse", "psnr", "n_kernels"]
    assert len(hist) == 60 and hist["seconds"].is_monotonic_increasing
    # the history's last PSNR is the render before the last step, within a step's change of the final one
    assert abs(hist["psnr"].iloc[-1] - p1) < 0.5
    assert isinstance(m.mu, np.ndarray)


def test_fit_is_deterministic():
    img = smooth_image(C=3)
    m0 = grid(img, 30).model
    a, ha = fit(img, m0, iters=25, progress=False, seed=3)
    b, hb = fit(img, m0, iters=25, progress=False, seed=3)
    for k in ("mu", "chol", "pi", "experts"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    np.testing.assert_array_equal(ha["loss"].to_numpy(), hb["loss"].to_numpy())


def test_sparsity_removes_kernels_and_keeps_arrays_consistent():
    img = smooth_image()
    m0 = grid(img, 48).model
    m, hist = fit(img, m0, iters=80, progress=False, sparsity=2e-3, lr={"pi": 2e-2}, tol=0)
    assert m.n_kernels < m0.n_kernels
    assert hist["n_kernels"].is_monotonic_decreasing
    assert (m.pi > 0).all()
    assert m.mu.shape[0] == m.chol.shape[0] == m.experts.shape[0] == m.n_kernels
    assert hist["n_kernels"].iloc[-1] == m.n_kernels


def test_sparsity_removing_everything_is_an_error():
    img = smooth_image(16, 16)
    with pytest.raises(RuntimeError, match="removed every kernel"):
        fit(img, grid(img, 4).model, iters=200, progress=False, sparsity=10.0, lr={"pi": 0.5}, tol=0)


def test_ssim_loss_raises_ssim():
    img = smooth_image()
    m0 = grid(img, 40).model
    s0 = metrics.ssim(render(m0), img)
    m, _ = fit(img, m0, iters=40, loss="ssim", progress=False, tol=0)
    assert metrics.ssim(render(m), img) > s0 + 0.02


def test_tolerance_stops_early_and_budget_in_seconds():
    img = smooth_image(24, 24)
    m0 = grid(img, 9).model
    _, hist = fit(img, m0, iters=5000, progress=False, tol=1e-3, window=5)
    assert len(hist) < 5000
    _, hist2 = fit(img, m0, iters=100000, seconds=0.5, tol=0, progress=False)
    assert hist2["seconds"].iloc[-1] < 5.0


def test_transform_sees_the_loss_parameters():
    """A transform that zeroes the experts' effect: the loss is then computed on the transformed model."""
    img = smooth_image(24, 24)
    m0 = grid(img, 9).model
    seen = []

    def zero_experts(p):
        seen.append(True)
        return dict(p, experts=p["experts"] * 0)

    _, hist = fit(img, m0, iters=3, progress=False, transform=zero_experts, tol=0, lr={"experts": 0.0})
    assert len(seen) == 3
    assert hist["mse"].iloc[0] == pytest.approx(float(np.mean(img.astype(np.float64) ** 2)), rel=1e-5)


def test_fit_input_errors():
    img = smooth_image(24, 24)
    m0 = grid(img, 9).model
    with pytest.raises(ValueError, match="channel"):
        fit(np.stack([img] * 3, -1), m0, iters=1, progress=False)
    with pytest.raises(ValueError, match="NaN"):
        fit(np.full_like(img, np.nan), m0, iters=1, progress=False)
    with pytest.raises(ValueError, match="loss"):
        fit(img, m0, iters=1, loss="l1", progress=False)
    with pytest.raises(ValueError, match="was made for"):
        fit(img[:20], m0, iters=1, progress=False)
    with pytest.raises(ValueError, match="learning-rate"):
        fit(img, m0, iters=1, lr={"sigma": 1.0}, progress=False)


def test_fit_torch_model_returns_torch_and_dense_backend_agrees():
    img = smooth_image(32, 32)
    m0 = grid(img, 16).model
    a, ha = fit(img, m0.torch(), iters=5, progress=False, tol=0)
    assert isinstance(a.mu, torch.Tensor) and not a.mu.requires_grad
    b, hb = fit(img, m0, iters=5, progress=False, tol=0, backend="dense")
    np.testing.assert_allclose(ha["loss"], hb["loss"], rtol=1e-3)
    assert isinstance(SMoE, type)


def test_one_model_validation_per_training_step(monkeypatch):
    """A training step validates its model once (render_many's check); building the step's model does not
    check again (each check of torch fields waits for the device on a GPU)."""
    img = smooth_image(32, 32)
    model, _ = grid(img, 16)
    render_api = importlib.import_module("smoe_core.render.api")  # smoe_core.render is also the function

    calls = []
    real = SMoE.check
    monkeypatch.setattr(SMoE, "check", lambda self: (calls.append(1), real(self))[1])
    real_many = render_api.check_models  # render_many validates its models together (smoe_core.model.check_models)
    monkeypatch.setattr(render_api, "check_models", lambda models: (calls.append(1), real_many(models))[1])
    counts = {}
    for iters in (5, 12):
        calls.clear()
        fit(img, model, iters=iters, tol=0, progress=False)
        counts[iters] = len(calls)
    # one check per step (the per-step difference), plus a fixed few around the loop (input, copies, result)
    assert counts[12] - counts[5] == 12 - 5, counts
    assert counts[5] <= 5 + 4, counts
    # a model built with validate=False is not checked, and still renders the same
    fields = model.torch().fields()
    calls.clear()
    fast = SMoE(**fields, image_shape=model.image_shape, validate=False)
    assert not calls
    np.testing.assert_array_equal(render(fast).detach().numpy(), render(model.torch()).detach().numpy())
    with pytest.raises(ValueError, match="NaN"):
        bad = SMoE(**dict(fields, pi=torch.full_like(fields["pi"], float("nan"))), image_shape=model.image_shape,
                   validate=False)
        render(bad)  # validated where it is used
