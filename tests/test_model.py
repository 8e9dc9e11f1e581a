"""The SMoE model: precision parameterization, construction from precision matrices, persistence, checks."""
import json

import numpy as np
import pytest
import torch

from smoe_core import SMoE
from tests.conftest import random_model


def test_precision_is_A_At():
    m = random_model(K=9, seed=1)
    A = np.zeros((9, 2, 2), np.float64)
    A[:, 0, 0], A[:, 1, 0], A[:, 1, 1] = m.chol[:, 0], m.chol[:, 1], m.chol[:, 2]
    np.testing.assert_allclose(m.precision(), A @ A.transpose(0, 2, 1), rtol=1e-6)
    np.testing.assert_allclose(m.torch().precision().numpy(), m.precision(), rtol=1e-6)
    np.testing.assert_allclose(m.covariance() @ m.precision(), np.broadcast_to(np.eye(2), (9, 2, 2)), atol=1e-4)


@pytest.mark.parametrize("as_torch", [False, True])
def test_from_precision_roundtrip(as_torch):
    rng = np.random.default_rng(0)
    K = 20
    R = rng.normal(size=(K, 2, 2))
    P = R @ R.transpose(0, 2, 1) + 0.1 * np.eye(2)
    mu, pi, e = rng.uniform(0, 10, (K, 2)), rng.uniform(0.5, 1, K), rng.uniform(0, 1, (K, 1))
    if as_torch:
        m = SMoE.from_precision(*(torch.from_numpy(a) for a in (mu, P, pi, e)))
        np.testing.assert_allclose(m.precision().numpy(), P, rtol=1e-10)
    else:
        m = SMoE.from_precision(mu, P, pi, e)
        np.testing.assert_allclose(m.precision(), P, rtol=1e-10)
        assert (m.chol[:, 0] > 0).all() and (m.chol[:, 2] > 0).all()
    with pytest.raises(ValueError, match="positive definite"):
        SMoE.from_precision(mu, -P, pi, e)


def test_save_load_roundtrip(tmp_path):
    m = random_model(K=15, C=3, linear=True, rbf=True, seed=2)
    m = SMoE(m.mu, m.chol, m.pi, m.experts, m.slopes, rbf=True, image_shape=(20, 28), color_space="yuv")
    path = m.save(tmp_path / "m.npz")
    back = SMoE.load(path)
    for k, v in m.fields().items():
        np.testing.assert_array_equal(getattr(back, k), v)
    assert back.rbf and back.image_shape == (20, 28) and back.color_space == "yuv"
    with np.load(path) as z:
        meta = json.loads(str(z["metadata"]))
    assert meta["format_version"] == 1 and meta["package_version"]
    assert not list(tmp_path.glob("*.tmp*"))


def test_load_rejects_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        SMoE.load(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_text("not a zip")
    with pytest.raises(ValueError, match="not an SMoE model"):
        SMoE.load(bad)
    partial = tmp_path / "partial.npz"
    np.savez(partial, mu=np.zeros((2, 2)), metadata=np.array("{}"))
    with pytest.raises(ValueError, match="missing fields"):
        SMoE.load(partial)


def test_checks():
    m = random_model(K=4)
    mu = m.mu.copy()
    mu[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        m.replace(mu=mu)
    with pytest.raises(ValueError, match="zero kernels"):
        m.subset(np.zeros(4, bool))
    with pytest.raises(ValueError, match="chol must have shape"):
        m.replace(chol=m.chol[:, :2])
    with pytest.raises(ValueError, match="all numpy arrays or all torch"):
        m.replace(pi=torch.from_numpy(m.pi))
    with pytest.raises(ValueError, match="channels"):
        m.replace(experts=np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="color_space"):
        SMoE(m.mu, m.chol, m.pi, m.experts, color_space="cmyk")


def test_torch_conversion_makes_leaves():
    m = random_model(K=4).torch(requires_grad=True)
    assert all(getattr(m, k).is_leaf and getattr(m, k).requires_grad for k in ("mu", "chol", "pi", "experts"))
    n = m.numpy()
    assert isinstance(n.mu, np.ndarray) and n.mu.dtype == np.float32


def _spoiled(m: SMoE, how: str) -> SMoE:
    """A copy of numpy model ``m`` with one defect (or none)."""
    mu, chol, pi, experts = m.mu.copy(), m.chol.copy(), m.pi.copy(), m.experts.copy()
    if how == "nan_mu":
        mu[1, 0] = np.nan
    elif how == "inf_experts":
        experts[0, 0] = np.inf
    elif how == "singular":
        chol[2, 2] = 0.0
    elif how == "no_weight":
        pi[:] = 0.0
    elif how == "bad_shape":
        pi = pi[:-1]
    return SMoE(mu, chol, pi, experts, image_shape=m.image_shape, validate=False)


@pytest.mark.parametrize("as_torch", [False, True])
def test_check_models_accepts_and_refuses_as_one_check_per_model(as_torch):
    """check_models (render_many's joint validation) passes exactly the lists whose every model passes
    SMoE.check, and a failure names the first bad model and carries its own check's message."""
    from smoe_core.model import check_models

    rng = np.random.default_rng(5)
    for trial in range(30):
        n = int(rng.integers(1, 6))
        hows = [str(rng.choice(["ok", "ok", "ok", "nan_mu", "inf_experts", "singular", "no_weight", "bad_shape"]))
                for _ in range(n)]
        models = [_spoiled(random_model(K=int(rng.integers(3, 8)), H=12, W=12, seed=trial * 10 + i), h)
                  for i, h in enumerate(hows)]
        if as_torch:
            models = [SMoE(*(torch.from_numpy(np.ascontiguousarray(x)) for x in (m.mu, m.chol, m.pi, m.experts)),
                           image_shape=m.image_shape, validate=False) for m in models]
        first_bad = next((i for i, h in enumerate(hows) if h != "ok"), None)
        if first_bad is None:
            check_models(models)
            continue
        with pytest.raises(ValueError) as info:
            models[first_bad].check()
        expected = str(info.value)
        with pytest.raises(ValueError) as joint:
            check_models(models)
        assert str(joint.value) == (f"model {first_bad}: {expected}" if n > 1 else expected)
