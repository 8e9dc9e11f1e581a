"""Renderers of SMoE / RBF models, forward and backward ([AS-SMoE] eqs. 1-5; rasterized
R-SMoE, [R-SMoE] Fig. 3).

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

from ..limits import check_memory
from ..model import SMoE, check_models
from . import cpu
from .abi import MODE_RBF, MODE_SMOE
from .autograd import TiledRender
from .binning import TileLists, bin_kernels
from .dense import render_dense_flat
from .reference import render_tiled_torch
from .options import (BACKENDS, DEFAULT_CUTOFF, DEFAULT_FILL, DEFAULT_TILE, check_shape, check_tiling,
                      output_shape, render_bytes)

def log_pi(pi: torch.Tensor) -> torch.Tensor:
    """log(pi) where pi > 0, -inf elsewhere (a kernel with pi <= 0 has no weight and no gradient)."""
    tiny = torch.finfo(pi.dtype).tiny
    return torch.where(pi > 0, torch.log(pi.clamp_min(tiny)), torch.full_like(pi, -math.inf))


def gpu_visible() -> bool:
    return torch.cuda.is_available()


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "tiled":
        if device.type == "cuda":
            return "cuda"
        if cpu.available():
            return "cpu"
        warnings.warn("no C++ compiler for the CPU build of the tiled renderer: using the PyTorch reference "
                      "(backend='torch'), which is slower", RuntimeWarning, stacklevel=3)
        return "torch"
    if backend == "cuda" and device.type != "cuda":
        raise ValueError("backend='cuda' needs the model's tensors on a CUDA device")
    if backend == "cpu" and device.type != "cpu":
        raise ValueError("backend='cpu' needs the model's tensors on the CPU")
    return backend


# ---------------------------------------------------------------------- public API
def _as_torch_fields(model: SMoE, device=None):
    if model.is_torch:
        return model
    return model.torch(device=device)


def _check_shape(shape, model: SMoE):
    if shape is None:
        if model.image_shape is None:
            raise ValueError("give the image shape (H, W): the model does not record one")
        return model.image_shape
    return check_shape(shape)


def render(model: SMoE, shape=None, *, backend: str = "tiled", scale: float = 1.0, tile: int = DEFAULT_TILE,
           cutoff: float = DEFAULT_CUTOFF, fill: int = DEFAULT_FILL, n_threads: int | None = None):
    """Renders a model as a float32 image (H, W) (one channel) or (H, W, C), H, W = round(shape * scale).

    ``shape`` is the native (H, W) of the image (default: the model's ``image_shape``). Returns a numpy array
    for a numpy model and a torch tensor for a torch model; when the torch fields require grad, the result is
    differentiable whatever the backend. ``tile``, ``cutoff`` and ``fill`` configure the tiled backends (see
    :mod:`smoe_core.render.binning`); ``n_threads`` the CPU build's OpenMP threads (default: torch's).
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
    if (any(m.n_channels != C for m in models) or len({m.linear for m in models}) != 1
            or len({m.rbf for m in models}) != 1):
        raise ValueError("models rendered together must share channels, expert kind and rbf flag")
    shapes = {_check_shape(shape, m) for m in models}
    if len(shapes) != 1:
        raise ValueError(f"models rendered together must share one image shape, got {sorted(shapes)}")
    H0, W0 = shapes.pop()
    H, W = output_shape((H0, W0), scale)
    inv_scale = 1.0 / float(scale)
    check_tiling(tile, cutoff, fill)
    check_models(models)
    # a differentiable render is a training step, whose memory fit() checked once before its first step (each
    # step reuses the memory of the last one, which this process already holds)
    if not (is_torch and any(x is not None and x.requires_grad for m in models for x in m.fields().values())):
        check_memory(render_bytes((H0, W0), C, sum(m.n_kernels for m in models), scale=scale, tile=tile, fill=fill,
                                  batch=len(models)),
                     f"rendering {len(models)} x {H} x {W} pixels" if len(models) > 1
                     else f"rendering {H} x {W} pixels")

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
    check_tiling(tile, cutoff, fill)
    t = model if model.is_torch else model.torch()
    return bin_kernels(t.mu.detach(), t.chol.detach(), log_pi(t.pi.detach()), [0, t.n_kernels], H, W, tile=tile,
                       scale=float(scale), cutoff=cutoff, fill=fill)


def render_tiled_batch(mu, chol, logpi, experts, side: int, *, slopes=None, scale: float = 1.0,
                       tile: int | None = None, n_threads: int | None = None, rbf: bool = False) -> torch.Tensor:
    """(B, Ho * Wo, C): B models of L kernels each (``mu`` (B, L, 2), ``chol`` (B, L, 3), ``logpi``
    (B, L), ``experts`` (B, L, C), ``slopes`` (B, L, C, 2) or None; torch, CPU or CUDA) over one side x side square
    each, rendered at ``scale`` (Ho x Wo = :func:`output_shape` of the square) through the compiled tiled renderer
    with one binning step and one launch; differentiable. ``tile``: the tile side in output pixels (default
    :data:`DEFAULT_TILE`). No per-model checks (the caller's tensors are its own optimizer's or network's): used by
    AS-SMoE's Algorithm 1 for all CBBs at once and by N-SMoE's decoder for all blocks of a batch, where building and
    checking one :class:`SMoE` per block took longer than the render. The same lists and arithmetic as
    :func:`render_many` of the same models with the same ``tile``. ``rbf``: the RBF networks (weighted sums of
    kernels) over the same fields instead of SMoEs."""
    B, L = mu.shape[:2]
    C = experts.shape[-1]
    Ho, Wo = output_shape((side, side), scale)
    m, ch, lp, ex = mu.reshape(B * L, 2), chol.reshape(B * L, 3), logpi.reshape(B * L), experts.reshape(B * L, C)
    sl = None if slopes is None else slopes.reshape(B * L, C, 2)
    lists = bin_kernels(m.detach(), ch.detach(), lp.detach(), list(range(0, B * L + 1, L)), Ho, Wo,
                        tile=int(tile or DEFAULT_TILE), scale=float(scale))
    threads = int(n_threads) if n_threads else torch.get_num_threads()
    out = TiledRender.apply(m, ch, lp, ex, sl, lists, 1.0 / float(scale), MODE_RBF if rbf else MODE_SMOE, threads)
    return out.reshape(B, Ho * Wo, C)
