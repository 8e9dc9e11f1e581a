"""RGB <-> YUV for the colour SMoE of the coding paper.

Section 2 (eqs. 6-8: experts with Y, U and V outputs) and section 3 ("Results": SSIM per Y, U, V channel) of

    R. Jongebloed, E. Bochinski, L. Lange and T. Sikora, "Quantized and Regularized Optimization for Coding
    Images Using Steered Mixtures-of-Experts", Communication Systems Group, Technische Universitaet Berlin
    (Data Compression Conference 2019; the venue is not printed in the stored text,
    /work/shared/papers/quantized_smoe_coding.txt).

The paper does not define its YUV. Following the authors' code (OpenCV's ``COLOR_BGR2YUV`` on float images),
on [0, 1] RGB:

    Y = 0.299 R + 0.587 G + 0.114 B,   U = 0.492 (B - Y) + 0.5,   V = 0.877 (R - Y) + 0.5.

No clipping: U spans [0.064, 0.936] and V [-0.115, 1.115] over the RGB cube, and clipping would break the
inverse. The inverse here is the exact algebraic one (R = Y + (V - 0.5) / 0.877, B = Y + (U - 0.5) / 0.492,
G = (Y - 0.299 R - 0.114 B) / 0.587), so rgb -> yuv -> rgb is the identity up to float rounding. OpenCV's
``COLOR_YUV2BGR`` instead uses rounded coefficients (2.032, -0.395, -0.581, 1.140), which is not an exact
inverse (errors up to about 1e-3); a decoder meant to match the authors' pictures bit for bit would need those.
Both functions take numpy arrays or torch tensors (differentiable) shaped (..., 3) with channels last; the
module does not import torch (the decoder runs without it).
"""
from __future__ import annotations

import sys

import numpy as np

from ...lazy import is_torch_tensor

KR, KG, KB = 0.299, 0.587, 0.114
KU, KV = 0.492, 0.877
OFFSET = 0.5


def _check(image, name: str):
    if is_torch_tensor(image):
        if not image.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {image.dtype}")
        arr = image
    else:
        arr = np.asarray(image)
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"{name} must be a floating-point array in [0, 1], got {arr.dtype}")
    if arr.ndim < 1 or arr.shape[-1] != 3:
        raise ValueError(f"{name} must have 3 channels in its last axis, got shape {tuple(arr.shape)}")
    return arr


def _stack(parts, like):
    return sys.modules["torch"].stack(parts, -1) if is_torch_tensor(like) else np.stack(parts, -1)


def rgb_to_yuv(rgb):
    """YUV (OpenCV's float BGR2YUV coefficients, module docstring) of an RGB image (..., 3)."""
    x = _check(rgb, "rgb")
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = KR * r + KG * g + KB * b
    return _stack([y, KU * (b - y) + OFFSET, KV * (r - y) + OFFSET], x)


def yuv_to_rgb(yuv):
    """The exact inverse of :func:`rgb_to_yuv` (no clipping)."""
    x = _check(yuv, "yuv")
    y, u, v = x[..., 0], x[..., 1], x[..., 2]
    r = y + (v - OFFSET) / KV
    b = y + (u - OFFSET) / KU
    g = (y - KR * r - KB * b) / KG
    return _stack([r, g, b], x)
