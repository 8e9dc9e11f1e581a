"""Autograd wrapper of the compiled tiled renderer (rasterized R-SMoE): the CPU build (:mod:`.cpu`, ctypes) and
the GPU build (:mod:`.cuda`, CuPy).

Forward and backward are the hand-written kernels of raw_kernels/; this module moves tensors in and out and
reduces the per-(tile, kernel) gradient rows of the backward pass into per-kernel gradients with
``index_add_`` (on the CPU a sequential, deterministic sum).
"""
from __future__ import annotations

import torch

from . import cpu
from .abi import NO_WEIGHT


class TiledRender(torch.autograd.Function):
    """y = tiled SMoE/RBF render of (mu, chol, logpi, experts[, slopes]) over the given tile lists."""

    @staticmethod
    def forward(ctx, mu, chol, logpi, experts, slopes, lists, inv_scale: float, mode: int, n_threads: int):
        mu, chol, experts = mu.contiguous(), chol.contiguous(), experts.contiguous()
        logpi = logpi.clamp_min(NO_WEIGHT).contiguous()
        slopes = None if slopes is None else slopes.contiguous()
        if mu.is_cuda:
            from . import cuda  # CuPy is imported only when a model is on a GPU

            out, lse = cuda.forward(mu, chol, logpi, experts, slopes, lists, inv_scale, mode)
        else:
            out, lse = cpu.forward(mu, chol, logpi, experts, slopes, lists, inv_scale, mode, n_threads)
        ctx.save_for_backward(mu, chol, logpi, experts, slopes, out, lse)
        ctx.lists, ctx.inv_scale, ctx.mode, ctx.n_threads = lists, inv_scale, mode, n_threads
        return out

    @staticmethod
    def backward(ctx, grad_out):
        mu, chol, logpi, experts, slopes, out, lse = ctx.saved_tensors
        lists = ctx.lists
        grad_out = grad_out.contiguous()
        if mu.is_cuda:
            from . import cuda

            g = cuda.backward(mu, chol, logpi, experts, slopes, lists, ctx.inv_scale, ctx.mode, grad_out, out, lse)
        else:
            g = cpu.backward(mu, chol, logpi, experts, slopes, lists, ctx.inv_scale, ctx.mode, grad_out, out, lse,
                             ctx.n_threads)
        N, C = mu.shape[0], experts.shape[1]
        per_kernel = torch.zeros(N, g.shape[1], dtype=g.dtype, device=g.device)
        per_kernel.index_add_(0, lists.tile_ids.long(), g)
        d_mu, d_chol, d_logpi = per_kernel[:, 0:2], per_kernel[:, 2:5], per_kernel[:, 5]
        d_experts = per_kernel[:, 6:6 + C]
        d_slopes = per_kernel[:, 6 + C:].reshape(N, C, 2) if slopes is not None else None
        return d_mu, d_chol, d_logpi, d_experts, d_slopes, None, None, None, None
