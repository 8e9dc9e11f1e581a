"""Native super-resolution with SMoE ([R-SMoE]: the abstract's "native super-resolution ...
not directly achievable with standard rasterized Gaussian kernel approaches", and Fig. 2, the RBF vs SMoE
comparison on super-resolution).

An SMoE is a continuous function of the image plane: fitted to the low-resolution (LR) image, it is rendered
at any scale (integer or not) by sampling it at the output pixel centres, ((c' + 0.5) / s - 0.5,
(r' + 0.5) / s - 0.5) in LR pixel coordinates (:func:`smoe_core.render` with ``scale=s``). This is the
pixel-centre alignment PIL's resize uses, so SMoE and the PIL interpolators produce the same sampling grid.

Choices the paper leaves open, made here:

- **Kernels and iterations**: ``n_kernels`` defaults to one kernel per ``PIXELS_PER_KERNEL`` = 4 LR pixels
  (a grid of 2 x 2-pixel cells: 4096 kernels on a 128 x 128 LR image); ``iters`` to ``DEFAULT_ITERS`` = 500
  Adam steps at the training defaults, a fixed budget (``tol=0`` unless given: the default stopping test
  ends these fits after ~150 steps, 0.5-1 dB short). Chosen on central 256 x 256 crops of scikit-image's
  camera and astronaut (gray, x2, outside the test set; bicubic 28.45 / 28.08 dB, Lanczos 28.89 / 28.56 dB):
  1 kernel per 1, 2, 4, 6, 9 LR pixels gave, after 800 steps, 28.41, 29.20, 29.39, 29.31, 29.05 dB on camera
  (astronaut: 28.25, 28.96, 29.29 for 1, 2, 4), with 4 within 0.1 dB of its best from 400 steps on. One
  kernel per pixel interpolates the LR image (fit > 65 dB) and upsamples no better than bicubic.
- **Degradation** (:func:`downsample`): the original is first cropped to a size divisible by the scale
  (top-left part kept), then resized by PIL's BICUBIC filter on float32 data (no 8-bit rounding). PIL's
  BICUBIC widens the filter support by the factor when reducing, i.e. it low-passes before subsampling
  (antialiasing), like MATLAB's ``imresize``, the degradation of the usual SR benchmarks. Colour images are
  resized per channel.
- **Baselines**: PIL ``BICUBIC`` and ``LANCZOS`` upsampling (and ``NEAREST`` as a floor), on float32 data.
- **Metrics**: PSNR and SSIM (:mod:`smoe_core.metrics`, data range 1) of every method's output clipped to
  [0, 1] against the cropped original, with ``shave`` = ``scale`` pixels removed at each border (the common
  practice of SR papers; ``shave=0`` keeps them), the same for all methods; on RGB images, over the RGB
  channels (not the Y channel some SR papers use).
"""
from __future__ import annotations

import math
import time

import numpy as np

from ..init import initializer_info
from ..io import check_image
from ..limits import check_count, check_kernels, check_memory
from ..render import output_shape, render, render_bytes
from ..training import fit

PIXELS_PER_KERNEL = 4
DEFAULT_ITERS = 500
METHODS = ("smoe", "bicubic", "lanczos", "nearest")


def default_kernels(shape) -> int:
    """The default kernel budget for an LR image of ``shape`` (H, W): one kernel per 4 pixels."""
    H, W = int(shape[0]), int(shape[1])
    return max(1, int(round(H * W / PIXELS_PER_KERNEL)))


def _check_scale(scale) -> float:
    try:
        s = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"scale must be a positive number, got {scale!r}") from None
    if not (s > 0 and math.isfinite(s)):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    return s


def pil_resize(image, size_hw, method: str) -> np.ndarray:
    """``image`` resized to (H, W) by PIL ("bicubic", "lanczos", "nearest", "box", "bilinear") on float32
    data, per channel; not clipped."""
    from PIL import Image

    filters = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
               "nearest": Image.Resampling.NEAREST, "box": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR}
    if method not in filters:
        raise ValueError(f"unknown resize method {method!r} (choose from {', '.join(filters)})")
    img = check_image(image)
    H, W = int(size_hw[0]), int(size_hw[1])
    chans = [img] if img.ndim == 2 else [img[..., c] for c in range(img.shape[2])]
    out = [np.array(Image.fromarray(np.ascontiguousarray(c, dtype=np.float32)).resize((W, H), filters[method]),
                      dtype=np.float32) for c in chans]
    return out[0] if img.ndim == 2 else np.stack(out, -1)


def crop_to_multiple(image, scale: int) -> np.ndarray:
    """The top-left part of ``image`` whose height and width are multiples of the integer ``scale``."""
    img = check_image(image)
    s = int(scale)
    if s != scale or s < 1:
        raise ValueError(f"the degradation needs an integer scale >= 1, got {scale}")
    H, W = (img.shape[0] // s) * s, (img.shape[1] // s) * s
    if H < s or W < s:
        raise ValueError(f"the image ({img.shape[0]} x {img.shape[1]}) is smaller than the scale {s}")
    return img[:H, :W]


def downsample(image, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(cropped original, LR image): crop to a multiple of ``scale``, then PIL BICUBIC (antialiased) by 1/scale."""
    hr = crop_to_multiple(image, scale)
    s = int(scale)
    return hr, pil_resize(hr, (hr.shape[0] // s, hr.shape[1] // s), "bicubic")


def upscale(image, scale, *, n_kernels: int | None = None, iters: int | None = None, init="grid", seed: int = 0,
            progress: bool = False, **fit_kwargs):
    """Fits an SMoE to ``image`` ((H, W) or (H, W, C) in [0, 1]) and renders it at ``scale`` (any positive
    number): returns ``(big, record)``, big float32 of shape (round(H * scale), round(W * scale)[, C]),
    clipped to [0, 1].

    ``n_kernels`` (default :func:`default_kernels`), ``iters`` (default 500, fixed: ``tol=0``), ``init`` (a name in
    ``smoe_core.init.INITIALIZERS`` or a function), ``seed`` (the fit's, and the initializer's if it takes
    one); other keyword arguments go to :func:`smoe_core.fit`. The record holds the method, scale, shapes,
    kernels, iterations, the fit's PSNR on the input and seconds; ``record["model"]`` is the fitted model.
    """
    img = check_image(image, bounded=True)
    s = _check_scale(scale)
    H, W = img.shape[:2]
    out_hw = output_shape((H, W), s)
    K = default_kernels((H, W)) if n_kernels is None else check_kernels(n_kernels, (H, W))
    iters = DEFAULT_ITERS if iters is None else check_count(iters, "iters", minimum=0)
    C = 1 if img.ndim == 2 else img.shape[2]
    check_memory(render_bytes((H, W), C, K, scale=s), f"rendering {out_hw[0]} x {out_hw[1]} pixels")
    t0 = time.perf_counter()
    info = initializer_info(init)
    model0, _ = info.fn(img, K, **info.seed_kwargs(seed))
    kwargs = dict(tol=0.0)
    kwargs.update(fit_kwargs)
    model, hist = fit(img, model0, iters=iters, seed=seed, progress=progress, **kwargs)
    big = np.clip(render(model, (H, W), scale=s), 0.0, 1.0).astype(np.float32)
    record = dict(method="smoe", scale=s, input_shape=(H, W), output_shape=out_hw, kernels_init=model0.n_kernels,
                  kernels=model.n_kernels, iterations=len(hist),
                  psnr_fit=float(hist.psnr.iloc[-1]) if len(hist) else float("nan"),
                  seconds=time.perf_counter() - t0, seed=int(seed), model=model)
    return big, record


def shave_border(image, shave: int) -> np.ndarray:
    """``image`` without ``shave`` pixels at each border."""
    b = int(shave)
    if b <= 0:
        return image
    if 2 * b >= min(image.shape[:2]):
        raise ValueError(f"cannot shave {b} pixels from a {image.shape[0]} x {image.shape[1]} image")
    return image[b:-b, b:-b]


__all__ = ["upscale", "downsample", "crop_to_multiple", "pil_resize", "shave_border",
           "default_kernels", "PIXELS_PER_KERNEL", "DEFAULT_ITERS", "METHODS"]
