"""DBSCAN (Ester et al. 1996) on 2-D points, in numpy/scipy (scikit-learn is not a dependency).

Used by the edge-aligned initializer ([EDGE], section III-B). Definitions as in scikit-learn:
a point is a core point when at least ``min_samples`` points (itself included) lie within distance ``eps``
(inclusive); clusters are the connected components of core points linked by distances <= eps; a non-core point
within eps of a core point is a border point and joins the cluster of its nearest core point (scikit-learn
takes the first one found; nearest is deterministic and order-free); every other point is noise (label -1).
Cluster labels are numbered 0.. in the order of each cluster's lowest point index.

With ``min_samples=2`` DBSCAN is single-linkage clustering cut at ``eps``: every point with a neighbour is a
core point, clusters are the connected components of the eps-graph with two or more points.
"""
from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree


class NeighbourPairs:
    """All pairs of points within ``max_eps`` with their distances, sorted by distance, so that DBSCAN can be
    rerun at any eps <= max_eps without new tree queries (the edge initializer grows eps step by step)."""

    def __init__(self, points: np.ndarray, max_eps: float, tree: cKDTree | None = None):
        self.points = np.asarray(points, np.float64)
        self.n = len(self.points)
        self.max_eps = float(max_eps)
        tree = tree if tree is not None else cKDTree(self.points)
        pairs = tree.query_pairs(self.max_eps, output_type="ndarray") if self.n > 1 else np.zeros((0, 2), np.int64)
        d = np.linalg.norm(self.points[pairs[:, 0]] - self.points[pairs[:, 1]], axis=1) if len(pairs) else np.zeros(0)
        order = np.argsort(d, kind="stable")
        self.i, self.j, self.d = pairs[order, 0].astype(np.int64), pairs[order, 1].astype(np.int64), d[order]

    def upto(self, eps: float):
        if eps > self.max_eps + 1e-12:
            raise ValueError(f"eps {eps} exceeds the precomputed radius {self.max_eps}")
        m = int(np.searchsorted(self.d, eps, side="right"))
        return self.i[:m], self.j[:m], self.d[:m]


def dbscan(points, eps: float, min_samples: int = 2, *, pairs: NeighbourPairs | None = None) -> np.ndarray:
    """Labels (n,) int64: cluster index >= 0, or -1 for noise (see the module docstring)."""
    pts = np.asarray(points, np.float64)
    n = len(pts)
    if n == 0:
        return np.zeros(0, np.int64)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if min_samples < 1:
        raise ValueError(f"min_samples must be >= 1, got {min_samples}")
    if pairs is None:
        pairs = NeighbourPairs(pts, eps)
    i, j, d = pairs.upto(eps)
    count = 1 + np.bincount(i, minlength=n) + np.bincount(j, minlength=n)
    core = count >= min_samples
    cc = core[i] & core[j]
    g = coo_matrix((np.ones(int(cc.sum())), (i[cc], j[cc])), shape=(n, n))
    _, comp = connected_components(g, directed=False)
    labels = np.full(n, -1, np.int64)
    labels[core] = comp[core]
    # border points: the cluster of the nearest core neighbour (pairs are sorted by distance)
    bi = np.concatenate([i[core[j] & ~core[i]], j[core[i] & ~core[j]]])
    bc = np.concatenate([j[core[j] & ~core[i]], i[core[i] & ~core[j]]])
    bd = np.concatenate([d[core[j] & ~core[i]], d[core[i] & ~core[j]]])
    if len(bi):
        o = np.lexsort((bc, bd, bi))
        bi, bc = bi[o], bc[o]
        first = np.r_[True, bi[1:] != bi[:-1]]
        labels[bi[first]] = labels[bc[first]]
    # renumber 0.. by lowest member index
    clustered = labels >= 0
    if clustered.any():
        uniq, first_idx = np.unique(labels[clustered], return_index=True)
        lowest = np.flatnonzero(clustered)[first_idx]
        rank = np.empty(len(uniq), np.int64)
        rank[np.argsort(lowest, kind="stable")] = np.arange(len(uniq))
        labels[clustered] = rank[np.searchsorted(uniq, labels[clustered])]
    return labels
