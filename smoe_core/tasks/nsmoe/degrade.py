"""The stochastic degradation model (SDM) of N-SMoE ([N-SMoE]: "a Stochastic Degradation Model (SDM), applying
diverse perturbations to downsampled inputs to approximate clinical conditions"): the authors train with
BSRGAN's extended model, ``degradation_bsrgan_plus`` (github.com/anatolicvs/n-smoe, utils/utils_blindsr.py,
itself from github.com/cszn/BSRGAN; read, not copied), rebuilt here on gray float images in [0, 1] with a
numpy ``Generator`` for every random draw (seeded, reusable, no global state).

:func:`bsrgan_plus` (one HR image -> (LR, HR target)):

1. the HR image is cropped to a multiple of the scale s (top-left part kept); the target is its USM-sharpened
   copy (:func:`usm_sharpen`: weight 0.5, Gaussian of sigma 8 px, the sigma OpenCV gives the authors' 51 x 51
   kernel, threshold 10/255, soft mask) when ``sharpen`` (default True; the authors' flag; their default is off
   in one version and on in another), and the chain starts from the target;
2. 13 steps, the authors' two rounds of [blur, resize, Gaussian noise, Poisson noise, speckle noise, camera
   ISP] with one JPEG between them; with probability ``shuffle_prob`` (0.5) their order is a random
   permutation, else the fixed order with the noise steps of each round shuffled among themselves. The camera
   ISP step (no model of it for medical images) is a no-op, as in the authors' code without an ISP model.

   - blur (:func:`random_blur`): with p 0.5 an anisotropic Gaussian (kernel side ``2 U{2..11} + 3``,
     angle U(0, pi), covariance eigenvalues l1, l2 ~ U(0, 4 + s) px^2), else an isotropic one (same side,
     sigma ~ U(0, 2 + 0.2 s) px), convolved with mirror borders (``scipy.ndimage.convolve(mode="mirror")``,
     the authors' call). Variances are floored at 1e-12 px^2 (a draw of 0 gives a delta kernel);
   - resize (:func:`random_resize`): up by U(1, 2) with p 0.2, down by U(0.5 / s, 1) with p 0.7, else kept;
     bilinear, bicubic or area interpolation with equal odds (the authors' OpenCV modes 1, 2, 3: torch's
     ``interpolate`` with half-pixel centres and no antialiasing, and ``area``);
   - Gaussian noise: sigma U{2..25} / 255, white (gray images);
   - Poisson noise (p 0.1): ``poisson(x * v) / v``, v = 10^U(2, 4); the authors first round x to 8 bits,
     which we skip so 16-bit data keep their depth;
   - speckle noise (p 0.1): ``x + x * n``, n ~ N(0, (U{2..25} / 255)^2);
   - JPEG (:func:`jpeg`): quality U{30..95}, PIL's encoder on the 8-bit rounded image (JPEG has 8 bits);

   every step clips to [0, 1];
3. a last resize to exactly (H / s, W / s) (interpolation drawn as above) and a last JPEG.

:func:`bicubic_blur` is the plain mode: bicubic downsampling by s (PIL's antialiased BICUBIC, as
:func:`smoe_core.tasks.superres.downsample`) followed by an isotropic Gaussian blur of sigma ``blur_sigma``
(DPSR's "bicubic down + blur" order), no noise; the HR target is the cropped image itself.

:func:`gaussian_noise` is the denoising mode (scale 1): ``clip(x + n, 0, 1)``, n white Gaussian of standard
deviation ``sigma`` / 255 (sigma on the 0-255 scale, as denoising papers quote it; clipped, as a noisy image
stored in a file is); the target is the clean image.

:class:`Degradation` binds a mode, scale and seed: ``Degradation(2, seed=0)(hr)`` returns ``(lr, hr_target)``;
successive calls continue one random stream (so a data pipeline draws a new degradation per sample), and two
objects with one seed give one sequence. Every function returns float32 images.
"""
from __future__ import annotations

import io as _bytes_io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from ..superres import pil_resize

MODES = ("bsrgan_plus", "bicubic_blur", "gaussian_noise")
RESIZE_METHODS = ("bilinear", "bicubic", "area")
STEPS = ("blur", "resize", "gaussian_noise", "poisson_noise", "speckle_noise", "isp", "jpeg",
         "blur", "resize", "gaussian_noise", "poisson_noise", "speckle_noise", "isp")
POISSON_PROB = SPECKLE_PROB = 0.1


def _gray(img) -> np.ndarray:
    a = np.asarray(img, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"the degradation works on gray (H, W) images, got shape {a.shape}")
    return a


# ---------------------------------------------------------------------- kernels and filters
def isotropic_gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """A normalized size x size Gaussian of standard deviation ``sigma`` centred on the middle tap (MATLAB's
    ``fspecial('gaussian')``)."""
    return anisotropic_gaussian_kernel(size, 0.0, sigma * sigma, sigma * sigma)


def anisotropic_gaussian_kernel(size: int, theta: float, l1: float, l2: float) -> np.ndarray:
    """A normalized size x size Gaussian whose covariance has eigenvalues ``l1`` (along the direction
    ``theta`` from the x axis) and ``l2`` (px^2; floored at 1e-12), centred on the middle tap."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"the kernel side must be odd and positive, got {size}")
    l1, l2 = max(float(l1), 1e-12), max(float(l2), 1e-12)
    c, s = math.cos(theta), math.sin(theta)
    cov = np.array([[c * c * l1 + s * s * l2, c * s * (l1 - l2)], [c * s * (l1 - l2), s * s * l1 + c * c * l2]])
    inv = np.linalg.inv(cov + 1e-12 * np.eye(2))
    r = np.arange(size) - (size - 1) / 2
    y, x = np.meshgrid(r, r, indexing="ij")
    q = inv[0, 0] * x * x + 2 * inv[0, 1] * x * y + inv[1, 1] * y * y
    k = np.exp(-0.5 * (q - q.min()))
    return k / k.sum()


def blur(img, kernel) -> np.ndarray:
    """Convolution with mirror borders (scipy's ``mode="mirror"``, the authors' call), float32."""
    return ndimage.convolve(_gray(img), np.asarray(kernel, dtype=np.float64), mode="mirror").astype(np.float32)


def transfer_function(kernel, fy: float, fx: float) -> complex:
    """The kernel's frequency response at (fy, fx) cycles per pixel: sum_k k[y, x] e^{-2 pi i (fy y + fx x)},
    taps indexed from the centre (what a convolution multiplies a sinusoid of that frequency by)."""
    k = np.asarray(kernel, dtype=np.float64)
    r = np.arange(k.shape[0]) - (k.shape[0] - 1) / 2
    y, x = np.meshgrid(r, r, indexing="ij")
    return complex(np.sum(k * np.exp(-2j * np.pi * (fy * y + fx * x))))


def resize(img, size_hw, method: str = "bicubic") -> np.ndarray:
    """Resized to (H, W) with torch's ``interpolate`` (half-pixel centres, no antialiasing, as OpenCV's
    linear and cubic; ``area`` averages), clipped to [0, 1]."""
    if method not in RESIZE_METHODS:
        raise ValueError(f"resize method must be one of {RESIZE_METHODS}, got {method!r}")
    H, W = max(1, int(size_hw[0])), max(1, int(size_hw[1]))
    t = torch.from_numpy(_gray(img))[None, None]
    kw = {} if method == "area" else {"align_corners": False}
    out = F.interpolate(t, size=(H, W), mode=method, **kw)[0, 0].numpy()
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def usm_sharpen(img, weight: float = 0.5, sigma: float = 8.0, threshold: float = 10 / 255) -> np.ndarray:
    """Unsharp masking (Real-ESRGAN's, the authors' ``add_sharpening``): ``K = clip(x + w (x - G x))``,
    applied where the soft mask (the Gaussian-blurred indicator of ``|x - G x| > threshold``) is on."""
    x = _gray(img)
    residual = x - ndimage.gaussian_filter(x, sigma, mode="reflect", truncate=25 / sigma)
    mask = (np.abs(residual) > threshold).astype(np.float64)
    soft = ndimage.gaussian_filter(mask, sigma, mode="reflect", truncate=25 / sigma)
    sharp = np.clip(x + weight * residual, 0.0, 1.0)
    return (soft * sharp + (1 - soft) * x).astype(np.float32)


def add_gaussian_noise(img, sigma: float, rng: np.random.Generator) -> np.ndarray:
    x = _gray(img)
    return np.clip(x + rng.normal(0.0, sigma, x.shape), 0.0, 1.0).astype(np.float32)


def add_poisson_noise(img, peak: float, rng: np.random.Generator) -> np.ndarray:
    """``poisson(x * peak) / peak``: shot noise of variance x / peak."""
    x = np.clip(_gray(img), 0.0, 1.0)
    return np.clip(rng.poisson(x * peak) / peak, 0.0, 1.0).astype(np.float32)


def add_speckle_noise(img, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``x + x n``, n ~ N(0, sigma^2): multiplicative noise of standard deviation x sigma."""
    x = np.clip(_gray(img), 0.0, 1.0)
    return np.clip(x + x * rng.normal(0.0, sigma, x.shape), 0.0, 1.0).astype(np.float32)


def jpeg(img, quality: int) -> np.ndarray:
    """A JPEG round trip at ``quality`` (PIL, 8-bit gray)."""
    u8 = np.clip(np.round(_gray(img) * 255.0), 0, 255).astype(np.uint8)
    buf = _bytes_io.BytesIO()
    Image.fromarray(u8).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return (np.asarray(Image.open(buf).convert("L"), dtype=np.float32) / 255.0).astype(np.float32)


# ---------------------------------------------------------------------- random steps
def random_blur_kernel(rng: np.random.Generator, scale: float) -> np.ndarray:
    size = 2 * int(rng.integers(2, 12)) + 3
    if rng.random() < 0.5:
        wd2 = 4.0 + scale
        l1, l2 = wd2 * rng.random(), wd2 * rng.random()
        return anisotropic_gaussian_kernel(size, rng.random() * np.pi, l1, l2)
    return isotropic_gaussian_kernel(size, max((2.0 + 0.2 * scale) * rng.random(), 1e-6))


def random_blur(img, rng: np.random.Generator, scale: float) -> np.ndarray:
    return blur(img, random_blur_kernel(rng, scale))


def random_method(rng: np.random.Generator) -> str:
    return RESIZE_METHODS[int(rng.integers(0, 3))]


def random_resize(img, rng: np.random.Generator, scale: float) -> np.ndarray:
    x = _gray(img)
    u = rng.random()
    if u > 0.8:
        f = rng.uniform(1.0, 2.0)
    elif u < 0.7:
        f = rng.uniform(0.5 / scale, 1.0)
    else:
        f = 1.0
    return resize(x, (int(f * x.shape[0]), int(f * x.shape[1])), random_method(rng))


def random_jpeg(img, rng: np.random.Generator) -> np.ndarray:
    return jpeg(img, int(rng.integers(30, 96)))


def _step(name: str, img, rng: np.random.Generator, scale: float) -> tuple[np.ndarray, bool]:
    """(image, whether the step changed it): Poisson and speckle noise run with probability 0.1, the ISP never."""
    if name == "blur":
        return random_blur(img, rng, scale), True
    if name == "resize":
        return random_resize(img, rng, scale), True
    if name == "gaussian_noise":
        return add_gaussian_noise(img, int(rng.integers(2, 26)) / 255.0, rng), True
    if name == "poisson_noise":
        if rng.random() < POISSON_PROB:
            return add_poisson_noise(img, 10 ** (2 * rng.random() + 2.0), rng), True
        return img, False
    if name == "speckle_noise":
        if rng.random() < SPECKLE_PROB:
            return add_speckle_noise(img, int(rng.integers(2, 26)) / 255.0, rng), True
        return img, False
    if name == "jpeg":
        return random_jpeg(img, rng), True
    if name == "isp":
        return img, False
    raise ValueError(f"unknown degradation step {name!r}")


def step_order(rng: np.random.Generator, shuffle_prob: float = 0.5) -> list[int]:
    """Indices into :data:`STEPS`: a random permutation with probability ``shuffle_prob``, else the fixed order
    with steps 2-5 and 9-12 (the noise steps of each round) shuffled among themselves."""
    if rng.random() < shuffle_prob:
        return [int(i) for i in rng.permutation(len(STEPS))]
    order = list(range(len(STEPS)))
    order[2:6] = [int(i) for i in rng.permutation(order[2:6])]
    order[9:13] = [int(i) for i in rng.permutation(order[9:13])]
    return order


def mod_crop(img, scale: float) -> np.ndarray:
    """The top-left part of the image whose sides are multiples of the (integer) scale."""
    s = _int_scale(scale)
    x = _gray(img)
    return x[: x.shape[0] - x.shape[0] % s, : x.shape[1] - x.shape[1] % s]


def _int_scale(scale) -> int:
    s = int(round(float(scale)))
    if s < 1 or abs(s - float(scale)) > 1e-9:
        raise ValueError(f"the degradation needs an integer scale, got {scale}")
    return s


def bsrgan_plus(hr, scale: float, rng: np.random.Generator, *, shuffle_prob: float = 0.5, sharpen: bool = True,
                log: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(LR (H / s, W / s), HR target (H, W)) by the extended BSRGAN model (module docstring); ``log`` (a list)
    receives the names of the steps that changed the image, in order (the last two: "resize_to_lr", "jpeg")."""
    s = _int_scale(scale)
    x = mod_crop(hr, s)
    if min(x.shape) < s:
        raise ValueError(f"an image of {np.shape(hr)} is too small for scale {s}")
    target = usm_sharpen(x) if sharpen else x.astype(np.float32)
    img = target.astype(np.float64)
    for i in step_order(rng, shuffle_prob):
        img, applied = _step(STEPS[i], img, rng, s)
        if applied and log is not None:
            log.append(STEPS[i])
    img = resize(img, (x.shape[0] // s, x.shape[1] // s), random_method(rng))
    img = random_jpeg(img, rng)
    if log is not None:
        log += ["resize_to_lr", "jpeg"]
    return img.astype(np.float32), target.astype(np.float32)


def bicubic_blur(hr, scale: float, blur_sigma: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(LR, HR): PIL bicubic downsampling by s, then an isotropic Gaussian blur of ``blur_sigma`` LR px (kernel
    side 2 ceil(3 sigma) + 1, mirror borders); no blur at 0."""
    s = _int_scale(scale)
    x = mod_crop(hr, s).astype(np.float32)
    lr = pil_resize(x, (x.shape[0] // s, x.shape[1] // s), "bicubic")
    if blur_sigma > 0:
        lr = blur(lr, isotropic_gaussian_kernel(2 * math.ceil(3 * blur_sigma) + 1, blur_sigma))
    return np.clip(lr, 0.0, 1.0).astype(np.float32), x


def gaussian_noise(hr, sigma: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(noisy, clean): white Gaussian noise of standard deviation ``sigma`` / 255 (0-255 scale), clipped to
    [0, 1]; scale 1."""
    if not float(sigma) >= 0:
        raise ValueError(f"the noise sigma must be >= 0, got {sigma}")
    x = _gray(hr).astype(np.float32)
    return add_gaussian_noise(x, float(sigma) / 255.0, rng), x


class Degradation:
    """A seeded, reusable degradation: ``Degradation(scale, mode, seed)(hr) -> (lr, hr_target)``.

    ``mode`` "bsrgan_plus" (default; ``shuffle_prob``, ``sharpen``), "bicubic_blur" (``blur_sigma``, a number
    or a (low, high) range drawn uniformly per call) or "gaussian_noise" (scale 1 only; ``noise_sigma`` on the
    0-255 scale, a number or a (low, high) range drawn uniformly per call).
    """

    def __init__(self, scale: float = 2, mode: str = "bsrgan_plus", seed: int = 0, *, shuffle_prob: float = 0.5,
                 sharpen: bool = True, blur_sigma=0.0, noise_sigma=25.0):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.scale, self.mode, self.seed = _int_scale(scale), mode, int(seed)
        if mode == "gaussian_noise" and self.scale != 1:
            raise ValueError(f"the gaussian_noise mode is for denoising at scale 1, got scale {scale}")
        self.shuffle_prob, self.sharpen, self.blur_sigma = float(shuffle_prob), bool(sharpen), blur_sigma
        self.noise_sigma = noise_sigma
        self.rng = np.random.default_rng(self.seed)

    def reset(self) -> None:
        """Restarts the random stream from the seed."""
        self.rng = np.random.default_rng(self.seed)

    def __call__(self, hr, log: list | None = None) -> tuple[np.ndarray, np.ndarray]:
        if self.mode == "bsrgan_plus":
            return bsrgan_plus(hr, self.scale, self.rng, shuffle_prob=self.shuffle_prob, sharpen=self.sharpen,
                               log=log)
        if self.mode == "gaussian_noise":
            sigma = self.noise_sigma
            if isinstance(sigma, (tuple, list)):
                sigma = float(self.rng.uniform(*sigma))
            return gaussian_noise(hr, float(sigma), self.rng)
        sigma = self.blur_sigma
        if isinstance(sigma, (tuple, list)):
            sigma = float(self.rng.uniform(*sigma))
        return bicubic_blur(hr, self.scale, float(sigma))

    def __repr__(self) -> str:
        return f"Degradation(scale={self.scale}, mode={self.mode!r}, seed={self.seed})"
