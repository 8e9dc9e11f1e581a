"""Image quality metrics on [0, 1] images ([AS-SMoE] section V-B: PSNR, SSIM).

``ssim`` is Wang et al.'s SSIM with the usual defaults (11x11 Gaussian window, sigma 1.5, K1 = 0.01,
K2 = 0.03, population statistics), as ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=1)`` computes it; colour images average the channels.
``ssim_torch`` is the same formula in torch (differentiable, for the SSIM loss of [QSMoE], eq. 9).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _pair(a, b):
    a = np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    b = np.asarray(b.detach().cpu() if isinstance(b, torch.Tensor) else b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {a.shape} and {b.shape}")
    return a, b


def mse(a, b) -> float:
    a, b = _pair(a, b)
    return float(np.mean((a - b) ** 2))


def psnr(a, b, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, 10 log10(range^2 / MSE); inf for identical images."""
    m = mse(a, b)
    return math.inf if m == 0 else 10.0 * math.log10(data_range**2 / m)


def psnr_from_mse(m: float, data_range: float = 1.0) -> float:
    return math.inf if m <= 0 else 10.0 * math.log10(data_range**2 / m)


def ssim(a, b, data_range: float = 1.0) -> float:
    """Structural similarity (Gaussian window 11x11, sigma 1.5); mean over channels for colour images."""
    from skimage.metrics import structural_similarity

    a, b = _pair(a, b)
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=data_range)
    if a.ndim == 3:
        kw["channel_axis"] = -1
    return float(structural_similarity(a, b, **kw))


def _gaussian_window(size: int, sigma: float, dtype, device) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g


def _blur_valid(maps: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The valid separable correlation of (M, H, W) maps with the 1-D window ``g`` along both axes:
    (M, H - n + 1, W - n + 1). One depthwise (``groups=M``) convolution per direction on channels-last data
    (on a CPU oneDNN's depthwise kernels in that layout are 5-50 times faster than one single-channel convolution
    per map, whose slow path took 0.7 s of a 0.77 s coding iteration at 512 x 512)."""
    M = maps.shape[0]
    t = maps[None].contiguous(memory_format=torch.channels_last)
    out = F.conv2d(F.conv2d(t, g.view(1, 1, 1, -1).expand(M, 1, 1, -1), groups=M),
                   g.view(1, 1, -1, 1).expand(M, 1, -1, 1), groups=M)
    return out.contiguous()[0]


class _SeparableBlur(torch.autograd.Function):
    """:func:`_blur_valid` with its adjoint as the backward pass: the gradient of a valid correlation with g is
    the valid correlation of the gradient, zero-padded by n - 1 on every side, with g reversed (autograd's own
    backward of the channels-last depthwise convolution is several times slower than the forward)."""

    @staticmethod
    def forward(ctx, maps, g):
        ctx.save_for_backward(g)
        return _blur_valid(maps, g)

    @staticmethod
    def backward(ctx, grad):
        (g,) = ctx.saved_tensors
        r = g.numel() - 1
        return _blur_valid(F.pad(grad, (r, r, r, r)), g.flip(0)), None


def _blur(maps: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The valid separable blur of (M, H, W) maps by the window ``g`` (differentiable in ``maps``)."""
    return _SeparableBlur.apply(maps, g) if maps.requires_grad else _blur_valid(maps, g)


class SSIMReference:
    """The local statistics of a fixed (reference) image for :func:`ssim_torch`: its (C, H, W) channels and their
    blurred mean and blurred square, computed once (a training loop compares many renders with one target). No
    gradient flows into it. ``shape`` is the image's shape as given ((H, W) or (H, W, C))."""

    def __init__(self, image: torch.Tensor):
        if not isinstance(image, torch.Tensor) or image.ndim not in (2, 3) or not image.is_floating_point():
            raise ValueError("image must be a floating-point (H, W) or (H, W, C) tensor, got "
                             f"{getattr(image, 'dtype', type(image).__name__)} {tuple(getattr(image, 'shape', ()))}")
        self.shape = tuple(image.shape)
        y = (image if image.ndim == 3 else image[..., None]).detach().permute(2, 0, 1)
        g = _gaussian_window(11, 1.5, y.dtype, y.device)
        with torch.no_grad():
            self.channels = y.contiguous()
            self.mean, self.sq = _blur(torch.cat([y, y * y], dim=0), g).split(y.shape[0], dim=0)


def ssim_torch(a: torch.Tensor, b, data_range: float = 1.0, per_channel: bool = False) -> torch.Tensor:
    """Differentiable SSIM of (H, W) or (H, W, C) tensors; the mean over the valid (unpadded) window
    positions, which is what :func:`ssim` reports. ``per_channel`` returns a (C,) tensor. ``b`` may be a
    :class:`SSIMReference` of a fixed image (its statistics are then not recomputed; the same values)."""
    ref = b if isinstance(b, SSIMReference) else None
    if a.shape != (ref.shape if ref is not None else b.shape):
        raise ValueError(f"images must have the same shape, got {tuple(a.shape)} and "
                         f"{tuple(ref.shape if ref is not None else b.shape)}")
    x = (a if a.ndim == 3 else a[..., None]).permute(2, 0, 1)  # (C, H, W)
    C = x.shape[0]
    g = _gaussian_window(11, 1.5, x.dtype, x.device)
    if ref is not None:
        y = ref.channels.to(x.dtype)
        mx, exx, exy = _blur(torch.cat([x, x * x, x * y], dim=0), g).split(C, dim=0)
        my, eyy = ref.mean.to(x.dtype), ref.sq.to(x.dtype)
    else:
        y = (b if b.ndim == 3 else b[..., None]).permute(2, 0, 1)
        mx, my, exx, eyy, exy = _blur(torch.cat([x, y, x * x, y * y, x * y], dim=0), g).split(C, dim=0)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    sxx = exx - mx * mx
    syy = eyy - my * my
    sxy = exy - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    per = s.mean(dim=(1, 2))
    return per if per_channel else per.mean()
