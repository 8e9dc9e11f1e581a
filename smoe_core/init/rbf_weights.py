"""RBF weights by least squares for given kernels ([AS-SMoE] eq. 1, y(x) = sum_j m_j K_j(x)).

An initializer places kernels and gives SMoE experts: the intensity a kernel's gate selects. The same numbers are
not the weights of an RBF network over those kernels, whose output is the plain sum of the weighted kernels: where
the kernels overlap (sum_j pi_j K_j(x) > 1) the RBF overshoots, where they leave gaps it falls towards zero. For a
model whose kernels overlap unevenly (AS-SMoE's exported kernels: the coverage sum_j pi_j K_j spans 0.1 to 5 over
an image) the SMoE experts make a useless RBF start (about 0 dB). :func:`rbf_least_squares` gives the RBF its own
weights for the same kernels: the w minimizing ||sum_j w_j K_j - y||^2 + damp^2 ||w||^2 over all pixels, solved per
channel with LSQR on the sparse design matrix (each kernel evaluated over its box of Mahalanobis radius
``radius``, 5 as the tiled renderer's coverage). pi is folded into the weights: the returned RBF has pi = 1 and
experts w (the form of eq. 1, no separate mixing weight), which may be negative.
"""
from __future__ import annotations

import numpy as np

from ..io import check_image
from ..model import SMoE


def kernel_design_matrix(model: SMoE, shape, *, radius: float = 5.0):
    """The (H*W, K) sparse matrix of K_j at every pixel (row r * W + c is pixel (r, c), i.e. x = c, y = r),
    each kernel over the pixels of its box of Mahalanobis radius ``radius`` (scipy.sparse CSC, float64)."""
    from scipy import sparse

    m = model.numpy()
    H, W = int(shape[0]), int(shape[1])
    P = m.precision().astype(np.float64)  # (K, 2, 2)
    cov = np.linalg.inv(P)
    half_x = radius * np.sqrt(np.clip(cov[:, 0, 0], 0, None))
    half_y = radius * np.sqrt(np.clip(cov[:, 1, 1], 0, None))
    mu = m.mu.astype(np.float64)
    rows, cols, vals = [], [], []
    for j in range(m.n_kernels):
        x0, x1 = max(0, int(np.floor(mu[j, 0] - half_x[j]))), min(W - 1, int(np.ceil(mu[j, 0] + half_x[j])))
        y0, y1 = max(0, int(np.floor(mu[j, 1] - half_y[j]))), min(H - 1, int(np.ceil(mu[j, 1] + half_y[j])))
        if x1 < x0 or y1 < y0:
            continue
        yy, xx = np.mgrid[y0:y1 + 1, x0:x1 + 1]
        dx, dy = xx.ravel() - mu[j, 0], yy.ravel() - mu[j, 1]
        q = P[j, 0, 0] * dx * dx + 2 * P[j, 0, 1] * dx * dy + P[j, 1, 1] * dy * dy
        inside = q <= radius * radius
        rows.append((yy.ravel() * W + xx.ravel())[inside])
        cols.append(np.full(int(inside.sum()), j))
        vals.append(np.exp(-0.5 * q[inside]))
    cat = (lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt))
    return sparse.csc_matrix((cat(vals, np.float64), (cat(rows, np.int64), cat(cols, np.int64))),
                             shape=(H * W, m.n_kernels))


def rbf_least_squares(model: SMoE, image, *, radius: float = 5.0, damp: float = 1e-3, iters: int = 500) -> SMoE:
    """The RBF network over ``model``'s kernels with least-squares weights for ``image`` (module docstring):
    ``rbf=True``, pi = 1, experts = the weights (damped LSQR, ``iters`` iterations at most, per channel)."""
    from scipy.sparse.linalg import lsqr

    img = check_image(image, bounded=True)
    H, W = img.shape[:2]
    y = img.reshape(H * W, -1).astype(np.float64)
    if y.shape[1] != model.n_channels:
        raise ValueError(f"the image has {y.shape[1]} channel(s) but the model's experts have {model.n_channels}")
    A = kernel_design_matrix(model, (H, W), radius=radius)
    weights = np.stack([lsqr(A, y[:, c], damp=damp, iter_lim=int(iters))[0] for c in range(y.shape[1])], 1)
    m = model.numpy()
    return SMoE(m.mu, m.chol, np.ones(m.n_kernels, np.float32), weights.astype(np.float32), rbf=True,
                image_shape=(H, W), color_space=m.color_space)
