"""The dense (global) SMoE renderer, "G-SMoE": every pixel sees every kernel ([AS-SMoE] eqs. 1-5,
[AS-SMoE] in :mod:`smoe_core.papers`), in the log domain with torch autograd.

- :func:`render_dense_flat`: one model over an (H, W) grid, chunked over pixel blocks, each recomputed in the
  backward pass (activation checkpointing), so memory stays at one chunk's graph. The reference renderer and
  the G-SMoE baseline.
- :func:`render_dense_batch`: B models of L kernels each over one small square (AS-SMoE's CBBs, Algorithm 1),
  exact, with the log-weights of all kernels at all pixels as one (B, L, 6) x (6, N) product.
"""
from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint


def dense_block(px, py, cx, cy, mu, chol, logpi, experts, slopes, rbf: bool):
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
            blk = checkpoint(dense_block, *args, use_reentrant=False) if needs_grad else dense_block(*args)
            cols.append(blk.reshape(r1 - r0, c1 - c0, -1))
        rows.append(torch.cat(cols, 1))
    return torch.cat(rows, 0)


def square_features(side: int) -> tuple[torch.Tensor, float]:
    """The (6, side * side) quadratic features [x^2, xy, y^2, x, y, 1] of a side x side pixel square in
    coordinates centred on the square (row-major pixels), and that centre ((side - 1) / 2)."""
    c = (side - 1) / 2.0
    ys, xs = torch.meshgrid(torch.arange(side, dtype=torch.float32) - c, torch.arange(side, dtype=torch.float32) - c,
                            indexing="ij")
    xs, ys = xs.reshape(-1), ys.reshape(-1)
    return torch.stack([xs * xs, xs * ys, ys * ys, xs, ys, torch.ones_like(xs)], 0), c


def render_dense_batch(mu, chol, logpi, experts, feats, centre: float, rbf: bool = False) -> torch.Tensor:
    """(B, N, C): exact dense SMoE of B models with L kernels each (``mu`` (B, L, 2), ``chol`` (B, L, 3),
    ``logpi`` (B, L), ``experts`` (B, L, C)) at the N pixels of ``feats`` (:func:`square_features`); ``rbf``:
    the RBF networks over the same fields (weights pi K, no normalization)."""
    a11, a21, a22 = chol.unbind(-1)
    mx, my = mu[..., 0] - centre, mu[..., 1] - centre
    pxx, pxy, pyy = a11 * a11, a11 * a21, a21 * a21 + a22 * a22
    const = logpi - 0.5 * (pxx * mx * mx + 2 * pxy * mx * my + pyy * my * my)
    Wk = torch.stack([-0.5 * pxx, -pxy, -0.5 * pyy, pxx * mx + pxy * my, pxy * mx + pyy * my, const], -1)
    lw = Wk @ feats
    gate = torch.exp(lw) if rbf else torch.softmax(lw, dim=1)  # (B, L, N)
    return (experts.transpose(1, 2) @ gate).transpose(1, 2)
