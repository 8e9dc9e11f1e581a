"""Autograd wrapper of the compiled tiled renderer (R-SMoE): the CPU build (ctypes) and the GPU build (CuPy).

Forward and backward are the hand-written kernels of raw_kernels/; this module moves tensors in and out and
reduces the per-(tile, kernel) gradient rows of the backward pass into per-kernel gradients with
``index_add_`` (on the CPU a sequential, deterministic sum).
"""
from __future__ import annotations

import torch

from . import _cpu_build
from ._binning import TileLists

MODE_SMOE, MODE_RBF = 0, 1
NO_WEIGHT = -1e30  # smoe_tile.h: the log-weight of a kernel without weight (pi <= 0)
MAX_CHANNELS = 4


def grad_slots(C: int, linear: bool) -> int:
    return 6 + C + (2 * C if linear else 0)


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _cpu_forward(mu, chol, logpi, experts, slopes, lists: TileLists, inv_scale, mode, n_threads):
    lib = _cpu_build.load()
    fn = lib.smoe_tile_forward_f64 if mu.dtype == torch.float64 else lib.smoe_tile_forward_f32
    B, H, W, C = lists.batch, lists.height, lists.width, experts.shape[1]
    out = torch.empty(B, H, W, C, dtype=mu.dtype)
    lse = torch.empty(B, H, W, dtype=mu.dtype)
    rc = fn(_ptr(mu), _ptr(chol), _ptr(logpi), _ptr(experts), _ptr(slopes), _ptr(lists.tile_start), _ptr(lists.tile_ids),
            B, H, W, C, lists.tile, inv_scale, mode, _ptr(out), _ptr(lse), n_threads)
    if rc != 0:
        raise ValueError(f"the tiled renderer supports 1 to {MAX_CHANNELS} channels, got {C}")
    return out, lse


def _cpu_backward(mu, chol, logpi, experts, slopes, lists: TileLists, inv_scale, mode, grad_out, out, lse, n_threads):
    lib = _cpu_build.load()
    fn = lib.smoe_tile_backward_f64 if mu.dtype == torch.float64 else lib.smoe_tile_backward_f32
    C = experts.shape[1]
    g = torch.empty(lists.tile_ids.numel(), grad_slots(C, slopes is not None), dtype=mu.dtype)
    rc = fn(_ptr(mu), _ptr(chol), _ptr(logpi), _ptr(experts), _ptr(slopes), _ptr(lists.tile_start), _ptr(lists.tile_ids),
            lists.batch, lists.height, lists.width, C, lists.tile, inv_scale, mode, _ptr(grad_out), _ptr(out), _ptr(lse),
            _ptr(g), n_threads)
    if rc != 0:
        raise ValueError(f"the tiled renderer supports 1 to {MAX_CHANNELS} channels, got {C}")
    return g


class TiledRender(torch.autograd.Function):
    """y = tiled SMoE/RBF render of (mu, chol, logpi, experts[, slopes]) over the given tile lists."""

    @staticmethod
    def forward(ctx, mu, chol, logpi, experts, slopes, lists: TileLists, inv_scale: float, mode: int, n_threads: int):
        mu, chol, experts = mu.contiguous(), chol.contiguous(), experts.contiguous()
        logpi = logpi.clamp_min(NO_WEIGHT).contiguous()
        slopes = None if slopes is None else slopes.contiguous()
        if mu.is_cuda:
            from . import _cuda

            out, lse = _cuda.forward(mu, chol, logpi, experts, slopes, lists, inv_scale, mode)
        else:
            out, lse = _cpu_forward(mu, chol, logpi, experts, slopes, lists, inv_scale, mode, n_threads)
        ctx.save_for_backward(mu, chol, logpi, experts, slopes, out, lse)
        ctx.lists, ctx.inv_scale, ctx.mode, ctx.n_threads = lists, inv_scale, mode, n_threads
        return out

    @staticmethod
    def backward(ctx, grad_out):
        mu, chol, logpi, experts, slopes, out, lse = ctx.saved_tensors
        lists = ctx.lists
        grad_out = grad_out.contiguous()
        if mu.is_cuda:
            from . import _cuda

            g = _cuda.backward(mu, chol, logpi, experts, slopes, lists, ctx.inv_scale, ctx.mode, grad_out, out, lse)
        else:
            g = _cpu_backward(mu, chol, logpi, experts, slopes, lists, ctx.inv_scale, ctx.mode, grad_out, out, lse,
                              ctx.n_threads)
        N, C = mu.shape[0], experts.shape[1]
        per_kernel = torch.zeros(N, g.shape[1], dtype=g.dtype, device=g.device)
        per_kernel.index_add_(0, lists.tile_ids.long(), g)
        d_mu, d_chol, d_logpi = per_kernel[:, 0:2], per_kernel[:, 2:5], per_kernel[:, 5]
        d_experts = per_kernel[:, 6:6 + C]
        d_slopes = per_kernel[:, 6 + C:].reshape(N, C, 2) if slopes is not None else None
        return d_mu, d_chol, d_logpi, d_experts, d_slopes, None, None, None, None
