"""The N-SMoE encoder: a learned Laplacian resizer, then residual blocks with multi-head self-attention over three
levels, pooled to the numbers of one block's kernels ([N-SMoE]: "The encoder utilizes a Laplacian resizer with
bandpass filtering to capture local spatial information and employs multi-head attention to preserve
high-frequency (HF) structural patterns while estimating latent representations of the input image").

Architecture (the facts from the authors' code, github.com/anatolicvs/n-smoe, read, not copied; the sizes are
ours, for a compact model):

- :class:`LaplacianResizer`: ``y = up(x) + sum_i tanh(w_i up(G^{i+1} x - G^i x) + b_i)``, with ``up`` the
  bilinear resize by the scale factor (half-pixel centres), ``G`` a 5 x 5 Gaussian blur of sigma 1 (reflect
  padding) applied i times (so each term is one band of a Laplacian pyramid: the authors blur the running
  image, not the input), ``w_i ~ U(-0.1, 0.1)`` and ``b_i = 0`` at start (the authors' init); ``resizer_layers``
  terms, 1 to 8 (default 4). (One of the authors' versions clamps and uses ReLU instead of tanh; we follow the
  tanh form.)
- A 3 x 3 stem, then ``len(mults)`` levels (default three, widths ``width * (1, 2, 4)``) of ``res_blocks``
  :class:`ResBlock` (GroupNorm, GELU, 3 x 3 conv, twice; the second conv zero at start, as the authors') with
  :class:`SelfAttention` (GroupNorm, multi-head scaled dot-product attention over all positions, zero-started
  output projection) after each block whose resolution (side in pixels) is in ``attention_res`` (default
  16 and 8: the two low levels at x2, the lowest at x4), a stride-2 3 x 3 conv between levels.
- A middle of ResBlock, SelfAttention, ResBlock; then GroupNorm, GELU, average pooling to the kernel grid
  (rows x cols of :func:`~smoe_core.tasks.nsmoe.head.grid_shape`, 4 x 4 for k = 16, 4 x 8 for 32) and one
  1 x 1 conv shared by the cells, plus a per-kernel bias, giving kernel j = row * cols + col its ``6 + C``
  numbers. The authors pool to 1 x 1 and map to all 7k numbers with one 1 x 1 conv; we pool to the grid so each
  kernel's numbers come from its own part of the block (a global average of GroupNorm-ed features keeps little
  position, which placing kernels needs; in our 50-step smoke runs the grid head went from L1 0.070 to 0.061,
  the global one from 0.069 to 0.063, and a full linear layer from a flattened 4 x 4 map, 2048 inputs, made
  Adam's first steps throw the kernels about, L1 0.14 -> 0.074). The bias is set by
  :class:`~smoe_core.tasks.nsmoe.model.NSMoE` to the head's initial kernel grid; the conv starts small (x 0.01).
- Defaults (width 32, one ResBlock per level, 4 heads, GroupNorm of 8 groups) give about 1.1M parameters
  (:func:`count_parameters`); the configuration is refused above :data:`MAX_PARAMETERS` = 5M.

The encoder sees one block at a time ((N, C, b, b) -> (N, k * (6 + C))), as the authors': overlapping blocks
are encoded independently.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

MAX_PARAMETERS = 5_000_000


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_compact(encoder: nn.Module) -> None:
    """ValueError when an encoder has more than :data:`MAX_PARAMETERS` parameters."""
    n = count_parameters(encoder)
    if n > MAX_PARAMETERS:
        raise ValueError(f"the encoder has {n:,} parameters, more than the compact bound {MAX_PARAMETERS:,}")


def gaussian_taps(size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    """1-D normalized Gaussian taps (the 2-D kernel is their outer product)."""
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-t * t / (2 * sigma * sigma))
    return g / g.sum()


class LaplacianResizer(nn.Module):
    """Bilinear x ``scale`` plus ``n_layers`` learned band-pass residuals (see the module docstring)."""

    def __init__(self, scale: float, channels: int = 1, n_layers: int = 4, kernel_size: int = 5, sigma: float = 1.0):
        super().__init__()
        if not 1 <= int(n_layers) <= 8:
            raise ValueError(f"the resizer has 1 to 8 band-pass layers, got {n_layers}")
        self.scale, self.channels, self.kernel_size = float(scale), int(channels), int(kernel_size)
        self.weights = nn.Parameter(torch.empty(int(n_layers)).uniform_(-0.1, 0.1))
        self.biases = nn.Parameter(torch.zeros(int(n_layers)))
        g = gaussian_taps(kernel_size, sigma).to(torch.float32)
        self.register_buffer("taps", g, persistent=False)

    def blur(self, x: torch.Tensor) -> torch.Tensor:
        C, p = x.shape[1], self.kernel_size // 2
        g = self.taps.to(x.dtype)
        x = F.pad(x, (p, p, p, p), mode="reflect")
        x = F.conv2d(x, g.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
        return F.conv2d(x, g.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)

    def up(self, x: torch.Tensor) -> torch.Tensor:
        size = (int(round(x.shape[-2] * self.scale)), int(round(x.shape[-1] * self.scale)))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.up(x)
        cur = x
        for w, b in zip(self.weights, self.biases):
            blurred = self.blur(cur)
            out = out + torch.tanh(w * self.up(blurred - cur) + b)
            cur = blurred
        return out


def _groups(channels: int, groups: int) -> int:
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, groups: int = 8):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(c_in, groups), c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(_groups(c_out, groups), c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x):
        h = self.conv1(F.gelu(self.norm1(x)))
        h = self.conv2(F.gelu(self.norm2(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over all positions of a feature map, residual."""

    def __init__(self, channels: int, heads: int = 4, groups: int = 8):
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into {heads} heads")
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(channels, groups), channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.qkv(self.norm(x).reshape(B, C, H * W))  # (B, 3C, T)
        q, k, v = h.reshape(B, 3, self.heads, C // self.heads, H * W).transpose(-1, -2).unbind(1)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, heads, T, C / heads)
        a = a.transpose(-1, -2).reshape(B, C, H * W)
        return x + self.proj(a).reshape(B, C, H, W)


@dataclass
class EncoderConfig:
    scale: float = 2.0
    block: int = 16
    channels: int = 1
    per_kernel: int = 7
    width: int = 32
    mults: tuple = (1, 2, 4)
    res_blocks: int = 1
    heads: int = 4
    groups: int = 8
    attention_res: tuple = field(default=(16, 8))
    resizer_layers: int = 4
    grid: tuple = (4, 4)


class Encoder(nn.Module):
    """(N, C, b, b) LR blocks -> (N, out_features) numbers (see the module docstring)."""

    def __init__(self, config: EncoderConfig | None = None, **kwargs):
        super().__init__()
        cfg = config or EncoderConfig(**kwargs)
        self.config = cfg
        self.resizer = LaplacianResizer(cfg.scale, cfg.channels, cfg.resizer_layers)
        side = int(round(cfg.block * cfg.scale))
        ch = cfg.width * cfg.mults[0]
        self.stem = nn.Conv2d(cfg.channels, ch, 3, padding=1)
        layers: list[nn.Module] = []
        for level, mult in enumerate(cfg.mults):
            for _ in range(cfg.res_blocks):
                layers.append(ResBlock(ch, cfg.width * mult, cfg.groups))
                ch = cfg.width * mult
                if side in cfg.attention_res:
                    layers.append(SelfAttention(ch, cfg.heads, cfg.groups))
            if level != len(cfg.mults) - 1:
                layers.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                side = math.ceil(side / 2)
        self.levels = nn.Sequential(*layers)
        self.middle = nn.Sequential(ResBlock(ch, ch, cfg.groups), SelfAttention(ch, cfg.heads, cfg.groups),
                                    ResBlock(ch, ch, cfg.groups))
        self.out_norm = nn.GroupNorm(_groups(ch, cfg.groups), ch)
        self.grid = (int(cfg.grid[0]), int(cfg.grid[1]))
        self.pool = nn.AdaptiveAvgPool2d(self.grid)
        self.out = nn.Conv2d(ch, cfg.per_kernel, 1, bias=False)
        self.out_bias = nn.Parameter(torch.zeros(self.grid[0] * self.grid[1], cfg.per_kernel))
        with torch.no_grad():
            self.out.weight.mul_(0.01)
        check_compact(self)

    @property
    def out_features(self) -> int:
        return self.grid[0] * self.grid[1] * self.config.per_kernel

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, ch, rows, cols) features pooled to the kernel grid, before the output layer."""
        h = self.levels(self.stem(self.resizer(x)))
        return self.pool(F.gelu(self.out_norm(self.middle(h))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, k * per_kernel): kernel j = row * cols + col gets cell (row, col)'s numbers."""
        h = self.out(self.features(x)).flatten(2).transpose(1, 2)  # (N, k, per_kernel)
        return (h + self.out_bias).flatten(1)
