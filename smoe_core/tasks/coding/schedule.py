"""The training schedule of the coding paper: grid initialization, pre-training, sparsification, fine-tuning
and pruning, with quantization-aware training (fake quantization) in every phase.

Section 3 ("Initialization and Pre-Training", "Regularization", "Fine-tuning", the learning rates of the
Adam optimizer, "During all steps of optimization, the quantization of the model parameters is employed") of

    R. Jongebloed, E. Bochinski, L. Lange and T. Sikora, "Quantized and Regularized Optimization for Coding
    Images Using Steered Mixtures-of-Experts", Communication Systems Group, Technische Universitaet Berlin
    (Data Compression Conference 2019; the venue is not printed in the stored text,
    /work/shared/papers/quantized_smoe_coding.txt).

The phases (:func:`train`):

1. Initialization (:func:`grid_init`): k1 x k2 = floor(W / 4) x floor(H / 4) kernels at the cell centres
   (:func:`~.quantize.grid_centres`), pi = 1, A = diag(2 / cell width, 2 / cell height) so that neighbouring
   centres are two standard deviations apart, constant experts = the mean of each Y, U, V channel over the
   pixels where the kernel's gate is largest (for this grid, with equal pi and bandwidths, the pixel's grid
   cell: column floor((c + 0.5) k1 / W), row floor((r + 0.5) k2 / H)).
2. Pre-training: ``pretrain_iters`` (paper: 10k) Adam iterations of the SSIM-611 loss, no sparsity.
3. Sparsification: ``sparsify_steps`` (paper: 50) steps of ``sparsify_iters`` iterations each with
   lambda_S = x^2 / (k1 k2), x = linspace(0.1, 15, steps), loss SSIM-611 + lambda_S sum(pi), and the pi
   learning rate lowered to 2e-5.
4. Fine-tuning: ``finetune_iters`` (paper: 500) iterations without sparsity, "Vanilla Gradient Descent ...
   with same learning rates as in the step before" (``finetune_optimizer="sgd"``; "adam" keeps Adam).

Every phase renders the fake-quantized parameters (:class:`~.quantize.FakeQuantizer`, straight-through
gradients, full-precision updates). Kernels whose pi quantizes to index 0 carry no weight (and get no SSIM
gradient) and are removed every ``prune_every`` iterations and at the end of every phase and sparsification
step: the paper's "pi_k < 0" removal with the quantizer's pruning rule (:mod:`.quantize`).

Learning rates. The paper's rates are for coordinates in [0, 1] (Adam: A 1, pi 1e-4, mu and experts 1e-3).
Here coordinates are pixels: x_pixel = S x_unit with S = sqrt(H W) (the side for the paper's square images;
one isotropic scale because the rates are per parameter kind). Then mu_pixel = S mu_unit and, from
(x - mu)^T A A^T (x - mu) being invariant, A_pixel = A_unit / S; pi and the experts do not depend on the
coordinates. Adam moves a parameter by about its rate per step whatever the gradient's scale, so a rate
converts like the parameter: lr_mu * S, lr_A / S. Plain gradient descent's step is lr * dL/dtheta, and
dL/dtheta_unit = c dL/dtheta_pixel for theta_pixel = c theta_unit, so its rates convert with c^2: lr_mu S^2,
lr_A / S^2 (:func:`pixel_learning_rates`). On a 512 x 512 image Adam's centre rate becomes 0.512 px/step
and A's 1/512.

What sets the outcome of sparsification. The gating normalizes pi (eq. 3), so scaling every pi by the same
factor leaves the full-precision image unchanged while lambda_S sum(pi) falls: the sparsity term has no
minimum of its own, and only the pi quantizer (15 levels on [0, 2], index 0 = pruned) and the iteration
budget stop a collective decline. With Adam, every pi whose SSIM gradient is below lambda_S moves down by
about its rate per iteration, and for a few hundred iterations after the sparsity term is switched on by up
to about 3 times its rate (the second-moment estimate, beta2 = 0.999, still holds the small pre-training
gradients). The kernel count at the end is therefore set by lambda_S together with (iterations x pi rate);
measured on a 128 x 128 crop with 40 iterations per step and a pi rate of 5e-4 (the paper's per-step budget
with 1000 iterations at 2e-5), the paper's x in [0.1, 15] left one kernel of 1024 at step 16 of 50 and none
at step 17; x in [0.1, 3] one kernel at step 30 and none at step 33.

Snapshots: the rate points of one RD curve. The paper traces its curves with "the results of our proposed
method ... along the sparsification path" and does not say which states of the path it takes. Two rules,
both taking a copy of the path's state, fine-tuning it (as the final point) and quantizing it, while the path
itself continues unchanged (:func:`train`):

- ``snapshots``: after given sparsification steps (a fixed rule: where the kernels go depends on the image and
  the schedule, so fixed steps can fall before the path removes anything, or after it has removed almost
  everything, and give one point per image);
- ``snapshot_kernels``: when the number of kernels first falls to or below each of a list of targets (a
  geometric series gives points spread evenly in log-rate whatever the image: a point's rate is about
  proportional to its kernel count). The count is checked after every pruning of the sparsification phase
  (every ``prune_every`` iterations and at the end of every step), so a step that removes many kernels is
  still cut into several points when pruning is frequent. When one pruning passes several targets, one
  snapshot is taken, labelled with the smallest of them (:func:`kernel_snapshots_due`).

Resuming (``checkpoint=PATH``): a paper-preset training takes an hour or more on a CPU, so :func:`train` can
write its state after pre-training and after every sparsification step (the parameters, Adam's moments and step
count, the kernels' grid cells, the history, the snapshots taken and the elapsed time) and, started again with the
same image and settings, continue from the last one written to the same result, bit for bit, as an uninterrupted
run (the schedule draws no random numbers; a ``pretrain_seconds`` budget is a time and is not resumed exactly).
The file (:func:`save_checkpoint`, :func:`load_checkpoint`) is written atomically: magic ``SMoEtrain``, a JSON
header (format version, the settings' fingerprint: a hash of the image and of every argument that decides the
result, the payload's length), the pickled state, and the SHA-256 of all that; the reader checks them before
unpickling, and a checkpoint of another image or other settings is refused with a clear error (delete it to
start over). Pickle runs code when it loads: load only checkpoints you wrote.

Choices the paper leaves open, made here: the iterations per sparsification step (not given in the paper;
default 1000: Adam moves pi by at most about its rate 2e-5 per iteration, so pi = 1 needs at least
(1 - 1/15) / 2e-5 ~ 47k iterations to reach the pruning threshold, i.e. about 1000 per step over 50 steps
for any kernel to be removed); one Adam state kept through pre-training and sparsification (moments of removed
kernels are dropped; fine-tuning with SGD has none); the sparsity term is lambda_S times the sum of the full-precision
pi of the kernels still present (the gradient acts on the values being updated); the SSIM-611 loss
(:mod:`.loss`) on YUV (:mod:`.color`); per-axis bandwidths for non-square cells.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import pickle
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ...io import atomic_write
from ...model import SMoE
from ...render import render
from ...training import Adam
from .bitstream import encode
from .color import rgb_to_yuv
from .loss import YUV_WEIGHTS, ssim611, ssim611_loss, ssim611_target
from .quantize import FakeQuantizer, QuantizedSMoE, QuantSpec, active_mask, grid_centres, grid_shape, quantize_model

if TYPE_CHECKING:
    import pandas as pd

#: The paper's Adam learning rates in [0, 1] coordinates.
PAPER_LR = {"chol": 1.0, "pi": 1e-4, "mu": 1e-3, "experts": 1e-3}
#: The pi learning rate of the sparsification phase (and, by "same learning rates", of fine-tuning).
SPARSIFY_PI_LR = 2e-5
PARAMS = ("mu", "chol", "pi", "experts")


def pixel_learning_rates(image_shape, rates=None, optimizer: str = "adam") -> dict[str, float]:
    """The learning rates for pixel coordinates from rates for [0, 1] coordinates (module docstring)."""
    try:
        H, W = (int(s) for s in image_shape)
    except (TypeError, ValueError):
        raise ValueError(f"image_shape must be (H, W), got {image_shape!r}") from None
    if H < 1 or W < 1:
        raise ValueError(f"image_shape must be positive, got {(H, W)}")
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    rates = dict(PAPER_LR if rates is None else rates)
    if set(rates) != set(PARAMS) or not all(isinstance(v, (int, float)) and v >= 0 for v in rates.values()):
        raise ValueError(f"rates must give a non-negative number for each of {PARAMS}, got {rates!r}")
    S = math.sqrt(H * W)
    power = 1 if optimizer == "adam" else 2
    return {"mu": rates["mu"] * S**power, "chol": rates["chol"] / S**power, "pi": float(rates["pi"]),
            "experts": float(rates["experts"])}


def sparsity_schedule(grid, steps: int = 50, x_range=(0.1, 15.0)) -> np.ndarray:
    """lambda_S = x^2 / (k1 k2) with x evenly spaced over ``x_range`` in ``steps`` steps."""
    try:
        k1, k2 = (int(s) for s in grid)
    except (TypeError, ValueError):
        raise ValueError(f"grid must be (k1, k2), got {grid!r}") from None
    if k1 < 1 or k2 < 1:
        raise ValueError(f"grid must be positive, got {(k1, k2)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    x = np.linspace(float(x_range[0]), float(x_range[1]), steps)
    return x**2 / (k1 * k2)


def kernel_snapshots_due(n_kernels: int, targets, taken) -> list[int]:
    """The snapshot targets reached by a kernel count: every target ``t`` with ``n_kernels <= t`` that is not in
    ``taken`` (the targets already served), largest first. :func:`train` takes one snapshot for a non-empty
    answer, labelled ``"kernels <smallest>"``, and adds all of them to ``taken``."""
    if isinstance(n_kernels, bool) or not isinstance(n_kernels, (int, np.integer)) or n_kernels < 0:
        raise ValueError(f"n_kernels must be a non-negative integer, got {n_kernels!r}")
    done = {int(t) for t in taken}
    return [t for t in _check_targets(targets) if n_kernels <= t and t not in done]


def _check_targets(targets) -> list[int]:
    """Snapshot kernel counts: positive integers, distinct, largest first (ValueError otherwise)."""
    if targets is None:
        return []
    if isinstance(targets, (str, bytes)) or not hasattr(targets, "__iter__"):
        raise ValueError(f"snapshot_kernels must be a list of positive integers, got {targets!r}")
    out = []
    for t in targets:
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 1:
            raise ValueError(f"snapshot_kernels must be positive integers, got {t!r}")
        out.append(int(t))
    return sorted(set(out), reverse=True)


def _check_rgb(image) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"image must be a float RGB image (H, W, 3) in [0, 1], got {arr.dtype} {arr.shape}")
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise ValueError("image must hold finite values in [0, 1]")
    return arr.astype(np.float64)


def grid_init(image_yuv, grid=None) -> tuple[SMoE, np.ndarray, tuple[int, int]]:
    """The paper's initial model of a (H, W, 3) YUV image: (model, grid_index, grid) (module docstring)."""
    img = np.asarray(image_yuv, dtype=np.float64)
    if img.ndim != 3 or img.shape[2] != 3 or not np.isfinite(img).all():
        raise ValueError(f"image_yuv must be a finite (H, W, 3) array, got shape {img.shape}")
    H, W = img.shape[:2]
    k1, k2 = grid_shape((H, W)) if grid is None else tuple(int(s) for s in grid)
    g = grid_centres((H, W), (k1, k2))
    col = np.minimum(((np.arange(W) + 0.5) * k1 / W).astype(int), k1 - 1)
    row = np.minimum(((np.arange(H) + 0.5) * k2 / H).astype(int), k2 - 1)
    cell = (row[:, None] * k1 + col[None, :]).ravel()
    N = k1 * k2
    cnt = np.bincount(cell, minlength=N)
    experts = np.stack([np.bincount(cell, weights=img[..., c].ravel(), minlength=N) for c in range(3)], 1)
    experts /= np.maximum(cnt, 1)[:, None]
    cw, ch = W / k1, H / k2
    chol = np.tile([2.0 / cw, 0.0, 2.0 / ch], (N, 1))
    model = SMoE(g.astype(np.float32), chol.astype(np.float32), np.ones(N, np.float32), experts.astype(np.float32),
                 image_shape=(H, W), color_space="yuv")
    return model, np.arange(N), (k1, k2)


@dataclass
class CodingResult:
    """What :func:`train` returns: the full-precision model and its grid cells, the quantized model (what
    the file holds), the history (one row per iteration) and the SSIM-611 of the quantized model. ``label``
    names the point ("final", or "step 12" for a snapshot of the sparsification path); ``snapshots`` holds
    the fine-tuned snapshots taken along the path (:func:`train`'s ``snapshots`` and ``snapshot_kernels``), in
    path order; ``step`` and ``iteration`` say where on the path the point was taken (the final point: the end
    of the last sparsification step run; None without sparsification)."""

    model: SMoE
    grid_index: np.ndarray
    grid: tuple[int, int]
    quantized: QuantizedSMoE
    history: pd.DataFrame
    ssim611: float
    label: str = "final"
    snapshots: list = field(default_factory=list)
    step: int | None = None
    iteration: int | None = None
    seconds: float = 0.0  # the whole training's wall time (over every resumed session)
    cpu_seconds: float = 0.0  # and its process time

    def bitstream(self, **kwargs) -> bytes:
        """The encoded file (:func:`~.bitstream.encode` of the quantized model)."""
        return encode(self.quantized, **kwargs)


class _State:
    """The trained parameters, their optimizer, quantizer and grid cells, compacted together on pruning."""

    def __init__(self, model: SMoE, grid_index, grid, spec, device):
        t = model.torch(device=device)
        self.params = {k: getattr(t, k).detach().clone().requires_grad_(True) for k in PARAMS}
        self.grid_index = np.asarray(grid_index)
        self.fq = FakeQuantizer(grid_centres(model.image_shape, grid)[self.grid_index], spec, "yuv")
        self.opt: Adam | None = None

    def prune(self) -> int:
        keep = active_mask(self.params["pi"], self.fq.spec)
        if keep.all():
            return 0
        if not keep.any():
            raise RuntimeError("the sparsity removed every kernel; lower the sparsity (x_range) or the pi "
                               "learning rate")
        m = torch.from_numpy(keep).to(self.params["pi"].device)
        if self.opt is not None:
            self.opt.keep(m)
            self.params = self.opt.params
        else:
            self.params = {k: v.detach()[m].clone().requires_grad_(True) for k, v in self.params.items()}
        self.fq.keep(keep)
        self.grid_index = self.grid_index[keep]
        return int((~keep).sum())


# ---------------------------------------------------------------------- resumable training
CHECKPOINT_MAGIC = b"SMoEtrain"
CHECKPOINT_VERSION = 1
#: a checkpoint larger than this is refused before it is read (a 512 x 512 paper run writes about 5 MB)
MAX_CHECKPOINT_BYTES = 2**31
_MAX_HEADER = 1 << 16


def settings_fingerprint(image: np.ndarray, settings: dict) -> str:
    """SHA-256 (hex) of the image's bytes and shape and of ``settings`` (JSON, sorted keys, repr for the rest)."""
    h = hashlib.sha256()
    arr = np.ascontiguousarray(image, dtype=np.float32)
    h.update(repr(arr.shape).encode())
    h.update(arr.tobytes())
    h.update(json.dumps(settings, sort_keys=True, default=repr).encode())
    return h.hexdigest()


def save_checkpoint(path, fingerprint: str, state: dict) -> Path:
    """Writes a training state atomically (module docstring, "Resuming"): magic, header length, JSON header,
    pickled state, and the SHA-256 of everything before it."""
    path = Path(path)
    payload = pickle.dumps(state, protocol=4)
    header = json.dumps({"version": CHECKPOINT_VERSION, "fingerprint": fingerprint, "size": len(payload)}).encode()
    body = CHECKPOINT_MAGIC + struct.pack("<I", len(header)) + header + payload
    atomic_write(path, body + hashlib.sha256(body).digest())
    return path


def load_checkpoint(path, fingerprint: str | None = None) -> dict:
    """The state :func:`save_checkpoint` wrote, after checking magic, checksum, version, length and (when given)
    the fingerprint; ``ValueError`` naming the file for anything else."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_CHECKPOINT_BYTES:
        raise ValueError(f"{path}: {size} bytes is larger than a coding training checkpoint can be")
    data = path.read_bytes()
    n = len(CHECKPOINT_MAGIC)
    if data[:n] != CHECKPOINT_MAGIC:
        raise ValueError(f"{path}: not a coding training checkpoint")
    body, digest = data[:-32], data[-32:]
    if len(data) < n + 4 + 32 or hashlib.sha256(body).digest() != digest:
        raise ValueError(f"{path}: truncated or damaged training checkpoint (checksum)")
    (hlen,) = struct.unpack("<I", body[n:n + 4])
    if hlen > _MAX_HEADER or n + 4 + hlen > len(body):
        raise ValueError(f"{path}: damaged training checkpoint (header)")
    try:
        header = json.loads(body[n + 4:n + 4 + hlen].decode())
        version, fp, plen = header["version"], header["fingerprint"], header["size"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise ValueError(f"{path}: damaged training checkpoint (header)") from None
    if version != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: training checkpoint format {version!r}; this version reads {CHECKPOINT_VERSION}")
    payload = body[n + 4 + hlen:]
    if plen != len(payload):
        raise ValueError(f"{path}: damaged training checkpoint (length)")
    if fingerprint is not None and fp != fingerprint:
        raise ValueError(f"{path}: a checkpoint of another image or other settings; delete it to start over")
    state = pickle.loads(payload)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: damaged training checkpoint (state)")
    return state


def train(image, *, spec: QuantSpec | None = None, pretrain_iters: int = 10_000, sparsify_steps: int = 50,
          sparsify_iters: int = 1000, finetune_iters: int = 500, finetune_optimizer: str = "sgd",
          rates=None, sparsify_pi_rate: float = SPARSIFY_PI_LR, x_range=(0.1, 15.0), prune_every: int = 100,
          quantize: bool = True, snapshots=None, snapshot_kernels=None, target_kernels: int | None = None,
          pretrain_seconds: float | None = None, backend: str = "tiled", device=None,
          callback=None, checkpoint=None) -> CodingResult:
    """Runs the paper's schedule on an RGB image (float (H, W, 3) in [0, 1]); see the module docstring.

    Iteration counts default to the paper's (``sparsify_iters`` is not in the paper). ``rates``: Adam rates
    in [0, 1] coordinates (default ``PAPER_LR``), converted with :func:`pixel_learning_rates`.

    - ``quantize=False`` trains without fake quantization (post-training quantization, the paper's ablation:
      the model is quantized only for the file); kernels are still removed by the pi-index-0 rule.
    - ``snapshots``: sparsification steps (0-based) after which a copy of the state is fine-tuned
      (``finetune_iters``, as the final point) and quantized: the rate points of one RD curve, in
      ``result.snapshots`` (labels ``"step 12"``). The path itself continues unchanged.
    - ``snapshot_kernels``: kernel counts; a snapshot is taken (in the same way) after the first pruning of the
      sparsification phase that leaves at most each of them (module docstring; labels ``"kernels 614"``).
      Both rules may be given; a state both would take is taken once (by the step rule).
    - ``target_kernels``: sparsification stops after the first step that leaves at most this many kernels
      (``smoe encode --kernels``). The final point is that step's state, fine-tuned; no snapshot repeats it.
    - ``pretrain_seconds``: a time budget for pre-training (whichever of it and ``pretrain_iters`` ends first).

    ``callback(row)`` gets every history row (dict). ``checkpoint``: a file to write the state to after
    pre-training and after every sparsification step, and to continue from when it exists (module docstring,
    "Resuming"; the caller deletes it when it no longer needs it). Returns a :class:`CodingResult`.
    """
    rgb = _check_rgb(image)
    for name, v in (("pretrain_iters", pretrain_iters), ("sparsify_iters", sparsify_iters),
                    ("finetune_iters", finetune_iters), ("sparsify_steps", sparsify_steps)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    if isinstance(prune_every, bool) or not isinstance(prune_every, int) or prune_every < 1:
        raise ValueError(f"prune_every must be a positive integer, got {prune_every!r}")
    if finetune_optimizer not in ("sgd", "adam"):
        raise ValueError(f"finetune_optimizer must be 'sgd' or 'adam', got {finetune_optimizer!r}")
    if not (isinstance(sparsify_pi_rate, (int, float)) and sparsify_pi_rate >= 0):
        raise ValueError(f"sparsify_pi_rate must be a non-negative number, got {sparsify_pi_rate!r}")
    if callback is not None and not callable(callback):
        raise ValueError("callback must be callable")
    snap_steps = sorted({int(x) for x in (snapshots or ())})
    if snap_steps and (snap_steps[0] < 0 or snap_steps[-1] >= sparsify_steps):
        raise ValueError(f"snapshots must be sparsification steps in 0..{sparsify_steps - 1}, got {snap_steps}")
    kernel_targets = _check_targets(snapshot_kernels)
    if target_kernels is not None and (isinstance(target_kernels, bool) or int(target_kernels) != target_kernels
                                       or target_kernels < 1):
        raise ValueError(f"target_kernels must be a positive integer, got {target_kernels!r}")
    if pretrain_seconds is not None and not (pretrain_seconds > 0 and math.isfinite(pretrain_seconds)):
        raise ValueError(f"pretrain_seconds must be a positive number, got {pretrain_seconds!r}")
    spec = spec if spec is not None else QuantSpec()
    if not isinstance(spec, QuantSpec):
        raise ValueError(f"spec must be a QuantSpec, got {type(spec).__name__}")
    device = torch.device("cpu") if device is None else torch.device(device)
    H, W = rgb.shape[:2]
    yuv = rgb_to_yuv(rgb)
    target = torch.from_numpy(yuv.astype(np.float32)).to(device)
    target_stats = ssim611_target(target)  # the target's SSIM statistics, once for every iteration
    model0, gi, grid = grid_init(yuv)
    lambdas = sparsity_schedule(grid, sparsify_steps, x_range) if sparsify_steps else np.zeros(0)
    adam_rates = pixel_learning_rates((H, W), rates, "adam")

    st = _State(model0, gi, grid, spec, device)
    rows: list[dict] = []
    t0, c0 = time.perf_counter(), time.process_time()
    fingerprint = None
    resumed: dict | None = None
    if checkpoint is not None:
        settings = dict(spec=repr(spec), pretrain_iters=pretrain_iters, sparsify_steps=sparsify_steps,
                        sparsify_iters=sparsify_iters, finetune_iters=finetune_iters,
                        finetune_optimizer=finetune_optimizer, rates=rates, sparsify_pi_rate=sparsify_pi_rate,
                        x_range=list(map(float, x_range)), prune_every=prune_every, quantize=bool(quantize),
                        snapshots=snap_steps, snapshot_kernels=kernel_targets, target_kernels=target_kernels,
                        pretrain_seconds=pretrain_seconds, backend=backend, device=str(device),
                        format=CHECKPOINT_VERSION)
        fingerprint = settings_fingerprint(rgb, settings)
        if Path(checkpoint).exists():
            resumed = load_checkpoint(checkpoint, fingerprint)
            st.params = {k: v.to(device).requires_grad_(True) for k, v in resumed["params"].items()}
            st.grid_index = np.asarray(resumed["grid_index"])
            st.fq = FakeQuantizer(grid_centres(model0.image_shape, grid)[st.grid_index], spec, "yuv")
            if resumed["adam"] is not None:
                st.opt = Adam(st.params, dict(adam_rates))
                st.opt.m = {k: v.to(device) for k, v in resumed["adam"]["m"].items()}
                st.opt.v = {k: v.to(device) for k, v in resumed["adam"]["v"].items()}
                st.opt.t = int(resumed["adam"]["t"])
            rows = list(resumed["rows"])
            t0 -= float(resumed["seconds"])
            c0 -= float(resumed["cpu_seconds"])

    def run(st: _State, phase: str, iters: int, lam: float, optimizer: str, lr: dict, step: int | None = None,
            seconds: float | None = None, label: str = "final", on_prune=None):
        if optimizer == "adam":
            if st.opt is None:
                st.opt = Adam(st.params, dict(lr))
            st.opt.lr = dict(lr)
            st.params = st.opt.params
        else:
            st.opt = None
        t_phase = time.perf_counter()
        for it in range(1, iters + 1):
            p = st.params
            for v in p.values():
                v.grad = None
            active = active_mask(p["pi"], spec)
            if not active.any():
                raise RuntimeError(f"the sparsity removed every kernel ({phase}, iteration {it}); lower the "
                                   "sparsity (x_range) or the pi learning rate")
            shown = st.fq(p) if quantize else p
            out = render(SMoE(**{k: shown[k] for k in PARAMS}, image_shape=(H, W), color_space="yuv",
                              validate=False), backend=backend)
            data = ssim611_loss(out, target_stats, YUV_WEIGHTS)
            total = data + lam * p["pi"].sum() if lam else data
            total.backward()
            if st.opt is not None:
                st.opt.step()
            else:
                with torch.no_grad():
                    for k, v in p.items():
                        if v.grad is not None and lr[k]:
                            v.sub_(lr[k] * v.grad)
            value = float(total.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"the loss became {value} in {phase} iteration {it}")
            n_active = int(active.sum())
            last = it == iters or (seconds is not None and time.perf_counter() - t_phase >= seconds)
            if it % prune_every == 0 or last:
                st.prune()
                if on_prune is not None and not last:  # the end of a step: the caller's turn
                    on_prune(st, step, it)
            row = dict(point=label, phase=phase, step=step, iteration=it, seconds=time.perf_counter() - t0,
                       loss=value, ssim611=1.0 - float(data.detach()), sparsity=lam, n_kernels=n_active)
            rows.append(row)
            if callback is not None:
                callback(row)
            if last:
                break

    sparse_rates = dict(adam_rates, pi=float(sparsify_pi_rate))
    sgd_rates = pixel_learning_rates((H, W), dict(PAPER_LR if rates is None else rates, pi=float(sparsify_pi_rate)),
                                     "sgd")

    def finish(st: _State, label: str, step: int | None = None, iteration: int | None = None) -> CodingResult:
        if finetune_optimizer == "sgd":
            run(st, "finetune", finetune_iters, 0.0, "sgd", sgd_rates, label=label)
        else:
            run(st, "finetune", finetune_iters, 0.0, "adam", sparse_rates, label=label)
        st.prune()
        p = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in st.params.items()}
        model = SMoE(**p, image_shape=(H, W), color_space="yuv")
        q = quantize_model(model, st.grid_index, grid, spec)
        rec = render(q.to_model(), backend=backend)
        import pandas as pd

        return CodingResult(model, st.grid_index.copy(), grid, q, pd.DataFrame(), ssim611(rec, yuv), label,
                            step=step, iteration=iteration)

    snaps: list[CodingResult] = [] if resumed is None else list(resumed["snaps"])
    taken: set[int] = set() if resumed is None else set(resumed["taken"])

    def save(done_step: int | None) -> None:  # the state after pre-training (-1) or a sparsification step
        if checkpoint is None:
            return
        state = dict(done_step=done_step, grid_index=st.grid_index.copy(), rows=rows, snaps=snaps, taken=taken,
                     params={k: v.detach().cpu().clone() for k, v in st.params.items()},
                     adam=None if st.opt is None else dict(m={k: v.cpu().clone() for k, v in st.opt.m.items()},
                                                           v={k: v.cpu().clone() for k, v in st.opt.v.items()},
                                                           t=st.opt.t),
                     seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0)
        save_checkpoint(checkpoint, fingerprint, state)

    def by_count(st: _State, step: int, it: int) -> None:
        due = kernel_snapshots_due(int(st.params["pi"].shape[0]), kernel_targets, taken)
        if due:
            taken.update(due)
            snaps.append(finish(copy.deepcopy(st), f"kernels {due[-1]}", step, it))

    done = -2 if resumed is None else int(resumed["done_step"])  # -2: nothing, -1: pre-training, s: step s
    if done < -1:
        run(st, "pretrain", pretrain_iters, 0.0, "adam", adam_rates, seconds=pretrain_seconds)
        save(-1)
    last_step = None if done < 0 else done
    for s_, lam in enumerate(lambdas):
        if s_ <= done:
            continue
        run(st, "sparsify", sparsify_iters, float(lam), "adam", sparse_rates, step=s_,
            on_prune=by_count if kernel_targets else None)
        last_step = s_
        # where the path stops, the final point is this state, fine-tuned the same way: no snapshot of it
        stop = target_kernels is not None and st.params["pi"].shape[0] <= target_kernels
        if stop:
            break
        if s_ in snap_steps:
            snaps.append(finish(copy.deepcopy(st), f"step {s_}", s_, sparsify_iters))
            taken.update(kernel_snapshots_due(int(st.params["pi"].shape[0]), kernel_targets, taken))
        elif kernel_targets:
            by_count(st, s_, sparsify_iters)
        save(s_)
    result = finish(st, "final", last_step, None if last_step is None else sparsify_iters)
    import pandas as pd  # here, not at the top: `smoe decode` imports this package and needs no pandas

    history = pd.DataFrame(rows, columns=["point", "phase", "step", "iteration", "seconds", "loss", "ssim611",
                                          "sparsity", "n_kernels"])
    for r in (*snaps, result):
        r.history = history
    result.snapshots = snaps
    result.seconds, result.cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    return result
