"""Gradient-descent training of SMoE models ([AS-SMoE] section IV-A, eq. 6 and the global
optimization of section VI; [QSMoE] section 3 "Parameter Optimization", eqs. 9-12).

Loss = data term + lambda * sum_j pi_j (eq. 6 / eq. 10), data term the MSE over all pixels and channels, or
1 - SSIM (eq. 9; optionally weighted per channel, e.g. Y:U:V = 6:1:1). Adam with one learning rate per
parameter kind. After every step the kernels with pi <= 0 are removed for good, with their Adam state
(arrays and optimizer state are compacted together). Choices the papers leave open, made here:

- Learning rates are in pixel units (the papers' code uses coordinates in [0, 1]): Adam moves a parameter by
  about ``lr`` per step whatever the gradient's scale, so a centre rate of 1e-3 in [0, 1] coordinates on a
  512-pixel image is ~0.5 px here. Defaults: see ``DEFAULT_LR``.
- Stopping: "when the loss decrease between iterations falls below 1e-6" is measured over a window, as the
  mean decrease per iteration over the last ``window`` iterations (Adam's loss is not monotone, so a single
  step's decrease is noise); or when ``max_iters`` or ``max_seconds`` is used up.
- ``transform`` maps the parameters to the ones rendered inside the loss (fake quantization of the coding
  paper: the loss sees quantized values, the update applies to full precision ones).
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .io import check_image
from .limits import check_count, check_memory, check_number
from .metrics import SSIMReference, psnr_from_mse, ssim_torch
from .model import SMoE
from .render import DEFAULT_CUTOFF, DEFAULT_FILL, DEFAULT_TILE, render, render_bytes

if TYPE_CHECKING:
    import pandas as pd

PARAMS = ("mu", "chol", "pi", "experts", "slopes")
DEFAULT_LR = {"mu": 0.1, "chol": 5e-3, "pi": 1e-3, "experts": 2e-3, "slopes": 1e-4}


class Adam:
    """Adam (Kingma & Ba) with one learning rate per parameter, whose rows (kernels) can be removed.

    Same update as ``torch.optim.Adam`` (bias-corrected moments, eps added to the root of the second moment).
    """

    def __init__(self, params: dict[str, torch.Tensor], lr: dict[str, float], betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.m = {k: torch.zeros_like(v) for k, v in params.items()}
        self.v = {k: torch.zeros_like(v) for k, v in params.items()}
        self.t = 0

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        for k, p in self.params.items():
            if p.grad is None or self.lr.get(k, 0.0) == 0.0:
                continue
            g = p.grad
            self.m[k].mul_(b1).add_(g, alpha=1 - b1)
            self.v[k].mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (self.v[k] / c2).sqrt_().add_(self.eps)
            p.addcdiv_(self.m[k], denom, value=-self.lr[k] / c1)

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    def keep(self, mask: torch.Tensor) -> None:
        """Keeps the kernels in ``mask`` (bool, (K,)): new leaf tensors and compacted moments."""
        for k in list(self.params):
            self.params[k] = self.params[k].detach()[mask].clone().requires_grad_(True)
            self.m[k] = self.m[k][mask]
            self.v[k] = self.v[k][mask]


def fit_bytes(shape, channels: int, n_kernels: int, *, tile: int = DEFAULT_TILE, fill: int = DEFAULT_FILL) -> int:
    """A lower estimate of the memory (bytes) :func:`fit` needs on an image of ``shape`` (H, W) with ``channels``
    channels and ``n_kernels`` kernels: the target, one training render (:func:`smoe_core.render.render_bytes`)
    and the parameters with their gradients and Adam moments (:mod:`smoe_core.limits`)."""
    H, W = int(shape[0]), int(shape[1])
    per_kernel = 4 * 4 * (2 + 3 + 1 + 3 * channels)  # parameters, gradients, two moments; float32
    return int(4 * H * W * channels + render_bytes((H, W), channels, n_kernels, tile=tile, fill=fill, training=True)
               + per_kernel * n_kernels)


def _check_lr(lr) -> dict:
    if lr is None:
        return {}
    if not isinstance(lr, Mapping):
        raise TypeError(f"lr must be a dict of learning rates by parameter ({', '.join(PARAMS)}), e.g. "
                        f"{{'mu': 0.1}}, got {lr!r}")
    unknown = sorted(str(k) for k in lr if k not in PARAMS)
    if unknown:
        raise ValueError(f"unknown learning-rate keys: {unknown} (known: {', '.join(PARAMS)})")
    return {k: check_number(v, f"lr[{k!r}]", minimum=0.0) for k, v in lr.items()}


def _image_tensor(image, C: int, device) -> torch.Tensor:
    img = check_image(image, bounded=True)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[2] != C:
        raise ValueError(f"the image has {img.shape[2]} channel(s) but the model's experts have {C}")
    return torch.from_numpy(np.ascontiguousarray(img)).to(device)


def _all_removed(it: int, sparsity: float, prune_below: float, lr_pi: float) -> str:
    if sparsity > 0:
        return (f"sparsity removed every kernel at iteration {it} (every pi fell to <= {prune_below:g}); lower "
                f"sparsity (now {sparsity:g}) or the learning rate of pi (lr['pi'], now {lr_pi:g})")
    if prune_below > 0:
        return (f"every kernel's pi fell to <= prune_below = {prune_below:g} at iteration {it}, which removed "
                f"them all; lower prune_below or the learning rate of pi (lr['pi'], now {lr_pi:g})")
    return (f"the fit diverged at iteration {it}: every kernel's pi fell to <= 0 with sparsity 0; lower the "
            f"learning rates (lr['pi'], now {lr_pi:g}, first)")


def fit(
    image,
    model: SMoE,
    *,
    iters: int = 2000,
    seconds: float | None = None,
    lr: dict[str, float] | None = None,
    loss: str = "mse",
    channel_weights=None,
    sparsity: float = 0.0,
    regularizer: str = "l1",
    prune_below: float = 0.0,
    tol: float = 1e-6,
    window: int = 50,
    backend: str = "tiled",
    tile: int = DEFAULT_TILE,
    cutoff: float = DEFAULT_CUTOFF,
    fill: int = DEFAULT_FILL,
    transform: Callable[[dict], dict] | None = None,
    callback: Callable[[int, SMoE, dict], None] | None = None,
    seed: int = 0,
    progress: bool = True,
    device=None,
) -> tuple[SMoE, pd.DataFrame]:
    """Fits ``model`` to ``image`` (float in [0, 1], (H, W) or (H, W, C)); returns (fitted model, history).

    ``image`` as :func:`smoe_core.io.check_image` takes it with ``bounded=True``: a uint8 / uint16 array is
    scaled to [0, 1] by its type's range, a signed integer image is refused, and so is a float image far outside
    [0, 1] (beyond :data:`smoe_core.io.IMAGE_RANGE`, e.g. 0-255 floats). Every argument is checked before any
    work, by name (TypeError / ValueError), and the memory the fit needs against the memory available
    (:mod:`smoe_core.limits`).

    - ``iters`` / ``seconds``: budgets (whichever ends first); ``tol``/``window``: stop when the mean loss
      decrease per iteration over the last ``window`` iterations is below ``tol`` (``tol=0`` disables it).
    - ``lr``: learning rates per parameter ("mu", "chol", "pi", "experts", "slopes"), merged over
      ``DEFAULT_LR``; a rate of 0 freezes that parameter.
    - ``loss``: "mse" or "ssim" (1 - SSIM, channels weighted by ``channel_weights``).
    - ``sparsity``: lambda of the sparsity term: ``regularizer="l1"`` is lambda * sum(pi) ([AS-SMoE]
      eq. 6, [QSMoE] eq. 10); ``"l1_squared"`` is lambda * (sum |pi|)^2 ([EDGE], tile-wise
      training). Kernels with pi <= ``prune_below`` (default 0) are removed after each step; ``-math.inf``
      removes none (for a ``transform`` whose rows must stay aligned, e.g. the coding paper's fake quantizer).
    - ``transform``: maps the dict of parameter tensors to the dict rendered in the loss (fake quantization).
    - ``callback(iteration, model, stats)``: called after every iteration with the current (torch) model.

    The history DataFrame has one row per iteration: iteration, seconds, loss, mse, psnr, n_kernels.
    The returned model is of the kind of the input (numpy, or torch on the input's device), detached.
    """
    if not isinstance(model, SMoE):
        raise TypeError(f"model must be an SMoE, got {type(model).__name__}")
    if loss not in ("mse", "ssim"):
        raise ValueError(f"loss must be 'mse' or 'ssim', got {loss!r}")
    if regularizer not in ("l1", "l1_squared"):
        raise ValueError(f"regularizer must be 'l1' or 'l1_squared', got {regularizer!r}")
    iters = check_count(iters, "iters", minimum=0)
    seconds = None if seconds is None else check_number(seconds, "seconds", positive=True)
    sparsity = check_number(sparsity, "sparsity", minimum=0.0)
    if not (isinstance(prune_below, float) and prune_below == -math.inf):  # -inf: never remove a kernel
        prune_below = check_number(prune_below, "prune_below", minimum=0.0)
    tol = check_number(tol, "tol", minimum=0.0)
    window = check_count(window, "window", minimum=1)
    lr = _check_lr(lr)
    if transform is not None and not callable(transform):
        raise TypeError("transform must be callable")
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable")
    model.check()
    torch.manual_seed(seed)
    was_torch = model.is_torch
    if device is None:
        device = model.mu.device if was_torch else torch.device("cpu")
    tm = model.torch(device=device)
    target = _image_tensor(image, tm.n_channels, device)
    H, W = target.shape[:2]
    if model.image_shape is not None and tuple(model.image_shape) != (H, W):
        raise ValueError(f"the model was made for an image of {model.image_shape}, the image is {(H, W)}")
    check_memory(fit_bytes((H, W), tm.n_channels, tm.n_kernels, tile=tile, fill=fill),
                 f"fitting {tm.n_kernels} kernels to a {H} x {W} image")
    rates = dict(DEFAULT_LR, **lr)
    params = {k: getattr(tm, k).requires_grad_(True) for k in PARAMS if getattr(tm, k) is not None}
    opt = Adam(params, rates)
    weights = None
    if channel_weights is not None:
        cw = np.asarray(channel_weights, dtype=np.float64).ravel()
        if cw.shape != (tm.n_channels,) or not np.isfinite(cw).all() or (cw < 0).any() or not cw.sum() > 0:
            raise ValueError(f"channel_weights must be {tm.n_channels} non-negative numbers with a positive sum, "
                             f"got {channel_weights!r}")
        weights = torch.as_tensor(channel_weights, dtype=target.dtype, device=device)
        weights = weights / weights.sum()
    meta = dict(rbf=tm.rbf, image_shape=(H, W), color_space=tm.color_space)
    target_hw = target[..., 0] if tm.n_channels == 1 else target
    ssim_target = SSIMReference(target_hw) if loss == "ssim" else None  # the target's statistics, once

    def current(p) -> SMoE:
        # not validated here: render_many checks the model once per step (each check syncs a GPU)
        return SMoE(**{k: p.get(k) for k in PARAMS}, **meta, validate=False)

    rows = []
    t0 = time.perf_counter()
    bar = tqdm(total=iters, disable=not progress, desc="fit", unit="it", dynamic_ncols=True)
    losses: list[float] = []
    try:
        for it in range(1, iters + 1):
            opt.zero_grad()
            shown = transform(dict(opt.params)) if transform is not None else opt.params
            out = render(current(shown), (H, W), backend=backend, tile=tile, cutoff=cutoff, fill=fill)
            err = out - target_hw
            mse = (err * err).mean()
            if loss == "mse":
                data = mse
            else:
                per = ssim_torch(out, ssim_target, per_channel=True)
                data = 1.0 - (per.mean() if weights is None else (per * weights).sum())
            if sparsity:
                pi_now = opt.params["pi"]
                reg = pi_now.sum() if regularizer == "l1" else pi_now.abs().sum() ** 2
                total = data + sparsity * reg
            else:
                total = data
            total.backward()
            opt.step()
            with torch.no_grad():
                keep = opt.params["pi"] > prune_below
            if not bool(keep.all()):
                if not bool(keep.any()):
                    raise RuntimeError(_all_removed(it, sparsity, prune_below, rates["pi"]))
                opt.keep(keep)
            lv, mv = float(total.detach()), float(mse.detach())
            if not math.isfinite(lv):
                raise FloatingPointError(f"the loss became {lv} at iteration {it}; lower the learning rates")
            losses.append(lv)
            stats = dict(iteration=it, seconds=time.perf_counter() - t0, loss=lv, mse=mv, psnr=psnr_from_mse(mv),
                         n_kernels=int(opt.params["pi"].shape[0]))
            rows.append(stats)
            if callback is not None:
                callback(it, current(opt.params), stats)
            if it % 10 == 0 or it == iters:
                bar.set_postfix(psnr=f"{stats['psnr']:.2f}", kernels=stats["n_kernels"], refresh=False)
            bar.update(1)
            if seconds is not None and stats["seconds"] >= seconds:
                break
            if tol > 0 and len(losses) > window and (losses[-window - 1] - losses[-1]) / window < tol:
                break
    finally:
        bar.close()
    import pandas as pd  # imported here: pandas costs a second of start-up to every command that imports training

    history = pd.DataFrame(rows, columns=["iteration", "seconds", "loss", "mse", "psnr", "n_kernels"])
    fitted = SMoE(**{k: (None if opt.params.get(k) is None else opt.params[k].detach()) for k in PARAMS}, **meta)
    return (fitted if was_torch else fitted.numpy()), history
