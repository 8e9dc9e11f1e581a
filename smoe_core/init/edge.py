"""Edge-aligned initializer ([EDGE], Determann and Fleig, section III "Edge-Aligned Initialization
of SMoE": A. Canny filtering and line segment identification, eqs. 4-5; B. line segment reduction and
clustering, eqs. 6-9; C. kernel placement; D. expert initialization, eqs. 10-12). Deterministic: no random
numbers, and no gradient descent (section III-E, the tile-wise stochastic optimization, is training and is not
part of the initializer).

Pipeline, and every choice the paper leaves open (all exposed as parameters):

A. Edges and line segments.

- Canny (``skimage.feature.canny``) on the luma image in [0, 1] (the paper's "normalized grayscale image"; a
  colour image is converted with ITU-R 601 weights, as :func:`smoe_core.load_image` does). The paper gives no
  values: ``canny_sigma=2.0`` (at 1.0 Barbara's texture gives ~61k edge pixels, at 2.0 ~31k) and skimage's
  default hysteresis thresholds for float images, ``low_threshold=0.1``, ``high_threshold=0.2`` on the Sobel
  gradient magnitude of the smoothed image (``use_quantiles`` switches them to quantiles). skimage's Canny
  never marks the outermost pixel ring.
- Segments (eq. 4): the edge mask is scanned along the four directions (dx, dy) = (1, 0), (0, 1), (1, 1),
  (1, -1), with x the column and y the row (pointing down); a segment is a maximal run of edge pixels
  (x + k dx, y + k dy) that starts at an edge pixel whose predecessor (x - dx, y - dy) is not an edge pixel.
  Runs of n >= 2 pixels are kept (``min_length``); a segment is its centre mu = ((x_1 + x_n)/2, (y_1 + y_n)/2)
  and its orientation, one of the four directions. The paper lists the directions with the angles
  0, 90, 45, -45 degrees; we take each segment's angle as that of its direction vector in the image plane,
  atan2(dy, dx) = 0 (horizontal run), 90 (vertical), 45 and -45 degrees, which is what places the kernels
  orthogonally to the run. Angles only enter through "same orientation" (eq. 6) and the placement normal.

B. Reduction to at most ``max_pts`` segments.

- Importance score (eqs. 6-8): d_sim = mean distance to the two nearest other segments of the same
  orientation, d_dis = mean distance to the two nearest segments of a different orientation (distances between
  centres; the paper writes ||p_i - p_j|| with p = (mu_x, mu_y, theta), and we read it as the spatial
  distance since the orientation already splits the two sets), s = (1 - lambda) d_sim + lambda d_dis,
  ``lam=0.1``. With a single neighbour the mean is over that one; with none, the distance is the image
  diagonal. High scores are isolated segments.
- Budget: ``max_pts`` segments, two kernels each. The paper gives no value and no link to a kernel count:
  ``n_kernels`` sets max_pts = n_kernels // 2 (so the model has 2 * max_pts kernels, one fewer than an odd
  n_kernels), or ``max_pts`` directly; with neither, max_pts = 750 (1500 kernels, Table V's count for three of
  the four test images). If there are no more than max_pts segments, all are kept, without clustering.
- DBSCAN (:mod:`smoe_core.init.dbscan`, ``min_samples=2``: single linkage; the paper gives no value) on all
  segment centres, with eps grown geometrically from ``eps0=0.5`` px (the smallest distance between two
  different segment centres, which lie on the half-pixel lattice) by ``eps_growth=1.05`` until the number of
  clusters is at most ``cluster_fraction * max_pts`` (0.8); eps0 itself when that already holds there. We
  read the paper's "until approximately 0.8 x max_pts segments are clustered" as "until the clustering leaves
  ~0.8 max_pts clustered segments", i.e. cluster representatives: only then is the final set ~max_pts
  segments as the paper says (counting the member segments instead would leave at most 0.6 max_pts). Each
  cluster becomes one segment at the mean centre of its members and their modal orientation (eq. 9; ties go
  to the lowest orientation index, in the order of the four directions above).
- The unclustered segments (DBSCAN noise) are ranked by score and the top max_pts - n_clusters (~0.2
  max_pts, the paper's K) are kept, so the final set has exactly max_pts segments whenever there are enough
  noise segments (else all noise segments are kept and the set is smaller; the record says so).

C. Kernel placement.

- Two kernels per kept segment, at centre +- (``delta_mu`` / 2) n, n the unit normal of the segment's
  direction: "a pair ... positioned orthogonally to the segment orientation, separated by a fixed distance
  delta_mu" (the two kernels are delta_mu apart). ``delta_mu`` is not given: default 3 px, a compromise
  measured both ways: with the bandwidth tied to delta_mu (below) a pair's gating goes from one expert to
  the other over ~delta_mu pixels, so sharp edges (synthetic steps) favour small values, while the four test
  images' mean initial PSNR rises slowly with it (17.58, 17.84, 18.03, 18.32, 18.38 dB for delta_mu = 2, 3, 4,
  6, 8) because a wider kernel samples the flat side of a blurred edge and smooths the regions without
  kernels. Centres are clipped into the image [0, W-1] x [0, H-1].
- Bandwidth: the paper's steering matrix Sigma = I / (2 delta_mu^2) in K = exp(-(x - mu)^T Sigma (x - mu))
  (eq. 2) is, in our K = exp(-1/2 (x - mu)^T P (x - mu)), the precision P = I / delta_mu^2, an isotropic
  Gaussian of standard deviation delta_mu. ``bandwidth`` overrides that standard deviation. pi_j = 1.
- Flat regions: the paper adds no other kernels (no background grid; Fig. 2 (d) shows only the pairs). With
  normalized gating and equal isotropic kernels each pixel is governed by its nearest kernels, so a flat
  region takes the expert of the nearest edge-side kernel, which is the value sampled next to its boundary.

D. Experts (eqs. 10-12), no gradient descent.

- m^(0) = L(mu): the image sampled at each kernel centre by bilinear interpolation (centres are not on the
  pixel grid); every channel of a colour image.
- Iteration: L_hat^(i)(mu) is the SMoE with experts m^(i) evaluated at the kernel centres (exact normalized
  gating over all kernels within 6 bandwidths, beyond which a weight is below e^-18), and
  m^(i+1) = m^(i) + eta (L(mu) - L_hat^(i)(mu)), ``eta=0.1``. Eq. 12 as printed has the opposite sign,
  m + eta (L_hat - L), which pushes an expert away from the image value and diverges; we use the convergent
  sign (``paper_sign=True`` runs the printed one). This is Richardson's iteration for G m = L(mu), G the
  centre-to-centre gating matrix.
- Stopping (the paper: "a fixed number of iterations or until convergence in mean squared error"): at most
  ``n_iter=30`` iterations, stopping earlier when the image MSE (render with :func:`smoe_core.render` against
  the image) improves by less than a relative ``tol`` (1e-4), or rises; ``tol=None`` runs all ``n_iter``.
  The PSNR after every iteration is recorded (the paper's Fig. 3), and the experts returned are those of the
  iteration with the best PSNR (``best_iteration``), so the iteration never makes the initialization worse
  than m^(0). Experts are clipped to [0, 1] after every step (the paper's m in [0, 1]^d).
- What the iteration does (measured, not in the paper): it makes the model interpolate the image at the
  kernel centres, i.e. it deconvolves the pairs' overlap and pushes the two experts of a pair apart. Where the
  clip stops the overshoot (a blurred black-to-white edge) the image PSNR rises monotonically; where it
  does not (a 0.2/0.8 step, and the four test images after the first few iterations) the far field of each
  kernel overshoots and the PSNR falls, so the best iteration is early.

Measured behaviour worth knowing (consequences of the paper's recipe, kept as is):

- Single-linkage DBSCAN chains the closely spaced segments of a contour (successive centres are 0.5-1 px
  apart), so on natural images a cluster is often a whole contour piece represented by its mean centre,
  and on a lone straight edge the whole edge may collapse into a few clusters (fewer kernels than asked:
  a 64 x 64 step at 30 degrees gives 14 kernels for a budget of 40).
- Canny marks a 45-degree edge as a 4-connected staircase, whose 2-pixel horizontal and vertical runs
  outnumber the diagonal runs; the modal orientation of a cluster is then horizontal or vertical and its pair
  is placed 45 degrees off the normal (still on opposite sides of the edge). Edges near 45 degrees initialize
  worse than grid at equal kernel counts; edges near 0-30 and 60-90 degrees better.
- The paper adds no kernels away from edges, so on the four test images the initial PSNR (~17.8 dB) is below
  grid's (~21.7 dB) at the Table V budgets: large smooth regions take the value of the nearest edge kernel.

Record: method, seconds, n_kernels, kernels_requested, max_pts, n_edge_pixels, n_segments (line segments
from the scan), n_clustered (segments in clusters), n_clusters, n_noise, n_kept (segments kept, clusters +
noise), eps, delta_mu, bandwidth, canny_sigma, expert_iterations, best_iteration, psnr_per_iteration (index 0
is m^(0)) and centre_mse_per_iteration.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.sparse import csr_matrix
from scipy.spatial import cKDTree

from ..io import check_image
from ..limits import check_count, check_kernels
from ..model import SMoE
from .dbscan import NeighbourPairs, dbscan
from .result import InitResult

#: Scan directions (dx, dy), x the column and y the row; orientation index o is the position in this tuple.
DIRECTIONS = ((1, 0), (0, 1), (1, 1), (1, -1))
#: Angles (degrees) of the directions in the image plane (y pointing down).
ANGLES = (0.0, 90.0, 45.0, -45.0)
DEFAULT_MAX_PTS = 750


def _luma(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return img
    if img.shape[2] >= 3:
        return (0.299 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2]).astype(np.float32)
    return img[..., 0]


def line_segments(edges: np.ndarray, min_length: int = 2):
    """Segments of a boolean edge mask by scanning in the four DIRECTIONS (eq. 4).

    Returns ``(centres (N, 2) float64 (x, y), orientation (N,) int, length (N,) int)``, ordered by orientation,
    then by scan line, then along the line.
    """
    E = np.asarray(edges, bool)
    ys, xs = np.nonzero(E)
    cs, os_, ns = [], [], []
    for o, (dx, dy) in enumerate(DIRECTIONS):
        if (dx, dy) == (1, 0):
            line, idx = ys, xs
        elif (dx, dy) == (0, 1):
            line, idx = xs, ys
        elif (dx, dy) == (1, 1):
            line, idx = xs - ys, xs
        else:
            line, idx = xs + ys, xs
        order = np.lexsort((idx, line))
        ln, t = line[order], idx[order]
        brk = np.r_[True, (ln[1:] != ln[:-1]) | (t[1:] != t[:-1] + 1)] if len(ln) else np.zeros(0, bool)
        starts = np.flatnonzero(brk)
        ends = np.r_[starts[1:], len(ln)] - 1
        n = ends - starts + 1
        keep = n >= min_length
        s, e = order[starts[keep]], order[ends[keep]]
        cs.append(np.stack([0.5 * (xs[s] + xs[e]), 0.5 * (ys[s] + ys[e])], 1).astype(np.float64))
        os_.append(np.full(int(keep.sum()), o, np.int64))
        ns.append(n[keep].astype(np.int64))
    return np.concatenate(cs), np.concatenate(os_), np.concatenate(ns)


def importance_scores(centres: np.ndarray, orientation: np.ndarray, lam: float = 0.1, *, missing: float = None):
    """Eq. 8: s = (1 - lam) d_sim + lam d_dis (eqs. 6-7). Returns ``(s, d_sim, d_dis)``.

    ``missing`` is the distance used when a set has no member (default: the extent's diagonal).
    """
    P = np.asarray(centres, np.float64)
    ori = np.asarray(orientation)
    n = len(P)
    if missing is None:
        missing = float(np.hypot(*(np.ptp(P, 0) + 1))) if n else 1.0
    d_sim = np.full(n, missing)
    d_dis = np.full(n, missing)
    groups = [o for o in np.unique(ori)]
    trees = {o: cKDTree(P[ori == o]) for o in groups}

    def mean2(d):
        d = np.where(np.isfinite(d), d, np.nan)
        cnt = np.isfinite(d).sum(1)
        out = np.where(cnt > 0, np.nansum(np.nan_to_num(d, nan=0.0), 1) / np.maximum(cnt, 1), missing)
        return out

    for o in groups:
        m = ori == o
        q = P[m]
        d, _ = trees[o].query(q, k=3)
        d = d.reshape(len(q), -1)
        d_sim[m] = mean2(d[:, 1:3])  # the nearest is the segment itself (centres of one orientation differ)
        others = [trees[p].query(q, k=2)[0].reshape(len(q), -1) for p in groups if p != o]
        if others:
            dd = np.sort(np.concatenate(others, 1), 1)[:, :2]
            d_dis[m] = mean2(dd)
    return (1.0 - lam) * d_sim + lam * d_dis, d_sim, d_dis


def reduce_segments(centres, orientation, scores, max_pts: int, *, cluster_fraction: float = 0.8,
                    min_samples: int = 2, eps0: float = 0.5, eps_growth: float = 1.05, max_eps: float | None = None):
    """Section III-B: DBSCAN with growing eps, cluster representatives (eq. 9) plus the top-scoring noise.

    Returns ``(centres (M, 2), orientation (M,), info)`` with M <= max_pts; info holds eps, n_clusters,
    n_clustered, n_noise and n_noise_kept.
    """
    P = np.asarray(centres, np.float64)
    ori = np.asarray(orientation, np.int64)
    sc = np.asarray(scores, np.float64)
    N = len(P)
    max_pts = int(max_pts)
    if max_pts < 1:
        raise ValueError(f"max_pts must be >= 1, got {max_pts}")
    if N <= max_pts:
        return P.copy(), ori.copy(), dict(eps=0.0, n_clusters=0, n_clustered=0, n_noise=N, n_noise_kept=N)
    if not eps_growth > 1:
        raise ValueError(f"eps_growth must be > 1, got {eps_growth}")
    target = max(0, int(round(cluster_fraction * max_pts)))
    if max_eps is None:
        max_eps = float(np.hypot(*(np.ptp(P, 0) + 1)))
    tree = cKDTree(P)
    eps = float(eps0)
    radius = min(max_eps, max(4.0 * eps, 8.0))
    pairs = NeighbourPairs(P, radius, tree)
    while True:
        if eps > pairs.max_eps:
            radius = min(max_eps, max(eps, 2.0 * pairs.max_eps))
            pairs = NeighbourPairs(P, radius, tree)
        labels = dbscan(P, eps, min_samples, pairs=pairs)
        n_clusters = int(labels.max()) + 1 if N else 0
        if n_clusters <= target or eps >= max_eps:
            break
        eps = min(eps * eps_growth, max_eps)
    clustered = labels >= 0
    if n_clusters:
        cnt = np.bincount(labels[clustered], minlength=n_clusters)
        cx = np.bincount(labels[clustered], weights=P[clustered, 0], minlength=n_clusters) / cnt
        cy = np.bincount(labels[clustered], weights=P[clustered, 1], minlength=n_clusters) / cnt
        hist = np.zeros((n_clusters, len(DIRECTIONS)), np.int64)
        np.add.at(hist, (labels[clustered], ori[clustered]), 1)
        c_ori = hist.argmax(1)  # mode; ties to the lowest orientation index
        c_pts = np.stack([cx, cy], 1)
    else:
        c_pts, c_ori = np.zeros((0, 2)), np.zeros(0, np.int64)
    noise = np.flatnonzero(~clustered)
    n_take = min(len(noise), max(0, max_pts - n_clusters))
    top = noise[np.lexsort((noise, -sc[noise]))[:n_take]]  # by score, descending; ties by index
    out_p = np.concatenate([c_pts, P[top]])
    out_o = np.concatenate([c_ori, ori[top]])
    info = dict(eps=float(eps), n_clusters=n_clusters, n_clustered=int(clustered.sum()), n_noise=int(len(noise)),
                n_noise_kept=int(n_take))
    return out_p, out_o, info


def place_pairs(centres, orientation, delta_mu: float) -> np.ndarray:
    """Section III-C: (2M, 2) kernel centres, the pair of segment i at rows 2i and 2i + 1 (on the normal's
    negative, then positive side), delta_mu apart across the segment."""
    P = np.asarray(centres, np.float64)
    d = np.asarray(DIRECTIONS, np.float64)[np.asarray(orientation, np.int64)]
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    normal = np.stack([-d[:, 1], d[:, 0]], 1)
    half = 0.5 * float(delta_mu) * normal
    return np.stack([P - half, P + half], 1).reshape(-1, 2)


def gating_at_centres(mu: np.ndarray, sigma: float, radius: float = 6.0) -> csr_matrix:
    """(K, K) normalized gates of equal isotropic kernels (pi = 1, std sigma) at the kernel centres."""
    K = len(mu)
    tree = cKDTree(mu)
    pairs = tree.query_pairs(radius * sigma, output_type="ndarray")
    d2 = ((mu[pairs[:, 0]] - mu[pairs[:, 1]]) ** 2).sum(1)
    w = np.exp(-0.5 * d2 / sigma**2)
    rows = np.concatenate([np.arange(K), pairs[:, 0], pairs[:, 1]])
    cols = np.concatenate([np.arange(K), pairs[:, 1], pairs[:, 0]])
    vals = np.concatenate([np.ones(K), w, w])
    G = csr_matrix((vals, (rows, cols)), shape=(K, K))
    s = np.asarray(G.sum(1)).ravel()
    return csr_matrix(G.multiply(1.0 / s[:, None]))


def sample_bilinear(img3: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """(K, C) image values at points mu (x, y) by bilinear interpolation (edge values outside)."""
    coords = np.stack([mu[:, 1], mu[:, 0]])
    return np.stack([ndimage.map_coordinates(img3[..., c].astype(np.float64), coords, order=1, mode="nearest")
                     for c in range(img3.shape[2])], 1)


def resolve_max_pts(n_kernels: int | None, max_pts: int | None) -> int:
    """The number of segments kept: ``n_kernels // 2`` (one kernel pair each), or ``max_pts``, or
    :data:`DEFAULT_MAX_PTS` when neither is given."""
    if n_kernels is not None and max_pts is not None:
        raise ValueError("give n_kernels or max_pts, not both")
    if n_kernels is not None:
        if int(n_kernels) < 2:
            raise ValueError(f"n_kernels must be >= 2 (one pair), got {n_kernels}")
        max_pts = int(n_kernels) // 2
    elif max_pts is None:
        max_pts = DEFAULT_MAX_PTS
    max_pts = int(max_pts)
    if max_pts < 1:
        raise ValueError(f"max_pts must be >= 1, got {max_pts}")
    return max_pts


@dataclass
class EdgeLayout:
    """Steps A-C of the initializer (the stages of [EDGE]'s Fig. 2)."""

    edges: np.ndarray  # (H, W) bool: the Canny mask (step A)
    centres: np.ndarray  # (n, 2) every line segment's centre (x, y) (step A)
    orientation: np.ndarray  # (n,) index into ANGLES
    lengths: np.ndarray  # (n,) pixels per segment
    scores: np.ndarray  # (n,) importance score, eq. 8 (step B)
    kept_centres: np.ndarray  # (m, 2) the segments left by the reduction (step B)
    kept_orientation: np.ndarray  # (m,)
    reduction: dict  # eps, n_clusters, n_clustered, n_noise, ... of :func:`reduce_segments`
    mu: np.ndarray  # (2m, 2) kernel centres (x, y), clipped to the image (step C)


def edge_layout(img: np.ndarray, max_pts: int, *, canny_sigma: float, low_threshold: float, high_threshold: float,
                use_quantiles: bool, min_length: int, lam: float, cluster_fraction: float, min_samples: int,
                eps0: float, eps_growth: float, delta_mu: float) -> EdgeLayout:
    """Steps A (Canny edges, line segments), B (importance scores, reduction to ``max_pts`` segments) and C
    (kernel pairs) on a checked float image; :func:`edge` and the Fig. 2 study both use it."""
    from skimage.feature import canny

    H, W = img.shape[:2]
    edges = canny(_luma(img).astype(np.float64), sigma=canny_sigma, low_threshold=low_threshold,
                  high_threshold=high_threshold, use_quantiles=use_quantiles)
    seg_c, seg_o, seg_n = line_segments(edges, min_length=min_length)
    if len(seg_c) == 0:
        raise ValueError("no line segments: the Canny edge mask is (nearly) empty; lower the thresholds or "
                         "canny_sigma, or use another initializer for this image")
    scores, _, _ = importance_scores(seg_c, seg_o, lam, missing=float(math.hypot(H, W)))
    kept_c, kept_o, info = reduce_segments(seg_c, seg_o, scores, max_pts, cluster_fraction=cluster_fraction,
                                           min_samples=min_samples, eps0=eps0, eps_growth=eps_growth,
                                           max_eps=float(math.hypot(H, W)))
    mu = place_pairs(kept_c, kept_o, delta_mu)
    mu[:, 0] = np.clip(mu[:, 0], 0, W - 1)
    mu[:, 1] = np.clip(mu[:, 1], 0, H - 1)
    return EdgeLayout(edges, seg_c, seg_o, seg_n, scores, kept_c, kept_o, info, mu)


def edge(image, n_kernels: int | None = None, *, max_pts: int | None = None, canny_sigma: float = 2.0,
         low_threshold: float = 0.1, high_threshold: float = 0.2, use_quantiles: bool = False,
         min_length: int = 2, lam: float = 0.1, cluster_fraction: float = 0.8, min_samples: int = 2,
         eps0: float = 0.5, eps_growth: float = 1.05, delta_mu: float = 3.0, bandwidth: float | None = None,
         eta: float = 0.1, n_iter: int = 30, tol: float | None = 1e-4, paper_sign: bool = False,
         color_space: str | None = None, rbf: bool = False, linear: bool = False) -> InitResult:
    """Edge-aligned initialization (see the module docstring for the steps and every default).

    ``image``: float image in [0, 1], (H, W) or (H, W, C). ``n_kernels``: kernel budget (max_pts =
    n_kernels // 2 segment pairs); or give ``max_pts``; with neither, max_pts = 750. Returns
    ``(model, record)``.
    """
    from ..metrics import psnr_from_mse
    from ..render import render

    t0 = time.perf_counter()
    img = check_image(image, bounded=True)
    H, W = img.shape[:2]
    img3 = img if img.ndim == 3 else img[..., None]
    C = img3.shape[2]
    if n_kernels is not None:
        check_kernels(n_kernels, (H, W))
    elif max_pts is not None:
        check_kernels(2 * check_count(max_pts, "max_pts", minimum=1), (H, W), "2 * max_pts")
    max_pts = resolve_max_pts(n_kernels, max_pts)
    if not delta_mu > 0:
        raise ValueError(f"delta_mu must be > 0, got {delta_mu}")
    sigma = float(delta_mu if bandwidth is None else bandwidth)
    if not sigma > 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")

    lay = edge_layout(img, max_pts, canny_sigma=canny_sigma, low_threshold=low_threshold,
                      high_threshold=high_threshold, use_quantiles=use_quantiles, min_length=min_length, lam=lam,
                      cluster_fraction=cluster_fraction, min_samples=min_samples, eps0=eps0,
                      eps_growth=eps_growth, delta_mu=delta_mu)
    mu, info = lay.mu, lay.reduction
    K = len(mu)
    chol = np.tile(np.array([1.0 / sigma, 0.0, 1.0 / sigma], np.float32), (K, 1))
    pi = np.ones(K, np.float32)

    # D. experts: eqs. 10-12
    target = sample_bilinear(img3, mu)  # L(mu), (K, C)
    G = gating_at_centres(mu, sigma)
    m = target.copy()
    model = SMoE(mu.astype(np.float32), chol, pi, m.astype(np.float32), rbf=rbf, image_shape=(H, W),
                 color_space=color_space)

    def image_mse(experts):
        out = render(model.replace(experts=experts.astype(np.float32)), (H, W))
        return float(np.mean((out.astype(np.float64) - img.astype(np.float64)) ** 2))

    step = eta if paper_sign else -eta
    centre_mse = [float(np.mean((G @ m - target) ** 2))]
    mses = [image_mse(m)]
    best_m, best_mse, best_it = m, mses[0], 0
    for it in range(1, int(n_iter) + 1):
        m = np.clip(m + step * (G @ m - target), 0.0, 1.0)  # eq. 12 (sign: see the module docstring)
        centre_mse.append(float(np.mean((G @ m - target) ** 2)))
        mses.append(image_mse(m))
        if mses[-1] < best_mse:
            best_m, best_mse, best_it = m, mses[-1], it
        if tol is not None and mses[-2] - mses[-1] < tol * mses[-2]:
            break
    m = best_m

    slopes = np.zeros((K, C, 2), np.float32) if linear else None
    model = model.replace(experts=m.astype(np.float32), slopes=slopes)
    record = dict(method="edge", seconds=time.perf_counter() - t0, n_kernels=K,
                  kernels_requested=None if n_kernels is None else int(n_kernels), max_pts=max_pts,
                  n_edge_pixels=int(lay.edges.sum()), n_segments=int(len(lay.centres)),
                  n_clustered=info["n_clustered"], n_clusters=info["n_clusters"], n_noise=info["n_noise"],
                  n_kept=int(len(lay.kept_centres)),
                  eps=info["eps"], delta_mu=float(delta_mu), bandwidth=sigma, canny_sigma=float(canny_sigma),
                  expert_iterations=len(mses) - 1, best_iteration=best_it,
                  psnr_per_iteration=[psnr_from_mse(v) for v in mses],
                  centre_mse_per_iteration=centre_mse)
    return InitResult(model, record)
