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


def ssim_torch(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, per_channel: bool = False) -> torch.Tensor:
    """Differentiable SSIM of (H, W) or (H, W, C) tensors; the mean over the valid (unpadded) window
    positions, which is what :func:`ssim` reports. ``per_channel`` returns a (C,) tensor."""
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    x = a if a.ndim == 3 else a[..., None]
    y = b if b.ndim == 3 else b[..., None]
    x = x.permute(2, 0, 1)[:, None]  # (C, 1, H, W)
    y = y.permute(2, 0, 1)[:, None]
    g = _gaussian_window(11, 1.5, x.dtype, x.device)
    gx, gy = g.view(1, 1, 1, -1), g.view(1, 1, -1, 1)

    def blur(t):
        return F.conv2d(F.conv2d(t, gx), gy)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    per = s.mean(dim=(1, 2, 3))
    return per if per_channel else per.mean()
