"""Gradients of every parameter: the hand-written backward of the CPU build (raw_kernels/smoe_tile.h, the same
arithmetic as the GPU build) against finite differences (gradcheck, float64), dense autograd, and the
PyTorch reference of the tiled kernel."""
import numpy as np
import pytest
import torch

from smoe_core import render
from tests.conftest import random_model

FIELDS = ("mu", "chol", "pi", "experts", "slopes")


def grads(model, backend, weight, **kw):
    for k in FIELDS:
        v = getattr(model, k)
        if v is not None:
            v.grad = None
    out = render(model, backend=backend, **kw)
    (out * weight).sum().backward()
    return {k: getattr(model, k).grad.clone() for k in FIELDS if getattr(model, k) is not None}


@pytest.mark.parametrize("C,linear,rbf", [(1, False, False), (3, False, False), (2, True, False), (1, False, True),
                                          (3, True, True)])
def test_gradcheck_finite_differences(C, linear, rbf):
    m = random_model(K=12, H=10, W=13, C=C, linear=linear, rbf=rbf, seed=C).torch(requires_grad=True,
                                                                                     dtype=torch.float64)
    names = [k for k in FIELDS if getattr(m, k) is not None]

    def f(*args):
        return render(m.replace(**dict(zip(names, args))), backend="cpu", tile=8, scale=1.3)

    assert torch.autograd.gradcheck(f, tuple(getattr(m, k) for k in names), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("C,linear,rbf", [(1, False, False), (3, True, False), (1, False, True)])
@pytest.mark.parametrize("tile", [8, 16])
def test_compiled_backward_matches_torch_reference(C, linear, rbf, tile):
    m = random_model(K=40, H=30, W=35, C=C, linear=linear, rbf=rbf, seed=11).torch(requires_grad=True,
                                                                                      dtype=torch.float64)
    w = torch.randn(30, 35, C, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).squeeze(-1)
    a, b = grads(m, "cpu", w, tile=tile), grads(m, "torch", w, tile=tile)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-11, rtol=1e-9)


@pytest.mark.parametrize("C,linear,rbf", [(1, False, False), (3, False, False), (1, True, False), (1, False, True)])
def test_tiled_gradients_match_dense_autograd(C, linear, rbf):
    """With a cutoff wide enough that every kernel reaches every tile it matters to, the tiled gradients equal
    the global SMoE's autograd gradients."""
    m = random_model(K=25, H=24, W=30, C=C, linear=linear, rbf=rbf, seed=4).torch(requires_grad=True,
                                                                                     dtype=torch.float64)
    w = torch.randn(24, 30, C, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).squeeze(-1)
    a, b = grads(m, "cpu", w, cutoff=12.0), grads(m, "dense", w)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-9, rtol=1e-7)


def test_float32_gradients_match_dense_on_grid_model():
    from smoe_core.init import grid

    yy, xx = np.mgrid[0:64, 0:80]
    img = (0.5 + 0.4 * np.sin(xx / 7.0 + yy / 11.0)).astype(np.float32)
    m = grid(img, 120).model.torch(requires_grad=True)
    target = torch.from_numpy(img)
    ga = grads(m, "cpu", 2 * (render(m.torch(), backend="cpu") - target))
    gb = grads(m, "dense", 2 * (render(m.torch(), backend="dense") - target))
    for k in ga:
        scale = float(gb[k].abs().max())
        assert float((ga[k] - gb[k]).abs().max()) <= 1e-3 * scale + 1e-6, k


def test_backward_is_deterministic_and_thread_count_independent():
    m = random_model(K=200, H=64, W=80, C=3, seed=2, bandwidth=(0.05, 0.2)).torch(requires_grad=True)
    w = torch.randn(64, 80, 3, generator=torch.Generator().manual_seed(2))
    a = grads(m, "cpu", w, n_threads=2)
    b = grads(m, "cpu", w, n_threads=2)
    c = grads(m, "cpu", w, n_threads=1)
    for k in a:
        assert torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]), k


def test_degenerate_models_have_finite_gradients():
    m = random_model(K=6, H=16, W=16, seed=9)
    chol = m.chol.copy()
    chol[0] = [50.0, 0.0, 50.0]  # a spike narrower than a pixel
    chol[1] = [1e-5, 0.0, 1e-5]  # nearly flat: the box covers everything
    mu = m.mu.copy()
    mu[2] = [-500.0, 800.0]  # far outside
    t = m.replace(chol=chol, mu=mu).torch(requires_grad=True)
    g = grads(t, "cpu", torch.ones(16, 16))
    assert all(torch.isfinite(v).all() for v in g.values())
    one = random_model(K=1, H=8, W=8, seed=1).torch(requires_grad=True)
    g1 = grads(one, "cpu", torch.ones(8, 8))
    # one kernel: the output is its expert everywhere, so only the expert has a gradient; the others are zero up
    # to rounding (the fast build's y = acc / S is not m bit for bit on every CPU: on an AMD EPYC 1.3e-6 for mu and
    # 2.6e-5 for chol, whose gradient carries the squared offsets; the RBF rule g m_j in place of g (m_j - y) gives
    # 5 for mu and 81 for chol on this model)
    assert float(g1["experts"][0, 0]) == pytest.approx(64.0)
    assert float(g1["mu"].abs().max()) < 1e-4 and float(g1["chol"].abs().max()) < 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("C,linear,rbf", [(3, False, False), (3, True, False), (1, False, True)])
def test_underflowing_gates_match_torch_reference(C, linear, rbf, dtype):
    """Narrow kernels (sigma 0.25-0.5 px) evaluated over whole tiles plus a kernel with pi = 0: most gates
    underflow (the CPU build clamps their exp argument and sets them to exactly 0, smoe_tile_cpu.cpp exp_gate);
    forward and all gradients still equal the PyTorch reference, in float32 and float64."""
    from smoe_core.render.reference import tile_log_weights
    from smoe_core.render import log_pi, tile_lists

    m = random_model(K=60, H=30, W=37, C=C, linear=linear, rbf=rbf, seed=5, bandwidth=(2.0, 4.0))
    pi = m.pi.copy()
    pi[3] = 0.0
    m = m.replace(pi=pi)
    t = m.torch(dtype=dtype)
    lists = tile_lists(t)
    lw, *_ = tile_log_weights(t.mu, t.chol, log_pi(t.pi), lists, 1.0)
    cut = -87.0 if dtype == torch.float32 else -708.0
    shifted = lw - (0.0 if rbf else lw.amax(2, keepdim=True))
    assert float((shifted[torch.isfinite(lw)] < cut).double().mean()) > 0.2
    tm = m.torch(requires_grad=True, dtype=dtype)
    w = torch.randn(30, 37, C, dtype=dtype, generator=torch.Generator().manual_seed(3)).squeeze(-1)
    tol = dict(atol=2e-6, rtol=2e-6) if dtype == torch.float32 else dict(atol=1e-11, rtol=1e-9)
    torch.testing.assert_close(render(tm, backend="cpu"), render(tm, backend="torch"), **tol)
    a, b = grads(tm, "cpu", w), grads(tm, "torch", w)
    for k in a:
        if dtype == torch.float64:
            torch.testing.assert_close(a[k], b[k], **tol)
        else:  # float32: both builds are ~1e-5 of the field's scale off float64 here (sharp kernels)
            assert float((a[k] - b[k]).abs().max()) <= 1e-4 * float(b[k].abs().max()) + 1e-6, k
    assert float(a["experts"][3].abs().max()) == 0.0  # pi = 0: no weight, no expert gradient
