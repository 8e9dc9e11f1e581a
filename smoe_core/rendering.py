"""Renderers of SMoE / RBF models, forward and backward (adaptive-segmentation paper eqs. 1-5; rasterized
R-SMoE, rasterized abstract Fig. 3).

Backends:

- ``"dense"``: every pixel sees every kernel (global SMoE, "G-SMoE"), torch autograd in the log domain,
  chunked over pixels with each chunk recomputed in the backward pass (activation checkpointing), so memory
  stays at one chunk's graph. The reference, and the G-SMoE baseline.
- ``"tiled"`` (default): the rasterized SMoE. Blocks of ``tile`` x ``tile`` output pixels, each with the list of
  kernels whose coverage box (at Mahalanobis radius ``cutoff``) touches it; gating normalized over the list.
  Runs the GPU build when the parameters are on a CUDA device (or, for numpy models, when a GPU is visible),
  else the CPU build; where no compiler is present it falls back to ``"torch"`` with a warning.
- ``"cpu"`` / ``"cuda"``: a specific compiled build of the tiled renderer.
- ``"torch"``: the pure-PyTorch reference of the tiled kernel (same lists, same arithmetic, autograd).

Sampling: output pixel (r', c') at scale s samples the point ((c'+0.5)/s - 0.5, (r'+0.5)/s - 0.5).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from . import _cpu_build
from ._binning import TileLists, bin_kernels
from ._tiled import MODE_RBF, MODE_SMOE, TiledRender
from ._tiled_torch import render_tiled_torch
from .model import SMoE

BACKENDS = ("tiled", "cpu", "cuda", "torch", "dense")
DEFAULT_TILE = 16
DEFAULT_CUTOFF = 5.0
DEFAULT_FILL = 4


def log_pi(pi: torch.Tensor) -> torch.Tensor:
    """log(pi) where pi > 0, -inf elsewhere (a kernel with pi <= 0 has no weight and no gradient)."""
    tiny = torch.finfo(pi.dtype).tiny
    return torch.where(pi > 0, torch.log(pi.clamp_min(tiny)), torch.full_like(pi, -math.inf))


def output_shape(shape, scale: float) -> tuple[int, int]:
    H, W = int(shape[0]), int(shape[1])
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a positive number, got {scale}")
    return max(1, int(round(H * scale))), max(1, int(round(W * scale)))


def gpu_visible() -> bool:
    return torch.cuda.is_available()


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "tiled":
        if device.type == "cuda":
            return "cuda"
        if _cpu_build.available():
            return "cpu"
        warnings.warn("no C++ compiler for the CPU build of the tiled renderer: using the PyTorch reference "
                      "(backend='torch'), which is slower", RuntimeWarning, stacklevel=3)
        return "torch"
    if backend == "cuda" and device.type != "cuda":
        raise ValueError("backend='cuda' needs the model's tensors on a CUDA device")
    if backend == "cpu" and device.type != "cpu":
        raise ValueError("backend='cpu' needs the model's tensors on the CPU")
    return backend


# ---------------------------------------------------------------------- dense (global) renderer
def _dense_block(px, py, cx, cy, mu, chol, logpi, experts, slopes, rbf: bool):
    """Outputs (n, C) at points (px, py): every kernel, log domain.

    The log-weights of all kernels at all points are one matrix product: with block-local coordinates
    x' = x - c (c the block centre), q_j = [x'^2, x'y', y'^2, x', y', 1] . w_j, so l = F W (n x 6 times 6 x K),
    which is what makes a global SMoE affordable on a CPU. Local coordinates keep the expansion's cancellation
    error at eps * (block size)^2 * |P|.
    """
    x, y = px - cx, py - cy
    mx, my = mu[:, 0] - cx, mu[:, 1] - cy
    a11, a21, a22 = chol[:, 0], chol[:, 1], chol[:, 2]
    pxx, pxy, pyy = a11 * a11, a11 * a21, a21 * a21 + a22 * a22
    bx = pxx * mx + pxy * my
    by = pxy * mx + pyy * my
    const = logpi.clamp_min(-1e30) - 0.5 * (pxx * mx * mx + 2 * pxy * mx * my + pyy * my * my)
    Wk = torch.stack([-0.5 * pxx, -pxy, -0.5 * pyy, bx, by, const], 0)  # (6, K)
    F = torch.stack([x * x, x * y, y * y, x, y, torch.ones_like(x)], 1)  # (n, 6)
    lw = F @ Wk
    if rbf:
        gate = torch.exp(lw)
    else:
        gate = torch.softmax(lw, dim=1)
        has = (lw.detach().amax(dim=1, keepdim=True) > -1e29).to(gate.dtype)  # pixels with some weight
        gate = gate * has
    out = gate @ experts
    if slopes is not None:
        s0, s1 = slopes[..., 0], slopes[..., 1]  # (K, C)
        out = (out + x[:, None] * (gate @ s0) - gate @ (mx[:, None] * s0)
               + y[:, None] * (gate @ s1) - gate @ (my[:, None] * s1))
    return out


def render_dense_flat(mu, chol, logpi, experts, slopes, H: int, W: int, inv_scale: float, rbf: bool,
                      chunk_elements: int = 2**23, max_block: int = 128) -> torch.Tensor:
    """(H, W, C) dense render of one model, in square pixel blocks of about ``chunk_elements`` pixel-kernel
    pairs (side at most ``max_block``), each recomputed in the backward pass when gradients are needed."""
    K = mu.shape[0]
    side = int(max(4, min(max_block, math.isqrt(max(1, chunk_elements // max(K, 1))))))
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (mu, chol, logpi, experts, slopes))
    coords_r = (torch.arange(H, device=mu.device, dtype=mu.dtype) + 0.5) * inv_scale - 0.5
    coords_c = (torch.arange(W, device=mu.device, dtype=mu.dtype) + 0.5) * inv_scale - 0.5
    rows = []
    for r0 in range(0, H, side):
        r1 = min(H, r0 + side)
        cols = []
        for c0 in range(0, W, side):
            c1 = min(W, c0 + side)
            py = coords_r[r0:r1].repeat_interleave(c1 - c0)
            px = coords_c[c0:c1].repeat(r1 - r0)
            cx = float(coords_c[(c0 + c1 - 1) // 2])
            cy = float(coords_r[(r0 + r1 - 1) // 2])
            args = (px, py, cx, cy, mu, chol, logpi, experts, slopes, rbf)
            blk = checkpoint(_dense_block, *args, use_reentrant=False) if needs_grad else _dense_block(*args)
            cols.append(blk.reshape(r1 - r0, c1 - c0, -1))
        rows.append(torch.cat(cols, 1))
    return torch.cat(rows, 0)


# ---------------------------------------------------------------------- public API
def _as_torch_fields(model: SMoE, device=None):
    if model.is_torch:
        return model
    return model.torch(device=device)


def _check_shape(shape, model: SMoE):
    if shape is None:
        if model.image_shape is None:
            raise ValueError("give the image shape (H, W): the model does not record one")
        shape = model.image_shape
    shape = tuple(int(s) for s in shape[:2])
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be (H, W) with positive sizes, got {shape}")
    return shape


def render(model: SMoE, shape=None, *, backend: str = "tiled", scale: float = 1.0, tile: int = DEFAULT_TILE,
           cutoff: float = DEFAULT_CUTOFF, fill: int = DEFAULT_FILL, n_threads: int | None = None):
    """Renders a model as a float32 image (H, W) (one channel) or (H, W, C), H, W = round(shape * scale).

    ``shape`` is the native (H, W) of the image (default: the model's ``image_shape``). Returns a numpy array
    for a numpy model and a torch tensor for a torch model; when the torch fields require grad, the result is
    differentiable whatever the backend. ``tile``, ``cutoff`` and ``fill`` configure the tiled backends (see
    :mod:`smoe_core._binning`); ``n_threads`` the CPU build's OpenMP threads (default: torch's).
    """
    return render_many([model], shape, backend=backend, scale=scale, tile=tile, cutoff=cutoff, fill=fill,
                       n_threads=n_threads)[0]


def render_many(models, shape=None, *, backend: str = "tiled", scale: float = 1.0, tile: int = DEFAULT_TILE,
                cutoff: float = DEFAULT_CUTOFF, fill: int = DEFAULT_FILL, n_threads: int | None = None):
    """Renders many small models of one image shape in one call (per-segment fits, per-block kernels).

    All models go through one binning step and one kernel launch: model b's kernels only reach image b.
    Returns a list of images, or, when the models are torch, one tensor (B, H, W[, C]).
    """
    models = list(models)
    if not models:
        raise ValueError("no models to render")
    kinds = {m.is_torch for m in models}
    if len(kinds) != 1:
        raise ValueError("models must be all numpy or all torch")
    is_torch = kinds.pop()
    C = models[0].n_channels
    if any(m.n_channels != C for m in models) or len({m.linear for m in models}) != 1 or len({m.rbf for m in models}) != 1:
        raise ValueError("models rendered together must share channels, expert kind and rbf flag")
    shapes = {_check_shape(shape, m) for m in models}
    if len(shapes) != 1:
        raise ValueError(f"models rendered together must share one image shape, got {sorted(shapes)}")
    H0, W0 = shapes.pop()
    H, W = output_shape((H0, W0), scale)
    inv_scale = 1.0 / float(scale)
    for m in models:
        m.check()

    device = None
    if not is_torch and backend in ("tiled", "cuda") and gpu_visible():
        device = torch.device("cuda")
    tmodels = [_as_torch_fields(m, device) for m in models]
    device = tmodels[0].mu.device
    if any(m.mu.device != device for m in tmodels):
        raise ValueError("models rendered together must be on one device")
    chosen = resolve_backend(backend, device)

    def cat(name):
        vals = [getattr(m, name) for m in tmodels]
        return None if vals[0] is None else torch.cat(vals, 0)

    mu, chol, pi, experts, slopes = (cat(n) for n in ("mu", "chol", "pi", "experts", "slopes"))
    dtype = mu.dtype if mu.dtype in (torch.float32, torch.float64) else torch.float32
    mu, chol, pi, experts = mu.to(dtype), chol.to(dtype), pi.to(dtype), experts.to(dtype)
    slopes = None if slopes is None else slopes.to(dtype)
    logpi = log_pi(pi)
    rbf = models[0].rbf

    if chosen == "dense":
        outs, start = [], 0
        for m in tmodels:
            sl = slice(start, start + m.n_kernels)
            start += m.n_kernels
            outs.append(render_dense_flat(mu[sl], chol[sl], logpi[sl], experts[sl],
                                          None if slopes is None else slopes[sl], H, W, inv_scale, rbf))
        out = torch.stack(outs, 0)
    else:
        offsets = np.cumsum([0] + [m.n_kernels for m in tmodels]).tolist()
        lists = bin_kernels(mu, chol, logpi, offsets, H, W, tile=tile, scale=float(scale), cutoff=cutoff, fill=fill)
        if chosen == "torch":
            out = render_tiled_torch(mu, chol, logpi, experts, slopes, lists, inv_scale, rbf)
        else:
            threads = int(n_threads) if n_threads else torch.get_num_threads()
            out = TiledRender.apply(mu, chol, logpi, experts, slopes, lists, inv_scale,
                                    MODE_RBF if rbf else MODE_SMOE, threads)
    out = out.to(torch.float32) if out.dtype not in (torch.float32, torch.float64) else out
    if C == 1:
        out = out[..., 0]
    if is_torch:
        return out
    return [o for o in out.detach().cpu().numpy().astype(np.float32)]


def tile_lists(model: SMoE, shape=None, *, scale: float = 1.0, tile: int = DEFAULT_TILE, cutoff: float = DEFAULT_CUTOFF,
               fill: int = DEFAULT_FILL) -> TileLists:
    """The per-tile kernel lists the tiled renderer would use (for inspection and statistics)."""
    shape = _check_shape(shape, model)
    H, W = output_shape(shape, scale)
    t = model if model.is_torch else model.torch()
    return bin_kernels(t.mu.detach(), t.chol.detach(), log_pi(t.pi.detach()), [0, t.n_kernels], H, W, tile=tile,
                       scale=float(scale), cutoff=cutoff, fill=fill)
