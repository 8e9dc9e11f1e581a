"""MDBSCAN segmentation (smoe_core.segment), its statistics (Fig. 4) and the S-SMoE initializer.

The hand-made images are designed around MDBSCAN's known behaviour: the 5 x 5 blur turns every step of d
gray levels into edge pixels 0.30 d into the step, and each region's seed is its first pixel in raster
order, which sits on its own blurred edge. With monotone steps of d = 38 and E = 36 (within about
[0.7 E, 1.16 E]) every edge pixel joins its own side, so the regions come back exactly; a 1-pixel line of
contrast 85 (within about [1.75 E, 2.6 E]) becomes a 1-pixel cluster that the strand cleaning removes.
"""
import numpy as np
import pytest

from smoe_core import load_image
from smoe_core.segment import build as mdbscan_build
from smoe_core.init.s_smoe import kernel_counts, place_kernels, s_smoe
from smoe_core.studies.as_smoe_segments import fig4_statistics
from smoe_core.segment import (AUTHORS_PEPPERS_COUNTS, GAUSS5, mdbscan, prefilter,
                               segment_stats, to_rgb8)

VARIANTS = ("spec", "authors")


def same_partition(a, b) -> bool:
    """The two label images are the same partition up to relabelling."""
    pairs = np.unique(np.stack([np.ravel(a), np.ravel(b)], 1), axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


def stripes(line: bool = False, transpose: bool = False):
    """Five flat vertical stripes (>= 360 px each), monotone steps of 38 gray levels; optionally a thin
    vertical line of width 1 (contrast 85) inside the first stripe. Returns (image in [0, 1], truth labels)."""
    vals, widths, H = [30, 68, 106, 144, 182], [12, 9, 14, 10, 13], 40
    img = np.zeros((H, sum(widths)))
    truth = np.zeros((H, sum(widths)), int)
    c = 0
    for i, (v, w) in enumerate(zip(vals, widths)):
        img[:, c:c + w] = v
        truth[:, c:c + w] = i + 1
        c += w
    if line:
        img[5:H - 5, 6] += 85
    if transpose:
        img, truth = img.T.copy(), truth.T.copy()
    return (img / 255).astype(np.float32), truth


def random_blocks(seed, H=None, W=None):
    rng = np.random.default_rng(seed)
    H = H or int(rng.integers(1, 36))
    W = W or int(rng.integers(1, 36))
    k = int(rng.integers(1, 5))
    C = 3 if rng.random() < 0.5 else 1
    img = np.kron(rng.uniform(0, 1, (k, k, C)), np.ones((H // k + 1, W // k + 1, 1)))[:H, :W]
    img = np.clip(img + rng.normal(0, rng.uniform(0, 0.12), img.shape), 0, 1).astype(np.float32)
    return img[..., 0] if C == 1 else img


# ------------------------------------------------------------------------------------------------ pre-filter
def test_prefilter_is_the_normalized_5x5_gaussian_with_replicated_borders():
    from scipy import ndimage

    assert GAUSS5.sum() == pytest.approx(1.0) and GAUSS5[2] == pytest.approx(0.4026, abs=1e-4)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)
    ours = prefilter(rgb)
    k2 = np.outer(GAUSS5, GAUSS5)
    ref = np.stack([ndimage.convolve(rgb[..., c].astype(np.float64), k2, mode="nearest") for c in range(3)], -1)
    ref = np.floor(ref + 0.5)
    assert ours.dtype == np.uint8 and ours.shape == rgb.shape
    assert np.abs(ours.astype(int) - ref).max() <= 1 and (ours == ref).mean() > 0.99
    flat = np.full((9, 7, 3), 77, np.uint8)
    np.testing.assert_array_equal(prefilter(flat), flat)


def test_gray_is_replicated_and_rounded():
    g = np.array([[0.0, 0.5, 1.0, 2.5 / 255]], np.float32)
    rgb = to_rgb8(g)
    assert rgb.shape == (1, 4, 3) and (rgb == rgb[..., :1]).all()
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 128, 255, 3])
    np.testing.assert_array_equal(mdbscan(g[..., None].repeat(3, -1), 30), mdbscan(g, 30))


# ------------------------------------------------------------------------------------------------ MDBSCAN
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("line", [False, True])
def test_recovers_piecewise_constant_regions(variant, transpose, line):
    img, truth = stripes(line=line, transpose=transpose)
    lab = mdbscan(img, 36, variant=variant)
    assert lab.max() == 5
    assert same_partition(lab, truth)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("d_th", [30, 40])
def test_region_below_50_pixels_is_merged(variant, d_th):
    img = np.full((40, 60), 100.0)
    img[10:16, 10:16] = 200  # 36 px: merged into the background
    img[12:22, 35:45] = 200  # 100 px: kept
    truth = np.zeros((40, 60), int)
    truth[12:22, 35:45] = 1
    grown = mdbscan(img / 255, d_th, variant=variant, last_step=2)
    assert grown[13, 13] != grown[0, 0] and grown[13, 13] != grown[16, 40]  # the small square was its own cluster
    lab = mdbscan(img / 255, d_th, variant=variant)
    assert same_partition(lab, truth)


@pytest.mark.parametrize("variant", VARIANTS)
def test_labels_are_raster_ordered_and_deterministic(variant):
    img = load_image("peppers", color=True)[100:228, 200:328]
    lab = mdbscan(img, 30, variant=variant)
    assert lab.dtype == np.int32 and lab.shape == img.shape[:2]
    values, first = np.unique(lab.ravel(), return_index=True)
    np.testing.assert_array_equal(values, np.arange(1, lab.max() + 1))
    assert (np.diff(first) > 0).all()  # label l first appears before label l + 1
    assert lab.max() > 5
    np.testing.assert_array_equal(lab, mdbscan(img.copy(), 30, variant=variant))


def test_compiled_loops_match_the_python_twin():
    for seed in range(12):
        img = random_blocks(seed)
        for variant in VARIANTS:
            for d_th in (8, 25, 60):
                a = mdbscan(img, d_th, variant=variant, backend="cpp")
                b = mdbscan(img, d_th, variant=variant, backend="python")
                np.testing.assert_array_equal(a, b, err_msg=f"seed {seed} {variant} E={d_th}")
    img = load_image("flower", color=True)[200:264, 300:380]  # real texture: merges and strands happen
    for variant in VARIANTS:
        np.testing.assert_array_equal(mdbscan(img, 20, variant=variant),
                                      mdbscan(img, 20, variant=variant, backend="python"))


def test_peppers_counts_match_the_authors():
    """The authors' counts are those of the colour Peppers (see smoe_core.segment's docstring)."""
    img = load_image("peppers", color=True)
    got = {E: int(mdbscan(img, E, variant="authors").max()) for E in AUTHORS_PEPPERS_COUNTS}
    assert got == AUTHORS_PEPPERS_COUNTS
    n = int(mdbscan(img, 40).max())  # the spec variant
    assert abs(n - 231) <= 0.05 * 231


def test_errors_and_missing_compiler(monkeypatch):
    img = random_blocks(0, 20, 20)
    with pytest.raises(ValueError, match="d_th"):
        mdbscan(img, 0)
    with pytest.raises(ValueError, match="variant"):
        mdbscan(img, 30, variant="nope")
    with pytest.raises(ValueError, match="channels"):
        mdbscan(np.zeros((5, 5, 2), np.float32), 30)
    monkeypatch.setattr(mdbscan_build, "_lib", None)
    monkeypatch.setattr(mdbscan_build, "find_compiler", lambda: None)
    with pytest.raises(mdbscan_build.MDBSCANBuildError, match="compiler"):
        mdbscan(img, 30, backend="cpp")
    with pytest.warns(UserWarning, match="Python"):
        lab = mdbscan(img, 30)
    np.testing.assert_array_equal(lab, mdbscan(img, 30, backend="python"))


# ------------------------------------------------------------------------------------------------ statistics
def test_segment_stats():
    lab = np.array([[1, 1, 2, 2],
                    [1, 3, 3, 2],
                    [1, 3, 3, 3]])
    st = segment_stats(lab)
    assert list(st.label) == [1, 2, 3] and list(st.n_pixels) == [4, 3, 5]
    row = st.set_index("label").loc[3]
    assert (row.row_min, row.row_max, row.col_min, row.col_max) == (1, 2, 1, 3)
    assert (row.width, row.height, row.side) == (3, 2, 3)
    assert list(st.side) == [3, 2, 3]


def test_fig4_statistics():
    imgs = {"a": stripes()[0], "b": load_image("parrot")[:96, :128]}
    df = fig4_statistics(imgs, thresholds=(30, 40))
    assert len(df) == 4 and list(df.image) == ["a", "a", "b", "b"] and list(df.d_th) == [30, 40, 30, 40]
    for col in ("n_segments", "side_mean", "side_q1", "side_median", "side_q3", "width_mean", "height_mean"):
        assert col in df.columns
    assert df.n_segments.iloc[3] == mdbscan(imgs["b"], 40).max()
    assert (df.side_q1 <= df.side_median).all() and (df.side_median <= df.side_q3).all()


# ------------------------------------------------------------------------------------------------ S-SMoE
def test_kernel_counts_rules():
    areas = np.array([100, 300, 600, 2])
    np.testing.assert_array_equal(kernel_counts(areas, kernels_per_segment=4), [4, 4, 4, 2])  # capped by area
    c = kernel_counts(areas[:3], n_kernels=10)  # 1 each + 7 by area: 0.7, 2.1, 4.2 -> 0 + 1, 2, 4
    np.testing.assert_array_equal(c, [2, 3, 5])
    c = kernel_counts(areas, n_kernels=500)
    assert c.sum() == 500 and (c >= 1).all() and (c <= areas).all()
    with pytest.raises(ValueError, match="segments"):
        kernel_counts(areas, n_kernels=3)


def _small_image():
    return load_image("peppers", color=True)[180:260, 150:250]


@pytest.mark.parametrize("budget", [None, 150])
def test_s_smoe_kernels_lie_in_their_segments(budget):
    img = _small_image()
    labels = mdbscan(img, 40)
    mu, seg = place_kernels(labels, kernels_per_segment=3, n_kernels=budget, seed=7)
    r, c = np.round(mu[:, 1]).astype(int), np.round(mu[:, 0]).astype(int)
    np.testing.assert_array_equal(labels[r, c], seg)
    assert len(np.unique(mu, axis=0)) == len(mu)  # distinct centres
    areas = np.bincount(labels.ravel())[1:]
    per_seg = np.bincount(seg, minlength=labels.max() + 1)[1:]
    if budget is None:
        np.testing.assert_array_equal(per_seg, np.minimum(areas, 3))
    else:
        assert per_seg.sum() == budget and (per_seg >= 1).all()
    model, rec = s_smoe(img, labels, kernels_per_segment=3, n_kernels=budget, seed=7)
    np.testing.assert_array_equal(model.mu, mu)
    assert rec["n_kernels"] == len(mu) == model.n_kernels and rec["n_segments"] == labels.max()


def test_s_smoe_model_and_record():
    img = _small_image()
    model, rec = s_smoe(img, d_th=40, seed=1)
    labels = mdbscan(img, 40)
    K = model.n_kernels
    assert K == int(np.minimum(np.bincount(labels.ravel())[1:], 4).sum())
    assert model.experts.shape == (K, 3) and np.all((model.experts >= 0) & (model.experts <= 1))
    np.testing.assert_array_equal(model.pi, np.ones(K))
    sigma = np.sqrt(img.shape[0] * img.shape[1] / K) / 2
    np.testing.assert_allclose(model.chol, np.tile([1 / sigma, 0, 1 / sigma], (K, 1)), rtol=1e-6)
    for key in ("method", "seconds", "n_kernels", "n_segments", "d_th", "segmentation_seconds"):
        assert key in rec
    assert rec["method"] == "s_smoe" and rec["d_th"] == 40 and rec["n_segments"] == labels.max()
    assert rec["segmentation_seconds"] > 0 and rec["sigma"] == pytest.approx(sigma)
    _, rec2 = s_smoe(img[..., 0], labels, seed=1)
    assert rec2["d_th"] is None and rec2["segmentation_seconds"] is None
    with pytest.raises(ValueError, match="shape"):
        s_smoe(img, labels[:-1])


def test_s_smoe_seed():
    img = _small_image()
    labels = mdbscan(img, 40)
    a, _ = s_smoe(img, labels, seed=3)
    b, _ = s_smoe(img, labels, seed=3)
    c, _ = s_smoe(img, labels, seed=4)
    np.testing.assert_array_equal(a.mu, b.mu)
    np.testing.assert_array_equal(a.experts, b.experts)
    assert a.mu.shape == c.mu.shape and not np.array_equal(a.mu, c.mu)
