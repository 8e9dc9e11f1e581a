"""R-SMoE experiments ([R-SMoE]: Fig. 4, Fig. 5, the speed and memory claims of the abstract and
TL;DR, denoising by multi-model fusion and native super-resolution).

The paper's text we have is the abstract and the figure captions; the renderer itself (tiles, coverage boxes,
per-tile gating) is :mod:`smoe_core.render` / :mod:`smoe_core.render.binning` (paper Fig. 3). This module adds
what the figures compare:

**The four models of Fig. 4** (:data:`VARIANTS`), all trained by the same :func:`smoe_core.fit` (Adam, MSE,
the same learning rates and a fixed iteration budget, ``tol=0``) from one shared initialization
(:func:`initial_model`: the initializer ``init``, default ``"grid"``, on the image with the kernel pool size
K; a deterministic function of (image, K, init, seed), so every variant of a grid item starts from the same
kernels even when items run separately):

- ``"smoe"``: R-SMoE, the SMoE rendered and trained on the tiled renderer (16 x 16 blocks, coverage boxes at
  Mahalanobis radius 5, the R-SMoE authors' "about 5 sigma", gating normalized per pixel over the block's list).
  The authors' code divides by the per-pixel gate sum clamped at a small epsilon; the renderer here normalizes in
  the log domain (a softmax over the list), which needs no epsilon and agrees with it wherever the sum exceeds
  the epsilon (pixels no kernel reaches get 0 in both).
- ``"global"``: G-SMoE, the same SMoE on the dense renderer (``backend="dense"``: every pixel sees every kernel).
- ``"rbf"``: the steered RBF network (``rbf=True``: y = sum_j pi_j K_j(x) m_j, no normalization), tiled.
- ``"gaussian_image"``: GaussianImage-style 2D splatting (Zhang et al., ECCV 2024): a plain sum of
  anisotropic Gaussians, each with its own colour, no normalization, covariance through a Cholesky factor.
  Realised here as ``rbf=True`` with pi fixed at 1 and frozen (learning rate of pi = 0), so the colour
  (the expert) carries the amplitude: y(x) = sum_j c_j exp(-q_j(x)/2). Choices: our Cholesky factor is that
  of the precision P = A A^T (GaussianImage factors the covariance); both cover every positive-definite
  matrix, so the function class is the same. GaussianImage's own rasterizer cuts kernels at 3 sigma; here it
  runs on the same tiled renderer as R-SMoE (cutoff 5), so the comparison isolates the model (normalized
  gating vs plain sum), not the rasterizer. Its pi stays exactly 1 during fit (tested).

Initial amplitudes of the two unnormalized variants (our choice): an SMoE initialization gives experts that
are the image's values where each kernel dominates; summed without normalization, overlapping kernels
overshoot (a grid with spacing 2 sigma sums to about pi/2). :func:`variant_model` therefore first folds pi into
the experts for ``"gaussian_image"`` (experts * pi, pi = 1; a no-op for the Grid's pi = 1), then multiplies
the experts of both unnormalized variants by the one scalar c = <r, y> / <r, r> that best fits their initial
render r to the image y (least squares over all pixels and channels). Both start from the same render when pi
is 1 (Grid, K-Means); ``"rbf"`` can then still train pi, ``"gaussian_image"`` cannot.

**Kernels evaluated per block** (Fig. 4's x-axis, :func:`kernel_stats`): for the tiled variants the mean
length of the per-tile kernel lists the renderer evaluates (:func:`smoe_core.tile_lists`, 16 x 16 tiles,
partial border tiles counted as tiles, the kernels given to empty tiles included), measured on the *fitted*
model (training moves and reshapes the kernels; the initial model's value is kept too); for the dense global
model, K (every block evaluates every kernel). ``kernels_per_pixel`` is the pixel-weighted mean (sum over tiles
of list length x pixels in the tile, / H W); it equals the per-block mean when H and W are multiples of 16.

**FLOPs per pixel** = kernels evaluated per pixel x :func:`ops_per_kernel`, the operation count of the
per-(pixel, kernel) work of the forward pass as written in ``raw_kernels/smoe_tile.h`` and the forward loop of
``raw_kernels/smoe_tile_cpu.cpp`` (every add, subtract, multiply, min/max/comparison and exp counts one):

- ``log_weight``: dx, dy (2 sub), u = a11 dx + a21 dy (2 mul, 1 add), v = a22 dy (1 mul), q = u u + v v
  (2 mul, 1 add), the clamp q < MAX_Q (1 compare), logpi - 0.5 q (1 mul, 1 sub): **12**
  (:data:`LOG_WEIGHT_OPS`; the test counts the operators in the header's function body);
- SMoE only: the running maximum over the list for the log-domain softmax, max(mx, l): **1**;
- the accumulation: the no-weight test (1 compare), exp(l - mx) (1 sub, 1 exp; the CPU build's ``exp_gate``
  clamps the argument so the vector exp stays on its fast path, not counted), S += w (1 add), dx, dy
  recomputed for the expert (2 sub): **6** (the RBF mode runs the same code with mx = 0);
- per channel: acc += w m (1 mul, 1 add): **2 C**; linear experts add m = e + s0 dx + s1 dy (2 mul, 2 add):
  **6 C** in all.

So **19 + 2C** per kernel for SMoE (21 gray, 25 RGB) and **18 + 2C** for the RBF and GaussianImage variants (20,
24). The per-pixel work independent of K (log of the normalizer and C divisions for SMoE) is not included.
The global model is counted with the same per-kernel math (what the tiled kernel would spend if every list
held all K kernels; the dense renderer's matrix-product formulation is an implementation of that model, not a
different model). The compiler may fuse or hoist some of these (e.g. the recomputed dx, dy); we count the
source as written.

**Speed and memory per training iteration** (:func:`run_speed_memory_item`): for each kernel count the same
grid-initialized SMoE is trained one step on the tiled (R-SMoE) and the dense (G-SMoE) renderer, side by side in
one item: render + MSE + backward (no optimizer step, as :mod:`smoe_core.studies.bench`). Time: in this process, with
``threads`` torch/OpenMP threads (default 1, for both backends: on a shared machine a multi-threaded timing
mostly measures the other processes); both backends are warmed up once, then timed ``repeats`` times
alternately (best and median); a backend whose warm-up took more than ``slow_seconds`` is timed once. Memory
(:func:`memory_per_iteration`), by default in one fresh subprocess per item (so nothing this process did before
has left reusable heap pages that would hide an allocation): each backend first runs once on a 16 x 16 crop with
4 kernels (one-time costs: the compiled library, thread pools), then the tiled pass and then the dense pass are
measured:

- ``peak_mb``: the growth of the process's resident memory during one forward + backward: freed heap memory
  is returned first (``gc.collect()``, glibc ``malloc_trim(0)``), the kernel's high-water mark is reset
  (writing 5 to ``/proc/self/clear_refs``), and peak_mb = VmHWM after the pass - VmRSS before it. This counts
  everything the pass allocates (torch tensors, the dense renderer's recomputed chunks, the compiled
  renderer's scratch buffers), at page granularity. Where the reset is not possible (not Linux) the column
  is the growth of ``ru_maxrss`` instead (0 when an earlier pass went higher) and ``memory_method`` says so.
  The dense renderer works in chunks of about 2^23 pixel-kernel pairs, so its peak levels off once K is large.
- ``saved_mb``: the bytes of the tensors autograd keeps from forward to backward, counted with
  ``torch.autograd.graph.saved_tensors_hooks`` (distinct storages, the model's parameters and the target
  excluded). The dense renderer checkpoints its chunks (recomputes them in backward), so for it this is small:
  its memory cost is the transient peak of a chunk's graph, which ``peak_mb`` shows.

**Denoising and super-resolution** (:func:`run_denoise_item`, :func:`run_superres_item`): the experiments of
:mod:`smoe_core.tasks.denoise` and :mod:`smoe_core.tasks.superres` per (image, channels, sigma) / (image, channels,
scale) as resumable grid items that also keep the output images (an ``.npz`` per item) for crop figures;
the metrics are those of :func:`smoe_core.studies.r_smoe_restoration.denoising_experiment` and
:func:`smoe_core.studies.r_smoe_restoration.superres_experiment` (same noise seeds, fits and shaves; tested equal).

Every grid item is a plain picklable dict (image name or path, crop, channels "gray"/"rgb", ...), so
:meth:`smoe_core.studies.results.ResultsStore.run_grid` resumes them and Dask can ship them.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..init import initializer_info
from ..io import image_key
from ..metrics import psnr, ssim
from ..model import SMoE
from ..parallel import torch_threads
from ..render import DEFAULT_CUTOFF, DEFAULT_FILL, DEFAULT_TILE, render, tile_lists
from ..training import fit
from .bench import tiled_pairs
from .common import load_case, run_items
from .perceptual import perceptual_columns
from .plotting import axis_label, curves, finish, pyplot, readable_log_axis, series_styles
from .profiling import load_average, measure_peak_mb, saved_tensor_bytes

VARIANTS = ("smoe", "global", "rbf", "gaussian_image")
VARIANT_LABELS = {"smoe": "R-SMoE", "global": "G-SMoE", "rbf": "RBF", "gaussian_image": "GaussianImage"}
CHANNELS = ("gray", "rgb")

# operation counts of the per-(pixel, kernel) forward work (module docstring)
LOG_WEIGHT_OPS = 12
SOFTMAX_MAX_OPS = 1
ACCUMULATE_OPS = 6
CHANNEL_OPS_CONSTANT = 2
CHANNEL_OPS_LINEAR = 6

QUALITY_KEYS = ["image", "channels", "kernels", "variant"]
SPEED_KEYS = ["image", "channels", "kernels"]
DENOISE_KEYS = ["image", "channels", "sigma"]
SUPERRES_KEYS = ["image", "channels", "scale"]


# ---------------------------------------------------------------------- variants
def _check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return variant


def check_channels(channels: str) -> bool:
    """True for "rgb", False for "gray" (ValueError otherwise)."""
    if channels not in CHANNELS:
        raise ValueError(f"channels must be one of {CHANNELS}, got {channels!r}")
    return channels == "rgb"


def channels_list(channels) -> list[str]:
    """``channels`` (one name or several) as a checked list."""
    channels = [channels] if isinstance(channels, str) else list(channels)
    for ch in channels:
        check_channels(ch)
    return channels


def backend_of(variant: str) -> str:
    """The renderer a variant trains on: ``"dense"`` for the global SMoE, ``"tiled"`` for the others."""
    return "dense" if _check_variant(variant) == "global" else "tiled"


def variant_lr(variant: str, lr: dict | None = None) -> dict:
    """The learning rates of a variant: ``lr`` (over fit's defaults), with pi frozen for GaussianImage."""
    rates = dict(lr or {})
    if _check_variant(variant) == "gaussian_image":
        rates["pi"] = 0.0
    return rates


def initial_model(image, n_kernels: int, *, init="grid", seed: int = 0, **init_kwargs) -> SMoE:
    """The shared initialization of all variants: ``init`` (a registered name or a function) with budget
    ``n_kernels`` on ``image`` (seeded when the initializer takes a seed)."""
    info = initializer_info(init)
    kw = dict(init_kwargs)
    kw.update({k: v for k, v in info.seed_kwargs(seed).items() if k not in kw})
    model, _ = info.fn(image, n_kernels, **kw)
    return model


def _least_squares_gain(rendered: np.ndarray, image: np.ndarray) -> float:
    r = np.asarray(rendered, np.float64).ravel()
    y = np.asarray(image, np.float64).ravel()
    rr = float(r @ r)
    return 1.0 if rr <= 0 else float(r @ y) / rr


def variant_model(init: SMoE, variant: str, image=None, *, tile: int = DEFAULT_TILE, cutoff: float = DEFAULT_CUTOFF,
                  fill: int = DEFAULT_FILL) -> SMoE:
    """The initial model of ``variant`` from a shared SMoE initialization ``init`` (a numpy copy).

    ``"smoe"`` / ``"global"``: the SMoE itself. ``"rbf"``: the same fields with ``rbf=True``.
    ``"gaussian_image"``: ``rbf=True``, experts * pi and pi = 1. With ``image`` given, the experts of the two
    unnormalized variants are scaled by the least-squares gain of their initial render (module docstring).
    """
    _check_variant(variant)
    m = init.numpy().copy()
    if variant in ("smoe", "global"):
        m.rbf = False
        return m
    m.rbf = True
    if variant == "gaussian_image":
        experts = m.experts * m.pi[:, None]
        slopes = None if m.slopes is None else m.slopes * m.pi[:, None, None]
        m = m.replace(experts=experts.astype(np.float32), slopes=None if slopes is None else slopes.astype(np.float32),
                      pi=np.ones_like(m.pi))
    if image is not None:
        shape = np.asarray(image).shape[:2]
        gain = _least_squares_gain(render(m, shape, tile=tile, cutoff=cutoff, fill=fill), image)
        m = m.replace(experts=(m.experts * gain).astype(np.float32),
                      slopes=None if m.slopes is None else (m.slopes * gain).astype(np.float32))
    return m


def fit_variant(image, init: SMoE, variant: str, *, iters: int = 300, lr: dict | None = None, seed: int = 0,
                tol: float = 0.0, tile: int = DEFAULT_TILE, cutoff: float = DEFAULT_CUTOFF, fill: int = DEFAULT_FILL,
                progress: bool = False, **fit_kwargs) -> tuple[SMoE, pd.DataFrame]:
    """Fits one variant from the shared initialization ``init``: :func:`variant_model`, then
    :func:`smoe_core.fit` on the variant's renderer (:func:`backend_of`) with its learning rates
    (:func:`variant_lr`), a fixed budget of ``iters`` Adam steps (``tol=0``). Returns (model, history)."""
    model0 = variant_model(init, variant, image, tile=tile, cutoff=cutoff, fill=fill)
    return fit(image, model0, iters=iters, lr=variant_lr(variant, lr), seed=seed, tol=tol,
               backend=backend_of(variant), tile=tile, cutoff=cutoff, fill=fill, progress=progress, **fit_kwargs)


# ---------------------------------------------------------------------- kernels per block and FLOPs
def ops_per_kernel(channels: int, *, rbf: bool = False, linear: bool = False) -> int:
    """Operations per (pixel, kernel) of the forward pass (module docstring): 19 + 2C for SMoE, 18 + 2C for RBF
    (6C instead of 2C with linear experts)."""
    C = int(channels)
    if C < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    per_channel = CHANNEL_OPS_LINEAR if linear else CHANNEL_OPS_CONSTANT
    return LOG_WEIGHT_OPS + (0 if rbf else SOFTMAX_MAX_OPS) + ACCUMULATE_OPS + per_channel * C


def kernel_stats(model: SMoE, shape=None, *, variant: str = "smoe", tile: int = DEFAULT_TILE,
                 cutoff: float = DEFAULT_CUTOFF, fill: int = DEFAULT_FILL) -> dict:
    """{kernels_per_block, kernels_per_pixel, ops_per_kernel, flops_per_pixel} of ``model`` rendered as
    ``variant`` (tile lists for the tiled variants, K for ``"global"``)."""
    _check_variant(variant)
    shape = model.image_shape if shape is None else tuple(int(s) for s in shape[:2])
    if shape is None:
        raise ValueError("give the image shape (H, W): the model does not record one")
    H, W = shape
    ops = ops_per_kernel(model.n_channels, rbf=model.rbf, linear=model.linear)
    if variant == "global":
        kpb = kpp = float(model.n_kernels)
    else:
        lists = tile_lists(model, (H, W), tile=tile, cutoff=cutoff, fill=fill)
        counts = lists.counts.to(torch.float64).cpu()
        kpb = float(counts.mean())
        rows = torch.clamp(H - torch.arange(lists.tiles_y) * tile, max=tile)
        cols = torch.clamp(W - torch.arange(lists.tiles_x) * tile, max=tile)
        pixels = (rows[:, None] * cols[None, :]).reshape(-1).to(torch.float64)
        kpp = float((counts * pixels).sum() / (H * W))
    return dict(kernels_per_block=kpb, kernels_per_pixel=kpp, ops_per_kernel=ops, flops_per_pixel=kpp * ops)


def kernels_per_block(model: SMoE, shape=None, *, variant: str = "smoe", **kw) -> float:
    """The average number of kernels evaluated per 16 x 16 block (Fig. 4's x-axis; see :func:`kernel_stats`)."""
    return kernel_stats(model, shape, variant=variant, **kw)["kernels_per_block"]


# ---------------------------------------------------------------------- Figs. 4 and 5: quality vs kernels
def load_item_image(item: dict) -> np.ndarray:
    return load_case(item["image"], item.get("crop"), color=check_channels(item.get("channels", "gray")))


def quality_items(images, kernels, *, variants=VARIANTS, channels=("gray",), crop=None, iters: int = 300,
                  init="grid", seed: int = 0, lr: dict | None = None, perceptual: bool = True) -> list[dict]:
    """One grid item per (image, channels, kernel pool size, variant) for :func:`run_quality_item`."""
    items = []
    for image in images:
        for ch in channels_list(channels):
            for K in kernels:
                for v in variants:
                    items.append(dict(image=str(image), channels=ch, kernels=int(K), variant=_check_variant(v),
                                      crop=crop, iters=int(iters), init=init, seed=int(seed), lr=lr,
                                      perceptual=bool(perceptual)))
    return items


def run_quality_item(item: dict) -> dict:
    """Fits one variant at one kernel pool size; the row of Figs. 4 and 5.

    Columns: kernels_init (the initializer's count), kernels_final, psnr, ssim, lpips / st_lpips /
    attention_psnr (:func:`smoe_core.studies.perceptual.perceptual_columns`; "n/a (...)" where weights are missing;
    skipped with ``perceptual=False``), kernels_per_block / kernels_per_pixel / flops_per_pixel of the fitted
    model (and kernels_per_block_init), ops_per_kernel, iterations, seconds, ms_per_iteration, renderer (the
    backend; the column "backend" of a results table is the store's metadata).
    """
    image = load_item_image(item)
    variant = _check_variant(item["variant"])
    init = initial_model(image, item["kernels"], init=item.get("init", "grid"), seed=item.get("seed", 0))
    t0 = time.perf_counter()
    model, hist = fit_variant(image, init, variant, iters=item.get("iters", 300), lr=item.get("lr"),
                              seed=item.get("seed", 0))
    seconds = time.perf_counter() - t0
    out = render(model, image.shape[:2], backend=backend_of(variant))
    stats = kernel_stats(model, image.shape[:2], variant=variant)
    stats0 = kernel_stats(variant_model(init, variant), image.shape[:2], variant=variant)
    row = dict(variant_label=VARIANT_LABELS[variant], kernels_init=init.n_kernels, kernels_final=model.n_kernels,
               psnr=psnr(out, image), ssim=ssim(out, image))
    if item.get("perceptual", True):
        row.update(perceptual_columns(np.clip(out, 0, 1), image))
    row.update(stats, kernels_per_block_init=stats0["kernels_per_block"], iterations=len(hist), seconds=seconds,
               ms_per_iteration=1e3 * seconds / max(len(hist), 1), renderer=backend_of(variant),
               height=image.shape[0], width=image.shape[1])
    return row


def quality_runs(items, store=None, *, name: str = "quality_runs", **kw) -> pd.DataFrame:
    """All rows of :func:`run_quality_item` (resumable in ``store``), one per item, latest run per key."""
    df = run_items(name, items, run_quality_item, QUALITY_KEYS, store, **kw)
    return df.drop_duplicates(QUALITY_KEYS, keep="last").reset_index(drop=True) if len(df) else df


def fig4_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Fig. 4: PSNR against the average number of kernels evaluated per block, with FLOPs per pixel."""
    cols = ["image", "channels", "variant", "variant_label", "kernels", "kernels_per_block", "kernels_per_pixel",
            "flops_per_pixel", "psnr"]
    return runs[cols].sort_values(["image", "channels", "variant", "kernels"]).reset_index(drop=True)


def fig4_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Fig. 4's red rectangle: R-SMoE against GaussianImage (and the others) at each kernel pool size: PSNR
    of each variant, kernels per block of each, R-SMoE minus GaussianImage in dB and their FLOPs ratio."""
    piv = runs.pivot_table(index=["image", "channels", "kernels"], columns="variant",
                           values=["psnr", "kernels_per_block", "flops_per_pixel"], aggfunc="last")
    out = pd.DataFrame(index=piv.index)
    for v in VARIANTS:
        if ("psnr", v) in piv.columns:
            out[f"psnr_{v}"] = piv[("psnr", v)]
            out[f"kpb_{v}"] = piv[("kernels_per_block", v)]
    if ("psnr", "smoe") in piv.columns and ("psnr", "gaussian_image") in piv.columns:
        out["smoe_minus_gi_db"] = piv[("psnr", "smoe")] - piv[("psnr", "gaussian_image")]
        out["flops_smoe_over_gi"] = piv[("flops_per_pixel", "smoe")] / piv[("flops_per_pixel", "gaussian_image")]
    if ("psnr", "smoe") in piv.columns and ("psnr", "global") in piv.columns:
        out["smoe_minus_global_db"] = piv[("psnr", "smoe")] - piv[("psnr", "global")]
    return out.reset_index()


def fig5_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Fig. 5: PSNR, SSIM and LPIPS (and ST-LPIPS) against the kernel pool size, per variant."""
    cols = ["image", "channels", "variant", "variant_label", "kernels", "kernels_init", "kernels_final", "psnr", "ssim"]
    cols += [c for c in ("lpips", "st_lpips") if c in runs.columns]
    return runs[cols].sort_values(["image", "channels", "variant", "kernels"]).reset_index(drop=True)


def fig4_experiment(items, store=None, **kw) -> pd.DataFrame:
    """Fig. 4 from grid items (:func:`quality_items`): runs what ``store`` lacks, returns :func:`fig4_table`."""
    return fig4_table(quality_runs(items, store, **kw))


def fig5_experiment(items, store=None, **kw) -> pd.DataFrame:
    """Fig. 5 from the same grid items (and the same table, so nothing is fitted twice with a store)."""
    return fig5_table(quality_runs(items, store, **kw))


# ---------------------------------------------------------------------- speed and memory per iteration
def _training_pass(model: SMoE, target: torch.Tensor, backend: str, *, tile, cutoff, fill, backward: bool = True):
    for t in model.fields().values():
        if t is not None:
            t.grad = None
    out = render(model, backend=backend, tile=tile, cutoff=cutoff, fill=fill)
    loss = (out - target).pow(2).mean()
    if backward:
        loss.backward()
    return loss


def speed_memory_items(images, kernels, *, channels=("gray", "rgb"), crop=None, repeats: int = 3,
                       backends=("tiled", "dense"), slow_seconds: float = 5.0, init="grid", threads: int = 1,
                       memory: str = "subprocess") -> list[dict]:
    """One grid item per (image, channels, kernel count) for :func:`run_speed_memory_item`."""
    if memory not in ("subprocess", "inprocess"):
        raise ValueError(f"memory must be 'subprocess' or 'inprocess', got {memory!r}")
    return [dict(image=str(im), channels=ch, kernels=int(K), crop=crop, repeats=int(repeats), backends=list(backends),
                 slow_seconds=float(slow_seconds), init=init, threads=None if threads is None else int(threads),
                 memory=memory)
            for im in images for ch in channels_list(channels) for K in kernels]


def _speed_setup(item: dict):
    tile = item.get("tile", DEFAULT_TILE)
    kw = dict(tile=tile, cutoff=item.get("cutoff", DEFAULT_CUTOFF), fill=item.get("fill", DEFAULT_FILL))
    image = load_item_image(item)
    target = torch.from_numpy(np.ascontiguousarray(image))
    base = initial_model(image, item["kernels"], init=item.get("init", "grid"))
    return image, target, base, kw


def memory_per_iteration(item: dict) -> dict:
    """{backend: (peak_mb, saved_mb, method)} of one training pass of the item's model on each backend, measured
    here (module docstring). Each backend first runs once on a 16 x 16 crop with 4 kernels (loading the compiled
    renderer and thread pools, one-time costs), then the tiled pass is measured before the dense one."""
    image, target, base, kw = _speed_setup(item)
    backends = sorted(item.get("backends", ("tiled", "dense")), key=lambda b: b == "dense")
    small = np.ascontiguousarray(image[:16, :16])
    tiny = initial_model(small, 4).torch(requires_grad=True)
    for b in backends:
        _training_pass(tiny, torch.from_numpy(small), b, **kw)
    out = {}
    for b in backends:
        m = base.torch(requires_grad=True)
        params = [t for t in m.fields().values() if t is not None] + [target]
        peak, how = measure_peak_mb(lambda: _training_pass(m, target, b, **kw))
        for t in params:
            t.grad = None
        saved = saved_tensor_bytes(lambda: _training_pass(m, target, b, backward=False, **kw), exclude=params)
        out[b] = (peak, saved / 2**20, how)
        del m, params
    return out


def _memory_in_subprocess(item: dict, threads: int) -> dict:
    """:func:`memory_per_iteration` in a fresh Python process (same interpreter, ``threads`` torch threads)."""
    import json
    import subprocess

    spec = {k: v for k, v in item.items() if k in ("image", "crop", "channels", "kernels", "init", "backends", "tile",
                                                     "cutoff", "fill")}
    code = ("import json, sys, torch; torch.set_num_threads(int(sys.argv[2])); "
            "from smoe_core.studies.r_smoe_paper import memory_per_iteration as f; "
            "print('RSMOE_MEMORY ' + json.dumps(f(json.loads(sys.argv[1]))))")
    package_parent = str(Path(__file__).resolve().parents[2])  # so the child imports this very smoe_core
    env = dict(os.environ, OMP_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec), str(threads)], capture_output=True, text=True,
                          env=env, timeout=3600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RSMOE_MEMORY ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the memory probe failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return {b: tuple(v) for b, v in json.loads(lines[-1][len("RSMOE_MEMORY "):]).items()}


def run_speed_memory_item(item: dict) -> list[dict]:
    """Time and memory of one training iteration on each backend, side by side (module docstring).

    Time: in this process with ``threads`` torch/OpenMP threads (default 1: on a shared machine a multi-threaded
    timing mostly measures the other processes; None keeps torch's setting). Memory: by default in one fresh
    subprocess per item (``memory="subprocess"``), so earlier work of this process cannot have left reusable
    heap pages behind; ``"inprocess"`` measures here (after the timing passes, which makes ``peak_mb`` a lower
    bound). One row per backend: renderer (the backend), kernels_model (the model's count), height, width,
    threads, repeats, best_ms, median_ms, peak_mb, saved_mb, memory_method, kernels_per_block, pairs (pixel-kernel
    pairs evaluated), load_avg_1min."""
    threads = item.get("threads", 1)
    with torch_threads(threads):
        threads = torch.get_num_threads()
        image, target, base, kw = _speed_setup(item)
        H, W = image.shape[:2]
        lists = tile_lists(base, (H, W), **kw)
        backends = list(item.get("backends", ("tiled", "dense")))
        models = {b: base.torch(requires_grad=True) for b in backends}

        def timed(b):
            t0 = time.perf_counter()
            _training_pass(models[b], target, b, **kw)
            return time.perf_counter() - t0

        warm = {b: timed(b) for b in backends}
        reps = {b: (1 if warm[b] > item.get("slow_seconds", 5.0) else int(item.get("repeats", 3))) for b in backends}
        times = {b: [] for b in backends}
        for r in range(max(reps.values())):
            for b in backends:
                if r < reps[b]:
                    times[b].append(timed(b))
        load = load_average()
        del models
        if item.get("memory", "subprocess") == "subprocess":
            memory = _memory_in_subprocess(item, threads)
        else:
            memory = memory_per_iteration(item)
    rows = []
    for b in backends:
        peak, saved, how = memory[b]
        st = kernel_stats(base, (H, W), variant="global" if b == "dense" else "smoe", **kw)
        rows.append(dict(renderer=b, kernels_model=base.n_kernels, height=H, width=W, threads=threads,
                         repeats=reps[b], best_ms=1e3 * min(times[b]), median_ms=1e3 * statistics.median(times[b]),
                         peak_mb=peak, saved_mb=saved, memory_method=how + (" (subprocess)" if item.get(
                             "memory", "subprocess") == "subprocess" else " (in process)"),
                         kernels_per_block=st["kernels_per_block"],
                         pairs=H * W * base.n_kernels if b == "dense" else tiled_pairs(lists), load_avg_1min=load))
    return rows


def speed_memory_runs(items, store=None, *, name: str = "speed_memory_runs", **kw) -> pd.DataFrame:
    df = run_items(name, items, run_speed_memory_item, SPEED_KEYS, store, **kw)
    return df.drop_duplicates(SPEED_KEYS + ["renderer"], keep="last").reset_index(drop=True) if len(df) else df


def speed_memory_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (image, channels, kernels): tiled and dense time and memory and their ratios (dense/tiled;
    NaN where the tiled value is 0)."""
    out = []
    for (im, ch, K), g in runs.groupby(["image", "channels", "kernels"], sort=True):
        by = {r["renderer"]: r for _, r in g.iterrows()}
        t, d = by.get("tiled"), by.get("dense")
        row = dict(image=image_key(im), channels=ch, kernels=int(g["kernels_model"].iloc[0]),
                   size=f"{int(g['height'].iloc[0])}x{int(g['width'].iloc[0])}")
        for name, r in (("tiled", t), ("dense", d)):
            row[f"{name}_ms"] = np.nan if r is None else float(r["best_ms"])
            row[f"{name}_peak_mb"] = np.nan if r is None else float(r["peak_mb"])
            row[f"{name}_saved_mb"] = np.nan if r is None else float(r["saved_mb"])
        row["speedup"] = row["dense_ms"] / row["tiled_ms"] if row["tiled_ms"] > 0 else np.nan
        row["memory_ratio"] = row["dense_peak_mb"] / row["tiled_peak_mb"] if row["tiled_peak_mb"] > 0 else np.nan
        row["kernels_per_block_tiled"] = np.nan if t is None else float(t["kernels_per_block"])
        out.append(row)
    return pd.DataFrame(out)


def speed_memory_experiment(items, store=None, **kw) -> pd.DataFrame:
    """Runs the speed/memory items (resumable in ``store``) and returns :func:`speed_memory_table`."""
    return speed_memory_table(speed_memory_runs(items, store, **kw))


VARIANT_ORDER = [VARIANT_LABELS[v] for v in VARIANTS]


def mean_curves(df: pd.DataFrame, x: str, metrics, *, by: str = "variant_label", logx: bool = False, title=None,
                order=None, xlabel: str | None = None):
    """One panel per metric: the metric (mean over images) against ``x``, one line per ``by`` value (in
    ``order``, default :data:`VARIANT_ORDER`; each with its own marker and line style, so series that coincide
    still show: :func:`smoe_core.studies.plotting.series_styles`). Metrics that are not numeric here (e.g. LPIPS
    without weights: "n/a ...") are left out; axis labels carry the unit (PSNR in dB)."""
    plt = pyplot()
    numeric = []
    for m in metrics:
        if m in df.columns:
            vals = pd.to_numeric(df[m], errors="coerce")
            if vals.notna().any():
                numeric.append((m, vals))
    fig, axes = plt.subplots(1, max(len(numeric), 1), figsize=(3.6 * max(len(numeric), 1), 3.0), squeeze=False)
    order = VARIANT_ORDER if order is None else list(order)
    keys = [k for k in dict.fromkeys(list(order) + list(df[by])) if k in set(df[by])]
    styles = series_styles(keys)
    for ax, (m, vals) in zip(axes[0], numeric):
        d = df.assign(_v=vals).groupby([by, x], sort=False)["_v"].mean().reset_index()
        for i, key in enumerate(keys):
            g = d[d[by] == key].sort_values(x)
            if len(g):
                ax.plot(g[x], g["_v"], label=str(key), zorder=2 + 0.01 * i, **styles[key])
        ax.set_xlabel(xlabel or x)
        ax.set_ylabel(axis_label(m) + (" (mean over images)" if df["image"].nunique() > 1 else ""))
        if logx:
            readable_log_axis(ax, df[x], "x")
        ax.grid(alpha=0.3)
    if numeric:
        axes[0][-1].legend(fontsize=7)
    return finish(fig, title)


def fig4_figure(fig4: pd.DataFrame, channels: str = "gray"):
    """Fig. 4 for one channel setting (rows of :func:`fig4_table`): PSNR against the kernels evaluated per block
    (log axis), one panel per image (the papers' order), one series per variant."""
    sub = fig4[fig4["channels"] == channels]
    return curves(sub, "kernels_per_block", "psnr", by="variant_label", panel="image", logx=True,
                  xlabel="kernels evaluated per block", ylabel="PSNR (dB)", order=VARIANT_ORDER,
                  title=f"Fig. 4 ({channels}): PSNR against kernels evaluated per 16 x 16 block")


def fig5_figure(fig5: pd.DataFrame, channels: str = "gray"):
    """Fig. 5 for one channel setting (rows of :func:`fig5_table`): PSNR, SSIM, LPIPS / ST-LPIPS (where numeric)
    against the kernel pool size, mean over images, one series per variant."""
    cols = [c for c in ("psnr", "ssim", "lpips", "st_lpips") if c in fig5.columns]
    return mean_curves(fig5[fig5["channels"] == channels], "kernels", cols, by="variant_label", logx=True,
                       xlabel="kernel pool size K", title=f"Fig. 5 ({channels}): quality against the kernel pool size")


def speed_memory_figure(runs: pd.DataFrame, column: str = "best_ms"):
    """Time (``best_ms``) or memory (``peak_mb``) of one training iteration against the model's kernel count, one
    series per renderer (tiled, dense), one panel per channel setting; log axes (time) or log x (memory)."""
    labels = {"best_ms": "ms per iteration (forward + backward)", "median_ms": "ms per iteration (median)",
              "peak_mb": "peak memory growth (MiB)", "saved_mb": "saved for backward (MiB)"}
    return curves(runs.assign(kernels=runs["kernels_model"]), "kernels", column, by="renderer", panel="channels",
                  logx=True, logy=column.endswith("_ms"), xlabel="kernels", ylabel=labels.get(column, column),
                  order=["tiled", "dense"])


__all__ = ["VARIANTS", "VARIANT_LABELS", "backend_of", "variant_lr", "initial_model", "variant_model", "fit_variant",
           "ops_per_kernel", "kernel_stats", "kernels_per_block", "quality_items", "run_quality_item", "quality_runs",
           "fig4_table", "fig4_summary", "fig5_table", "fig4_experiment", "fig5_experiment", "speed_memory_items",
           "run_speed_memory_item", "speed_memory_runs", "speed_memory_table", "speed_memory_experiment",
           "memory_per_iteration", "mean_curves", "fig4_figure", "fig5_figure", "speed_memory_figure", "VARIANT_ORDER",
           "check_channels", "channels_list", "load_item_image"]
