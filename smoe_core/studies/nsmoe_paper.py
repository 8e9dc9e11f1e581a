"""The N-SMoE study: super-resolution (x2, x4), denoising (sigma 15 / 25 / 50) and blind restoration of the
held-out medical test images by the trained N-SMoE networks, beside bicubic, our per-image fitted SMoE and BM3D
([N-SMoE]: "Neural Steered Mixture of Experts for Medical Image Denoising, and Super-Resolution", preprint,
abstract only in our copy; code github.com/anatolicvs/n-smoe). The networks and their training are
:mod:`smoe_core.tasks.nsmoe`; this module holds the evaluation grid, its tables and figures (the notebook
``notebooks/n_smoe.ipynb`` calls it).

Test data: the test split of :mod:`smoe_core.tasks.nsmoe.data` (five images, one per modality that has two or
more: never seen in training), each cut to its ``crop`` x ``crop`` HR window of most detail (:func:`test_crop`; a
multiple of 4 so that x2 and x4 share the crop); ``crop=None`` keeps the whole image.

Degradations (deterministic):

- super-resolution: PIL's antialiased bicubic downsampling by s (:func:`smoe_core.tasks.superres.downsample`,
  the training degradation of ``sr2`` / ``sr4``);
- denoising: white Gaussian noise of sigma / 255, clipped to [0, 1], from the seed :func:`noise_seed` (the seed,
  the image name and sigma: one noise field per pair, the same for every method);
- blind: the seeded BSRGAN-plus chain at x2 (:class:`~smoe_core.tasks.nsmoe.degrade.Degradation`, seed from
  :func:`noise_seed` with sigma 0) applied to the crop **without** the USM sharpening of the training target:
  every method is measured against the crop itself (the clean image, not a sharpened one; our choice).

Methods per task: ``bicubic`` (PIL bicubic of the LR input; for denoising ``noisy``, the input itself),
``bicubic_torch`` (super-resolution: torch's bicubic, a = -0.75, the base image the networks add their decoded residual
to, :mod:`smoe_core.tasks.nsmoe.model`; what N-SMoE gains over it is the network's own contribution), ``nsmoe`` (the
checkpoint as trained, our gating, the network's test stride: 4, 8 for super-resolution), ``nsmoe_authors_gating`` (the
same kernels decoded with the authors' softmax over Gaussian values: an inference-time swap, not a network trained with
that gating; it shows how much the trained kernels depend on the gating), ``smoe`` (per image fitted SMoE:
:func:`smoe_core.tasks.superres.upscale` of the LR input, or :func:`smoe_core.tasks.denoise.denoise` with
``smoe_models`` shifted models, the ``smoe upscale`` / ``smoe denoise --models 8`` of the CLI) and ``bm3d`` (denoising,
the true sigma).

Metrics (:func:`quality`, on the output clipped to [0, 1]): PSNR and SSIM of scikit-image with data range 1;
the authors' convention (data range = max - min of the pair, no border shave) as ``psnr_pair`` / ``ssim_pair``;
LPIPS and ST-LPIPS (AlexNet) where their weights are on this machine, else "n/a (reason)"
(:func:`smoe_core.studies.perceptual.perceptual_columns`: never from random weights).
"""
from __future__ import annotations

import math
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import file_sha256
from ..metrics import psnr
from ..tasks import denoise as dn
from ..tasks import superres as sr
from ..tasks.nsmoe import blocks as blk
from ..tasks.nsmoe import checkpoint as ckpt
from ..tasks.nsmoe import data
from ..tasks.nsmoe.degrade import Degradation
from ..tasks.nsmoe.head import block_model
from ..tasks.nsmoe.infer import load_network, restore
from .plotting import finish, kernel_ellipses, pyplot, show_image, texture_window

TASKS = ("sr2", "sr4", "denoise", "blind")
SIGMAS = (15, 25, 50)
#: the columns that name one grid item
KEYS = ["task", "image", "sigma", "method"]
#: the issue's targets: (task, sigma) -> (baseline method, required mean PSNR gain in dB)
TARGETS = {("sr2", 0): ("bicubic", 1.5), ("sr4", 0): ("bicubic", 0.7), ("denoise", 25): ("noisy", 6.0),
           ("blind", 0): ("bicubic", 1.0)}


# ---------------------------------------------------------------------- data
def test_images(names=None) -> list[str]:
    """The held-out test images (``names`` a subset of them; anything else is refused)."""
    test = list(data.SPLITS["test"])
    if names is None:
        return test
    names = [str(n) for n in names]
    bad = [n for n in names if n not in test]
    if bad:
        raise ValueError(f"images must be test images of the N-SMoE split ({', '.join(test)}), got {bad}")
    return names


def test_crop(name: str, crop: int | None) -> np.ndarray:
    """The ``crop`` x ``crop`` HR crop of test image ``name`` (rounded down to a multiple of 4) with the most detail:
    :func:`smoe_core.studies.plotting.texture_window` (largest mean gradient magnitude on a grid of ``crop // 8``
    px), the detail super-resolution has to restore; the whole image (cut to a multiple of 4) when ``crop`` is
    None. Medical images have large flat backgrounds (a centred 64 px crop of the CT ``693_UNCR`` is nearly
    constant, bicubic 70 dB), so a fixed centre would measure the background; the rule is deterministic and uses
    the clean image only."""
    img = np.asarray(data.load(name), dtype=np.float32)
    H, W = img.shape
    if crop is None:
        return np.ascontiguousarray(img[:H - H % 4, :W - W % 4])
    if int(crop) < 32:
        raise ValueError(f"crop must be at least 32 px (one LR block at x2), got {crop}")
    side = min(int(crop), H, W) // 4 * 4
    y0, y1, x0, x1 = texture_window(img, side)
    return np.ascontiguousarray(img[y0:y1, x0:x1])


def noise_seed(seed: int, name: str, sigma: float) -> int:
    """The seed of the noise (or of the blind degradation, sigma 0) of one (image, sigma) pair."""
    return int(np.random.SeedSequence([int(seed), zlib.crc32(name.encode()), int(round(float(sigma) * 10))])
               .generate_state(1)[0])


def degraded_input(task: str, hr: np.ndarray, name: str, sigma: float = 0,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(input, reference) of one item (module docstring)."""
    if task in ("sr2", "sr4"):
        ref, lr = sr.downsample(hr, 2 if task == "sr2" else 4)
        return lr.astype(np.float32), ref.astype(np.float32)
    if task == "denoise":
        rng = np.random.default_rng(noise_seed(seed, name, sigma))
        noisy = np.clip(hr + rng.normal(0.0, float(sigma) / 255.0, hr.shape), 0.0, 1.0)
        return noisy.astype(np.float32), hr
    if task == "blind":
        lr, ref = Degradation(2, "bsrgan_plus", seed=noise_seed(seed, name, 0), sharpen=False)(hr)
        return lr.astype(np.float32), ref.astype(np.float32)
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def task_scale(task: str) -> int:
    return {"sr2": 2, "sr4": 4, "denoise": 1, "blind": 2}[task]


# ---------------------------------------------------------------------- metrics
def quality(pred, ref, perceptual: bool = True) -> dict:
    """PSNR / SSIM (data range 1), the authors' pair-range PSNR / SSIM and LPIPS / ST-LPIPS (module docstring)."""
    from skimage.metrics import structural_similarity

    p = np.clip(np.asarray(pred, dtype=np.float64), 0.0, 1.0)
    t = np.asarray(ref, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and reference {t.shape} differ in shape")
    rng = float(max(p.max(), t.max()) - min(p.min(), t.min())) or 1.0
    mse = float(np.mean((p - t) ** 2))
    out = dict(psnr=psnr(p, t), ssim=float(structural_similarity(p, t, data_range=1.0)),
               psnr_pair=math.inf if mse == 0 else 10 * math.log10(rng * rng / mse),
               ssim_pair=float(structural_similarity(p, t, data_range=rng)))
    if perceptual:
        from .perceptual import perceptual_columns

        cols = perceptual_columns(p.astype(np.float32), t.astype(np.float32))
        out.update(lpips=cols["lpips"], st_lpips=cols["st_lpips"])
    return out


# ---------------------------------------------------------------------- checkpoints
def checkpoint_for(task: str, checkpoint_dir=None) -> Path:
    """``<checkpoint_dir>/<task>.ckpt`` (default: the shipped one,
    :func:`~smoe_core.tasks.nsmoe.checkpoint.default_path`);
    FileNotFoundError naming the training command when it is missing (untrained weights are never evaluated)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    path = ckpt.default_path(task) if checkpoint_dir is None else Path(checkpoint_dir) / f"{task}.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"no trained N-SMoE checkpoint for {task} at {path}: train one with `smoe nsmoe "
                                f"train --preset quick --task {task}`")
    return path


def available_checkpoints(tasks, checkpoint_dir=None) -> tuple[dict, dict]:
    """({task: path} of the tasks whose checkpoint exists, {task: why not} of the others): a study evaluates the
    first and lists the second (a missing network is reported as missing, never replaced by untrained weights)."""
    found, missing = {}, {}
    for task in tasks:
        try:
            found[task] = checkpoint_for(task, checkpoint_dir)
        except FileNotFoundError as exc:
            missing[task] = str(exc)
    return found, missing


def checkpoint_summary(paths: dict) -> pd.DataFrame:
    """One row per checkpoint: task, preset, steps, parameters, training seconds, last validation PSNR and its
    baseline, the file's size and sha256 prefix."""
    rows = []
    for task, path in paths.items():
        state = ckpt.load(path)
        m = state.meta
        val = (m.get("history") or {}).get("val") or [{}]
        rows.append(dict(task=task, preset=m.get("preset"), step=m.get("step"), total_steps=m.get("total_steps"),
                         parameters=m.get("n_parameters"), train_seconds=round(float(m.get("seconds", 0.0)), 1),
                         val_psnr=val[-1].get("val_psnr"), val_psnr_baseline=val[-1].get("val_psnr_baseline"),
                         megabytes=round(Path(path).stat().st_size / 2**20, 2),
                         sha256=file_sha256(path)[:12]))
    return pd.DataFrame(rows)


def training_history(paths: dict) -> pd.DataFrame:
    """The validation history of every checkpoint: task, step, val_psnr, val_psnr_baseline."""
    frames = []
    for task, path in paths.items():
        val = pd.DataFrame((ckpt.load(path).meta.get("history") or {}).get("val") or [])
        if len(val):
            frames.append(val.assign(task=task))
    cols = ["task", "step", "val_psnr", "val_psnr_baseline"]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


# ---------------------------------------------------------------------- grid items
def items(tasks, images, *, crop, checkpoint_dir, sigmas=SIGMAS, seed=0, smoe=True, bm3d=True, authors_gating=True,
          smoe_iters=None, smoe_models=8, output_dir=None) -> list[dict]:
    """The grid: one item per (task, image, sigma, method) (sigma 0 outside denoising)."""
    out = []
    for task in tasks:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        methods = ["noisy" if task == "denoise" else "bicubic", "nsmoe"]
        methods += ["bicubic_torch"] if task != "denoise" else []
        methods += ["nsmoe_authors_gating"] if authors_gating else []
        methods += ["smoe"] if smoe else []
        methods += ["bm3d"] if bm3d and task == "denoise" else []
        for name in test_images(images):
            for sigma in (sigmas if task == "denoise" else (0,)):
                for method in methods:
                    out.append(dict(task=task, image=name, sigma=int(sigma), method=method, crop=crop, seed=int(seed),
                                    checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir),
                                    smoe_iters=smoe_iters, smoe_models=int(smoe_models),
                                    output_dir=None if output_dir is None else str(output_dir)))
    return out


def output_path(output_dir, item: dict) -> Path:
    return Path(output_dir) / f"{item['task']}_{item['image'].replace('.', '_')}_s{item['sigma']}_{item['method']}.npy"


def method_output(item: dict, x: np.ndarray, shape: tuple) -> tuple[np.ndarray, str]:
    """The output of ``item["method"]`` for the degraded input ``x`` of ``item["task"]`` at the reference's
    ``shape``, unclipped, and a note on it (the checkpoint step, the fitted model's size)."""
    task, sigma, method = item["task"], float(item["sigma"]), item["method"]
    s = task_scale(task)
    if method in ("bicubic", "noisy"):
        return (x if s == 1 else sr.pil_resize(x, shape, "bicubic")), ""
    if method == "bicubic_torch":  # the base image the super-resolution networks add their residual to
        import torch

        from ..tasks.nsmoe.model import base_image

        return base_image(torch.from_numpy(np.asarray(x, np.float32))[None, None], s, "bicubic")[0, 0].numpy(), ""
    if method in ("nsmoe", "nsmoe_authors_gating"):
        loaded = load_network(checkpoint_for(task, item["checkpoint_dir"]))
        out, _ = restore(loaded.net, x, gating="authors" if method == "nsmoe_authors_gating" else None)
        return out, f"checkpoint step {loaded.checkpoint.step}"
    if method == "smoe":
        if s == 1:
            out, rec = dn.denoise(x, models=item["smoe_models"], iters=item["smoe_iters"], progress=False)
            return out, f"{rec['models']} models, {rec['n_kernels']} kernels, {rec['iters']} iterations"
        out, rec = sr.upscale(x, s, iters=item["smoe_iters"])
        return out, f"{rec['kernels']} kernels, {rec['iterations']} iterations"
    if method == "bm3d":
        return dn.denoise_baseline(x, sigma, "bm3d"), ""
    raise ValueError(f"unknown method {method!r}")


def run_item(item: dict) -> dict:
    """Computes one grid item: the method's output for the degraded input (:func:`method_output`), its metrics and
    time; the output is kept as ``.npy`` in ``output_dir`` (for the crop figures) when given."""
    hr = test_crop(item["image"], item["crop"])
    x, ref = degraded_input(item["task"], hr, item["image"], float(item["sigma"]), item["seed"])
    t0 = time.perf_counter()
    out, note = method_output(item, x, ref.shape)
    seconds = time.perf_counter() - t0
    out = np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)
    if item.get("output_dir"):
        p = output_path(item["output_dir"], item)
        p.parent.mkdir(parents=True, exist_ok=True)
        np.save(p, out)
    return dict(quality(out, ref), seconds=seconds, height=ref.shape[0], width=ref.shape[1], note=note)


# ---------------------------------------------------------------------- blind restoration over several draws
#: the columns that name one draw item
DRAW_KEYS = ["task", "image", "draw", "method"]
#: the methods measured on every draw (the others, slower, on draw 0 only: the main grid)
DRAW_METHODS = ("bicubic", "nsmoe")


def draw_items(images, *, crop, checkpoint_dir, draws: int, seed: int = 0, task: str = "blind") -> list[dict]:
    """The blind restoration of every test image under ``draws`` draws of the random degradation chain: one item
    per (task, image, draw, method) for :data:`DRAW_METHODS`. Draw ``d`` degrades with the seed ``seed + d``
    (:func:`degraded_input`), so draw 0 is the main grid's input (:func:`items`).

    Why: one draw of the BSRGAN-plus chain per image decides how hard each test input is (blur width, noise kind and
    level, JPEG quality), and the mean gain of five images over one draw each moves by 0.4-0.5 dB from one draw to
    the next (measured: 8 draws, session 13); the mean over several draws per image measures the network, and their
    spread (:func:`draw_summary`) says how far one draw can be trusted."""
    if task != "blind":
        raise ValueError(f"task must be 'blind' (the one task with a random degradation chain), got {task!r}")
    if not isinstance(draws, (int, np.integer)) or isinstance(draws, bool) or draws < 1:
        raise ValueError(f"draws must be a positive integer, got {draws!r}")
    return [dict(task=task, image=name, draw=d, method=method, crop=crop, seed=int(seed),
                 checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir))
            for name in test_images(images) for d in range(int(draws)) for method in DRAW_METHODS]


def run_draw_item(item: dict) -> dict:
    """One draw item: :func:`run_item` on the input of draw ``item["draw"]`` (PSNR, SSIM and seconds; no outputs
    kept, no perceptual metrics)."""
    hr = test_crop(item["image"], item["crop"])
    x, ref = degraded_input(item["task"], hr, item["image"], 0, int(item["seed"]) + int(item["draw"]))
    if item["method"] not in DRAW_METHODS:
        raise ValueError(f"method must be one of {DRAW_METHODS}, got {item['method']!r}")
    t0 = time.perf_counter()
    out, _ = method_output(dict(item, sigma=0), x, ref.shape)
    seconds = time.perf_counter() - t0
    q = quality(np.clip(out, 0.0, 1.0), ref, perceptual=False)
    return dict(psnr=q["psnr"], ssim=q["ssim"], seconds=seconds)


def draw_summary(draw_rows: pd.DataFrame) -> pd.DataFrame:
    """Per task and method (beside bicubic): the number of draws and images, the mean PSNR gain over bicubic over
    every (image, draw), ``draw_sd`` the standard deviation from draw to draw of the mean gain over the images (what
    one draw of every image can move), ``standard_error`` = ``draw_sd`` / sqrt(draws) (of the mean over the draws),
    ``worst_draw`` / ``best_draw`` the extremes of that per-draw mean, the mean SSIM gain, and on how many images
    the mean gain over the draws is positive."""
    df = draw_rows.copy()
    base = df[df["method"] == "bicubic"].set_index(["task", "image", "draw"])
    key = pd.MultiIndex.from_frame(df[["task", "image", "draw"]])
    df["gain_db"] = df["psnr"].to_numpy() - base["psnr"].reindex(key).to_numpy()
    df["ssim_gain"] = df["ssim"].to_numpy() - base["ssim"].reindex(key).to_numpy()
    out = []
    for (task, method), g in df[df["method"] != "bicubic"].groupby(["task", "method"], sort=False):
        per_draw = g.groupby("draw")["gain_db"].mean()
        per_image = g.groupby("image")["gain_db"].mean()
        sd = float(per_draw.std(ddof=1)) if len(per_draw) > 1 else math.nan
        out.append(dict(task=task, method=method, draws=len(per_draw), images=len(per_image),
                        gain_db=float(g["gain_db"].mean()), draw_sd=sd, standard_error=sd / math.sqrt(len(per_draw)),
                        worst_draw=float(per_draw.min()), best_draw=float(per_draw.max()),
                        ssim_gain=float(g["ssim_gain"].mean()), wins=int((per_image > 0).sum())))
    cols = ["task", "method", "draws", "images", "gain_db", "draw_sd", "standard_error", "worst_draw", "best_draw",
            "ssim_gain", "wins"]
    return pd.DataFrame(out, columns=cols)


# ---------------------------------------------------------------------- the representation's ceiling
def block_ceiling(task: str, n_kernels: int = 16, *, base: str = "none", crops: int = 16, iters: int = 400,
                  rate: float = 0.05, seed: int = 0) -> dict:
    """What a perfect encoder could reach: every block's kernels fitted directly (no network) to its own HR block.

    The first ``crops`` validation crops of the task's quick run (:func:`~smoe_core.tasks.nsmoe.train.validation_set`,
    not the test images) are cut into blocks at the test stride; each block's raw numbers (the head's
    parametrization, :class:`~smoe_core.tasks.nsmoe.head.KernelHead`, ``n_kernels`` per block, starting from its
    initial grid) take ``iters`` Adam steps of ``rate`` on the mean squared error of the block's own decode against
    its HR block, blocks independent of each other, as the network decodes them. ``base`` as the network's
    (:mod:`smoe_core.tasks.nsmoe.model`): ``"none"``, the blocks decode the image (experts offset from the LR
    block's value at their centre); ``"bicubic"``, they decode the HR crop minus the bicubic upscale (experts plain
    numbers from 0), which is added back. Returns the mean per-block PSNR (of the blocks' own target), the PSNR of
    the stitched (averaged) crops, and the baseline's (bicubic / noisy) on the same crops. A network that encodes
    each block alone and is trained on block losses cannot, in the limit, do better than this fit (up to the fit's
    own convergence)."""
    import torch

    from ..tasks.nsmoe import train as nt
    from ..tasks.nsmoe.head import KernelHead, decode
    from ..tasks.nsmoe.model import BASES, base_image

    if base not in BASES:
        raise ValueError(f"base must be one of {BASES}, got {base!r}")
    cfg = nt.make_config(task, "quick", seed)
    val = nt.validation_set(cfg)
    n = min(int(crops), len(val.lr))
    lr = val.lr[:n]
    hr = torch.from_numpy(val.hr[:n])[:, None]
    s, b = cfg.scale, cfg.network_config().block
    below = base_image(lr, s, base)
    head = KernelHead(int(n_kernels), b, 1, residual_experts=base == "none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lr_blocks, origins = blk.cut(lr, b, blk.TEST_STRIDE)
        target_blocks, _ = blk.cut(hr - below, b * s, blk.TEST_STRIDE * s)
        raw = head.initial_raw().reshape(1, -1).repeat(lr_blocks.shape[0], 1).requires_grad_(True)
        opt = torch.optim.Adam([raw], lr=float(rate))
        for _ in range(int(iters)):
            opt.zero_grad()
            ((decode(head(raw, lr_blocks), s) - target_blocks) ** 2).mean().backward()
            opt.step()
        with torch.no_grad():
            out = decode(head(raw, lr_blocks), s)
            per_block = float(torch.mean(10 * torch.log10(1.0 / ((out - target_blocks) ** 2).flatten(1).mean(1)
                                                            .clamp_min(1e-20))))
            stitched = (blk.stitch(out, origins, lr.shape[-2:], s) + below)[:, 0].numpy()
    base_out = nt.baseline(lr[:, 0].numpy(), s)
    return dict(task=task, n_kernels=int(n_kernels), base=base, crops=n, iters=int(iters), per_block_psnr=per_block,
                stitched_psnr=nt.mean_psnr(stitched, val.hr[:n]), baseline_psnr=nt.mean_psnr(base_out, val.hr[:n]))


#: the keys of a ceiling item
CEILING_KEYS = ["task", "n_kernels", "base"]


def run_ceiling_item(item: dict) -> dict:
    """:func:`block_ceiling` as a resumable grid item (keys :data:`CEILING_KEYS`; ``base`` "none" when absent)."""
    row = block_ceiling(item["task"], item["n_kernels"], base=item.get("base", "none"), crops=item["crops"],
                        iters=item["iters"], seed=item["seed"])
    return {k: v for k, v in row.items() if k not in CEILING_KEYS}


# ---------------------------------------------------------------------- tables
def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per task, sigma and method: mean PSNR / SSIM (and the pair-range ones), the mean PSNR gain over the task's
    baseline (bicubic or the noisy input), and on how many images the method beats it in PSNR."""
    df = rows.copy()
    base_name = df["task"].map(lambda t: "noisy" if t == "denoise" else "bicubic")
    base = df[df["method"] == base_name].set_index(["task", "image", "sigma"])
    key = pd.MultiIndex.from_frame(df[["task", "image", "sigma"]])
    df["gain_db"] = df["psnr"].to_numpy() - base["psnr"].reindex(key).to_numpy()
    df["ssim_gain"] = df["ssim"].to_numpy() - base["ssim"].reindex(key).to_numpy()
    g = df.groupby(["task", "sigma", "method"], sort=False)
    out = g.agg(images=("image", "size"), psnr=("psnr", "mean"), ssim=("ssim", "mean"), psnr_pair=("psnr_pair", "mean"),
                ssim_pair=("ssim_pair", "mean"), gain_db=("gain_db", "mean"), ssim_gain=("ssim_gain", "mean"),
                wins=("gain_db", lambda v: int((v > 0).sum())), seconds=("seconds", "mean")).reset_index()
    return out


def targets(table: pd.DataFrame, draws: pd.DataFrame | None = None) -> pd.DataFrame:
    """The issue's done-when criteria beside our numbers (from :func:`summary`): one row per criterion with the
    measured value and whether it holds (NaN where the rows are missing). With ``draws`` (:func:`draw_summary`)
    the blind criterion is decided on the mean over the draws (its ``standard_error`` in that column; a margin
    within two standard errors is flagged in ``within_spread``), and the main grid's single draw is a row of its
    own ("draw 0 only")."""
    rows = []

    def get(task, sigma, method, col):
        sel = table[(table["task"] == task) & (table["sigma"] == sigma) & (table["method"] == method)]
        return float(sel[col].iloc[0]) if len(sel) else math.nan

    def add(criterion, value, holds, se=math.nan, threshold=math.nan):
        rows.append(dict(criterion=criterion, measured=value, holds=holds if not math.isnan(value) else math.nan,
                         standard_error=se, within_spread=abs(value - threshold) < 2 * se
                         if not math.isnan(se + value + threshold) else math.nan))

    for (task, sigma), (base, need) in TARGETS.items():
        gain = get(task, sigma, "nsmoe", "gain_db")
        name = f"{task}{f' sigma {sigma}' if sigma else ''}: mean PSNR >= {base} + {need} dB"
        sel = (draws[(draws["task"] == task) & (draws["method"] == "nsmoe")] if draws is not None and len(draws)
               else pd.DataFrame())
        if len(sel):
            d = sel.iloc[0]
            add(f"{name} (mean over {d['draws']:.0f} degradation draws per image)", float(d["gain_db"]),
                float(d["gain_db"]) >= need, float(d["standard_error"]), need)
            add(f"{name} (draw 0 only)", gain, gain >= need)
        else:
            add(name, gain, gain >= need)
        if task in ("sr2", "sr4"):
            n = get(task, sigma, "nsmoe", "images")
            wins = get(task, sigma, "nsmoe", "wins")
            add(f"{task}: better than bicubic on all but at most one image ({n:.0f})", wins, wins >= n - 1)
            dssim = get(task, sigma, "nsmoe", "ssim_gain")
            add(f"{task}: mean SSIM not below bicubic", dssim, dssim >= 0)
            d = get(task, sigma, "nsmoe", "psnr") - get(task, sigma, "smoe", "psnr")
            add(f"{task}: better than smoe upscale (PSNR difference)", d, d > 0)
    d = get("denoise", 25, "nsmoe", "psnr") - get("denoise", 25, "bm3d", "psnr")
    add("denoise sigma 25: mean PSNR within 0.5 dB of BM3D (difference)", d, d >= -0.5)
    d = get("denoise", 25, "nsmoe", "psnr") - get("denoise", 25, "smoe", "psnr")
    add("denoise sigma 25: better than smoe denoise --models 8 (difference)", d, d > 0)
    return pd.DataFrame(rows, columns=["criterion", "measured", "holds", "standard_error", "within_spread"])


# ---------------------------------------------------------------------- figures
def training_figure(history: pd.DataFrame):
    """Validation PSNR against training step, one panel per task, the baseline (bicubic / noisy) dashed."""
    plt = pyplot()
    tasks = list(dict.fromkeys(history["task"]))
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(3.6 * max(1, len(tasks)), 3.0), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        h = history[history["task"] == task]
        ax.plot(h["step"], h["val_psnr"], "o-", ms=3, label="N-SMoE")
        ax.axhline(float(h["val_psnr_baseline"].iloc[-1]), ls="--", color="k",
                   label="noisy input" if task == "denoise" else "bicubic")
        ax.set_title(task)
        ax.set_xlabel("training step")
        ax.set_ylabel("validation PSNR (dB)")
        ax.legend(fontsize=7)
    return finish(fig)


def draws_figure(draw_rows: pd.DataFrame, target_db: float | None = None, title: str | None = None):
    """The PSNR gain over bicubic of every (image, draw) of :func:`draw_items`' rows, one column of points per test
    image (draw 0 ringed), the image's mean over its draws as a bar, the mean over everything and ``target_db`` as
    horizontal lines: how much the degradation draw, not the network, moves a single number."""
    plt = pyplot()
    df = draw_rows.copy()
    base = df[df["method"] == "bicubic"].set_index(["task", "image", "draw"])["psnr"]
    net = df[df["method"] == "nsmoe"].copy()
    net["gain_db"] = net["psnr"].to_numpy() - base.reindex(pd.MultiIndex.from_frame(net[["task", "image", "draw"]]))\
        .to_numpy()
    names = list(dict.fromkeys(net["image"]))
    fig, ax = plt.subplots(figsize=(1.3 * max(3, len(names)) + 1.5, 3.2))
    for i, name in enumerate(names):
        g = net[net["image"] == name]
        ax.bar(i, g["gain_db"].mean(), width=0.6, color="0.85", edgecolor="0.5")
        ax.plot(np.full(len(g), i), g["gain_db"], "o", ms=4, color="C0", alpha=0.8)
        first = g[g["draw"] == 0]
        ax.plot(np.full(len(first), i), first["gain_db"], "o", ms=9, mfc="none", color="C3")
    ax.axhline(float(net["gain_db"].mean()), color="C0", ls="-", lw=1,
               label=f"mean over {net['draw'].nunique()} draws: {net['gain_db'].mean():+.2f} dB")
    d0 = net[net["draw"] == 0]["gain_db"]
    if len(d0):
        ax.axhline(float(d0.mean()), color="C3", ls=":", lw=1, label=f"draw 0 only: {d0.mean():+.2f} dB")
    if target_db is not None:
        ax.axhline(float(target_db), color="k", ls="--", lw=1, label=f"target {target_db:+g} dB")
    ax.axhline(0.0, color="0.3", lw=0.5)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([n.replace(".dcm", "") for n in names], rotation=20, fontsize=8)
    ax.set_ylabel("PSNR gain over bicubic (dB)")
    ax.legend(fontsize=7)
    return finish(fig, title)


def crops_figure(panels: dict, reference: np.ndarray, window: int = 64, title: str | None = None):
    """The same ``window`` x ``window`` crop (the reference's most textured window,
    :func:`~smoe_core.studies.plotting.texture_window`) of every panel (label -> image at the reference's size),
    with its PSNR to the reference over the window in the title."""
    plt = pyplot()
    ref = np.asarray(reference, dtype=np.float32)
    w = int(min(window, *ref.shape))
    y0, y1, x0, x1 = texture_window(ref, w)
    sl = (slice(y0, y1), slice(x0, x1))
    items_ = [("reference", ref)] + list(panels.items())
    fig, axes = plt.subplots(1, len(items_), figsize=(2.3 * len(items_), 2.6), squeeze=False)
    for ax, (label, img) in zip(axes[0], items_):
        img = np.asarray(img, dtype=np.float32)
        sub = f"\n{psnr(np.clip(img[sl], 0, 1), ref[sl]):.2f} dB" if label != "reference" else f"\n{w} px window"
        show_image(ax, img[sl], label + sub)
    return finish(fig, title)


def kernels_figure(checkpoint_path, lr_image: np.ndarray, origin=None, title: str | None = None):
    """One LR block with the network's kernels drawn over it (one-sigma ellipses) and the block decoded at the
    network's scale: what the encoder predicts for one block (for a network with a base image, the decoded
    residual plus the block's bicubic upscale). ``origin`` (row, col) of the block (default: the block of largest
    variance on the test-stride grid)."""
    import torch

    plt = pyplot()
    loaded = load_network(checkpoint_path)
    net = loaded.net
    b = net.config.block
    x = torch.as_tensor(np.asarray(lr_image, dtype=np.float32))[None, None]
    blocks_, origins = blk.cut(x, b, blk.TEST_STRIDE)
    if origin is None:
        i = int(torch.argmax(blocks_.flatten(1).var(1)))
    else:
        match = ((origins[:, 0] == int(origin[0])) & (origins[:, 1] == int(origin[1]))).nonzero()
        if not len(match):
            raise ValueError(f"origin {origin} is not on the block grid")
        i = int(match[0, 0])
    with torch.no_grad():
        k = net.encode(blocks_[i:i + 1])
    model = block_model(k, 0)
    from ..render import render

    dec = render(model, (b, b), scale=net.config.scale)
    if net.config.base != "none":
        with torch.no_grad():
            dec = dec + net.base_image(blocks_[i:i + 1])[0, 0].numpy()
    dec = np.clip(dec, 0, 1)
    fig, axes = plt.subplots(1, 2, figsize=(6.0, 3.2))
    show_image(axes[0], blocks_[i, 0].numpy(), f"LR block at {tuple(int(v) for v in origins[i])}, "
                                               f"{model.n_kernels} kernels")
    kernel_ellipses(axes[0], model, color="yellow", linewidth=0.8)
    what = f"decoded at x{net.config.scale:g}" if net.config.scale != 1 else "decoded"
    show_image(axes[1], dec, what + (f" (+ {net.config.base})" if net.config.base != "none" else ""))
    return finish(fig, title)


__all__ = ["TASKS", "SIGMAS", "KEYS", "TARGETS", "CEILING_KEYS", "test_images", "test_crop", "noise_seed",
           "degraded_input", "task_scale", "quality", "available_checkpoints", "block_ceiling", "run_ceiling_item",
           "checkpoint_for", "checkpoint_summary", "training_history", "items", "output_path", "run_item", "summary",
           "DRAW_KEYS", "DRAW_METHODS", "draw_items", "run_draw_item", "draw_summary", "draws_figure",
           "targets", "training_figure", "crops_figure", "kernels_figure"]
