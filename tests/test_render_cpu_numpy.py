"""The torch-free forward pass (smoe_core.render.cpu_numpy) against the torch path through the same compiled
library (``render(..., backend="cpu")`` and ``tile_lists``): the same tile lists, integer for integer, the same
image up to the last bit of log(pi), and a hand-made model with a known answer."""
import numpy as np
import pytest

from smoe_core import SMoE, render, tile_lists
from smoe_core.render.cpu_numpy import bin_kernels_numpy, log_pi_numpy, render_numpy
from tests.conftest import random_model


def fields(m):
    return dict(mu=m.mu, chol=m.chol, pi=m.pi, experts=m.experts, slopes=m.slopes, rbf=m.rbf)


@pytest.mark.parametrize("C,linear,rbf", [(1, False, False), (3, False, False), (3, True, True), (4, False, False)])
@pytest.mark.parametrize("tile,scale", [(16, 1.0), (8, 2.0), (16, 0.75)])
def test_numpy_render_matches_the_torch_path(C, linear, rbf, tile, scale):
    m = random_model(K=40, H=30, W=37, C=C, linear=linear, rbf=rbf, seed=C + tile)
    a = render(m, backend="cpu", tile=tile, scale=scale)
    b = render_numpy(**fields(m), shape=(30, 37), tile=tile, scale=scale)
    assert b.shape == a.shape and b.dtype == np.float32
    np.testing.assert_allclose(b, a, rtol=0, atol=2e-6)
    tl = tile_lists(m, tile=tile, scale=scale)
    ts, ti = bin_kernels_numpy(m.mu, m.chol, log_pi_numpy(m.pi), *a.shape[:2], tile=tile, scale=scale)
    np.testing.assert_array_equal(ts, tl.tile_start.numpy())
    np.testing.assert_array_equal(ti, tl.tile_ids.numpy())


@pytest.mark.parametrize("fill", [1, 4, 20])
def test_empty_tiles_get_the_same_fill_kernels(fill):
    """Nine small kernels in one corner of a 70 x 100 image: most tiles are empty and take the ``fill`` kernels
    with the largest log-weight at their centre, as the torch binning picks them."""
    rng = np.random.default_rng(2)
    K = 9
    mu = rng.uniform(0, 20, (K, 2)).astype(np.float32)
    chol = (5 * np.stack([rng.uniform(0.5, 2, K), rng.normal(0, .5, K), rng.uniform(0.5, 2, K)], 1)).astype(np.float32)
    m = SMoE(mu, chol, rng.uniform(0.1, 2, K).astype(np.float32), rng.uniform(0, 1, (K, 3)).astype(np.float32),
             image_shape=(70, 100))
    tl = tile_lists(m, fill=fill)
    ts, ti = bin_kernels_numpy(m.mu, m.chol, log_pi_numpy(m.pi), 70, 100, fill=fill)
    counts = np.diff(ts)
    assert (counts == min(fill, K)).sum() >= 20  # the empty tiles, filled
    np.testing.assert_array_equal(ts, tl.tile_start.numpy())
    np.testing.assert_array_equal(ti, tl.tile_ids.numpy())
    np.testing.assert_allclose(render_numpy(**fields(m), shape=(70, 100), fill=fill),
                               render(m, backend="cpu", fill=fill), rtol=0, atol=2e-6)


def test_known_answer_and_float64():
    """Two kernels with experts 0.2 and 0.8 and equal weight: the image is 0.5 on their bisector and tends to each
    expert near its own centre; float64 fields render in float64."""
    mu = np.array([[4.0, 5.0], [12.0, 5.0]])
    chol = np.tile([0.5, 0.0, 0.5], (2, 1))
    out = render_numpy(mu, chol, np.ones(2), np.array([[0.2], [0.8]]), (11, 17))
    assert out.dtype == np.float64 and out.shape == (11, 17)
    np.testing.assert_allclose(out[:, 8], 0.5, atol=1e-12)
    assert abs(out[5, 0] - 0.2) < 1e-3 and abs(out[5, 16] - 0.8) < 1e-3
    pi0 = render_numpy(mu, chol, np.array([1.0, 0.0]), np.array([[0.2], [0.8]]), (11, 17))
    # pi = 0 carries no weight: in the first tile (columns 0-15), which lists both kernels, the image is 0.2
    np.testing.assert_allclose(pi0[:, :16], 0.2, atol=1e-12)


@pytest.mark.parametrize("kw,match", [
    (dict(mu=np.zeros((2, 3))), "mu must be a float array of shape"),
    (dict(chol=np.zeros((3, 3))), "chol must have one row per kernel"),
    (dict(pi=np.array([1.0, np.nan])), "pi must be finite"),
    (dict(experts=np.zeros((2, 5))), "experts must be a float array of shape"),
    (dict(shape=(0, 4)), "shape must be"),
    (dict(scale=-1.0), "scale must be a positive number"),
    (dict(tile=0), "tile"),
])
def test_bad_arguments_are_named(kw, match):
    args = dict(mu=np.array([[1.0, 1.0], [3.0, 2.0]]), chol=np.tile([1.0, 0.0, 1.0], (2, 1)), pi=np.ones(2),
                experts=np.ones((2, 1)), shape=(4, 4))
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        render_numpy(**args)
