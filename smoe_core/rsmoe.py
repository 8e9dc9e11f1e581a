"""R-SMoE experiments (rasterized abstract: Fig. 4, Fig. 5, the speed and memory claims of the abstract and
TL;DR, denoising by multi-model fusion and native super-resolution).

The paper's text we have is the abstract and the figure captions; the renderer itself (tiles, coverage boxes,
per-tile gating) is :mod:`smoe_core.rendering` / :mod:`smoe_core._binning` (paper Fig. 3). This module adds
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
- the accumulation: the no-weight test (1 compare), exp(l - mx) (1 sub, 1 exp), S += w (1 add), dx, dy
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
one item: render + MSE + backward (no optimizer step, as :mod:`smoe_core.bench`). Time: in this process, with
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
:mod:`smoe_core.denoise` and :mod:`smoe_core.superres` per (image, channels, sigma) / (image, channels,
scale) as resumable grid items that also keep the output images (an ``.npz`` per item) for crop figures;
the metrics are those of :func:`smoe_core.denoise.denoising_experiment` and
:func:`smoe_core.superres.superres_experiment` (same noise seeds, fits and shaves; tested equal).

Every grid item is a plain picklable dict (image name or path, crop, channels "gray"/"rgb", ...), so
:meth:`smoe_core.results.ResultsStore.run_grid` resumes them and Dask can ship them.
"""
from __future__ import annotations

import ctypes
import gc
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .bench import _load_average, _peak_rss_mb, tiled_pairs
from .experiments import image_key, load_case
from .init import get_initializer
from .metrics import psnr, ssim
from .model import SMoE
from .parallel import torch_threads
from .rendering import DEFAULT_CUTOFF, DEFAULT_FILL, DEFAULT_TILE, render, tile_lists
from .training import fit

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


def _check_channels(channels: str) -> bool:
    if channels not in CHANNELS:
        raise ValueError(f"channels must be one of {CHANNELS}, got {channels!r}")
    return channels == "rgb"


def _channels_list(channels) -> list[str]:
    channels = [channels] if isinstance(channels, str) else list(channels)
    for ch in channels:
        _check_channels(ch)
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
    import inspect

    fn = get_initializer(init)
    try:
        takes_seed = "seed" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes_seed = False
    kw = dict(init_kwargs)
    if takes_seed:
        kw.setdefault("seed", seed)
    model, _ = fn(image, n_kernels, **kw)
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
    return load_case(item["image"], item.get("crop"), color=_check_channels(item.get("channels", "gray")))


def quality_items(images, kernels, *, variants=VARIANTS, channels=("gray",), crop=None, iters: int = 300,
                  init="grid", seed: int = 0, lr: dict | None = None, perceptual: bool = True) -> list[dict]:
    """One grid item per (image, channels, kernel pool size, variant) for :func:`run_quality_item`."""
    items = []
    for image in images:
        for ch in _channels_list(channels):
            for K in kernels:
                for v in variants:
                    items.append(dict(image=str(image), channels=ch, kernels=int(K), variant=_check_variant(v),
                                      crop=crop, iters=int(iters), init=init, seed=int(seed), lr=lr,
                                      perceptual=bool(perceptual)))
    return items


def run_quality_item(item: dict) -> dict:
    """Fits one variant at one kernel pool size; the row of Figs. 4 and 5.

    Columns: kernels_init (the initializer's count), kernels_final, psnr, ssim, lpips / st_lpips /
    attention_psnr (:func:`smoe_core.perceptual.perceptual_columns`; "n/a (...)" where weights are missing;
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
        from .perceptual import perceptual_columns

        row.update(perceptual_columns(np.clip(out, 0, 1), image))
    row.update(stats, kernels_per_block_init=stats0["kernels_per_block"], iterations=len(hist), seconds=seconds,
               ms_per_iteration=1e3 * seconds / max(len(hist), 1), renderer=backend_of(variant),
               height=image.shape[0], width=image.shape[1])
    return row


def _run(name, items, fn, keys, store=None, *, workers=None, scheduler=None, progress=True) -> pd.DataFrame:
    """Runs grid items: resumable in ``store`` (table ``name``; returns the rows of these items only), or in
    memory without one."""
    if store is not None:
        df = store.run_grid(name, items, fn, keys, workers=workers, scheduler=scheduler, progress=progress)
        if df.empty:
            return df
        wanted = {tuple(str(it[k]) for k in keys) for it in items}  # not the rows of earlier, other grids
        return df[[tuple(str(v) for v in r) in wanted for r in df[keys].itertuples(index=False)]].reset_index(drop=True)
    from .parallel import run_tasks

    rows = []
    for it, res in zip(items, run_tasks(fn, items, workers=workers, scheduler=scheduler, progress=progress, desc=name)):
        for r in ([res] if isinstance(res, dict) else res):
            rows.append(dict({k: it[k] for k in keys}, **r))
    return pd.DataFrame(rows)


def quality_runs(items, store=None, *, name: str = "quality_runs", **kw) -> pd.DataFrame:
    """All rows of :func:`run_quality_item` (resumable in ``store``), one per item, latest run per key."""
    df = _run(name, items, run_quality_item, QUALITY_KEYS, store, **kw)
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
_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:
            _LIBC = False
    return _LIBC or None


def _proc_status_mb() -> dict:
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0]) / 1024.0
    except OSError:
        pass
    return out


def _reset_peak() -> bool:
    """Returns freed heap memory and resets the kernel's RSS high-water mark; False where impossible."""
    gc.collect()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return "VmHWM" in _proc_status_mb()


def measure_peak_mb(fn) -> tuple[float, str]:
    """(MiB the resident memory grew to above its level before ``fn()``, method) -- see module docstring."""
    if _reset_peak():
        before = _proc_status_mb()["VmRSS"]
        fn()
        return max(0.0, _proc_status_mb()["VmHWM"] - before), "vmhwm"
    before = _peak_rss_mb()
    fn()
    return max(0.0, _peak_rss_mb() - before), "ru_maxrss"


def saved_tensor_bytes(fn, exclude=()) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn()`` runs (``exclude``: tensors whose
    storages are not counted, e.g. the parameters)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude if t is not None}
    seen: dict[int, int] = {}

    def pack(t):
        try:
            st = t.untyped_storage()
            ptr = st.data_ptr()
            if ptr not in skip:
                seen[ptr] = max(seen.get(ptr, 0), st.nbytes())
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return int(sum(seen.values()))


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
            for im in images for ch in _channels_list(channels) for K in kernels]


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
            "from smoe_core.rsmoe import memory_per_iteration as f; "
            "print('RSMOE_MEMORY ' + json.dumps(f(json.loads(sys.argv[1]))))")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec), str(threads)], capture_output=True, text=True,
                          env=env, cwd=str(Path(__file__).resolve().parents[1]), timeout=3600)
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
        load = _load_average()
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
    df = _run(name, items, run_speed_memory_item, SPEED_KEYS, store, **kw)
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


# ---------------------------------------------------------------------- denoising and super-resolution items
def _output_path(item: dict, stem: str) -> Path | None:
    d = item.get("out_dir")
    if not d:
        return None
    crop = item.get("crop")
    return Path(d) / f"{stem}_{image_key(item['image'])}_{item['channels']}{'' if not crop else f'_c{crop}'}.npz"


def _keep(image, out_dir, save_images, window) -> dict:
    """The output-saving keys of an item: ``out_dir`` only for the images in ``save_images`` (None: all)."""
    if out_dir is None or (save_images is not None and image_key(image) not in {image_key(s) for s in save_images}):
        return dict(out_dir=None, window=None)
    return dict(out_dir=str(out_dir), window=None if window is None else [int(v) for v in window])


def denoise_items(images, sigmas=(15, 25, 50), *, channels=("gray", "rgb"), crop=None, models: int = 8,
                  n_kernels=None, iters=None, init="grid", baselines=("bm3d", "nlm", "tv"), seed: int = 0,
                  out_dir=None, save_images=None, save_sigmas=None, window=None) -> list[dict]:
    """One item per (image, channels, sigma) for :func:`run_denoise_item` (its noise seed is
    :func:`smoe_core.denoise.noise_seed` of the image's name, whatever other images are in ``images``).
    Outputs are kept in ``out_dir`` for the images in ``save_images`` (None: all) and sigmas in
    ``save_sigmas`` (None: all), cut to ``window`` = (y0, y1, x0, x1) when given."""
    items = []
    for im in images:
        for ch in _channels_list(channels):
            for s in sigmas:
                keep = _keep(im, out_dir if (save_sigmas is None or s in save_sigmas) else None, save_images, window)
                items.append(dict(image=str(im), channels=ch, sigma=int(s), crop=crop,
                                  models=int(models), n_kernels=n_kernels, iters=iters, init=init,
                                  baselines=list(baselines), seed=int(seed), **keep))
    return items


def run_denoise_item(item: dict) -> list[dict]:
    """Rows of :func:`smoe_core.denoise.denoising_experiment` for one (image, channels, sigma) -- noisy,
    "smoe S=1", "smoe S=<models>", the baselines -- computed from the same public pieces (add_noise with seed
    :func:`smoe_core.denoise.noise_seed`, the shifted fits, fuse, the baselines) so the outputs can be kept:
    with ``out_dir`` they are saved to ``denoise_<image>_<channels>.npz`` under keys ``s<sigma>_<method>``."""
    from . import denoise as dn

    clean = load_item_image(item)
    sigma, S = int(item["sigma"]), int(item.get("models", 8))
    seed = int(item.get("seed", 0))
    noisy = dn.add_noise(clean, sigma, seed=dn.noise_seed(seed, item["image"], sigma))
    outputs = {"noisy": noisy}
    rows = [dict(method="noisy", models=np.nan, psnr=psnr(noisy, clean), ssim=ssim(noisy, clean), seconds=0.0, note="")]
    img, nk, it = dn._check_inputs(noisy, item.get("n_kernels"), item.get("iters"), "reflect")
    S_list = sorted({1, S})
    # the fits of denoising_experiment (one torch thread each, seeds seed + s)
    results = dn._fit_all(img, S_list[-1], n_kernels=nk, iters=it, init=item.get("init", "grid"), seed=seed,
                          border="reflect", workers=None, scheduler=None, progress=False, fit_kwargs={})
    for s_ in S_list:
        sub = results[:s_]
        out = np.clip(dn.fuse([r["image"] for r in sub], [r["weight"] for r in sub]), 0.0, 1.0)
        outputs[f"smoe S={s_}"] = out
        rows.append(dict(method=f"smoe S={s_}", models=s_, psnr=psnr(out, clean), ssim=ssim(out, clean),
                         seconds=sum(r["record"]["seconds"] for r in sub), note=f"{nk} kernels, {it} iterations"))
    for method in item.get("baselines", dn.BASELINES):
        t0 = time.perf_counter()
        try:
            out = dn.denoise_baseline(noisy, sigma, method)
        except ImportError as exc:
            rows.append(dict(method=method, models=np.nan, psnr=np.nan, ssim=np.nan, seconds=np.nan, note=str(exc)))
            continue
        outputs[method] = out
        rows.append(dict(method=method, models=np.nan, psnr=psnr(out, clean), ssim=ssim(out, clean),
                         seconds=time.perf_counter() - t0, note=""))
    path = _output_path(item, "denoise")
    if path is not None:
        _save_npz(path, {f"s{sigma}_{k}": v for k, v in outputs.items()}, item.get("window"), clean=clean)
    return rows


def superres_items(images, scales=(2, 3, 4), *, channels=("gray", "rgb"), crop=None,
                   methods=("smoe", "bicubic", "lanczos"), n_kernels=None, iters=None, init="grid", seed: int = 0,
                   out_dir=None, save_images=None, save_scales=None, window=None) -> list[dict]:
    """One item per (image, channels, scale) for :func:`run_superres_item` (outputs kept as in
    :func:`denoise_items`; ``window`` in high-resolution pixels)."""
    return [dict(image=str(im), channels=ch, scale=int(s), crop=crop, methods=list(methods), n_kernels=n_kernels,
                 iters=iters, init=init, seed=int(seed),
                 **_keep(im, out_dir if (save_scales is None or s in save_scales) else None, save_images, window))
            for im in images for ch in _channels_list(channels) for s in scales]


def run_superres_item(item: dict) -> list[dict]:
    """Rows of :func:`smoe_core.superres.superres_experiment` for one (image, channels, scale) (same
    degradation, fits and shave), keeping the outputs: with ``out_dir`` they are saved to
    ``superres_<image>_<channels>.npz`` under keys ``x<scale>_<method>`` (and ``x<scale>_hr``, ``x<scale>_lr``)."""
    from . import superres as sr

    original = load_item_image(item)
    scale = int(item["scale"])
    hr, lr = sr.downsample(original, scale)
    b = scale
    hr_s = sr.shave_border(hr, b)
    rows, outputs = [], {"hr": hr, "lr": lr}
    for method in item.get("methods", ("smoe", "bicubic", "lanczos")):
        t0 = time.perf_counter()
        if method == "smoe":
            with torch_threads(1):  # as superres_experiment's tasks
                big, rec = sr.upscale(lr, scale, n_kernels=item.get("n_kernels"), iters=item.get("iters"),
                                      init=item.get("init", "grid"), seed=item.get("seed", 0), progress=False)
            note = f"{rec['kernels']} kernels, {rec['iterations']} iterations, fit {rec['psnr_fit']:.2f} dB"
        else:
            big = np.clip(sr.pil_resize(lr, hr.shape[:2], method), 0.0, 1.0)
            note = ""
        seconds = time.perf_counter() - t0
        outputs[method] = big
        out = sr.shave_border(big, b)
        rows.append(dict(method=method, psnr=psnr(out, hr_s), ssim=ssim(out, hr_s), seconds=seconds,
                         hr_shape=str(tuple(hr.shape[:2])), lr_shape=str(tuple(lr.shape[:2])), shave=b, note=note))
    path = _output_path(item, "superres")
    if path is not None:
        _save_npz(path, {f"x{scale}_{k}": v for k, v in outputs.items() if k != "lr"}, item.get("window"))
    return rows


def _save_npz(path: Path, arrays: dict, window=None, **extra) -> None:
    """Merges ``arrays`` (cut to ``window`` = (y0, y1, x0, x1) if given) into the .npz at ``path``, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    merged = {}
    if path.is_file():
        with np.load(path) as z:
            merged = {k: np.array(z[k]) for k in z.files}

    def cut(v):
        v = np.asarray(v, np.float32)
        if window is None:
            return v
        y0, y1, x0, x1 = window
        return v[y0:y1, x0:x1]

    merged.update({k: cut(v) for k, v in arrays.items()})
    merged.update({k: cut(v) for k, v in extra.items()})
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, **merged)
    os.replace(tmp, path)


def load_outputs(item: dict, kind: str) -> dict:
    """The saved output images of a denoising (``kind="denoise"``) or super-resolution item's image."""
    path = _output_path(item, kind)
    if path is None or not path.is_file():
        return {}
    with np.load(path) as z:
        return {k: np.array(z[k]) for k in z.files}


def denoise_experiment(items, store=None, *, name: str = "denoise_runs", **kw) -> pd.DataFrame:
    df = _run(name, items, run_denoise_item, DENOISE_KEYS, store, **kw)
    return df.drop_duplicates(DENOISE_KEYS + ["method"], keep="last").reset_index(drop=True) if len(df) else df


def superres_experiment(items, store=None, *, name: str = "superres_runs", **kw) -> pd.DataFrame:
    df = _run(name, items, run_superres_item, SUPERRES_KEYS, store, **kw)
    return df.drop_duplicates(SUPERRES_KEYS + ["method"], keep="last").reset_index(drop=True) if len(df) else df


def metric_pivot(df: pd.DataFrame, index, metric: str = "psnr", methods=None) -> pd.DataFrame:
    """A wide table: one row per ``index`` key, one column per method, values ``metric``."""
    wide = df.pivot_table(index=list(index), columns="method", values=metric, aggfunc="last")
    if methods is not None:
        wide = wide[[m for m in methods if m in wide.columns]]
    wide.columns.name = None
    return wide.reset_index()


def crop_window(shape, size: int = 96, *, center=(0.5, 0.5)) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): a ``size`` square window around the relative position ``center`` of an image."""
    H, W = int(shape[0]), int(shape[1])
    s = min(int(size), H, W)
    y0 = int(np.clip(round(center[0] * H - s / 2), 0, H - s))
    x0 = int(np.clip(round(center[1] * W - s / 2), 0, W - s))
    return y0, y0 + s, x0, x0 + s


def crops_figure(images: dict, window, *, titles: dict | None = None, ncols: int | None = None):
    """A row of crops (name -> image), titled with ``titles`` (e.g. PSNRs); returns the figure."""
    from .plotting import _plt, show_image

    plt = _plt()
    n = len(images)
    ncols = ncols or n
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.3 * ncols, 2.5 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (name, img) in zip(axes.ravel(), images.items()):
        ax.axis("on")
        show_image(ax, img, (titles or {}).get(name, name), window)
    fig.tight_layout()
    return fig


def _scored_crops(item: dict, runs: pd.DataFrame, column: str, value: int, outs: dict, reference, prefix: str,
                  methods, label=lambda m: m):
    """The reference crop ``(name, image)`` then ``outs[prefix + m]`` for each of ``methods`` present, titled
    with their PSNR / SSIM from the rows of ``runs`` for this item (its image and channels, ``column == value``)."""
    sel = runs[(runs["image"].map(image_key) == image_key(item["image"])) & (runs["channels"] == item["channels"])
               & (runs[column].astype(int) == value)]
    score = {r["method"]: f"{r['psnr']:.2f} dB / {r['ssim']:.3f}" for _, r in sel.iterrows()}
    name, image = reference
    images = {name: image}
    titles = {name: f"{name} ({image_key(item['image'])}, {item['channels']})"}
    for m in methods:
        if prefix + m in outs:
            images[m] = outs[prefix + m]
            titles[m] = f"{label(m)}\n{score.get(m, '')}"
    return crops_figure(images, None, titles=titles)


def denoise_crops_figure(item: dict, runs: pd.DataFrame, methods=None):
    """The saved crops of one denoising item (clean, noisy and each method: by default the noisy input, the SMoE
    rows by S, then the baselines), titled with their PSNR / SSIM on the whole image; None when the item kept
    no outputs."""
    outs = load_outputs(item, "denoise")
    sigma = int(item["sigma"])
    if not outs:
        return None
    if methods is None:
        kept = [k[len(f"s{sigma}_"):] for k in outs if k.startswith(f"s{sigma}_")]
        smoe_rows = sorted((m for m in kept if m.startswith("smoe S=")), key=lambda m: int(m.split("=")[1]))
        others = [m for m in kept if m != "noisy" and m not in smoe_rows]
        methods = [m for m in kept if m == "noisy"] + smoe_rows + others
    return _scored_crops(item, runs, "sigma", sigma, outs, ("clean", outs["clean"]), f"s{sigma}_", methods)


def superres_crops_figure(item: dict, runs: pd.DataFrame, methods=("bicubic", "lanczos", "smoe")):
    """The saved crops of one super-resolution item (original and each method) titled with PSNR / SSIM."""
    outs = load_outputs(item, "superres")
    scale = int(item["scale"])
    if not outs or f"x{scale}_hr" not in outs:
        return None
    return _scored_crops(item, runs, "scale", scale, outs, ("original", outs[f"x{scale}_hr"]), f"x{scale}_",
                         methods, label=lambda m: f"{m} x{scale}")


def mean_curves(df: pd.DataFrame, x: str, metrics, *, by: str = "variant_label", logx: bool = False, title=None):
    """One panel per metric: the metric (mean over images) against ``x``, one line per ``by`` value. Metrics
    that are not numeric here (e.g. LPIPS without weights: "n/a ...") are left out."""
    from .plotting import _plt

    plt = _plt()
    numeric = []
    for m in metrics:
        if m in df.columns:
            vals = pd.to_numeric(df[m], errors="coerce")
            if vals.notna().any():
                numeric.append((m, vals))
    fig, axes = plt.subplots(1, max(len(numeric), 1), figsize=(3.6 * max(len(numeric), 1), 3.0), squeeze=False)
    for ax, (m, vals) in zip(axes[0], numeric):
        d = df.assign(_v=vals).groupby([by, x], sort=False)["_v"].mean().reset_index()
        for key, g in d.groupby(by, sort=False):
            g = g.sort_values(x)
            ax.plot(g[x], g["_v"], marker="o", markersize=3, label=str(key))
        ax.set_xlabel(x)
        ax.set_ylabel(m + (" (mean over images)" if df["image"].nunique() > 1 else ""))
        if logx:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


__all__ = ["VARIANTS", "VARIANT_LABELS", "backend_of", "variant_lr", "initial_model", "variant_model", "fit_variant",
           "ops_per_kernel", "kernel_stats", "kernels_per_block", "quality_items", "run_quality_item", "quality_runs",
           "fig4_table", "fig4_summary", "fig5_table", "fig4_experiment", "fig5_experiment", "speed_memory_items",
           "run_speed_memory_item", "speed_memory_runs", "speed_memory_table", "speed_memory_experiment",
           "measure_peak_mb", "saved_tensor_bytes", "denoise_items", "run_denoise_item", "superres_items",
           "run_superres_item", "denoise_experiment", "superres_experiment", "load_outputs", "metric_pivot",
           "crop_window", "crops_figure", "denoise_crops_figure", "superres_crops_figure", "mean_curves"]
