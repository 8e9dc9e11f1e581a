"""Binning step of the rasterized SMoE (R-SMoE, [R-SMoE] Fig. 3): kernel coverage boxes and the
per-tile kernel lists (CSR) that the tiled renderer evaluates.

Choices (the paper's text gives only the idea, Fig. 3):

- Coverage box: the axis-aligned bounding box of the ellipse q_j(x) <= cutoff^2, where
  q_j = (x - mu_j)^T P_j (x - mu_j). With P = A A^T, A = [[a11, 0], [a21, a22]], the box half-sizes are
  cutoff * sqrt(Sigma_xx) = cutoff * sqrt(a21^2 + a22^2) / |a11 a22| and cutoff * sqrt(Sigma_yy) =
  cutoff / |a22| (closed form from P^-1, no eigendecomposition). Outside its box a kernel's gate is below
  exp(-cutoff^2 / 2) times pi_j. Default cutoff 5: the R-SMoE authors' code uses a kernel extent of about
  5 sigma, and at 5 the truncation at tile borders is below exp(-12.5) = 3.7e-6 of a kernel's peak, which
  keeps the tiled render within 1e-4 of the global one on models that cover the image (tested); 4 is ~25%
  faster with errors ~1e-4.
- Every kernel listed in a tile is evaluated exactly at every pixel of that tile; gating is normalized over
  the tile's list, whose length is not capped.
- Empty tiles: a tile that no box touches receives the ``fill`` kernels of its own model with the largest
  log-weight log(pi_j) - q_j/2 at the tile centre (the kernels that dominate there in the global model), so
  no pixel is ever left without a kernel.
- Kernels with pi <= 0 carry no weight; they are still binned (they are removed by training, not here).

Everything here is plain torch, so it runs on the device of the parameters (CPU or CUDA).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class TileLists:
    """Per-tile kernel lists for B output images of height x width pixels cut into tile x tile blocks."""

    tile_start: torch.Tensor  # (n_tiles + 1,) int32, CSR offsets
    tile_ids: torch.Tensor  # (nnz,) int32, global kernel indices, ascending within a tile
    batch: int
    height: int
    width: int
    tile: int

    @property
    def tiles_x(self) -> int:
        return (self.width + self.tile - 1) // self.tile

    @property
    def tiles_y(self) -> int:
        return (self.height + self.tile - 1) // self.tile

    @property
    def n_tiles(self) -> int:
        return self.batch * self.tiles_x * self.tiles_y

    @property
    def counts(self) -> torch.Tensor:
        return self.tile_start[1:] - self.tile_start[:-1]

    def tile_index_of_entries(self) -> torch.Tensor:
        """(nnz,) int64: the tile each CSR entry belongs to."""
        return torch.repeat_interleave(
            torch.arange(self.n_tiles, device=self.tile_ids.device), self.counts.long()
        )


def box_half_sizes(chol: torch.Tensor, cutoff: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Half width and half height (pixels) of each kernel's coverage box at Mahalanobis radius ``cutoff``."""
    a11, a21, a22 = chol[:, 0].abs(), chol[:, 1], chol[:, 2].abs()
    with torch.no_grad():
        hx = cutoff * torch.sqrt(a21 * a21 + a22 * a22) / (a11 * a22)
        hy = cutoff / a22
    inf = torch.tensor(float("inf"), dtype=chol.dtype, device=chol.device)
    hx = torch.where(torch.isfinite(hx), hx, inf)
    hy = torch.where(torch.isfinite(hy), hy, inf)
    return hx, hy


def log_weights_at(points: torch.Tensor, mu: torch.Tensor, chol: torch.Tensor, logpi: torch.Tensor) -> torch.Tensor:
    """Dense log-weights l_j(x) = log(pi_j) - q_j(x)/2 for points (P, 2) and kernels: (P, K)."""
    d = points[:, None, :] - mu[None, :, :]
    u = chol[:, 0] * d[..., 0] + chol[:, 1] * d[..., 1]
    v = chol[:, 2] * d[..., 1]
    return logpi - 0.5 * (u * u + v * v)


def bin_kernels(
    mu: torch.Tensor,
    chol: torch.Tensor,
    logpi: torch.Tensor,
    batch_offsets: list[int],
    height: int,
    width: int,
    *,
    tile: int = 16,
    scale: float = 1.0,
    cutoff: float = 5.0,
    fill: int = 4,
) -> TileLists:
    """Builds the per-tile kernel lists.

    mu, chol, logpi hold the kernels of B models back to back; model b owns kernels
    ``batch_offsets[b]:batch_offsets[b+1]`` and renders output image b of ``height`` x ``width`` pixels
    (output pixels, i.e. already multiplied by ``scale``).
    """
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    device = mu.device
    mu, chol, logpi = mu.detach(), chol.detach(), logpi.detach()
    B = len(batch_offsets) - 1
    n = mu.shape[0]
    tiles_x, tiles_y = (width + tile - 1) // tile, (height + tile - 1) // tile
    n_tiles = B * tiles_x * tiles_y
    counts_per_model = torch.tensor([batch_offsets[b + 1] - batch_offsets[b] for b in range(B)], device=device)
    model_of_kernel = torch.repeat_interleave(torch.arange(B, device=device), counts_per_model)

    hx, hy = box_half_sizes(chol, cutoff)
    # output pixel c' samples x = (c' + 0.5)/s - 0.5, so x in [lo, hi] <=> c' in [(lo + 0.5)s - 0.5, (hi + 0.5)s - 0.5]
    big = float(4 * max(width, height) + 16)
    c_lo = torch.ceil(((mu[:, 0] - hx + 0.5) * scale - 0.5).clamp(-big, big))
    c_hi = torch.floor(((mu[:, 0] + hx + 0.5) * scale - 0.5).clamp(-big, big))
    r_lo = torch.ceil(((mu[:, 1] - hy + 0.5) * scale - 0.5).clamp(-big, big))
    r_hi = torch.floor(((mu[:, 1] + hy + 0.5) * scale - 0.5).clamp(-big, big))
    visible = (c_hi >= 0) & (c_lo <= width - 1) & (r_hi >= 0) & (r_lo <= height - 1) & (c_lo <= c_hi) & (r_lo <= r_hi)
    tx0 = (c_lo.clamp(0, width - 1) // tile).long()
    tx1 = (c_hi.clamp(0, width - 1) // tile).long()
    ty0 = (r_lo.clamp(0, height - 1) // tile).long()
    ty1 = (r_hi.clamp(0, height - 1) // tile).long()
    model = torch.where(visible, model_of_kernel, torch.full_like(model_of_kernel, -1))
    rect = torch.stack([tx0, tx1, ty0, ty1, model], 1)

    lib = _cpu_library() if device.type == "cpu" else None
    if lib is not None:
        rect32 = rect.to(torch.int32).contiguous()
        counts = torch.empty(n_tiles, dtype=torch.int32)
        total = lib.smoe_bin_count(n, rect32.data_ptr(), tiles_x, tiles_y, n_tiles, counts.data_ptr())
        if total >= 2**31:
            raise RuntimeError("too many (tile, kernel) pairs for int32 indices; use a larger tile or a smaller cutoff")
        fill_tiles, fill_kernels = _fill(counts, mu, chol, logpi, model_of_kernel, tiles_x, tiles_y, tile, scale, fill)
        ft, fk = fill_tiles.to(torch.int32).contiguous(), fill_kernels.to(torch.int32).contiguous()
        tile_start = torch.empty(n_tiles + 1, dtype=torch.int32)
        tile_ids = torch.empty(int(total) + ft.numel(), dtype=torch.int32)
        lib.smoe_bin_fill(n, rect32.data_ptr(), tiles_x, tiles_y, n_tiles, ft.numel(), ft.data_ptr(), fk.data_ptr(),
                          tile_start.data_ptr(), tile_ids.data_ptr())
        return TileLists(tile_start, tile_ids, B, height, width, tile)

    nx = tx1 - tx0 + 1
    per_kernel = torch.where(visible, nx * (ty1 - ty0 + 1), torch.zeros_like(nx))
    kernel_of_entry = torch.repeat_interleave(torch.arange(n, device=device), per_kernel)
    first = torch.cumsum(per_kernel, 0) - per_kernel
    local = torch.arange(kernel_of_entry.numel(), device=device) - first[kernel_of_entry]
    nxe = nx[kernel_of_entry]
    tx = tx0[kernel_of_entry] + local % nxe
    ty = ty0[kernel_of_entry] + local // nxe
    tile_of_entry = (model_of_kernel[kernel_of_entry] * tiles_y + ty) * tiles_x + tx
    counts = torch.bincount(tile_of_entry, minlength=n_tiles)
    fill_tiles, fill_kernels = _fill(counts, mu, chol, logpi, model_of_kernel, tiles_x, tiles_y, tile, scale, fill)
    tile_of_entry = torch.cat([tile_of_entry, fill_tiles])
    kernel_of_entry = torch.cat([kernel_of_entry, fill_kernels])
    # sort by (tile, kernel): a deterministic order inside every tile (the CPU path's order)
    key = tile_of_entry * max(n, 1) + kernel_of_entry
    order = torch.sort(key, stable=True).indices
    tile_ids = kernel_of_entry[order].to(torch.int32)
    counts = torch.bincount(tile_of_entry, minlength=n_tiles)
    tile_start = torch.zeros(n_tiles + 1, dtype=torch.int64, device=device)
    tile_start[1:] = torch.cumsum(counts, 0)
    if tile_start[-1].item() >= 2**31:
        raise RuntimeError("too many (tile, kernel) pairs for int32 indices; use a larger tile or a smaller cutoff")
    return TileLists(tile_start.to(torch.int32), tile_ids.contiguous(), B, height, width, tile)


def _cpu_library():
    from . import cpu

    try:
        return cpu.load()
    except cpu.CPUBuildError:
        return None


def _fill(counts, mu, chol, logpi, model_of_kernel, tiles_x, tiles_y, tile, scale, fill):
    """(tile, kernel) pairs for the empty tiles, sorted by tile then kernel (empty tensors if none)."""
    empty = torch.nonzero(counts == 0).flatten().to(mu.device)
    none = torch.zeros(0, dtype=torch.int64, device=mu.device)
    if empty.numel() == 0 or mu.shape[0] == 0 or fill <= 0:
        return none, none
    t, k = _fill_empty_tiles(empty, mu, chol, logpi, model_of_kernel, tiles_x, tiles_y, tile, scale, fill)
    order = torch.sort(t * mu.shape[0] + k, stable=True).indices
    return t[order], k[order]


def _fill_empty_tiles(empty, mu, chol, logpi, model_of_kernel, tiles_x, tiles_y, tile, scale, fill):
    """For each empty tile, the ``fill`` kernels of its model with the largest log-weight at the tile centre."""
    per_image = tiles_x * tiles_y
    b = empty // per_image
    rem = empty % per_image
    ty, tx = rem // tiles_x, rem % tiles_x
    # centre of the tile in output pixels, mapped to image coordinates
    cx = ((tx * tile + tile / 2.0 - 0.5) + 0.5) / scale - 0.5
    cy = ((ty * tile + tile / 2.0 - 0.5) + 0.5) / scale - 0.5
    centres = torch.stack([cx, cy], 1).to(mu.dtype)
    out_tiles, out_kernels = [], []
    chunk = max(1, 2**22 // max(mu.shape[0], 1))
    for s in range(0, empty.numel(), chunk):
        sl = slice(s, s + chunk)
        lw = log_weights_at(centres[sl], mu, chol, logpi)
        lw = torch.where(model_of_kernel[None, :] == b[sl, None], lw, torch.full_like(lw, -math.inf))
        k = min(fill, mu.shape[0])
        top = torch.topk(lw, k, dim=1)
        # keep only kernels that belong to the tile's model (a model with fewer than k kernels)
        valid = model_of_kernel[top.indices] == b[sl, None]
        out_tiles.append(empty[sl, None].expand(-1, k)[valid])
        out_kernels.append(top.indices[valid])
    return torch.cat(out_tiles), torch.cat(out_kernels)
