"""N-SMoE as one torch module: LR image -> blocks -> encoder -> per-block SMoE kernels -> decoder -> stitched
SR image ([N-SMoE]: "a novel encoder network with an implicit probabilistic SMoE decoder"), and its losses.

- :class:`NSMoE` (:class:`NSMoEConfig`): cuts the LR batch (B, C, H, W) into blocks
  (:mod:`.blocks`), encodes every block (:mod:`.encoder`, in chunks of ``encode_chunk`` blocks), maps the
  numbers to kernels (:mod:`.head`), decodes all blocks of the batch at scale s in one renderer call and
  averages the overlaps: (B, C, H s, W s). ``stride`` defaults to the training stride (2); pass the
  configuration's ``test_stride`` at test time (4, the authors' :data:`~.blocks.TEST_STRIDE`, unless the network
  says otherwise: 8 for our super-resolution networks, :mod:`.train`'s ``SR_NETWORK``; :func:`.infer.restore` does
  this by default). An LR image of exactly one block is one block.
- Variants: ``n_kernels`` 16 (the authors' variants I and II) or 32 (III) (:data:`~.head.VARIANT_KERNELS`);
  what else tells I from II is not in our copy of the paper, so no other preset is offered.
- ``base`` (our choice; the authors decode the image itself, ``"none"``): ``"bicubic"`` adds the LR input upscaled
  by torch's bicubic interpolation (``align_corners=False``, a = -0.75; the input itself at scale 1) to the
  stitched decode, so the SMoEs decode the residual over it; the head's experts are then plain numbers
  (``residual_experts`` must be off) that start at 0, and an untrained network already gives the bicubic image.
  Why: with the head's initial grid (16 kernels over 16 x 16 LR px) the untrained direct decode is 9 dB below
  bicubic (22.0 against 30.9 dB on the x2 validation crops), and a quick training never climbed out of it
  (25.7 dB after 8,000 steps); the best per-block kernels fitted to the HR crops themselves
  (:func:`smoe_core.studies.nsmoe_paper.block_ceiling`) reach about the same in either form (x2, k = 32: 35.1 dB
  direct, 36.0 dB residual), so the residual form costs the decoder nothing and starts from bicubic.
  What it does not fix, measured: the start is a saddle. With every expert 0 the decode is 0 whatever the
  kernels' geometry, so centres, scales and angles get no gradient, and the experts' gradient is the residual
  averaged under the initial broad gates, close to 0 (the residual of an interpolation is locally zero-mean). The
  quick x2 training (8,000 steps) stayed there: its decoded residual correlates 0.05 with the true one and adds
  0.01 dB to the base on 16 validation crops. Measured since (x2, 2,000-step pilots and least-squares probes on
  the validation crops; not built into the package): the same network fits 8 fixed crops (+1.3 dB over its base
  in 500 steps), so the loop and the decoder's gradients work; keeping only textured training crops (HR std
  >= 0.03: a third of the crops are flat background), a 5x learning rate, or normalizing each block's contrast
  (experts scaled by the block's std) all stay at the base (31.17 dB against 31.17). The reason is the decoder's
  geometry: with the head's initial grid, the best experts that are *linear* in a 7 x 7 LR neighbourhood, fitted
  by least squares over 6,144 training blocks, add 0.005 dB; with a hand-steered geometry (kernel pairs on
  both sides of the 12 strongest LR edges, elongated along them, plus a background grid; 4,096 blocks)
  0.03 dB; a dense unsharp-mask residual on the bicubic image adds 0.28 dB. So at the start no small step of the
  geometry or the experts improves the loss, and the 4.9 dB the kernels can hold (the oracle, above) needs geometry
  far from any start we tried. Not built: a data-driven geometry that makes a linear expert predictor useful, or
  training far longer than the quick preset (the authors train 48 h on 4 GPUs).
  Probes of session 9 (x2, the same 48 validation crops, PIL bicubic 30.93 dB, torch bicubic 31.17 dB; scripts not
  in the package): (1) a plain residual CNN over torch's bicubic (7 3 x 3 convolutions of width 32, pixel shuffle,
  57k parameters, 32 px crops) reaches 31.85 dB after 500 steps and 32.12 dB (+1.19 dB over PIL bicubic) after
  4,500 steps, 11 min of one core: the data and the budget allow the issue's x2 gain nearly, so the block decoder's
  start is what stops the network. (2) Distillation: kernels fitted block by block (300 Adam steps) to the HR
  residual of 2,048 one-block training crops (+4.3 to +4.9 dB on those blocks), and the shared encoder trained to
  regress their raw numbers (standardized): validation falls to 29.7-31.0 dB, below bicubic, and the pixel loss
  that follows returns it to the bicubic base (31.16-31.17 dB) within 250 steps. (3) The same with kernels fitted
  to a CNN teacher's residual (a target that is a function of the LR block; the teacher gains 2.6-3.1 dB on those
  blocks, its SMoE fits keep 1.9-2.3 dB of it): the regression again ends below bicubic and the pixel loss again
  returns to the base. So an SMoE per block can carry a gain that the LR block predicts, but neither the pixel loss
  from the grid start nor a regression of fitted raw numbers finds an encoder that outputs it. (4) Linear experts
  (e_k + s_k . (x - mu_k), two slopes per kernel from the encoder, zero at start; shared encoder, one-block crops,
  Adam 1e-3 halved at 50/75/90 %): the slope's gradient, the gate-weighted first moment of the residual, is not zero
  across an edge, and the run leaves the base: 31.20-31.24 dB from step 4,000 to 8,000 (10 min of one core) against
  31.14-31.17 dB for constant experts in the same loop (3,000 steps). A small lift, +0.06 dB over the base, the
  only one seen from the grid start: since session 10 the super-resolution networks' default
  (``experts="linear"``, :mod:`.train`'s ``SR_NETWORK``). Probes of session 10: (5) linear experts started at the
  LR block's first-order Taylor expansion at each centre, decoding the image directly (no base): the untrained
  start is 25.7 dB (constant experts 23.1 dB): with 32 kernels on a 16 x 16 block a blend of local planes
  extrapolated 2 px interpolates far worse than bicubic. (6) Experts that blend the bicubic image with the
  block's value at the centre, ``a_j b(x) + (1 - a_j) e_j`` (a_j = 0.95 at start, 30.99 dB): training drove
  every a_j to 1 within 250 steps and stayed at the base (31.17 dB through 6,000 steps): the sharp
  piecewise-constant alternative loses on average. (7) Linear experts with the trunk over a 32 px context crop and
  only the central block decoded (so the trunk sees real neighbours in training, as at test time): 31.20, 31.18
  and 31.17 dB at steps 500 to 1,500, then 18.4 dB at step 2,000 (diverged at Adam 1e-3); stopped.
  Session 12 found what the probes above missed: kernel density. The shared encoder gives a cell the same numbers
  wherever its block sits, so overlapping blocks at the test stride repeat one another's kernels; with 32 kernels a
  block the decode is one smooth piece per 4 x 2 LR px cell, too coarse for the residual's detail. With 256 kernels
  a block (one per LR px; linear experts, the same 4,000-step loop) validation reached 31.97 dB (64 kernels:
  31.64 dB; 32 kernels: 31.22 dB after 20,000 steps), +1.9 dB over PIL bicubic on the test crops (x4: +2.4 dB):
  the super-resolution networks' setting since (:mod:`.train`, ``SR_NETWORK``).
- Output: not clipped (the authors clamp to [0, 1], which stops the gradient of out-of-range pixels); clip for
  display and metrics.
- :func:`pixel_loss`: L1, or L2 (mean squared error) for x2, the authors' choice per scale (``kind`` forces
  one). The perceptual (VGG) and adversarial (spectral-norm U-Net discriminator) terms of the authors' GAN
  training are not built: a perceptual loss needs pretrained weights, which are not available here, and it is
  never computed from random weights.
- Cost: the encoder dominates (forward + backward of 16 blocks, 16 -> 32 px at x2, one CPU thread on a loaded
  2-core machine: encoder 0.58 s, head and decoder 0.01 s). Each block is encoded on its own, so at
  stride 2 every LR pixel is encoded by up to 64 blocks (a 32 x 32 crop has 81 blocks, a 512 x 512 image at the
  test stride 4 has 15,625): train on one-block crops (16 LR px), infer under ``torch.no_grad()``.
- ``experts``: ``"constant"`` (the authors') or ``"linear"`` (two slopes per channel and kernel from the encoder,
  zero at start; :mod:`.head`).
- ``encoder`` (our variant): ``"block"`` is the authors' (above); ``"shared"`` runs one fully convolutional trunk
  (``trunk_width`` x ``trunk_depth``) over each whole LR image and gives each kernel the mean feature of its cell of
  the block (:mod:`.shared_encoder`): the work per LR pixel no longer grows with the overlap, and a training crop
  larger than a block trains all its blocks for one trunk pass.
- :func:`train_steps`: plain Adam steps on given (LR, HR) pairs (a smoke-training loop; the full training loop,
  with data, schedule, validation and checkpoints, is :mod:`.train`, behind ``smoe nsmoe train``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import blocks as blk
from .encoder import Encoder, EncoderConfig, count_parameters
from .head import DEFAULT_KERNELS, GATINGS, BlockKernels, KernelHead, decode, grid_shape, raw_size
from .shared_encoder import SharedEncoder, SharedEncoderConfig

LOSSES = ("l1", "l2")
BASES = ("none", "bicubic")
#: "block": the authors' encoder, each block on its own (:mod:`.encoder`); "shared": one fully convolutional
#: trunk over the whole image, pooled per kernel cell (:mod:`.shared_encoder`; our variant)
ENCODERS = ("block", "shared")
#: "constant": the authors' experts; "linear": two slopes per channel and kernel as well (:mod:`.head`; our option)
EXPERTS = ("constant", "linear")


@dataclass
class NSMoEConfig:
    scale: float = 2.0
    n_kernels: int = DEFAULT_KERNELS
    block: int = blk.BLOCK
    stride: int = blk.TRAIN_STRIDE
    test_stride: int = blk.TEST_STRIDE
    channels: int = 1
    gating: str = "smoe"
    backend: str = "tiled"
    std_min: float = 0.1
    residual_experts: bool = True
    base: str = "none"
    width: int = 32
    mults: tuple = (1, 2, 4)
    res_blocks: int = 1
    heads: int = 4
    groups: int = 8
    attention_res: tuple = field(default=(16, 8))
    resizer_layers: int = 4
    encode_chunk: int = 512
    encoder: str = "block"
    trunk_width: int = 32
    trunk_depth: int = 4
    experts: str = "constant"

    @property
    def per_kernel(self) -> int:
        return raw_size(1, self.channels, self.experts == "linear")

    def shared_encoder_config(self) -> SharedEncoderConfig:
        return SharedEncoderConfig(block=self.block, channels=self.channels, per_kernel=self.per_kernel,
                                   grid=grid_shape(self.n_kernels), width=self.trunk_width, depth=self.trunk_depth)

    def encoder_config(self) -> EncoderConfig:
        return EncoderConfig(scale=self.scale, block=self.block, channels=self.channels,
                             per_kernel=self.per_kernel, width=self.width, mults=self.mults,
                             res_blocks=self.res_blocks, heads=self.heads, groups=self.groups,
                             attention_res=self.attention_res, resizer_layers=self.resizer_layers,
                             grid=grid_shape(self.n_kernels))


class NSMoE(nn.Module):
    """LR (B, C, H, W) -> SR (B, C, H s, W s); see the module docstring."""

    def __init__(self, config: NSMoEConfig | None = None, **kwargs):
        super().__init__()
        cfg = config or NSMoEConfig(**kwargs)
        if cfg.gating not in GATINGS:
            raise ValueError(f"gating must be one of {GATINGS}, got {cfg.gating!r}")
        if cfg.base not in BASES:
            raise ValueError(f"base must be one of {BASES}, got {cfg.base!r}")
        if cfg.base != "none" and cfg.residual_experts:
            raise ValueError("a base image and residual experts would add the input twice: "
                             "set residual_experts=False with base=" + repr(cfg.base))
        if cfg.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {cfg.encoder!r}")
        if cfg.experts not in EXPERTS:
            raise ValueError(f"experts must be one of {EXPERTS}, got {cfg.experts!r}")
        blk.out_size(cfg.block, cfg.scale)  # a block must be a whole number of output pixels
        for name in ("stride", "test_stride"):
            v = getattr(cfg, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= cfg.block:
                raise ValueError(f"{name} must be an integer from 1 to the block size {cfg.block}, got {v!r}")
        self.config = cfg
        self.encoder = (SharedEncoder(cfg.shared_encoder_config()) if cfg.encoder == "shared"
                        else Encoder(cfg.encoder_config()))
        self.head = KernelHead(cfg.n_kernels, cfg.block, cfg.channels, std_min=cfg.std_min,
                               residual_experts=cfg.residual_experts, linear_experts=cfg.experts == "linear")
        with torch.no_grad():
            self.encoder.out_bias.copy_(self.head.initial_raw())

    @property
    def n_parameters(self) -> int:
        return count_parameters(self)

    def encode(self, lr_blocks: torch.Tensor) -> BlockKernels:
        """Kernels of (N, C, b, b) LR blocks (encoded in chunks)."""
        n = max(1, int(self.config.encode_chunk))
        raw = torch.cat([self.encoder(lr_blocks[i:i + n]) for i in range(0, lr_blocks.shape[0], n)], 0)
        return self.head(raw, lr_blocks)

    def kernels(self, lr: torch.Tensor, stride: int | None = None) -> tuple[BlockKernels, torch.Tensor]:
        """The kernels of every block of an LR batch and the blocks' (row, col) origins (the shared encoder runs its
        trunk once over each whole image)."""
        b = self.config.block
        lr_blocks, origins = blk.cut(lr, b, stride or self.config.stride)
        if self.config.encoder == "shared":
            return self.head(self.encoder.encode_image(lr, origins), lr_blocks), origins
        return self.encode(lr_blocks), origins

    def forward(self, lr: torch.Tensor, stride: int | None = None, gating: str | None = None) -> torch.Tensor:
        cfg = self.config
        kernels, origins = self.kernels(lr, stride)
        out = decode(kernels, cfg.scale, gating=gating or cfg.gating, backend=cfg.backend)
        return blk.stitch(out, origins, lr.shape[-2:], cfg.scale) + self.base_image(lr)

    def base_image(self, lr: torch.Tensor) -> torch.Tensor | float:
        """What the stitched decode is added to: 0 (``base="none"``) or the bicubic upscale of ``lr`` (B, C, H, W)."""
        return base_image(lr, self.config.scale, self.config.base)


def network_from_meta(meta: dict) -> NSMoE:
    """An (untrained) network of a checkpoint's configuration, ready for ``load_state_dict``."""
    net_cfg = dict(meta["network_config"])
    for k in ("mults", "attention_res"):
        net_cfg[k] = tuple(net_cfg[k])
    return NSMoE(NSMoEConfig(**net_cfg))


def base_image(lr: torch.Tensor, scale: float, base: str = "bicubic") -> torch.Tensor | float:
    """The image the SMoEs' residual is added to (module docstring, ``base``): 0, or the LR batch (B, C, H, W)
    upscaled by torch's bicubic interpolation to (H s, W s) (itself at scale 1)."""
    if base == "none":
        return 0.0
    if base not in BASES:
        raise ValueError(f"base must be one of {BASES}, got {base!r}")
    if float(scale) == 1.0:
        return lr
    H, W = lr.shape[-2:]
    size = (blk.out_size(H, scale), blk.out_size(W, scale))
    return F.interpolate(lr, size=size, mode="bicubic", align_corners=False)


def pixel_loss(pred: torch.Tensor, target: torch.Tensor, scale: float | None = None, kind: str | None = None):
    """L1, or L2 (MSE) at x2 (``kind`` "l1" / "l2" overrides the rule)."""
    if kind is None:
        kind = "l2" if scale is not None and float(scale) == 2.0 else "l1"
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
    return F.l1_loss(pred, target) if kind == "l1" else F.mse_loss(pred, target)


def train_steps(net: NSMoE, lr_images: torch.Tensor, hr_images: torch.Tensor, steps: int, *, batch: int = 16,
                learning_rate: float = 2e-4, loss: str | None = None, seed: int = 0) -> list[float]:
    """``steps`` Adam steps on random mini-batches of the (N, C, h, w) / (N, C, h s, w s) pairs; returns the
    loss of every step. Deterministic under ``seed`` (mini-batch order; the weights are the caller's)."""
    gen = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.Adam(net.parameters(), lr=learning_rate)
    net.train()
    history = []
    for _ in range(int(steps)):
        idx = torch.randperm(lr_images.shape[0], generator=gen)[:batch]
        opt.zero_grad(set_to_none=True)
        value = pixel_loss(net(lr_images[idx]), hr_images[idx], net.config.scale, loss)
        value.backward()
        opt.step()
        history.append(float(value.detach()))
    return history
