"""Full-image N-SMoE inference from a trained checkpoint: super-resolution or denoising of an image of any size in
bounded memory, and the predicted kernels as an SMoE model file ([N-SMoE]; the backend of ``smoe nsmoe upscale``
and ``smoe nsmoe denoise``).

- :func:`load_network`: a checkpoint (:mod:`.checkpoint`) -> the trained :class:`~.model.NSMoE` in eval mode.
  A checkpoint of step 0 (untrained weights) is refused; training never writes one.
- :func:`restore`: the image's blocks at the network's test stride (``NSMoEConfig.test_stride``: by default
  :data:`~.blocks.TEST_STRIDE` = 4, as the authors; 8 for our super-resolution networks, :mod:`.train`),
  encoded and decoded ``chunk`` blocks at a time under ``torch.no_grad()``, each chunk added into the running
  sums of the output and of the coverage, then divided: memory is the image, the output and one chunk (the same
  average as :func:`~.blocks.stitch`, summed in another order: equal to ``net(image, stride=4)`` up to float
  rounding). Memory beyond the image: about 0.4 GB for a chunk of 64 blocks at x4 with the compact encoder (1 GB at
  256), less at x2. An image side shorter than one block (16 px) is padded by replicating its border and the output
  cropped back. Gray images (the networks are trained on gray data); the output is not clipped (clip to save).
  A network with the shared encoder (``encoder="shared"``) runs its trunk once over the whole image first and
  gathers each chunk's numbers from it (memory: the trunk's features, ``trunk_width`` floats per LR pixel).
- ``export=True`` also gives the kernels of every block merged into one image-space :class:`~smoe_core.model.SMoE`
  over the LR image (:func:`~.head.image_model`, chunk by chunk): ``smoe render MODEL.npz --scale s`` renders it.
  It is one global SMoE over all blocks' kernels, an approximation of the stitched decode (see :mod:`.head`);
  16 kernels per block at stride 4 is one kernel per LR pixel. A network with a base image (``base="bicubic"``,
  :mod:`.model`) decodes the residual over it: its exported model is that residual, to which the bicubic upscale
  of the input must be added.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...model import SMoE
from . import blocks as blk
from . import checkpoint as ckpt
from .head import GATINGS, decode, image_model
from .model import NSMoE, base_image, network_from_meta

DEFAULT_CHUNK = 64
#: blocks decoded at a time with the shared encoder, whose chunks hold no encoder activations (512 x 512 at x2,
#: stride 4, 2 threads, untrained net: 5.2 s with chunks of 64, 4.6 s with 512 or 2048)
SHARED_CHUNK = 512


@dataclass
class Loaded:
    net: NSMoE
    checkpoint: ckpt.Checkpoint

    @property
    def task(self) -> str:
        return self.checkpoint.meta["task"]

    @property
    def scale(self) -> int:
        return int(self.checkpoint.meta["scale"])


def load_network(path) -> Loaded:
    """The trained network of a checkpoint file, in eval mode (CheckpointError for a bad or untrained file)."""
    state = ckpt.load(path)
    if state.step < 1:
        raise ckpt.CheckpointError(f"{state.path} holds untrained weights (step 0)")
    try:
        net = network_from_meta(state.meta)
        net.load_state_dict(state.model)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ckpt.CheckpointError(f"{state.path} does not match the N-SMoE network of this smoe "
                                   f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    net.eval()
    return Loaded(net, state)


def block_pixels(x: torch.Tensor, origins: torch.Tensor, block: int) -> torch.Tensor:
    """(n, C, block, block) blocks of one image (C, H, W) at (n, 2) (row, col) origins."""
    off = torch.arange(block)
    rows = (origins[:, 0, None] + off[None, :])[:, :, None]  # (n, b, 1)
    cols = (origins[:, 1, None] + off[None, :])[:, None, :]  # (n, 1, b)
    return x[:, rows, cols].permute(1, 0, 2, 3)


def restore(net: NSMoE, image, *, stride: int | None = None, chunk: int | None = None, export: bool = False,
            progress: bool = False, gating: str | None = None):
    """(output (H s, W s) float32 numpy, exported SMoE or None) for a gray (H, W) image in [0, 1] (module
    docstring). ``gating`` decodes with another gating than the network's (``"authors"`` / ``"smoe"``; the
    exported model is always our SMoE of the same kernels). ``chunk``: blocks per step (default
    :data:`DEFAULT_CHUNK`, :data:`SHARED_CHUNK` with the shared encoder). ``stride``: default the network's
    ``test_stride`` (:class:`~.model.NSMoEConfig`: 4, the authors'; 8 for the super-resolution networks)."""
    cfg = net.config
    stride = cfg.test_stride if stride is None else stride
    b, s = cfg.block, cfg.scale
    img = torch.as_tensor(np.asarray(image, dtype=np.float32))
    if img.ndim != 2:
        raise ValueError(f"N-SMoE inference takes a gray (H, W) image, got shape {tuple(img.shape)}")
    if gating is not None and gating not in GATINGS:
        raise ValueError(f"gating must be one of {GATINGS}, got {gating!r}")
    if not 1 <= int(stride) <= b:
        raise ValueError(f"the stride must be from 1 to the block size {b}, got {stride}")
    H, W = img.shape
    x = img[None, None]
    if H < b or W < b:
        x = F.pad(x, (0, max(0, b - W), 0, max(0, b - H)), mode="replicate")
    x = x[0]  # (1, Hp, Wp)
    Hp, Wp = x.shape[-2:]
    origins = blk.block_origins((Hp, Wp), b, stride)
    Ho, Wo = blk.out_size(Hp, s), blk.out_size(Wp, s)
    bo = blk.out_size(b, s)
    total = torch.zeros(Ho * Wo, dtype=torch.float32)
    weight = torch.zeros(Ho * Wo, dtype=torch.float32)
    off = torch.arange(bo)
    parts: list[SMoE] = []
    n = int(origins.shape[0])
    if chunk is None:
        chunk = SHARED_CHUNK if cfg.encoder == "shared" else DEFAULT_CHUNK
    step = max(1, int(chunk))
    from tqdm.auto import tqdm

    with torch.no_grad(), tqdm(total=n, desc="nsmoe", unit="block", disable=not progress, dynamic_ncols=True) as bar:
        cells = net.encoder.cell_means(net.encoder.trunk(x[None])) if cfg.encoder == "shared" else None
        for i in range(0, n, step):
            o = origins[i:i + step]
            lr_blocks = block_pixels(x, o, b)
            kernels = (net.encode(lr_blocks) if cells is None
                       else net.head(net.encoder.numbers_at(cells, o), lr_blocks))
            out = decode(kernels, s, gating=gating or cfg.gating, backend=cfg.backend)  # (m, 1, bo, bo)
            r0 = torch.tensor([blk.out_size(int(r), s) for r in o[:, 0]])
            c0 = torch.tensor([blk.out_size(int(c), s) for c in o[:, 1]])
            flat = ((r0[:, None, None] + off[None, :, None]) * Wo
                    + (c0[:, None, None] + off[None, None, :])).reshape(-1)
            total.index_add_(0, flat, out[:, 0].reshape(-1))
            weight.index_add_(0, flat, torch.ones(flat.numel()))
            if export:
                parts.append(image_model(kernels, o, (Hp, Wp)))
            bar.update(len(o))
    result = (total / weight.clamp_min(1)).reshape(Ho, Wo)
    if cfg.base != "none":
        result = result + base_image(x[None], s, cfg.base)[0, 0]
    result = result[:blk.out_size(H, s), :blk.out_size(W, s)]
    model = None
    if export:
        slopes = None if parts[0].slopes is None else np.concatenate([m.slopes for m in parts])
        model = SMoE(np.concatenate([m.mu for m in parts]), np.concatenate([m.chol for m in parts]),
                     np.concatenate([m.pi for m in parts]), np.concatenate([m.experts for m in parts]), slopes,
                     image_shape=(H, W))
    return result.numpy().astype(np.float32), model
