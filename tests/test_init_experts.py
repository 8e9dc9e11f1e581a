"""Expert rules of the radial initializers (Grid, K-Means, S-SMoE) and the paper protocol of Table V."""
import numpy as np
import pandas as pd
import pytest

from smoe_core import experiments as ex
from smoe_core import init, render


def _image(seed=0, shape=(40, 48)):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 1.0, shape).astype(np.float32)


@pytest.mark.parametrize("method", ["grid", "kmeans", "s_smoe"])
def test_centre_rule_samples_the_pixel_nearest_each_centre(method):
    img = _image()
    kw = dict(labels=np.repeat(np.arange(4), 480).reshape(40, 48)) if method == "s_smoe" else {}
    model, _ = init.get_initializer(method)(img, 30, experts="centre", **kw)
    mu = np.asarray(model.mu, np.float64)
    r = np.clip(np.floor(mu[:, 1] + 0.5).astype(int), 0, 39)
    c = np.clip(np.floor(mu[:, 0] + 0.5).astype(int), 0, 47)
    np.testing.assert_array_equal(np.asarray(model.experts)[:, 0], img[r, c])


@pytest.mark.parametrize("method", ["grid", "kmeans"])
def test_random_rule_is_seeded_uniform_and_ignores_the_image(method):
    a, _ = init.get_initializer(method)(_image(0), 30, experts="random", seed=3)
    b, _ = init.get_initializer(method)(_image(0), 30, experts="random", seed=3)
    c, _ = init.get_initializer(method)(_image(0), 30, experts="random", seed=4)
    np.testing.assert_array_equal(a.experts, b.experts)
    assert not np.array_equal(a.experts, c.experts)
    e = np.asarray(a.experts)
    assert e.min() >= 0.0 and e.max() <= 1.0
    if method == "grid":  # the grid's layout does not depend on the image: same draw for another image
        d, _ = init.grid(_image(1), 30, experts="random", seed=3)
        np.testing.assert_array_equal(a.experts, d.experts)


def test_constant_image_known_answers():
    img = np.full((32, 32), 0.3, np.float32)
    for rule in ("mean", "centre"):
        model, _ = init.grid(img, 16, experts=rule)
        np.testing.assert_allclose(render(model), 0.3, atol=1e-6)
    model, _ = init.grid(img, 16, experts="random", seed=0)
    assert np.abs(render(model) - 0.3).max() > 0.05


def test_unknown_rule_is_rejected():
    with pytest.raises(ValueError, match="experts must be one of"):
        init.grid(_image(), 10, experts="median")


def test_paper_protocol_items_touch_only_radial_methods(tmp_path):
    items = ex.grid_items(["peppers"], ["grid", "kmeans", "s_smoe", "as_smoe", "edge"], model_dir=tmp_path, seed=5)
    pitems = ex.paper_protocol_items(items)
    assert [it["method"] for it in pitems] == ["grid", "kmeans", "s_smoe"]
    for it in pitems:
        assert it["init_kwargs"][it["method"]]["experts"] == "random"
        assert it["tag"] == ex.PAPER_PROTOCOL
    # the original items are not modified, and the protocol's models are saved apart
    assert all("tag" not in it and "init_kwargs" not in it for it in items)
    assert ex.model_path(tmp_path, pitems[0], "init") != ex.model_path(tmp_path, items[0], "init")
    assert ex.init_kwargs("grid", pitems[0])["seed"] == 5  # the random experts are drawn under the item's seed


def test_initial_ranking_on_a_hand_made_table():
    t = pd.DataFrame(dict(image=["a"] * 3 + ["b"] * 3, method=["grid", "kmeans", "as_smoe"] * 2,
                          psnr_db_ours=[12.0, 13.0, 14.0, 20.0, 19.0, 15.0]))
    r = ex.initial_ranking(t).set_index("image")
    assert bool(r.loc["a", "beats_all"]) and r.loc["a", "margin_db"] == pytest.approx(1.0)
    assert not bool(r.loc["b", "beats_all"]) and r.loc["b", "margin_db"] == pytest.approx(-5.0)
