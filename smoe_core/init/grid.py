"""Grid initializer ([AS-SMoE], Table II "Grid": radial kernels, all the same bandwidth;
spacing/bandwidth rule of [QSMoE], section 3 "Initialization and Pre-Training").

- Layout: k_x columns by k_y rows, centres at the cell centres ((i + 0.5) W / k_x - 0.5, (j + 0.5) H / k_y - 0.5)
  in pixel coordinates. [QSMoE] uses k = floor(Res / 4) per axis; here the budget ``n_kernels`` is
  given, and the layout is the k_x * k_y <= n_kernels with the most kernels whose cells are closest to square
  (cell aspect within 3:2; ties go to the squarest cell). The count can therefore be slightly below the budget
  (1222 on 512 x 512 gives 33 x 37 = 1221); ``grid_layout`` tells the layout in advance.
- Bandwidth: "the distance between the centres of two kernels equals two standard deviations": one isotropic
  sigma = sqrt(cell_w * cell_h) / 2 for all kernels, precision diag(1/sigma^2), i.e. A = diag(1/sigma).
- pi_j = 1 for every kernel ("the middle of their range", [QSMoE]).
- Experts (``experts=``, shared by Grid, K-Means and S-SMoE through :func:`radial_model`):

  * ``"mean"`` (default): "the mean of the image where the gating of the corresponding kernel has maximum
    influence" ([QSMoE]): each pixel goes to its dominant kernel (largest log-weight, computed over the
    tiled renderer's lists); a kernel that dominates no pixel takes the pixel nearest its centre.
  * ``"centre"``: the image at the pixel nearest the kernel's centre ([EDGE]'s sampling of the
    luminance at kernel centres, section III-D, before its iteration).
  * ``"random"``: uniform in [0, 1] per channel from ``numpy.random.default_rng(seed)``, as Algorithm 1 of the
    [AS-SMoE] initializes the experts ("M <- RandomVariable(L)"). [AS-SMoE]'s
    Table II lists only "mu_j, Diagonal Matrix" as the output of Grid, K-Means and S-SMoE, i.e. no expert
    values taken from the image, and its Table V figures for them (11.7-16.3 dB initial PSNR at 1500-3500
    kernels) are what unfitted experts give (region-mean experts give 20-24 dB at those counts). This is the
    setting of the *paper protocol* of Table V (:mod:`smoe_core.studies.common`); "mean" stays the default
    because it is the better start for :func:`smoe_core.fit`.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..io import check_image
from ..limits import check_kernels
from ..model import SMoE
from .result import InitResult


def grid_layout(shape, n_kernels: int, max_aspect: float = 1.5) -> tuple[int, int]:
    """(k_x, k_y): the grid of at most ``n_kernels`` kernels for an image of ``shape`` (H, W); ``n_kernels`` is
    at most one per pixel (:func:`smoe_core.limits.check_kernels`)."""
    H, W = int(shape[0]), int(shape[1])
    n = check_kernels(n_kernels, (H, W))
    best = None
    for ky in range(1, n + 1):
        kx = n // ky
        if kx < 1:
            break
        aspect = (W / kx) / (H / ky)
        skew = abs(math.log(aspect))
        if skew > math.log(max_aspect) + 1e-12:
            continue
        key = (kx * ky, -skew)
        if best is None or key > best[0]:
            best = (key, (kx, ky))
    if best is None:  # no layout within the aspect bound (e.g. a 1 x 1000 image): squarest cells
        best = min(((abs(math.log((W / (n // ky)) / (H / ky))), (n // ky, ky)) for ky in range(1, n + 1)))
        return best[1]
    return best[1]


def dominant_kernel(model: SMoE, shape, tile: int = 16, cutoff: float = 5.0) -> np.ndarray:
    """(H, W) int array: the index of the kernel with the largest log-weight at every pixel.

    Evaluated over the tiled renderer's per-tile lists (the dominant kernel of a pixel always lies in its
    tile's list, since a kernel outside its coverage box is below exp(-cutoff^2/2) of its peak).
    """
    from ..render.reference import tile_log_weights
    from ..render import log_pi, tile_lists

    t = model if model.is_torch else model.torch()
    H, W = int(shape[0]), int(shape[1])
    lists = tile_lists(t, (H, W), tile=tile, cutoff=cutoff)
    with torch.no_grad():
        lw, _, _, ids, _, flat, valid = tile_log_weights(t.mu.detach(), t.chol.detach(), log_pi(t.pi.detach()), lists, 1.0)
        best = lw.argmax(dim=2)  # (n_tiles, T*T)
        kernel = torch.gather(ids, 1, best)
        out = torch.empty(H * W, dtype=torch.int64)
        out[flat[valid]] = kernel[valid]
    return out.reshape(H, W).numpy()


def experts_from_dominance(model: SMoE, image: np.ndarray) -> np.ndarray:
    """(K, C) experts: the mean of the image over the pixels each kernel dominates."""
    img = image if image.ndim == 3 else image[..., None]
    H, W, C = img.shape
    dom = dominant_kernel(model, (H, W)).ravel()
    K = model.n_kernels
    counts = np.bincount(dom, minlength=K).astype(np.float64)
    sums = np.stack([np.bincount(dom, weights=img[..., c].ravel(), minlength=K) for c in range(C)], 1)
    mu = model.mu.detach().cpu().numpy() if model.is_torch else np.asarray(model.mu)
    r = np.clip(np.round(mu[:, 1]).astype(int), 0, H - 1)
    c = np.clip(np.round(mu[:, 0]).astype(int), 0, W - 1)
    nearest = img[r, c, :].astype(np.float64)
    experts = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], nearest)
    return experts.astype(np.float32)


EXPERT_RULES = ("mean", "centre", "random")


def experts_at_centres(mu: np.ndarray, image: np.ndarray) -> np.ndarray:
    """(K, C) experts: the image at the pixel nearest each centre (x = column, y = row; rounded half up)."""
    img = image if image.ndim == 3 else image[..., None]
    H, W = img.shape[:2]
    mu = np.asarray(mu, np.float64)
    r = np.clip(np.floor(mu[:, 1] + 0.5).astype(int), 0, H - 1)
    c = np.clip(np.floor(mu[:, 0] + 0.5).astype(int), 0, W - 1)
    return img[r, c, :].astype(np.float32)


def radial_model(image: np.ndarray, mu: np.ndarray, sigma: float, *, rbf: bool = False, linear: bool = False,
                 color_space: str | None = None, experts: str = "mean", seed: int = 0) -> SMoE:
    """Radial kernels of one bandwidth ``sigma`` at the centres ``mu`` (precision diag(1/sigma^2)), pi = 1,
    experts by the rule ``experts`` ("mean", "centre" or "random"; module docstring), zero slopes when
    ``linear`` (the common output step of the Grid, K-Means and S-SMoE initializers)."""
    if experts not in EXPERT_RULES:
        raise ValueError(f"experts must be one of {EXPERT_RULES}, got {experts!r}")
    H, W = image.shape[:2]
    C = 1 if image.ndim == 2 else image.shape[2]
    K = mu.shape[0]
    chol = np.tile(np.array([1.0 / sigma, 0.0, 1.0 / sigma], dtype=np.float32), (K, 1))
    pi = np.ones(K, dtype=np.float32)
    model = SMoE(mu, chol, pi, np.zeros((K, C), np.float32), rbf=rbf, image_shape=(H, W), color_space=color_space)
    slopes = np.zeros((K, C, 2), np.float32) if linear else None
    if experts == "mean":
        values = experts_from_dominance(model, image)
    elif experts == "centre":
        values = experts_at_centres(mu, image)
    else:
        values = np.random.default_rng(seed).uniform(0.0, 1.0, (K, C)).astype(np.float32)
    return model.replace(experts=values, slopes=slopes)


def grid(image, n_kernels: int, *, color_space: str | None = None, rbf: bool = False,
         linear: bool = False, experts: str = "mean", seed: int = 0) -> InitResult:
    """Radial kernels of one bandwidth on a regular grid of at most ``n_kernels`` (see module docstring).

    ``image`` is a float image in [0, 1], (H, W) or (H, W, C); the experts get its channels. ``linear`` adds
    zero-initialized linear experts (slopes). Returns ``(model, record)``; the record holds the method,
    seconds, kernels, the layout (k_x, k_y), sigma and the expert rule. ``experts``: "mean", "centre" or
    "random" (module docstring); ``seed`` only seeds "random" (the layout is deterministic).
    """
    t0 = time.perf_counter()
    img = check_image(image, bounded=True)
    H, W = img.shape[:2]
    kx, ky = grid_layout((H, W), n_kernels)
    cw, ch = W / kx, H / ky
    xs = (np.arange(kx) + 0.5) * cw - 0.5
    ys = (np.arange(ky) + 0.5) * ch - 0.5
    gx, gy = np.meshgrid(xs, ys)
    mu = np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float32)
    K = mu.shape[0]
    sigma = math.sqrt(cw * ch) / 2.0
    model = radial_model(img, mu, sigma, rbf=rbf, linear=linear, color_space=color_space, experts=experts, seed=seed)
    record = dict(method="grid", seconds=time.perf_counter() - t0, n_kernels=K, kernels_requested=int(n_kernels),
                  layout=(kx, ky), sigma=sigma, experts=experts)
    return InitResult(model, record)
