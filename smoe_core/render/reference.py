"""Pure-PyTorch reference of the tiled SMoE kernel (raw_kernels/smoe_tile.h), R-SMoE [R-SMoE] Fig. 3.

Same inputs and the same arithmetic as the compiled builds (per tile: the tile's kernel list, log-domain
gating normalized over that list), written with padded gathers so that autograd differentiates it. It is the
reference the compiled builds are tested against, and the fallback where no C++ compiler is present.
"""
from __future__ import annotations

import torch

from .binning import TileLists


def _tile_pixels(lists: TileLists, inv_scale: float, dtype, device):
    """Per tile: (n_tiles, T*T) sample x, y, flat output pixel index, and a validity mask (edge tiles)."""
    T = lists.tile
    r = torch.arange(T, device=device)
    local_r, local_c = r.repeat_interleave(T), r.repeat(T)
    t = torch.arange(lists.n_tiles, device=device)
    b = t // (lists.tiles_x * lists.tiles_y)
    rem = t % (lists.tiles_x * lists.tiles_y)
    ty, tx = rem // lists.tiles_x, rem % lists.tiles_x
    rows = ty[:, None] * T + local_r[None, :]
    cols = tx[:, None] * T + local_c[None, :]
    valid = (rows < lists.height) & (cols < lists.width)
    px = (cols.to(dtype) + 0.5) * inv_scale - 0.5
    py = (rows.to(dtype) + 0.5) * inv_scale - 0.5
    flat = (b[:, None] * lists.height + rows.clamp(max=lists.height - 1)) * lists.width + cols.clamp(max=lists.width - 1)
    return px, py, flat, valid


def padded_lists(lists: TileLists) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_tiles, max_len) kernel indices (0 where padded) and the mask of real entries."""
    counts = lists.counts.long()
    max_len = int(counts.max().item()) if counts.numel() else 0
    max_len = max(max_len, 1)
    pos = torch.arange(max_len, device=counts.device)
    mask = pos[None, :] < counts[:, None]
    idx = lists.tile_start[:-1].long()[:, None] + pos[None, :]
    idx = torch.where(mask, idx, torch.zeros_like(idx))
    ids = lists.tile_ids.long()[idx.clamp(max=max(lists.tile_ids.numel() - 1, 0))] if lists.tile_ids.numel() else idx
    return torch.where(mask, ids, torch.zeros_like(ids)), mask


def tile_log_weights(mu, chol, logpi, lists: TileLists, inv_scale: float):
    """Log-weights (n_tiles, T*T, max_len), -inf on padding, with the per-tile pixel geometry."""
    px, py, flat, valid = _tile_pixels(lists, inv_scale, mu.dtype, mu.device)
    ids, mask = padded_lists(lists)
    m = mu[ids]  # (nt, L, 2)
    a = chol[ids]  # (nt, L, 3)
    dx = px[:, :, None] - m[:, None, :, 0]
    dy = py[:, :, None] - m[:, None, :, 1]
    u = a[:, None, :, 0] * dx + a[:, None, :, 1] * dy
    v = a[:, None, :, 2] * dy
    lw = logpi[ids][:, None, :] - 0.5 * (u * u + v * v)
    lw = torch.where(mask[:, None, :], lw, torch.full_like(lw, -float("inf")))
    return lw, dx, dy, ids, mask, flat, valid


def render_tiled_torch(mu, chol, logpi, experts, slopes, lists: TileLists, inv_scale: float, rbf: bool):
    """Renders (B, H, W, C) with autograd; same semantics as the compiled builds."""
    C = experts.shape[1]
    lw, dx, dy, ids, mask, flat, valid = tile_log_weights(mu, chol, logpi, lists, inv_scale)
    if rbf:
        gate = torch.exp(lw)
    else:
        mx = lw.amax(dim=2, keepdim=True)
        has = torch.isfinite(mx)
        shifted = torch.where(has, lw - torch.where(has, mx, torch.zeros_like(mx)), torch.full_like(lw, -float("inf")))
        w = torch.exp(shifted)
        s = w.sum(dim=2, keepdim=True)
        gate = torch.where(s > 0, w / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(w))
    e = experts[ids]  # (nt, L, C)
    val = torch.einsum("tpl,tlc->tpc", gate, e)
    if slopes is not None:
        sl = slopes[ids]  # (nt, L, C, 2)
        val = val + torch.einsum("tpl,tlc->tpc", gate * dx, sl[..., 0]) + torch.einsum("tpl,tlc->tpc", gate * dy, sl[..., 1])
    out = torch.zeros(lists.batch * lists.height * lists.width, C, dtype=mu.dtype, device=mu.device)
    out = out.index_put((flat[valid],), val[valid])
    return out.reshape(lists.batch, lists.height, lists.width, C)
