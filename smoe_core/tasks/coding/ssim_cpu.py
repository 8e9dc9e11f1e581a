"""The SSIM of the coding paper's loss (eq. 9 of [QSMoE]; Wang et al. 2004 with its defaults) as one compiled CPU
kernel, forward and backward: raw_kernels/ssim_cpu.cpp, built and cached by
:func:`smoe_core.render.build.compile_cached` in the build mode in force (the flags of the tiled renderer's CPU
build, :func:`smoe_core.render.cpu.flags`), loaded with :mod:`ctypes`, wrapped as an autograd function.

Why: at the paper's size (512 x 512, three channels) the SSIM-611 loss written in torch
(:func:`smoe_core.metrics.ssim_torch`: four depthwise convolutions, a dozen elementwise maps and autograd) took
100-120 ms of a 186-200 ms training iteration (one thread, 2-vCPU AMD EPYC). The kernel computes the image's three
blurred statistics in one horizontal and one vertical pass, the per-channel mean SSIM and, in the same pass, the
derivatives the backward pass needs; the backward pass is the adjoint blur of three maps (the formulas are in the
source's header).

It computes :func:`~smoe_core.metrics.ssim_torch` with a fixed target (:class:`SSIM611Target`): the same function,
rounded differently (the tests compare values and gradients with the torch version, and check the gradient by
finite differences in float64). One image (H, W, C) on the CPU, float32 or float64, against a target prepared once.
"""
from __future__ import annotations

import ctypes
import threading

import numpy as np
import torch

from ...metrics import SSIMReference
from ...render import cpu as render_cpu
from ...render.build import check_build_mode, compile_cached

SOURCE = "ssim_cpu.cpp"
WINDOW, SIGMA, K1, K2 = 11, 1.5, 0.01, 0.03


class SSIMBuildError(RuntimeError):
    """The SSIM kernel could not be compiled or loaded."""


_lock = threading.Lock()
_libs: dict[str, ctypes.CDLL] = {}


def load(mode: str | None = None) -> ctypes.CDLL:
    """The loaded library of build ``mode`` (None: the mode in force), compiled on first use."""
    mode = check_build_mode(mode)
    with _lock:
        if mode not in _libs:
            stem = "ssim_cpu" if mode == "fast" else f"ssim_cpu_{mode}"
            path = compile_cached(SOURCE, render_cpu.flags(mode), stem=stem, error=SSIMBuildError,
                                  cpu_specific=mode == "fast")
            try:
                lib = ctypes.CDLL(str(path))
            except OSError as exc:
                raise SSIMBuildError(f"loading {path} failed: {exc}") from exc
            p, i32 = ctypes.c_void_p, ctypes.c_int
            for suffix, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
                fwd = getattr(lib, f"smoe_ssim_forward_{suffix}")
                fwd.argtypes = [p, p, p, p, p, i32, i32, i32, i32, real, real, p, p, p, p, i32]
                fwd.restype = i32
                bwd = getattr(lib, f"smoe_ssim_backward_{suffix}")
                bwd.argtypes = [p, p, p, i32, i32, i32, i32, p, p, p, p, p, i32]
                bwd.restype = i32
            _libs[mode] = lib
        return _libs[mode]


def available() -> bool:
    """Whether the kernel compiles and loads here (else the loss uses the torch SSIM)."""
    try:
        load()
        return True
    except SSIMBuildError:
        return False


def gaussian_window(dtype: torch.dtype) -> torch.Tensor:
    """The 11-tap Gaussian window (sigma 1.5) normalized to sum 1, computed in float64 and rounded to ``dtype``."""
    t = np.arange(WINDOW, dtype=np.float64) - (WINDOW - 1) / 2
    g = np.exp(-t * t / (2 * SIGMA * SIGMA))
    return torch.from_numpy(g / g.sum()).to(dtype)


class SSIM611Target(SSIMReference):
    """A fixed (H, W, C) target: :class:`smoe_core.metrics.SSIMReference` (what the torch SSIM uses) plus the
    channels-last copies the kernel reads (the image, its blurred mean and blurred square), per dtype."""

    def __init__(self, image: torch.Tensor):
        super().__init__(image)
        self._hwc: dict[torch.dtype, tuple[torch.Tensor, ...]] = {}

    def channels_last(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image (H, W, C), blurred mean (Hv, Wv, C), blurred square (Hv, Wv, C)), contiguous, on the CPU."""
        if dtype not in self._hwc:
            self._hwc[dtype] = tuple(t.detach().to("cpu", dtype).permute(1, 2, 0).contiguous()
                                     for t in (self.channels, self.mean, self.sq))
        return self._hwc[dtype]


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


class FusedSSIM(torch.autograd.Function):
    """Per-channel SSIM (C,) of an (H, W, C) CPU tensor against an :class:`SSIM611Target`; differentiable in the
    image."""

    @staticmethod
    def forward(ctx, x, target, n_threads):
        dtype = x.dtype
        lib = load()
        f64 = dtype == torch.float64
        fwd = lib.smoe_ssim_forward_f64 if f64 else lib.smoe_ssim_forward_f32
        y, my, eyy = target.channels_last(dtype)
        xc = x.detach().contiguous()
        H, W, C = xc.shape
        g = gaussian_window(dtype)
        per = torch.empty(C, dtype=torch.float64)
        d = [torch.empty(my.shape, dtype=dtype) for _ in range(3)]
        rc = fwd(_ptr(xc), _ptr(y), _ptr(my), _ptr(eyy), _ptr(g), WINDOW, H, W, C, K1 * K1, K2 * K2, _ptr(per),
                 *(_ptr(t) for t in d), n_threads)
        if rc != 0:
            raise ValueError(f"the SSIM kernel needs an image of at least {WINDOW} x {WINDOW} pixels, got {H} x {W}")
        ctx.save_for_backward(xc, y, g, *d)
        ctx.n_threads = n_threads
        return per.to(dtype)

    @staticmethod
    def backward(ctx, grad_per):
        xc, y, g, dmx, dexx, dexy = ctx.saved_tensors
        H, W, C = xc.shape
        dtype = xc.dtype
        lib = load()
        bwd = lib.smoe_ssim_backward_f64 if dtype == torch.float64 else lib.smoe_ssim_backward_f32
        Hv, Wv = H - WINDOW + 1, W - WINDOW + 1
        scale = (grad_per.detach().to("cpu", dtype) / (Hv * Wv)).contiguous()
        dx = torch.empty_like(xc)
        rc = bwd(_ptr(xc), _ptr(y), _ptr(g), WINDOW, H, W, C, _ptr(scale), _ptr(dmx), _ptr(dexx), _ptr(dexy),
                 _ptr(dx), ctx.n_threads)
        if rc != 0:  # pragma: no cover - the forward pass checked the sizes
            raise ValueError("the SSIM kernel's backward pass failed")
        return dx, None, None


def ssim_per_channel(x: torch.Tensor, target: SSIM611Target, n_threads: int | None = None) -> torch.Tensor:
    """Per-channel SSIM (C,) of an (H, W, C) float32/float64 CPU tensor against ``target`` (differentiable)."""
    if not isinstance(target, SSIM611Target):
        raise ValueError(f"target must be an SSIM611Target, got {type(target).__name__}")
    if (not isinstance(x, torch.Tensor) or x.ndim != 3 or x.dtype not in (torch.float32, torch.float64)
            or x.device.type != "cpu"):
        raise ValueError("x must be a float32 or float64 (H, W, C) CPU tensor, got "
                         f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
    if tuple(x.shape) != target.shape:
        raise ValueError(f"x must have the target's shape {target.shape}, got {tuple(x.shape)}")
    threads = int(n_threads) if n_threads else torch.get_num_threads()
    return FusedSSIM.apply(x, target, threads)


__all__ = ["SSIM611Target", "FusedSSIM", "ssim_per_channel", "available", "load", "gaussian_window"]
