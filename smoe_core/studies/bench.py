"""Renderer benchmark: forward + backward time of the tiled (rasterized R-SMoE) and dense (global) renderers;
and one training iteration of the coding paper's setting (:func:`run_coding_benchmark`).

For each kernel budget K, a grid-initialized model of the test image ``flower`` (768 x 512 gray; resized
when another size is asked for, a synthetic image where the file is missing) is rendered with
``render(model, backend=...)`` and the MSE against the image is back-propagated. Every backend is warmed up
once, then timed ``repeats`` times (best and median reported); a backend whose warm-up took longer than
``slow_seconds`` is timed once.

Work is counted in pixel-kernel pairs: the dense renderer evaluates H * W * K of them; the tiled renderer
evaluates, for every tile, its list length times the pixels of the tile (from :func:`tile_lists`).
Memory is the process's peak resident set size (``ru_maxrss``; it only grows, so the delta of a row is the
new peak that row reached, 0 when it stayed below an earlier one).
"""
from __future__ import annotations

import datetime as _dt
import platform
import statistics
import sys
import time

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..init import grid
from ..io import MAX_PIXELS, load_image
from ..limits import check_count, check_kernels, check_memory
from ..render import render, resolve_backend, tile_lists
from ..training import fit_bytes
from ..version import __version__
from .profiling import load_average, peak_rss_mb
from .results import git_commit

DEFAULT_KERNELS = (500, 1000, 2000, 4000)
#: the provenance columns of every results table (:data:`smoe_core.studies.results.META_COLUMNS`: package
#: version, git commit, preset "bench", seed, date; ``backend`` is the renderer timed), then the measurements
COLUMNS = [
    "package_version", "git_commit", "preset", "seed", "date", "host", "torch_version", "threads", "image", "height", "width",
    "kernels_requested", "kernels", "backend", "backend_resolved", "repeats", "best_ms", "median_ms",
    "pairs", "pairs_per_s", "mean_list_length", "peak_rss_mb", "rss_delta_mb", "load_avg_1min",
]


def synthetic_image(height: int, width: int) -> np.ndarray:
    """A gray [0, 1] test pattern: smooth gradient, a disk and a few sharp stripes."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = 0.2 + 0.5 * x / max(width - 1, 1) * (0.5 + 0.5 * y / max(height - 1, 1))
    r = np.hypot(x - 0.6 * width, y - 0.45 * height)
    img = np.where(r < 0.25 * min(height, width), 0.9, img)
    img = np.where((x // max(width // 16, 1)) % 2 == 0, img, img * 0.85)
    return np.clip(img, 0, 1).astype(np.float32)


def benchmark_image(height: int, width: int, name: str = "flower") -> tuple[np.ndarray, str]:
    """(image, description): the test image ``name`` (gray) at (height, width), or a synthetic one."""
    try:
        img = load_image(name)
    except FileNotFoundError:
        return synthetic_image(height, width), "synthetic"
    if img.shape[:2] == (height, width):
        return img, name
    from PIL import Image

    u8 = Image.fromarray(np.clip(np.round(img * 255), 0, 255).astype(np.uint8))
    resized = np.asarray(u8.resize((width, height), Image.Resampling.BOX if min(height / img.shape[0], width / img.shape[1]) < 1
                                   else Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    return resized.astype(np.float32), f"{name} resized"


def tiled_pairs(lists) -> int:
    """Pixel-kernel pairs the tiled renderer evaluates: sum over tiles of list length * pixels in the tile."""
    T = lists.tile
    ty = torch.arange(lists.tiles_y)
    tx = torch.arange(lists.tiles_x)
    rows = torch.clamp(lists.height - ty * T, max=T)
    cols = torch.clamp(lists.width - tx * T, max=T)
    pixels = (rows[:, None] * cols[None, :]).reshape(-1).repeat(lists.batch).to(torch.int64)
    return int((lists.counts.to(torch.int64).cpu() * pixels).sum())


def _time_pass(model, target, backend: str) -> float:
    """Seconds of one forward + backward pass."""
    for t in model.fields().values():
        if t is not None:
            t.grad = None
    t0 = time.perf_counter()
    out = render(model, backend=backend)
    loss = (out - target).pow(2).mean()
    loss.backward()
    return time.perf_counter() - t0


def run_benchmark(
    height: int = 512,
    width: int = 768,
    kernels=DEFAULT_KERNELS,
    *,
    repeats: int = 3,
    dense: bool = True,
    backends=None,
    image: str = "flower",
    slow_seconds: float = 5.0,
    progress: bool = True,
) -> pd.DataFrame:
    """Times forward + backward of the renderers; one row per (kernel budget, backend) (see module docstring).

    ``backends`` defaults to ("tiled", "dense"), or ("tiled",) with ``dense=False``. The size is bounded before
    any work: at most :data:`smoe_core.io.MAX_PIXELS` pixels, one kernel per pixel, and the memory a fit of that
    size needs (:mod:`smoe_core.limits`).
    """
    height, width = check_count(height, "height", minimum=1), check_count(width, "width", minimum=1)
    repeats = check_count(repeats, "repeats", minimum=1)
    if height * width > MAX_PIXELS:
        raise ValueError(f"height x width = {height} x {width} is {height * width} pixels, more than the largest "
                         f"image smoe_core loads ({MAX_PIXELS} pixels, smoe_core.io.MAX_PIXELS)")
    kernels = [check_kernels(k, (height, width), "kernels") for k in kernels]
    if not kernels:
        raise ValueError("give at least one kernel count")
    check_memory(fit_bytes((height, width), 1, max(kernels)),
                 f"timing {max(kernels)} kernels on a {height} x {width} image")
    if backends is None:
        backends = ("tiled", "dense") if dense else ("tiled",)
    backends = tuple(backends)

    img, source = benchmark_image(height, width, image)
    target = torch.from_numpy(np.ascontiguousarray(img))
    date = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    commit = git_commit()
    threads = torch.get_num_threads()
    rows = []
    bar = tqdm(total=len(kernels) * len(backends), desc="bench", unit="run", disable=not progress,
               dynamic_ncols=True, file=sys.stderr)
    try:
        for K in kernels:
            base = grid(img, K).model
            lists = tile_lists(base)
            mean_len = float(lists.counts.to(torch.float64).mean())
            n = base.n_kernels
            for backend in backends:
                bar.set_postfix(kernels=n, backend=backend, refresh=True)
                model = base.torch(requires_grad=True)
                resolved = resolve_backend(backend, model.mu.device)
                rss0 = peak_rss_mb()
                warm = _time_pass(model, target, backend)
                reps = 1 if warm > slow_seconds else repeats
                times = [_time_pass(model, target, backend) for _ in range(reps)]
                rss1 = peak_rss_mb()
                pairs = height * width * n if backend == "dense" else tiled_pairs(lists)
                best = min(times)
                rows.append(dict(
                    package_version=__version__, git_commit=commit, preset="bench", seed=0, date=date, host=platform.node(), torch_version=torch.__version__,
                    threads=threads, image=source, height=height, width=width, kernels_requested=K, kernels=n,
                    backend=backend, backend_resolved=resolved, repeats=reps, best_ms=best * 1e3,
                    median_ms=statistics.median(times) * 1e3, pairs=pairs, pairs_per_s=pairs / best,
                    mean_list_length=mean_len, peak_rss_mb=rss1, rss_delta_mb=max(0.0, rss1 - rss0),
                    load_avg_1min=load_average(),
                ))
                bar.update(1)
                del model
    finally:
        bar.close()
    return pd.DataFrame(rows, columns=COLUMNS)


#: the columns of the coding-iteration benchmark (:func:`run_coding_benchmark`)
CODING_COLUMNS = [
    "package_version", "git_commit", "preset", "seed", "date", "host", "torch_version", "threads", "image", "height",
    "width", "kernels", "quantize", "backend", "backend_resolved", "warmup", "repeats", "best_cpu_ms", "median_cpu_ms",
    "best_wall_ms", "median_wall_ms", "peak_rss_mb", "load_avg_1min",
]


def coding_image(height: int, width: int, name: str = "lena") -> tuple[np.ndarray, str]:
    """(float RGB image in [0, 1], description): a coding image (``smoe_core/data/coding``) at (height, width),
    centre-cropped where it is larger, resized (bicubic) where it is smaller."""
    from PIL import Image

    from .coding_paper import load_original

    rgb = load_original(name)
    H, W = rgb.shape[:2]
    if H >= height and W >= width:
        y0, x0 = (H - height) // 2, (W - width) // 2
        return rgb[y0:y0 + height, x0:x0 + width].astype(np.float64) / 255.0, name
    big = np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BICUBIC))
    return big.astype(np.float64) / 255.0, f"{name} resized"


def run_coding_benchmark(height: int = 512, width: int = 512, *, repeats: int = 5, warmup: int = 2,
                         quantize: bool = True, image: str = "lena", backend: str = "tiled") -> pd.DataFrame:
    """Times one training iteration of the coding paper's setting ([QSMoE]): an RGB image converted to YUV, the
    paper's grid initialization (floor(W / 4) x floor(H / 4) kernels: 16384 on 512 x 512), then per iteration
    fake quantization of the parameters (``quantize``), the tiled forward pass, the SSIM-611 loss, the backward
    pass and the Adam step, as :func:`smoe_core.tasks.coding.schedule.train` runs them in pre-training (the
    iterations are that function's own loop: the time between two of its per-iteration callbacks).

    ``warmup`` iterations are run first and not counted (the first one loads the renderer's build), then
    ``repeats`` are timed: process time (``time.process_time``: the CPU time of this process, less disturbed than
    wall time when another job shares the machine; with one thread it is the iteration's work) and wall time,
    best and median. One row.
    """
    from ..tasks.coding.quantize import grid_shape
    from ..tasks.coding.schedule import train

    height, width = check_count(height, "height", minimum=8), check_count(width, "width", minimum=8)
    repeats = check_count(repeats, "repeats", minimum=1)
    warmup = check_count(warmup, "warmup", minimum=1)
    if height * width > MAX_PIXELS:
        raise ValueError(f"height x width = {height} x {width} is {height * width} pixels, more than the largest "
                         f"image smoe_core loads ({MAX_PIXELS} pixels, smoe_core.io.MAX_PIXELS)")
    k1, k2 = grid_shape((height, width))
    check_memory(fit_bytes((height, width), 3, k1 * k2), f"timing a coding iteration of {k1 * k2} kernels on a "
                                                          f"{height} x {width} image")
    rgb, source = coding_image(height, width, image)
    stamps: list[tuple[float, float]] = []
    rss0 = peak_rss_mb()
    train(rgb, pretrain_iters=warmup + repeats, sparsify_steps=0, finetune_iters=0, quantize=bool(quantize),
          backend=backend, callback=lambda row: stamps.append((time.process_time(), time.perf_counter())))
    timed = np.diff(np.array(stamps), axis=0)[warmup - 1:]  # iteration i + 1 runs between callbacks i and i + 1
    cpu, wall = timed[:, 0] * 1e3, timed[:, 1] * 1e3
    row = dict(package_version=__version__, git_commit=git_commit(), preset="bench", seed=0,
               date=_dt.datetime.now().astimezone().isoformat(timespec="seconds"), host=platform.node(),
               torch_version=torch.__version__, threads=torch.get_num_threads(), image=source, height=height,
               width=width, kernels=k1 * k2, quantize=bool(quantize), backend=backend,
               backend_resolved=resolve_backend(backend, torch.device("cpu")), warmup=warmup, repeats=len(cpu),
               best_cpu_ms=float(cpu.min()), median_cpu_ms=float(np.median(cpu)), best_wall_ms=float(wall.min()),
               median_wall_ms=float(np.median(wall)), peak_rss_mb=max(peak_rss_mb(), rss0),
               load_avg_1min=load_average())
    return pd.DataFrame([row], columns=CODING_COLUMNS)


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per kernel count: tiled and dense best times, their ratio, pairs per second, mean list length."""
    out = []
    for (K, n), g in df.groupby(["kernels_requested", "kernels"], sort=True):
        by = {r.backend: r for r in g.itertuples()}
        t, d = by.get("tiled"), by.get("dense")
        out.append({
            "kernels": n,
            "tiled ms": None if t is None else t.best_ms,
            "dense ms": None if d is None else d.best_ms,
            "dense/tiled": None if (t is None or d is None) else d.best_ms / t.best_ms,
            "tiled pairs/s": None if t is None else t.pairs_per_s,
            "dense pairs/s": None if d is None else d.pairs_per_s,
            "mean list/tile": g["mean_list_length"].iloc[0],
            "peak RSS MB": g["peak_rss_mb"].max(),
        })
    return pd.DataFrame(out)


def format_table(df: pd.DataFrame) -> str:
    """The summary table as aligned text."""
    s = summary_table(df)

    def fmt(col, v):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return "-"
        if col == "kernels":
            return f"{int(v)}"
        if col.endswith("pairs/s"):
            return f"{v:.3g}"
        if col == "dense/tiled":
            return f"{v:.1f}x"
        if col.endswith("ms"):
            return f"{v:.1f}"
        return f"{v:.1f}"

    cols = list(s.columns)
    cells = [[fmt(c, r[c]) for c in cols] for _, r in s.iterrows()]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
