"""The SMoE image codec of [QSMoE] as one encoder and one decoder: an RGB image in, a ``.smoe`` file out
(:func:`encode_image`: the training schedule of :mod:`.schedule` with fake quantization, then the bitstream of
:mod:`.bitstream`), and back (:func:`decode_image`). ``smoe encode`` / ``smoe decode`` / ``smoe info`` call these.

Choices the paper leaves open, made here:

- Rate control. The paper traces one RD curve per image from snapshots of one sparsification path. One file
  needs one point: ``kernels=N`` stops the sparsification after the first step that leaves at most N kernels
  (``target_kernels`` of :func:`~.schedule.train`), ``lam=X`` runs every sparsification step at the constant
  lambda_S = X (x = sqrt(X k1 k2) in the paper's lambda_S = x^2 / (k1 k2)). Neither: ``kernels`` defaults to
  a sixth of the grid (2730 of 16384 on 512 x 512; the paper's Fig. 2 shows Lena at K = 2717, 0.6 bpp).
- Presets (iteration counts; the learning rates are always the paper's, converted to pixels):

  * ``paper``: 10k pre-training iterations, 50 sparsification steps of 1000 iterations at the pi rate 2e-5,
    500 fine-tuning iterations: the paper's schedule (hours per image on a 2-core CPU).
  * ``quick``: 1500 pre-training iterations, 50 steps of 40 iterations at the pi rate 5e-4 (the same pi
    budget per step as the paper's 1000 x 2e-5), 300 fine-tuning iterations, x in [0.1, 3] (on crops the
    paper's x up to 15 removes every kernel within 20 steps at this budget; see :mod:`.schedule`).
  * ``smoke``: a few iterations of each phase (tests).

  ``iters`` and ``seconds`` replace the preset's pre-training budget (whichever ends first).
- bpp counts every byte of the file: 8 x file bytes / (H W).
- The decoded image is the render of the dequantized model (tiled renderer), converted from YUV to RGB and
  clipped to [0, 1]; the encoder reports the metrics of exactly that image, so the decoder reproduces what the
  encoder measured bit for bit on the same backend.
- The decoder's backend. ``backend="tiled"`` (the default) and ``"cpu"`` render with the CPU build of the tiled
  renderer on numpy arrays (:mod:`smoe_core.render.cpu_numpy`), so decoding never imports torch, whose import
  is most of a decode's time (measured: ``smoe decode`` of a 512 x 512 file with 16384 kernels took 4.7-5.0 s
  with torch, of which 3.3-3.9 s were ``import torch``). A file therefore decodes to the same image on a machine
  with a GPU as on one without. ``"cuda"``, ``"torch"`` and ``"dense"`` render the dequantized model through
  :func:`smoe_core.render.render`; so does ``"tiled"`` where no C++ compiler is present (with render's
  warning). The training loop's renders are unaffected: they need gradients and use torch.
"""
from __future__ import annotations

import math
import time
import warnings

import numpy as np

from ...io import check_image
from ...render import cpu_numpy
from ...render.options import BACKENDS
from .bitstream import decode, describe, encode_with_info
from .color import rgb_to_yuv, yuv_to_rgb
from .quantize import QuantizedSMoE, grid_shape

PRESETS = {
    "smoke": dict(pretrain_iters=20, sparsify_steps=4, sparsify_iters=5, finetune_iters=5, sparsify_pi_rate=0.01,
                  x_range=(0.05, 0.3), prune_every=5),
    "quick": dict(pretrain_iters=1500, sparsify_steps=50, sparsify_iters=40, finetune_iters=300,
                  sparsify_pi_rate=5e-4, x_range=(0.1, 3.0)),
    "paper": dict(pretrain_iters=10_000, sparsify_steps=50, sparsify_iters=1000, finetune_iters=500,
                  sparsify_pi_rate=2e-5, x_range=(0.1, 15.0)),
}
#: The default kernel budget: this fraction of the k1 x k2 grid (module docstring).
DEFAULT_KERNEL_FRACTION = 1 / 6


def preset_schedule(preset: str, *, kernels: int | None = None, lam: float | None = None,
                    iters: int | None = None, seconds: float | None = None, image_shape=None) -> dict:
    """The keyword arguments of :func:`~.schedule.train` for a preset and the rate options (module docstring)."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {preset!r}")
    kw = dict(PRESETS[preset])
    if kernels is not None and lam is not None:
        raise ValueError("give kernels or lam, not both")
    if iters is not None:
        if isinstance(iters, bool) or int(iters) != iters or iters < 0:
            raise ValueError(f"iters must be a non-negative integer, got {iters!r}")
        kw["pretrain_iters"] = int(iters)
    if seconds is not None:
        if not (isinstance(seconds, (int, float)) and seconds > 0 and math.isfinite(seconds)):
            raise ValueError(f"seconds must be a positive number, got {seconds!r}")
        kw["pretrain_seconds"] = float(seconds)
        if iters is None:
            kw["pretrain_iters"] = 10**9
    if lam is not None:
        if not (isinstance(lam, (int, float)) and lam >= 0 and math.isfinite(lam)):
            raise ValueError(f"lam must be a non-negative number, got {lam!r}")
        if image_shape is None:
            raise ValueError("lam needs the image shape")
        k1, k2 = grid_shape(image_shape)
        x = math.sqrt(float(lam) * k1 * k2)
        kw["x_range"] = (x, x)
    else:
        if kernels is None and image_shape is not None:
            k1, k2 = grid_shape(image_shape)
            kernels = max(1, int(round(k1 * k2 * DEFAULT_KERNEL_FRACTION)))
        if kernels is not None:
            if isinstance(kernels, bool) or int(kernels) != kernels or kernels < 1:
                raise ValueError(f"kernels must be a positive integer, got {kernels!r}")
            if image_shape is not None and kernels > math.prod(grid_shape(image_shape)):
                raise ValueError(f"kernels must be at most the grid's {math.prod(grid_shape(image_shape))} "
                                 f"kernels, got {kernels}")
            kw["target_kernels"] = int(kernels)
    return kw




def render_quantized(q: QuantizedSMoE, *, backend: str = "tiled") -> np.ndarray:
    """The decoded RGB image of a quantized model: render (YUV), convert to RGB, clip to [0, 1] (float32).

    ``backend`` "tiled" (default) and "cpu": the torch-free CPU render (module docstring); the others (and
    "tiled" without a C++ compiler) through :func:`smoe_core.render.render`."""
    if not isinstance(q, QuantizedSMoE):
        raise ValueError(f"q must be a QuantizedSMoE, got {type(q).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "cpu" or (backend == "tiled" and cpu_numpy.available()):
        f = q.fields()
        yuv = cpu_numpy.render_numpy(f["mu"], f["chol"], f["pi"], f["experts"], q.image_shape)
    else:
        from ...render import render

        yuv = render(q.to_model(), backend=backend)
    return np.clip(yuv_to_rgb(np.asarray(yuv, np.float64)), 0.0, 1.0).astype(np.float32)


def encode_image(image, *, preset: str = "quick", kernels: int | None = None, lam: float | None = None,
                 iters: int | None = None, seconds: float | None = None, quantize: bool = True,
                 backend: str = "tiled", callback=None) -> tuple[bytes, dict]:
    """Trains the codec's SMoE on an RGB image (float (H, W, 3) in [0, 1]) and returns ``(file bytes, record)``.

    The record: kernels, bytes, bpp, psnr (RGB, of the decoded image), ssim611 (YUV 6:1:1, of the decoded
    image), seconds (training), the bitstream's info (models chosen, the paper's choice beside ours) and
    ``decoded`` (the decoded image, float32, as :func:`decode_image` returns it).
    """
    from ...metrics import psnr
    from .loss import ssim611
    from .schedule import train

    rgb = check_image(image)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"image must be an RGB image (H, W, 3), got shape {rgb.shape}")
    if float(rgb.min()) < 0.0 or float(rgb.max()) > 1.0:
        raise ValueError("image must hold values in [0, 1]")
    H, W = rgb.shape[:2]
    kw = preset_schedule(preset, kernels=kernels, lam=lam, iters=iters, seconds=seconds, image_shape=(H, W))
    t0 = time.perf_counter()
    result = train(rgb, quantize=quantize, backend=backend, callback=callback, **kw)
    seconds_train = time.perf_counter() - t0
    target = kw.get("target_kernels")
    if target is not None and result.quantized.n_active > target:
        warnings.warn(f"the sparsification path of preset {preset!r} ended at {result.quantized.n_active} kernels, "
                      f"above the {target} asked for: give --lambda, or a longer preset", RuntimeWarning,
                      stacklevel=2)
    data, info = encode_with_info(result.quantized)
    decoded = render_quantized(result.quantized, backend=backend)
    record = dict(kernels=result.quantized.n_active, bytes=len(data), bpp=8.0 * len(data) / (H * W),
                  psnr=psnr(decoded, rgb), ssim611=ssim611(rgb_to_yuv(decoded.astype(np.float64)), rgb_to_yuv(rgb)),
                  seconds=seconds_train, preset=preset, info=info, decoded=decoded, history=result.history)
    return data, record


def decode_image(data, *, backend: str = "tiled") -> tuple[np.ndarray, dict]:
    """``(RGB image float32 (H, W, 3) in [0, 1], header info)`` of a ``.smoe`` file's bytes (ValueError naming
    what is wrong for a file that is not a valid SMoE bitstream)."""
    q, info = decode(data)
    return render_quantized(q, backend=backend), info


__all__ = ["PRESETS", "DEFAULT_KERNEL_FRACTION", "preset_schedule", "encode_image", "decode_image",
           "render_quantized", "describe"]
