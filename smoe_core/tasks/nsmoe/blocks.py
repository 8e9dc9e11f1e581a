"""Overlapping blocks of a low-resolution image, and their decoded outputs stitched back ([N-SMoE]: the
network predicts one small SMoE per block of the LR image; each is decoded at the output scale and the
overlapping outputs are averaged).

Choices (the abstract says nothing about blocks; the facts below are from the authors' code,
github.com/anatolicvs/n-smoe, read, not copied):

- Blocks of ``block`` x ``block`` LR pixels (default :data:`BLOCK` = 16) whose top-left corners are
  ``stride`` apart (default :data:`TRAIN_STRIDE` = 2, overlap 14, in training; :data:`TEST_STRIDE` = 4,
  overlap 12, at test time).
- Coverage: when ``H - block`` is not a multiple of the stride, one more row (column) of blocks is added flush
  with the bottom (right) border, so every pixel is covered; the authors' reconstruction drops the remainder
  (those pixels stay 0). An image smaller than one block is refused.
- Stitching: each decoded block (``block * s`` pixels a side) is added at ``origin * s`` and the sum divided by
  the number of blocks covering the pixel (a plain average, as the authors'); the scale must make
  ``block * s`` and the origins integers in output pixels.
- Order: blocks are numbered image by image, then row-major by origin (row, then column).

All functions take and return torch tensors (B, C, H, W) and are differentiable.
"""
from __future__ import annotations

import torch

BLOCK = 16
TRAIN_STRIDE = 2
TEST_STRIDE = 4


def block_starts(size: int, block: int, stride: int) -> list[int]:
    """Start offsets along one axis: 0, stride, 2 stride, ... and ``size - block`` if that is not reached."""
    size, block, stride = int(size), int(block), int(stride)
    if block < 1 or stride < 1:
        raise ValueError(f"block and stride must be positive, got {block} and {stride}")
    if size < block:
        raise ValueError(f"an image side of {size} px is smaller than one block ({block} px)")
    starts = list(range(0, size - block + 1, stride))
    if starts[-1] != size - block:
        starts.append(size - block)
    return starts


def block_origins(shape, block: int = BLOCK, stride: int = TRAIN_STRIDE) -> torch.Tensor:
    """(n, 2) int64 (row, col) top-left corners of the blocks of an (H, W) image, row-major."""
    rows = torch.tensor(block_starts(shape[0], block, stride))
    cols = torch.tensor(block_starts(shape[1], block, stride))
    return torch.cartesian_prod(rows, cols).reshape(-1, 2)


def n_blocks(shape, block: int = BLOCK, stride: int = TRAIN_STRIDE) -> int:
    return len(block_starts(shape[0], block, stride)) * len(block_starts(shape[1], block, stride))


def cut(image: torch.Tensor, block: int = BLOCK, stride: int = TRAIN_STRIDE) -> tuple[torch.Tensor, torch.Tensor]:
    """The blocks of a batch (B, C, H, W): (B * n, C, block, block) and their (n, 2) origins (row, col)."""
    if image.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) tensor, got shape {tuple(image.shape)}")
    B, C, H, W = image.shape
    rows = torch.tensor(block_starts(H, block, stride), device=image.device)
    cols = torch.tensor(block_starts(W, block, stride), device=image.device)
    off = torch.arange(block, device=image.device)
    ri = (rows[:, None] + off[None, :])[:, None, :, None]  # (nr, 1, block, 1)
    ci = (cols[:, None] + off[None, :])[None, :, None, :]  # (1, nc, 1, block)
    blocks = image[:, :, ri, ci]  # (B, C, nr, nc, block, block)
    blocks = blocks.permute(0, 2, 3, 1, 4, 5).reshape(B * len(rows) * len(cols), C, block, block)
    return blocks, torch.cartesian_prod(rows.cpu(), cols.cpu()).reshape(-1, 2)


def out_size(size: int, scale: float) -> int:
    """An LR length in output pixels, which must be an integer."""
    v = size * float(scale)
    if abs(v - round(v)) > 1e-9:
        raise ValueError(f"{size} px at scale {scale:g} is not a whole number of output pixels")
    return int(round(v))


def stitch(decoded: torch.Tensor, origins: torch.Tensor, shape, scale: float = 1.0,
           return_weight: bool = False):
    """Averages decoded blocks (B * n, C, b, b), b = block * scale, into images (B, C, H * s, W * s).

    ``origins`` are the LR (row, col) corners :func:`cut` returned and ``shape`` the LR (H, W). With
    ``return_weight`` also returns the (H * s, W * s) number of blocks covering each output pixel.
    """
    N, C, b, b2 = decoded.shape
    n = int(origins.shape[0])
    if b != b2 or N % n:
        raise ValueError(f"decoded blocks {tuple(decoded.shape)} do not match {n} origins")
    B = N // n
    Ho, Wo = out_size(shape[0], scale), out_size(shape[1], scale)
    dev = decoded.device
    r0 = torch.tensor([out_size(int(r), scale) for r in origins[:, 0]], device=dev)
    c0 = torch.tensor([out_size(int(c), scale) for c in origins[:, 1]], device=dev)
    off = torch.arange(b, device=dev)
    flat = ((r0[:, None, None] + off[None, :, None]) * Wo + (c0[:, None, None] + off[None, None, :])).reshape(-1)
    if int(flat.max()) >= Ho * Wo:
        raise ValueError("a decoded block falls outside the output image (wrong scale or shape?)")
    vals = decoded.reshape(B, n, C, b * b).permute(0, 2, 1, 3).reshape(B, C, n * b * b)
    total = torch.zeros(B, C, Ho * Wo, dtype=decoded.dtype, device=dev).index_add(2, flat, vals)
    weight = torch.zeros(Ho * Wo, dtype=decoded.dtype, device=dev).index_add(
        0, flat, torch.ones(flat.numel(), dtype=decoded.dtype, device=dev))
    out = (total / weight.clamp_min(1)).reshape(B, C, Ho, Wo)
    if return_weight:
        return out, weight.reshape(Ho, Wo)
    return out


def overlap(block: int, stride: int) -> int:
    """The overlap of neighbouring blocks in LR pixels (the authors' parameter)."""
    return max(0, int(block) - int(stride))
