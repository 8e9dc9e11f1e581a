"""A shared-trunk N-SMoE encoder: one fully convolutional pass over the whole low-resolution image, whose
features, averaged over each kernel's cell of a block, give every block's kernel numbers (our variant of the
[N-SMoE] encoder; ``NSMoEConfig(encoder="shared")``).

Why: the authors' encoder (:mod:`.encoder`) encodes every block on its own, so at the test stride 4 each LR pixel
is encoded by up to 16 blocks and at the training stride 2 by up to 64; a 512 x 512 input at x2 has 15,625
blocks and took minutes on this 2-core machine against the 5 s target (README, N-SMoE). Here the work per LR pixel
is one trunk pass whatever the stride, and a block costs a gather of its cells' features and one small linear
map.

Architecture (our choices):

- Trunk at LR resolution, translation-equivariant: a 3 x 3 stem (C -> ``width``), then ``depth`` residual blocks
  (3 x 3 conv, GELU, 3 x 3 conv; the second conv zero at start, so the trunk starts as the stem), all with
  replicate padding. No normalization layer: GroupNorm over a feature map would make a block's numbers depend on
  the statistics of the whole crop or image it sits in, so a network trained on crops would see other numbers on
  a whole image. Receptive field: ``3 + 4 depth`` LR px (19 for the default depth 4), beyond the 16 px block. No
  self-attention (the authors' attention runs over one block's positions; a trunk over the whole image would need
  windows, and we keep the trunk plain).
- Cells: the block's ``rows x cols`` kernel grid (:func:`~.head.grid_shape`: 4 x 4 for k = 16, 4 x 8 for 32)
  cuts it into cells of ``block / rows`` x ``block / cols`` LR px; kernel j = row * cols + col of the block at
  origin (r0, c0) gets the mean of the trunk's features over its cell, rows ``r0 + row ch ..`` and columns
  ``c0 + col cw ..`` (one ``avg_pool2d`` with stride 1 serves every origin), then one linear map (``width`` ->
  ``6 + C``, shared by all kernels, started at 0.01 of its default scale) plus a per-kernel bias, as the block
  encoder's head: the bias is set by :class:`~.model.NSMoE` to the head's initial kernel grid, so an untrained
  network gives that grid everywhere. The same cell content gives the same numbers wherever the cell sits, apart
  from the bias of its index in the block.
- :meth:`SharedEncoder.forward` takes blocks (N, C, b, b), each encoded as an image of its own (its trunk sees
  only the block, replicate-padded), so it drops in where the block encoder is called; :meth:`encode_image` takes
  whole images and origins, which is the fast path :class:`~.model.NSMoE` and
  :func:`~.infer.restore` use. The two agree where the trunk's receptive field stays inside the block.

Cost (defaults, width 32, depth 4: 9 convolutions of 32 channels): about 0.15 MFLOP per LR pixel and 75k
parameters (32 kernels a block). A 512 x 512 input at x2 and the test stride 4 (15,625 blocks) took 4.6 s on this
2-core machine's two threads (the trunk 1.5 s of it; chunks of 512 blocks; measured with untrained weights, which
cost the same), against minutes for the block encoder. Quality: a quick sr2 training (``smoe nsmoe train --preset
quick --task sr2 --encoder shared``, one thread, 0.6 s of CPU a step on a loaded machine) stopped at step 2,000 of
8,000 stayed at its bicubic base (validation 31.135-31.166 dB against 31.163 dB untrained): the residual form's
saddle (:mod:`.model`) is not a matter of how many blocks a step sees. With linear experts, on one-block crops at
Adam 1e-3, it is the super-resolution networks' default since session 10 (:mod:`.train`, ``SR_NETWORK``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .encoder import check_compact


@dataclass
class SharedEncoderConfig:
    block: int = 16
    channels: int = 1
    per_kernel: int = 7
    grid: tuple = (4, 4)
    width: int = 32
    depth: int = 4


class TrunkBlock(nn.Module):
    """x + conv(GELU(conv(x))), 3 x 3, replicate padding, the second conv zero at start."""

    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, padding_mode="replicate")
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, padding_mode="replicate")
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.gelu(self.conv1(x)))


class SharedEncoder(nn.Module):
    """LR images -> per-block kernel numbers through one shared trunk (module docstring)."""

    def __init__(self, config: SharedEncoderConfig | None = None, **kwargs):
        super().__init__()
        cfg = config or SharedEncoderConfig(**kwargs)
        rows, cols = int(cfg.grid[0]), int(cfg.grid[1])
        if cfg.block % rows or cfg.block % cols:
            raise ValueError(f"the kernel grid {rows} x {cols} does not cut a {cfg.block} px block into whole cells")
        if int(cfg.width) < 1 or int(cfg.depth) < 0:
            raise ValueError(f"width must be positive and depth non-negative, got {cfg.width} and {cfg.depth}")
        self.config = cfg
        self.grid = (rows, cols)
        self.cell = (cfg.block // rows, cfg.block // cols)
        self.stem = nn.Conv2d(cfg.channels, cfg.width, 3, padding=1, padding_mode="replicate")
        self.blocks = nn.Sequential(*[TrunkBlock(cfg.width) for _ in range(cfg.depth)])
        self.out = nn.Linear(cfg.width, cfg.per_kernel, bias=False)
        self.out_bias = nn.Parameter(torch.zeros(rows * cols, cfg.per_kernel))
        with torch.no_grad():
            self.out.weight.mul_(0.01)
        check_compact(self)

    @property
    def out_features(self) -> int:
        return self.grid[0] * self.grid[1] * self.config.per_kernel

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) LR images -> (B, width, H, W) features."""
        return self.blocks(F.gelu(self.stem(images)))

    def cell_means(self, features: torch.Tensor) -> torch.Tensor:
        """(B, width, H - ch + 1, W - cw + 1): the mean feature of the cell whose top-left pixel is (r, c)."""
        return F.avg_pool2d(features, self.cell, stride=1)

    def cell_offsets(self, device=None) -> torch.Tensor:
        """(k, 2) (row, col) offsets of the kernels' cells from their block's origin, kernel j = row * cols + col."""
        rows, cols = self.grid
        r = torch.arange(rows, device=device) * self.cell[0]
        c = torch.arange(cols, device=device) * self.cell[1]
        return torch.cartesian_prod(r, c)

    def numbers_at(self, cells: torch.Tensor, origins: torch.Tensor) -> torch.Tensor:
        """(B * n, k * per_kernel) numbers of the blocks at ``origins`` (n, 2) of every image of ``cells``
        (:meth:`cell_means`), ordered image by image, then as ``origins`` (the order of :func:`~.blocks.cut`)."""
        B, Fw, Hc, Wc = cells.shape
        pos = origins.to(cells.device)[:, None, :] + self.cell_offsets(cells.device)[None]  # (n, k, 2)
        if int(pos[..., 0].max()) >= Hc or int(pos[..., 1].max()) >= Wc or int(pos.min()) < 0:
            raise ValueError("a block's cells fall outside the image")
        flat = (pos[..., 0] * Wc + pos[..., 1]).reshape(-1)  # (n k,)
        feats = cells.flatten(2).index_select(2, flat)  # (B, width, n k)
        feats = feats.reshape(B, Fw, origins.shape[0], self.grid[0] * self.grid[1]).permute(0, 2, 3, 1)
        h = self.out(feats) + self.out_bias  # (B, n, k, per_kernel)
        return h.reshape(B * origins.shape[0], -1)

    def encode_image(self, images: torch.Tensor, origins: torch.Tensor) -> torch.Tensor:
        """(B * n, k * per_kernel): the numbers of the blocks at ``origins`` of every image (B, C, H, W)."""
        return self.numbers_at(self.cell_means(self.trunk(images)), origins)

    def forward(self, blocks: torch.Tensor) -> torch.Tensor:
        """(N, C, b, b) blocks, each encoded as an image of its own -> (N, k * per_kernel)."""
        return self.encode_image(blocks, torch.zeros(1, 2, dtype=torch.long))


__all__ = ["SharedEncoder", "SharedEncoderConfig", "TrunkBlock"]
