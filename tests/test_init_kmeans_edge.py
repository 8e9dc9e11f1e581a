"""Block K-Means and edge-aligned initializers (segmentation paper III-B / Table II; edge-aligned paper III),
against known answers: hand-computed segments, scores, DBSCAN labels and allocations; blob centres; kernel
pairs straddling a synthetic edge; determinism; counts; kernels inside the image."""
import numpy as np
import pytest
from scipy import ndimage

from smoe_core import load_image, metrics, render
from smoe_core.init import grid
from smoe_core.init.dbscan import dbscan
from smoe_core.init.edge import edge, importance_scores, line_segments, place_pairs
from smoe_core.init.kmeans import allocate, kmeans


# ---------------------------------------------------------------------------------------------- fixtures
def step_edge(H=64, W=64, angle=20.0, lo=0.0, hi=1.0, blur=1.0):
    """A straight step edge through the image centre at ``angle`` degrees (x right, y down), anti-aliased and
    blurred with a Gaussian of ``blur`` px (an optics-blurred black-to-white edge). Returns the image, the unit
    normal of the edge line and a point on it."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    t = np.deg2rad(angle)
    normal = np.array([-np.sin(t), np.cos(t)])
    centre = np.array([(W - 1) / 2, (H - 1) / 2])
    d = (xx - centre[0]) * normal[0] + (yy - centre[1]) * normal[1]
    v = np.clip(d + 0.5, 0, 1)
    if blur:
        v = ndimage.gaussian_filter(v, blur, mode="nearest")
    return (lo + (hi - lo) * v).astype(np.float32), normal, centre


BLOBS = [((20.0, 18.0), 0.25), ((70.0, 22.0), 0.5), ((24.0, 70.0), 0.75), ((72.0, 74.0), 1.0)]


def blob_image(H=96, W=96, r=7):
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.zeros((H, W), np.float32)
    for (cx, cy), v in BLOBS:
        img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = v
    return img


def inside(model, shape):
    H, W = shape
    mu = np.asarray(model.mu)
    return bool((mu[:, 0] >= 0).all() and (mu[:, 0] <= W - 1).all() and (mu[:, 1] >= 0).all()
                and (mu[:, 1] <= H - 1).all())


# ---------------------------------------------------------------------------------------------- k-means
def test_allocate_known_answer():
    # base 1 each, then 3 more in proportion 0 : 1 : 3 -> shares 0, 0.75, 2.25 -> floors 0, 0, 2, remainder to 0.75
    np.testing.assert_array_equal(allocate(np.array([0.0, 1.0, 3.0]), np.array([99, 99, 99]), 6), [1, 2, 3])
    # capacity caps a block and the excess goes elsewhere
    np.testing.assert_array_equal(allocate(np.array([0.0, 0.0, 10.0]), np.array([5, 5, 2]), 9), [4, 3, 2])
    # fewer kernels than blocks: the heaviest blocks get one each
    np.testing.assert_array_equal(allocate(np.array([0.1, 0.9, 0.5, 0.2]), np.array([9] * 4), 2), [0, 1, 1, 0])


@pytest.mark.parametrize("n", [1, 7, 100, 257])
@pytest.mark.parametrize("allocation", ["equal", "activity"])
def test_kmeans_exact_count_inside_and_record(n, allocation):
    img = load_image("peppers")[::4, ::4].copy()  # 128 x 128, 16 blocks of 32
    model, rec = kmeans(img, n, allocation=allocation)
    assert model.n_kernels == n == rec["n_kernels"]
    assert inside(model, img.shape)
    assert rec["method"] == "kmeans" and rec["seconds"] > 0
    np.testing.assert_array_equal(model.pi, np.ones(n))
    chol = np.asarray(model.chol)  # radial, one bandwidth: A = diag(1/sigma) for every kernel
    np.testing.assert_allclose(chol, np.tile([1 / rec["sigma"], 0, 1 / rec["sigma"]], (n, 1)), rtol=1e-6)
    assert rec["sigma"] == pytest.approx(np.sqrt(128 * 128 / n) / 2)


def test_kmeans_deterministic_under_seed():
    img = load_image("parrot")[::4, ::4].copy()
    a, _ = kmeans(img, 150, seed=3)
    b, _ = kmeans(img, 150, seed=3)
    c, _ = kmeans(img, 150, seed=4)
    np.testing.assert_array_equal(a.mu, b.mu)
    np.testing.assert_array_equal(a.experts, b.experts)
    assert not np.array_equal(a.mu, c.mu)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_recovers_blob_centres_one_block(seed):
    img = blob_image()
    # one block, 5 clusters (4 blobs + background). Intensity must dominate the features so strongly that
    # merging two blob levels costs more than splitting the large background spatially (which it would at
    # the default scale): then the optimum, and k-means++ seeding, are the five intensity classes.
    model, _ = kmeans(img, 5, block=96, intensity_scale=1e4, seed=seed)
    mu = np.asarray(model.mu)
    for (cx, cy), _v in BLOBS:
        assert np.hypot(mu[:, 0] - cx, mu[:, 1] - cy).min() < 1.0


def test_kmeans_recovers_blob_centres_per_block():
    img = np.zeros((64, 64), np.float32)  # one blob in each 32 x 32 block, off the block centre
    centres = [(10.0, 12.0), (50.0, 9.0), (12.0, 52.0), (53.0, 49.0)]
    yy, xx = np.mgrid[0:64, 0:64]
    for cx, cy in centres:
        img[(xx - cx) ** 2 + (yy - cy) ** 2 <= 16] = 0.8
    model, rec = kmeans(img, 8, block=32, intensity_scale=1e3)  # 2 per block: blob + background
    assert rec["blocks"] == (2, 2) and rec["kernels_per_block"] == (2, 2)
    mu = np.asarray(model.mu)
    for cx, cy in centres:
        assert np.hypot(mu[:, 0] - cx, mu[:, 1] - cy).min() < 1.0


def test_kmeans_rejects_bad_budget():
    with pytest.raises(ValueError):
        kmeans(np.zeros((4, 4), np.float32), 17)
    with pytest.raises(ValueError):
        kmeans(np.zeros((4, 4), np.float32), 0)


# ---------------------------------------------------------------------------------------------- edge: steps
def test_line_segments_known_answer():
    E = np.zeros((8, 10), bool)
    E[2, 1:6] = True  # horizontal run of 5: centre (3, 2)
    E[4:7, 8] = True  # vertical run of 3: centre (8, 5)
    E[0, 9] = True  # isolated pixel: no segment in any direction
    c, o, n = line_segments(E)
    got = sorted(zip(o.tolist(), c[:, 0].tolist(), c[:, 1].tolist(), n.tolist()))
    assert got == [(0, 3.0, 2.0, 5), (1, 8.0, 5.0, 3)]
    D = np.eye(4, dtype=bool)  # diagonal (1, 1) run of 4, centre (1.5, 1.5); anti-diagonal of the flip
    c, o, n = line_segments(D)
    assert o.tolist() == [2] and c.tolist() == [[1.5, 1.5]] and n.tolist() == [4]
    c, o, n = line_segments(D[::-1])
    assert o.tolist() == [3] and c.tolist() == [[1.5, 1.5]] and n.tolist() == [4]


def test_importance_scores_known_answer():
    # horizontal segments at x = 0, 2, 6 on one row; one vertical segment at (0, 3)
    P = np.array([[0.0, 0.0], [2.0, 0.0], [6.0, 0.0], [0.0, 3.0]])
    o = np.array([0, 0, 0, 1])
    s, d_sim, d_dis = importance_scores(P, o, lam=0.1, missing=100.0)
    np.testing.assert_allclose(d_sim, [(2 + 6) / 2, (2 + 4) / 2, (4 + 6) / 2, 100.0])
    np.testing.assert_allclose(d_dis, [3.0, np.hypot(2, 3), np.hypot(6, 3), (3 + np.hypot(2, 3)) / 2])
    np.testing.assert_allclose(s, 0.9 * d_sim + 0.1 * d_dis)


def test_dbscan_known_answer():
    pts = np.array([[0, 0], [1, 0], [2, 0], [10, 0], [11, 0], [30, 0], [3.5, 0]], float)
    # min_samples 2 (single linkage at eps 1.2): {0,1,2}, {3,4}, noise 5 and 6 (1.5 from point 2)
    np.testing.assert_array_equal(dbscan(pts, 1.2, 2), [0, 0, 0, 1, 1, -1, -1])
    # eps 1.5: point 6 joins the first cluster
    np.testing.assert_array_equal(dbscan(pts, 1.5, 2), [0, 0, 0, 1, 1, -1, 0])
    # min_samples 3: only point 1 is core (3 points within 1); 0 and 2 are its border points; 3, 4 are noise
    np.testing.assert_array_equal(dbscan(pts, 1.0, 3), [0, 0, 0, -1, -1, -1, -1])


def test_place_pairs_orthogonal():
    mu = place_pairs(np.array([[10.0, 10.0], [5.0, 5.0]]), np.array([0, 2]), 4.0)
    np.testing.assert_allclose(mu[:2], [[10, 8], [10, 12]])  # horizontal segment: pair above/below
    h = 2 / np.sqrt(2)  # 45 degree segment (1, 1): normal (-1, 1)/sqrt 2
    np.testing.assert_allclose(mu[2:], [[5 + h, 5 - h], [5 - h, 5 + h]])


# ---------------------------------------------------------------------------------------------- edge: synthetic edge
@pytest.fixture(scope="module")
def step_result():
    img, normal, centre = step_edge()
    return img, normal, centre, edge(img, 24, tol=None, n_iter=20)


def test_edge_pairs_straddle_the_edge(step_result):
    img, normal, centre, (model, rec) = step_result
    assert model.n_kernels == 2 * rec["n_kept"] == rec["n_kernels"] and rec["n_kept"] <= 12
    assert inside(model, img.shape)
    mu = np.asarray(model.mu, np.float64).reshape(-1, 2, 2)  # pairs: rows 2i, 2i + 1
    side = (mu - centre) @ normal  # signed distance of each kernel to the edge line
    assert (side[:, 0] * side[:, 1] < 0).all()  # the two kernels of a pair on opposite sides
    assert np.abs(side.mean(1)).max() < 1.0  # the pair's midpoint near the line
    assert np.abs(np.diff(side, axis=1)).min() > 1.0  # and really across it (delta_mu = 3 apart, any angle)
    np.testing.assert_allclose(np.asarray(model.chol), np.tile([1 / 3, 0, 1 / 3], (model.n_kernels, 1)), rtol=1e-6)


def test_edge_beats_grid_on_a_step(step_result):
    img, _, _, (model, rec) = step_result
    g, grec = grid(img, rec["n_kernels"])
    assert grec["n_kernels"] <= rec["n_kernels"]
    ours = metrics.psnr(render(model), img)
    assert ours == pytest.approx(max(rec["psnr_per_iteration"]), abs=1e-6)
    assert ours > metrics.psnr(render(g), img) + 1.0


def test_edge_expert_iteration_improves_on_the_step(step_result):
    _, _, _, (_, rec) = step_result
    ps = np.array(rec["psnr_per_iteration"])
    assert rec["expert_iterations"] == 20 and len(ps) == 21
    assert (np.diff(ps) >= -1e-6).all()  # monotone
    assert ps[-1] > ps[0] + 1.0
    c = np.array(rec["centre_mse_per_iteration"])
    assert c[-1] < c[0]


def test_edge_printed_sign_of_eq12_does_not_converge():
    img, _, _ = step_edge()
    _, rec = edge(img, 24, tol=None, n_iter=10, paper_sign=True)
    c = np.array(rec["centre_mse_per_iteration"])
    assert c[-1] > c[0]  # m + eta (L_hat - L) moves away from the samples


def test_edge_deterministic_and_record(step_result):
    img, _, _, (model, rec) = step_result
    again, rec2 = edge(img, 24, tol=None, n_iter=20)
    np.testing.assert_array_equal(model.mu, again.mu)
    np.testing.assert_array_equal(model.experts, again.experts)
    for key in ("method", "seconds", "n_kernels", "n_edge_pixels", "n_segments", "n_kept", "expert_iterations",
                "psnr_per_iteration"):
        assert key in rec
    assert rec["method"] == "edge" and rec["n_edge_pixels"] > 50 and rec["n_segments"] >= rec["n_kept"]


def test_edge_exact_count_when_segments_abound():
    img = load_image("peppers")[100:228, 100:228].copy()
    for n in (60, 100, 101):
        model, rec = edge(img, n, n_iter=3)
        assert rec["n_segments"] > n
        assert model.n_kernels == 2 * (n // 2) == rec["n_kernels"]
        assert inside(model, img.shape)
        assert rec["n_kept"] == rec["n_clusters"] + min(rec["n_noise"], n // 2 - rec["n_clusters"])


def test_edge_colour_and_errors():
    img = load_image("parrot", color=True)[::8, ::8].copy()
    model, rec = edge(img, 40, n_iter=2)
    assert model.n_channels == 3 and model.n_kernels == 2 * rec["n_kept"] <= 40
    with pytest.raises(ValueError, match="no line segments"):
        edge(np.full((32, 32), 0.5, np.float32), 10)
    with pytest.raises(ValueError):
        edge(img, 10, max_pts=5)
