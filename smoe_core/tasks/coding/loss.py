"""The SSIM loss of the coding paper, with the Y:U:V = 6:1:1 channel weights ("SSIM-611").

Section 2 "Parameter Optimization" (eq. 9: L = 1 - SSIM(I_target, I_rec) "using default parameters as defined
in [8]") and section 3 "Results" ("the SSIM function in Eq. 9 is evaluated for each channel independently and
added up with weights Y:U:V <-> 6:1:1 ... The same weights are used to determine the SSIM value for
validation") of

    R. Jongebloed, E. Bochinski, L. Lange and T. Sikora, "Quantized and Regularized Optimization for Coding
    Images Using Steered Mixtures-of-Experts", Communication Systems Group, Technische Universitaet Berlin
    (Data Compression Conference 2019; the venue is not printed in the stored text,
    /work/shared/papers/quantized_smoe_coding.txt).

SSIM is Wang, Bovik, Sheikh and Simoncelli's (IEEE Trans. Image Processing 13(4), 2004; the paper's [8]) with
its defaults: 11 x 11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1, population statistics,
the mean over the window positions that lie inside the image. That is ``smoe_core.metrics.ssim_torch`` (the
same per-channel SSIM as ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1)``), reused here, not re-implemented.

Choices the paper leaves open: "added up with weights 6:1:1" is read as the weighted *mean*
(6 SSIM_Y + SSIM_U + SSIM_V) / 8, so the value stays in SSIM's scale (1 for identical images) and the
loss 1 - SSIM-611 is 0 at a perfect fit; a plain sum would only scale the loss by 8, which Adam ignores. The
data range is 1 for all three channels although V spans [-0.115, 1.115] (``color`` module): the authors'
code applies the same SSIM to all channels. ``smoe_core.fit(..., loss="ssim", channel_weights=YUV_WEIGHTS)``
computes the same loss.

Two implementations of the same function: the torch one above, and a compiled CPU kernel with a hand-written
backward pass (:mod:`.ssim_cpu`; 22-25 ms for forward and backward at 512 x 512 x 3 against 104-120 ms, one
thread, 2-vCPU AMD EPYC). The training loss (a target prepared by :func:`ssim611_target`, an image on the CPU)
uses the kernel where it compiles (``impl="auto"``); validation (:func:`ssim611`, float64) always uses torch, so
the reported SSIM-611 values are the torch reference's.
"""
from __future__ import annotations

import numpy as np
import torch

from ...metrics import SSIMReference, ssim_torch
from . import ssim_cpu

YUV_WEIGHTS = (6.0, 1.0, 1.0)
WINDOW = 11
#: the SSIM implementations of :func:`weighted_ssim` (module docstring)
IMPLS = ("auto", "kernel", "torch")


def _check_pair(rec, target):
    if isinstance(target, SSIMReference):  # its image was checked when it was made; the shapes are compared here
        if not isinstance(rec, torch.Tensor) or tuple(rec.shape) != target.shape:
            raise ValueError(f"rec must be a tensor of the reference's shape {target.shape}, got "
                             f"{tuple(getattr(rec, 'shape', ())) or type(rec).__name__}")
        if len(target.shape) != 3 or target.shape[0] < WINDOW or target.shape[1] < WINDOW:
            raise ValueError(f"target must be an (H, W, C) image of at least {WINDOW} x {WINDOW} pixels, got "
                             f"{target.shape}")
        return
    for name, t in (("rec", rec), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch tensor, got {type(t).__name__}")
        if t.ndim != 3 or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point (H, W, C) tensor, got {t.dtype} {tuple(t.shape)}")
        if t.shape[0] < WINDOW or t.shape[1] < WINDOW:
            raise ValueError(f"{name} must be at least {WINDOW} x {WINDOW} pixels (the SSIM window), "
                             f"got {tuple(t.shape[:2])}")
    if rec.shape != target.shape:
        raise ValueError(f"rec and target must have the same shape, got {tuple(rec.shape)} and {tuple(target.shape)}")


def _weights(weights, C: int, like: torch.Tensor) -> torch.Tensor:
    w = torch.as_tensor(weights, dtype=like.dtype, device=like.device).flatten()
    if w.numel() != C or not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(f"weights must be {C} finite non-negative numbers with a positive sum, got {weights!r}")
    return w / w.sum()


def ssim611_target(target: torch.Tensor) -> ssim_cpu.SSIM611Target:
    """A fixed (H, W, C) target prepared for :func:`ssim611_loss`: its local statistics computed once
    (:class:`smoe_core.metrics.SSIMReference`, with the copies the compiled kernel reads; the loss's value is
    the same)."""
    _check_pair(target, target)
    return ssim_cpu.SSIM611Target(target)


def _use_kernel(rec: torch.Tensor, target, impl: str) -> bool:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    fits = (isinstance(target, ssim_cpu.SSIM611Target) and rec.device.type == "cpu"
            and rec.dtype in (torch.float32, torch.float64))
    if impl == "kernel":
        if not fits:
            raise ValueError("impl='kernel' needs a target from ssim611_target and a float32/float64 CPU image")
        return True
    return impl == "auto" and fits and ssim_cpu.available()


def weighted_ssim(rec: torch.Tensor, target, weights=YUV_WEIGHTS, impl: str = "auto") -> torch.Tensor:
    """Differentiable weighted mean of the per-channel SSIM of two (H, W, C) images (default Y:U:V 6:1:1);
    ``target`` may be prepared once by :func:`ssim611_target`. ``impl``: "torch", "kernel" (the compiled CPU
    kernel; needs a prepared target) or "auto" (the kernel where it applies and compiles)."""
    _check_pair(rec, target)
    if _use_kernel(rec, target, impl):
        per = ssim_cpu.ssim_per_channel(rec, target)
    else:
        per = ssim_torch(rec, target, data_range=1.0, per_channel=True)
    return (per * _weights(weights, rec.shape[2], per)).sum()


def ssim611_loss(rec: torch.Tensor, target, weights=YUV_WEIGHTS, impl: str = "auto") -> torch.Tensor:
    """1 - SSIM-611 (eq. 9 with the 6:1:1 channel weights) of two (H, W, 3) YUV tensors; differentiable.
    ``target`` may be prepared once by :func:`ssim611_target` (a training loop's fixed target); ``impl`` as in
    :func:`weighted_ssim`."""
    return 1.0 - weighted_ssim(rec, target, weights, impl)


def ssim611(rec, target, weights=YUV_WEIGHTS) -> float:
    """SSIM-611 of two (H, W, 3) YUV images (numpy or torch) as a float, for validation (float64)."""
    def as_t(x, name):
        if isinstance(x, torch.Tensor):
            return x.detach().to("cpu", torch.float64)
        a = np.asarray(x)
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"{name} must be a floating-point image, got {a.dtype}")
        return torch.from_numpy(a.astype(np.float64))

    with torch.no_grad():
        return float(weighted_ssim(as_t(rec, "rec"), as_t(target, "target"), weights, impl="torch"))
