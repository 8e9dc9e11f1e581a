"""Image denoising with SMoE and multi-model fusion ([R-SMoE]: the TL;DR's "multi-model fusion
to enhance denoising, yielding measurable gains in PSNR/SSIM with reduced artifacts", and Fig. 2, the RBF vs
SMoE comparison on denoising), with the classical baselines BM3D, non-local means and TV.

An SMoE fitted to a noisy image with few kernels (each kernel spans many pixels) cannot follow the noise,
so its render is a denoised image. Fusion: S models are fitted to the noisy image shifted by

    (dy, dx) = (2 * floor(s / 8), 2 * (s mod 8)) pixels,  s = 0 .. S-1     (:func:`shift_schedule`)

(the R-SMoE authors' code; S = 8 recommended, at most 64: the 64 shifts cover the even offsets 0..14 in both
axes), each is rendered, shifted back and the renders are averaged per pixel. The initializer lays its
kernels relative to the frame it is given, so each shift puts the kernels at another phase relative to the
image content and the S models' errors are partly independent (cycle spinning). ``models=1`` is the single
model (s = 0, no shift): the plain SMoE denoiser.

Choices the paper leaves open, made here:

- **Direction and axes**: dy is rows (down), dx is columns (right): noisy pixel (r, c) sits at pixel
  (r + dy, c + dx) of the s-th model's frame, as with ``np.roll(noisy, (dy, dx), axis=(0, 1))``.
- **Borders** (``border=``):

  * ``"reflect"`` (default): the frame is (H + dy) x (W + dx); the dy rows and dx columns the shift opens at
    the top and left are the image mirrored about its first row / column (``np.pad(mode="reflect")``, the
    edge pixel not repeated). The frame holds the whole image, so every pixel is the mean of all S renders.
  * ``"crop"``: the frame moves by (dy, dx) into the image instead and keeps only the overlap: the s-th model
    is fitted to ``noisy[dy:, dx:]`` and its render covers those pixels only. Each pixel is the mean over
    the models that cover it (only the overlapping part counts): pixels in the top dy rows / left dx columns
    average fewer models (pixel (0, 0) only the s = 0 model).
  * ``"roll"``: the frame is H x W and ``np.roll`` wraps the rows and columns pushed out at the bottom/right
    back in at the top/left. Every pixel averages S renders, but each model must fit an artificial seam at
    the wrap, which blurs the image borders; kept for comparison with implementations that roll.

  With ``"reflect"`` and ``"crop"`` the kernel budget of each model scales with its frame's area
  (round(n_kernels * frame area / image area)), so all models have the same kernel density. Measured on
  128 x 128 crops of scikit-image's camera / astronaut (sigma 25, defaults, S = 8), the three are equal
  within noise: reflect 28.51 / 28.37, crop 28.51 / 28.31, roll 28.55 / 28.43 dB (single model 27.62 /
  27.33 dB). "reflect" is the default because it needs no seam and weights every pixel alike.
- **Kernels and iterations** (a function of image size): ``n_kernels`` defaults to one kernel per
  ``PIXELS_PER_KERNEL`` = 64 pixels (a grid of 8 x 8-pixel cells; 1024 kernels on 256 x 256), ``iters`` to
  ``DEFAULT_ITERS`` = 300 Adam steps at the training module's default learning rates and a fixed budget
  (``tol=0``): the number of steps is part of the regularization (early stopping), so it is not left to a
  convergence test. Chosen on 128 x 128 crops of two images outside the test set (scikit-image's camera and
  astronaut, sigma = 25): densities of 36 / 64 / 100 / 144 pixels per kernel gave best PSNRs of
  26.8 / 27.5 / 26.3 / 26.4 dB (camera) and 26.6 / 27.1 / 27.1 / 26.3 dB (astronaut), with 64 peaking at
  300 steps. Denser models follow the noise and want fewer steps; heavier noise (sigma 50) prefers sparser
  ones: pass ``n_kernels`` / ``iters``.
- **Seeds**: model s is fitted (and, for initializers that take a seed, initialized) with ``seed + s``; so
  the S = 1 result is exactly the first model of every fusion, and
  :func:`smoe_core.studies.r_smoe_restoration.denoising_experiment` evaluates
  S = 1 and S = 8 from one run of 8 fits (the fusion over the first S models).
- **Output**: the fused image is clipped to [0, 1].
- **Parallelism**: the S fits are independent tasks of :func:`smoe_core.parallel.run_tasks` (serial, or one
  Dask worker process per fit with ``workers=`` / ``scheduler=``), one torch thread each, so serial and Dask
  runs give identical results. The baselines are single-threaded too (BM3D explicitly, see below), so every
  row of :func:`smoe_core.studies.r_smoe_restoration.denoising_experiment` (and of its ``run_denoise_item``) is the same number
  however often, wherever and with however many threads it runs (the ``seconds`` column aside).
- **Noise** (:func:`add_noise`): additive white Gaussian noise of standard deviation sigma on the 0-255 scale
  (sigma / 255 on [0, 1] images), float32, **not clipped** by default: the convention of the denoising
  papers' PSNR tables (BM3D's own experiments included), and what BM3D's Gaussian noise model assumes;
  ``clip=True`` clips to [0, 1] (what an 8-bit PNG of the noisy image holds, as with ``smoe denoise``).

Baselines (:func:`denoise_baseline`), all given the true sigma (no estimation), on [0, 1] floats:

- ``"bm3d"``: the ``bm3d`` package (Mäkinen, Azzari, Foi; PyPI ``bm3d``, tested with 4.0.3),
  ``bm3d.bm3d(noisy, sigma_psd=sigma/255)`` with its default profile for gray, ``bm3d.bm3d_rgb`` (opponent
  colour transform) for RGB, except that the profile's ``num_threads`` is :data:`BM3D_THREADS` = 1 instead of
  the package's 0 ("automatic": one thread per CPU of its own thread pool, which ignores torch's and
  OpenMP's settings). With more than one thread the package aggregates the block estimates in whatever order
  its threads finish ("may yield slightly different results each application", its profile says): the same
  call gave PSNRs differing by up to 1e-6 dB (SSIMs by 2e-8) from run to run, serially and on Dask workers
  alike, and the thread count itself changes the result (by 1.4e-5 dB on a 128 x 128 crop). One thread makes
  it a deterministic function of its input (and on a shared 2-core machine it is no slower). If the package
  is missing the baseline raises ImportError saying how to install.
- ``"nlm"``: ``skimage.restoration.denoise_nl_means`` with the parameters of scikit-image's own guidance:
  ``patch_size=5, patch_distance=6, fast_mode=True, sigma=sigma/255, h=0.8*sigma/255`` (the docstring's
  "h = 0.8 * sigma when fast_mode is True"), with the known sigma in place of ``estimate_sigma``'s estimate.
- ``"tv"``: ``skimage.restoration.denoise_tv_chambolle`` with ``weight = TV_WEIGHT_PER_SIGMA * sigma/255``,
  ``TV_WEIGHT_PER_SIGMA`` = 0.8: the factor that maximized the mean PSNR over sigma = 15/25/50 on
  scikit-image's camera and astronaut (gray, central 256 x 256 crops, images outside the test set; factors
  0.5, 0.7, 0.8, 0.9, 1.0, 1.2, 1.4, 2.0 gave 26.63, 27.62, 27.67, 27.56, 27.36, 27.06, 26.58, 25.75 dB).

PSNR and SSIM are :mod:`smoe_core.metrics`' (data range 1, whole image, no border shaved).
"""
from __future__ import annotations

import math
import time

import numpy as np

from ..init import initializer_info
from ..io import TEST_IMAGES, check_image, image_key
from ..limits import check_count, check_kernels
from ..parallel import run_tasks
from ..render import render
from ..training import fit

PIXELS_PER_KERNEL = 64
DEFAULT_ITERS = 300
MAX_MODELS = 64
BORDERS = ("reflect", "crop", "roll")
BASELINES = ("bm3d", "nlm", "tv")
TV_WEIGHT_PER_SIGMA = 0.8
#: threads of the BM3D baseline: 1, the only setting with run-to-run identical results (module docstring)
BM3D_THREADS = 1
NLM_H_PER_SIGMA = 0.8


# ---------------------------------------------------------------------- noise
def image_number(name) -> int:
    """The number of an image in the noise seeds: a test image's position in ``TEST_IMAGES`` (0-3), any other
    image 4 + crc32(its key) mod 1e6 (:func:`smoe_core.io.image_key`: a file's stem and content hash). It depends on the image alone,
    not on which other images run with it, so a run split into pieces draws the same noise as a whole one."""
    import zlib

    key = image_key(name)
    if key in TEST_IMAGES:
        return TEST_IMAGES.index(key)
    return len(TEST_IMAGES) + zlib.crc32(key.encode()) % 1_000_000


def noise_seed(seed: int, name, sigma: float) -> int:
    """The seed of the noise added to image ``name`` at ``sigma``: ``seed + 1000 * image_number(name) + sigma``."""
    return int(seed) + 1000 * image_number(name) + int(sigma)


def add_noise(image, sigma: float, seed: int = 0, *, clip: bool = False) -> np.ndarray:
    """``image`` + white Gaussian noise of standard deviation ``sigma`` / 255 (float32; see module docstring).

    ``sigma`` is on the 0-255 scale; the same ``seed`` gives the same noise. Not clipped unless ``clip``.
    """
    img = check_image(image)
    if not (sigma >= 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a number >= 0, got {sigma}")
    rng = np.random.default_rng(seed)
    noisy = img.astype(np.float64) + rng.standard_normal(img.shape) * (float(sigma) / 255.0)
    if clip:
        noisy = np.clip(noisy, 0.0, 1.0)
    return noisy.astype(np.float32)


# ---------------------------------------------------------------------- shifts
def shift_schedule(models: int) -> list[tuple[int, int]]:
    """[(dy, dx)] for s = 0 .. models-1: (2 * floor(s / 8), 2 * (s mod 8)) (rows, columns)."""
    models = int(models)
    if models < 1:
        raise ValueError(f"models must be >= 1, got {models}")
    return [(2 * (s // 8), 2 * (s % 8)) for s in range(models)]


def default_kernels(shape) -> int:
    """The default kernel budget for an image of ``shape`` (H, W): one kernel per 64 pixels."""
    H, W = int(shape[0]), int(shape[1])
    return max(1, int(round(H * W / PIXELS_PER_KERNEL)))


def _hw_pad(img: np.ndarray, top: int, left: int, mode: str) -> np.ndarray:
    pad = [(top, 0), (left, 0)] + [(0, 0)] * (img.ndim - 2)
    return np.pad(img, pad, mode=mode)


def shifted_frame(noisy: np.ndarray, dy: int, dx: int, border: str) -> tuple[np.ndarray, tuple[int, int]]:
    """The s-th model's frame for a shift (dy, dx), and where image pixel (0, 0) lies in it (reflect, roll)
    or where the frame's pixel (0, 0) lies in the image (crop). See :func:`unshift`."""
    if border == "reflect":
        return _hw_pad(noisy, dy, dx, "reflect"), (dy, dx)
    if border == "roll":
        return np.roll(noisy, (dy, dx), axis=(0, 1)), (dy, dx)
    if border == "crop":
        return noisy[dy:, dx:], (dy, dx)
    raise ValueError(f"border must be one of {BORDERS}, got {border!r}")


def unshift(rendered: np.ndarray, shape, dy: int, dx: int, border: str) -> tuple[np.ndarray, np.ndarray]:
    """(image, weight): a frame's render in image coordinates and the (H, W) mask of pixels it covers."""
    H, W = int(shape[0]), int(shape[1])
    if border == "reflect":
        return rendered[dy:dy + H, dx:dx + W], np.ones((H, W), np.float32)
    if border == "roll":
        return np.roll(rendered, (-dy, -dx), axis=(0, 1)), np.ones((H, W), np.float32)
    if border == "crop":
        out = np.zeros((H, W) + rendered.shape[2:], np.float32)
        out[dy:, dx:] = rendered
        weight = np.zeros((H, W), np.float32)
        weight[dy:, dx:] = 1.0
        return out, weight
    raise ValueError(f"border must be one of {BORDERS}, got {border!r}")


# ---------------------------------------------------------------------- one model (a run_tasks task)
def fit_shifted(task: dict) -> dict:
    """Fits one model of the fusion (module-level so Dask can pickle it).

    ``task``: noisy, shift (dy, dx), border, n_kernels (for the whole image), iters, init, seed, fit_kwargs.
    Returns the render in image coordinates, its coverage weight and a record.
    """
    noisy, (dy, dx), border = task["noisy"], task["shift"], task["border"]
    H, W = noisy.shape[:2]
    frame, _ = shifted_frame(noisy, dy, dx, border)
    fh, fw = frame.shape[:2]
    kernels = max(1, int(round(task["n_kernels"] * fh * fw / (H * W))))
    t0 = time.perf_counter()
    info = initializer_info(task["init"])
    model0, _ = info.fn(frame, kernels, **info.seed_kwargs(task["seed"]))
    kwargs = dict(tol=0.0)
    kwargs.update(task.get("fit_kwargs") or {})
    model, hist = fit(frame, model0, iters=task["iters"], seed=task["seed"], progress=False, **kwargs)
    rendered = render(model, (fh, fw))
    image, weight = unshift(rendered, (H, W), dy, dx, border)
    record = dict(shift=(dy, dx), frame=(fh, fw), kernels_init=model0.n_kernels, kernels=model.n_kernels,
                  iterations=len(hist), psnr_to_noisy=float(hist.psnr.iloc[-1]) if len(hist) else float("nan"),
                  seconds=time.perf_counter() - t0, seed=task["seed"])
    return dict(image=image, weight=weight, record=record)


def fuse(images, weights) -> np.ndarray:
    """Per-pixel mean of renders in image coordinates over the models that cover each pixel."""
    num = None
    den = None
    for img, w in zip(images, weights):
        wb = w if img.ndim == 2 else w[..., None]
        num = img * wb if num is None else num + img * wb
        den = wb if den is None else den + wb
    if num is None:
        raise ValueError("no renders to fuse")
    if np.any(den == 0):
        raise ValueError("some pixels are covered by no model")
    return (num / den).astype(np.float32)


def check_models(models) -> int:
    """``models`` as an int in 1..MAX_MODELS (ValueError otherwise)."""
    S = int(models)
    if S != models or not 1 <= S <= MAX_MODELS:
        raise ValueError(f"models must be an integer from 1 to {MAX_MODELS}, got {models}")
    return S


def fit_shifted_models(noisy, S: int, *, n_kernels: int, iters: int, init, seed: int, border: str, workers=None,
                       scheduler=None, progress: bool = True, fit_kwargs: dict | None = None) -> list[dict]:
    """The first ``S`` fits of the fusion (:func:`fit_shifted` results, model s with seed ``seed + s``), for
    callers that fuse several prefixes of one run (S = 1 and S = 8 from one run of 8 fits). ``noisy``,
    ``n_kernels``, ``iters`` and ``border`` as checked by :func:`check_denoise_inputs`."""
    tasks = [dict(noisy=noisy, shift=sh, border=border, n_kernels=n_kernels, iters=iters, init=init,
                  seed=int(seed) + s, fit_kwargs=fit_kwargs) for s, sh in enumerate(shift_schedule(S))]
    return run_tasks(fit_shifted, tasks, workers=workers, scheduler=scheduler, progress=progress,
                     desc="denoise fits")


def check_denoise_inputs(noisy, n_kernels, iters, border):
    """(image, n_kernels, iters): ``noisy`` validated, the defaults filled in (:func:`default_kernels`,
    ``DEFAULT_ITERS``); ValueError naming the argument otherwise."""
    img = check_image(noisy, name="noisy", bounded=True)
    if border not in BORDERS:
        raise ValueError(f"border must be one of {BORDERS}, got {border!r}")
    if n_kernels is None:
        n_kernels = default_kernels(img.shape)
    n_kernels = check_kernels(n_kernels, img.shape)
    iters = DEFAULT_ITERS if iters is None else check_count(iters, "iters", minimum=0)
    return img, n_kernels, iters


# ---------------------------------------------------------------------- public API
def denoise(noisy, *, models: int = 8, n_kernels: int | None = None, iters: int | None = None, init="grid",
            seed: int = 0, border: str = "reflect", workers: int | None = None, scheduler=None,
            progress: bool = True, **fit_kwargs):
    """Denoises ``noisy`` ((H, W) or (H, W, C): floats in [0, 1] plus noise, within
    :data:`smoe_core.io.IMAGE_RANGE`, or a uint8 / uint16 array) by fusing ``models`` shifted SMoE fits.

    ``n_kernels`` (per model, for the whole image; default :func:`default_kernels`), ``iters`` (Adam steps;
    default 300), ``init`` (a name in ``smoe_core.init.INITIALIZERS`` or a function), ``seed`` (model s uses
    ``seed + s``), ``border`` ("reflect", "crop" or "roll": see the module docstring), ``workers`` /
    ``scheduler`` (Dask, see :func:`smoe_core.parallel.run_tasks`); other keyword arguments go to
    :func:`smoe_core.fit` (e.g. ``lr``). ``models=1`` is the single-model denoiser.

    Returns ``(clean, record)``: the fused image clipped to [0, 1] (float32, the shape of ``noisy``) and a
    dict (method, models, shifts, border, n_kernels, iters, init, seed, seconds, and ``fits``: one record per
    model with its shift, frame, kernels, iterations, PSNR to the noisy frame and seconds).
    """
    S = check_models(models)
    img, n_kernels, iters = check_denoise_inputs(noisy, n_kernels, iters, border)
    t0 = time.perf_counter()
    results = fit_shifted_models(img, S, n_kernels=n_kernels, iters=iters, init=init, seed=seed, border=border,
                       workers=workers, scheduler=scheduler, progress=progress, fit_kwargs=fit_kwargs)
    clean = np.clip(fuse([r["image"] for r in results], [r["weight"] for r in results]), 0.0, 1.0)
    record = dict(method="smoe" if S == 1 else "smoe-fusion", models=S, shifts=shift_schedule(S), border=border,
                  n_kernels=n_kernels, iters=iters, init=init if isinstance(init, str) else getattr(init, "__name__", "custom"),
                  seed=int(seed), seconds=time.perf_counter() - t0, fits=[r["record"] for r in results])
    return clean, record


def denoise_baseline(noisy, sigma: float, method: str) -> np.ndarray:
    """A classical denoiser with the true ``sigma`` (0-255 scale): "bm3d", "nlm" or "tv" (see the module
    docstring for the parameters). Returns float32 clipped to [0, 1], the shape of ``noisy``."""
    img = check_image(noisy).astype(np.float64)
    s = float(sigma) / 255.0
    color = img.ndim == 3 and img.shape[2] > 1
    gray_in = img[..., 0] if img.ndim == 3 and img.shape[2] == 1 else img
    if method == "bm3d":
        try:
            import bm3d
        except ImportError as exc:
            raise ImportError("the BM3D baseline needs the 'bm3d' package: pip install bm3d") from exc
        profile = bm3d.BM3DProfile()  # the default profile ("np"), single-threaded: deterministic
        profile.num_threads = BM3D_THREADS
        out = bm3d.bm3d_rgb(gray_in, s, profile=profile) if color else bm3d.bm3d(gray_in, s, profile=profile)
    elif method == "nlm":
        from skimage.restoration import denoise_nl_means

        out = denoise_nl_means(gray_in, patch_size=5, patch_distance=6, h=NLM_H_PER_SIGMA * s, sigma=s,
                               fast_mode=True, channel_axis=-1 if color else None)
    elif method == "tv":
        from skimage.restoration import denoise_tv_chambolle

        out = denoise_tv_chambolle(gray_in, weight=TV_WEIGHT_PER_SIGMA * s, channel_axis=-1 if color else None)
    else:
        raise ValueError(f"unknown baseline {method!r} (choose from {', '.join(BASELINES)})")
    out = np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)
    return out.reshape(img.shape)


__all__ = ["add_noise", "image_number", "noise_seed", "shift_schedule", "default_kernels", "shifted_frame", "unshift", "fit_shifted", "fuse",
           "denoise", "denoise_baseline", "fit_shifted_models", "check_denoise_inputs", "check_models", "PIXELS_PER_KERNEL", "DEFAULT_ITERS",
           "MAX_MODELS", "BORDERS", "BASELINES", "BM3D_THREADS"]
