"""Renderers: the compiled tiled build against the pure-PyTorch reference, the dense renderer, an independent
per-pixel formula (eqs. 1-4 with covariance matrices), and hand-made models with known answers."""
import numpy as np
import pytest
import torch

from smoe_core import SMoE, render, render_many, tile_lists
from smoe_core.init import grid
from tests.conftest import random_model


def naive_render(model: SMoE, H, W, scale=1.0):
    """Eqs. 1-4 pixel by pixel with Sigma = P^-1 (no log domain, float64): an independent reference."""
    m = model.numpy()
    P = m.precision().astype(np.float64)
    Sigma = np.linalg.inv(P)
    Hs, Ws = int(round(H * scale)), int(round(W * scale))
    out = np.zeros((Hs, Ws, m.n_channels))
    for r in range(Hs):
        for c in range(Ws):
            x = np.array([(c + 0.5) / scale - 0.5, (r + 0.5) / scale - 0.5])
            d = x - m.mu.astype(np.float64)
            q = np.einsum("ki,kij,kj->k", d, np.linalg.inv(Sigma), d)
            k = np.exp(-0.5 * q)
            experts = m.experts.astype(np.float64)
            if m.slopes is not None:
                experts = experts + np.einsum("kcd,kd->kc", m.slopes.astype(np.float64), d)
            w = m.pi * k
            if not m.rbf:
                w = w / w.sum()
            out[r, c] = w @ experts
    return out if m.n_channels > 1 else out[..., 0]


@pytest.mark.parametrize("C,linear,rbf", [(1, False, False), (3, False, False), (1, True, False), (3, True, True),
                                          (2, False, True)])
@pytest.mark.parametrize("tile,scale", [(8, 1.0), (16, 1.0), (16, 2.0), (32, 0.5)])
def test_compiled_tiled_matches_torch_reference(C, linear, rbf, tile, scale):
    m = random_model(K=40, H=30, W=37, C=C, linear=linear, rbf=rbf, seed=C + tile)
    a = render(m, backend="cpu", tile=tile, scale=scale)
    b = render(m, backend="torch", tile=tile, scale=scale)
    assert a.dtype == np.float32
    assert a.shape == ((round(30 * scale), round(37 * scale)) + ((C,) if C > 1 else ()))
    np.testing.assert_allclose(a, b, atol=2e-6)


@pytest.mark.parametrize("C,linear,rbf", [(3, False, False), (3, True, False), (3, True, True), (4, False, False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_multichannel_forward_matches_references(C, linear, rbf, dtype):
    """The CPU build's per-channel accumulation (channel planes, vectorized pixel loop; edge tiles of 30 x 37 with
    tiles of 16) against the PyTorch reference and, with a cutoff large enough that every tile lists every
    kernel, the dense renderer; and each channel of a C-channel render equals the one-channel render of that
    channel's experts (the channels do not interact)."""
    m = random_model(K=40, H=30, W=37, C=C, linear=linear, rbf=rbf, seed=11)
    tol = dict(atol=2e-6, rtol=2e-6) if dtype == torch.float32 else dict(atol=1e-12, rtol=1e-12)
    t = m.torch(dtype=dtype)
    a = render(t, backend="cpu").numpy()
    assert a.shape == (30, 37, C) and a.dtype == (np.float32 if dtype == torch.float32 else np.float64)
    np.testing.assert_allclose(a, render(t, backend="torch").numpy(), **tol)
    wide = render(t, backend="cpu", cutoff=1e3).numpy()
    # the dense renderer sums in another order: float32 agrees to a few ulps of the (unnormalized RBF) values
    np.testing.assert_allclose(wide, render(t, backend="dense").numpy(),
                               **(dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else tol))
    for c in range(C):
        one = m.replace(experts=m.experts[:, c:c + 1], slopes=None if m.slopes is None else m.slopes[:, c:c + 1])
        np.testing.assert_allclose(a[..., c], render(one.torch(dtype=dtype), backend="cpu").numpy(), **tol)


@pytest.mark.parametrize("C,linear,rbf", [(1, False, False), (3, True, False), (1, False, True)])
def test_dense_matches_independent_formula(C, linear, rbf):
    m = random_model(K=7, H=6, W=8, C=C, linear=linear, rbf=rbf, seed=3, bandwidth=(0.3, 0.8))
    ref = naive_render(m, 6, 8)
    out = render(m.torch(dtype=torch.float64), backend="dense").numpy()
    np.testing.assert_allclose(out, ref, atol=1e-10)
    out2 = render(m.torch(dtype=torch.float64), backend="dense", scale=1.5).numpy()
    np.testing.assert_allclose(out2, naive_render(m, 6, 8, scale=1.5), atol=1e-10)


def test_tiled_equals_dense_on_well_covering_model():
    """A grid model over a smooth image: the tiled render is within 1e-4 of the global (dense) one."""
    H, W = 96, 128
    yy, xx = np.mgrid[0:H, 0:W]
    img = (0.5 + 0.4 * np.sin(xx / 9.0) * np.cos(yy / 13.0)).astype(np.float32)
    m = grid(img, 300).model
    rng = np.random.default_rng(1)
    m = m.replace(mu=m.mu + rng.normal(0, 1.0, m.mu.shape).astype(np.float32),
                  chol=m.chol * rng.uniform(0.8, 1.2, m.chol.shape).astype(np.float32))
    dense = render(m, backend="dense")
    for tile in (8, 16, 32):
        np.testing.assert_allclose(render(m, backend="cpu", tile=tile), dense, atol=1e-4)


def test_scale_samples_stated_points():
    """One RBF kernel: output pixel (r', c') at scale s equals K((c'+0.5)/s-0.5, (r'+0.5)/s-0.5) exactly."""
    mu = np.array([[4.3, 2.7]], np.float32)
    chol = np.array([[0.5, 0.2, 0.4]], np.float32)
    m = SMoE(mu, chol, np.ones(1, np.float32), np.ones((1, 1), np.float32), rbf=True, image_shape=(6, 9))
    for s in (1.0, 2.0, 3.0):
        out = render(m, backend="cpu", scale=s, cutoff=20.0)
        rr, cc = np.mgrid[0:out.shape[0], 0:out.shape[1]]
        x, y = (cc + 0.5) / s - 0.5, (rr + 0.5) / s - 0.5
        u = 0.5 * (x - 4.3) + 0.2 * (y - 2.7)
        v = 0.4 * (y - 2.7)
        np.testing.assert_allclose(out, np.exp(-0.5 * (u * u + v * v)), rtol=1e-5, atol=1e-7)


def test_single_kernel_gives_constant_image():
    m = SMoE(np.array([[3.0, 4.0]], np.float32), np.array([[0.5, 0.1, 0.3]], np.float32), np.ones(1, np.float32),
             np.array([[0.25, 0.5, 0.75]], np.float32), image_shape=(40, 50))
    for backend in ("cpu", "torch", "dense"):
        out = render(m, backend=backend)
        np.testing.assert_allclose(out, np.broadcast_to([0.25, 0.5, 0.75], (40, 50, 3)), atol=1e-6)


def test_far_kernel_and_near_singular_precision():
    m = random_model(K=20, H=24, W=24, seed=5)
    far = m.replace(mu=np.concatenate([m.mu, [[1e4, -1e4]]]).astype(np.float32),
                    chol=np.concatenate([m.chol, [[0.3, 0.0, 0.3]]]).astype(np.float32),
                    pi=np.concatenate([m.pi, [1.0]]).astype(np.float32),
                    experts=np.concatenate([m.experts, [[1.0]]]).astype(np.float32))
    np.testing.assert_allclose(render(far, backend="cpu"), render(m, backend="cpu"), atol=1e-7)
    # a needle: a22 tiny, the box spans the whole image in y; still finite and equal to dense
    needle = m.replace(chol=np.concatenate([m.chol[:-1], [[0.5, 0.0, 1e-6]]]).astype(np.float32))
    t = render(needle, backend="cpu")
    assert np.isfinite(t).all()
    np.testing.assert_allclose(t, render(needle, backend="dense"), atol=1e-4)
    tm = needle.torch(requires_grad=True)
    render(tm, backend="cpu").sum().backward()
    assert all(torch.isfinite(getattr(tm, k).grad).all() for k in ("mu", "chol", "pi", "experts"))


def test_empty_blocks_get_nearest_kernels():
    """Two small kernels in one corner of a 64 x 64 image: most tiles are empty before filling; the filled
    render equals the global one (the dominant kernel's expert, log domain, no 0/0)."""
    mu = np.array([[2.0, 2.0], [6.0, 3.0]], np.float32)
    chol = np.full((2, 3), 1.0, np.float32)
    chol[:, 1] = 0.0
    m = SMoE(mu, chol, np.ones(2, np.float32), np.array([[0.2], [0.9]], np.float32), image_shape=(64, 64))
    unfilled = tile_lists(m, fill=0)
    assert int((unfilled.counts == 0).sum()) >= 10
    filled = tile_lists(m)
    assert int((filled.counts == 0).sum()) == 0
    t = render(m, backend="cpu")
    assert np.isfinite(t).all()
    np.testing.assert_allclose(t, render(m.torch(dtype=torch.float64), backend="dense").numpy(), atol=1e-6)


def test_nonpositive_pi_carries_no_weight():
    m = random_model(K=25, seed=7)
    pi = m.pi.copy()
    pi[[3, 11]] = [-0.5, 0.0]
    with_dead = m.replace(pi=pi)
    alive = m.subset(pi > 0)
    for backend in ("cpu", "torch", "dense"):
        np.testing.assert_allclose(render(with_dead, backend=backend), render(alive, backend=backend), atol=1e-6)


def test_render_many_equals_individual_renders():
    models = [random_model(K=10 + 5 * i, H=20, W=24, C=3, seed=i) for i in range(4)]
    many = render_many(models, backend="cpu")
    for m, img in zip(models, many):
        np.testing.assert_allclose(img, render(m, backend="cpu"), atol=1e-7)
    tm = [m.torch() for m in models]
    stacked = render_many(tm, backend="cpu")
    assert stacked.shape == (4, 20, 24, 3)
    np.testing.assert_allclose(stacked.numpy(), np.stack(many), atol=1e-7)


def test_output_types():
    m = random_model(K=10, H=12, W=14)
    out = render(m)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (12, 14)
    t = render(m.torch())
    assert isinstance(t, torch.Tensor) and t.shape == (12, 14) and not t.requires_grad
    assert render(m.torch(requires_grad=True)).requires_grad


def test_bad_arguments():
    m = random_model(K=5)
    with pytest.raises(ValueError, match="backend"):
        render(m, backend="bogus")
    with pytest.raises(ValueError, match="scale"):
        render(m, scale=0)
    with pytest.raises(ValueError, match="cuda"):
        render(m.torch(), backend="cuda")
    with pytest.raises(ValueError, match="shape"):
        render(m.replace(), shape=(0, 5))
