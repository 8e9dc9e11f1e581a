"""Tile-wise training and merging ([EDGE], section IV and Fig. 4; the same scheme as the S-SMoE and
AS-SMoE papers' tile-wise optimization): split the image into tiles, initialize and train one model per tile
with the regularization (sum_i |pi_i|)^2 and pruning of kernels whose pi falls below a threshold, group the
models into one by translating their centres to the tiles' positions, and fine-tune the whole image without
regularization.

Choices the paper leaves open, made here:

- Tiles: a ``rows x cols`` grid whose tile sizes differ by at most one pixel (``tiles=(2, 2)`` by default),
  or square tiles of a given side (``tile_size``), the last row/column taking the remainder.
- Kernel budget: ``n_kernels`` for the whole image, split over tiles in proportion to their areas (largest
  remainders, so the shares add up exactly); the initializer may return fewer (a grid rounds down).
- Regularization weight ``sparsity`` (lambda of lambda * (sum |pi|)^2) and pruning threshold ``prune_below``
  are parameters; lambda is divided by the tile's initial kernel count squared, so that one value means the
  same relative pressure on tiles of any size (with pi ~ 1, (sum pi)^2 ~ K^2).
- Per-tile seeds: ``seed + tile index``; tiles run through :func:`smoe_core.parallel.run_tasks` (serial or
  Dask) with identical results either way.
- Merging keeps pi, experts and steering as trained; centres move by the tile's (x0, y0) offset, exactly
  (pixel (r, c) of a tile is pixel (r + y0, c + x0) of the image).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..init import get_initializer
from ..io import check_image
from ..limits import check_kernels
from ..model import SMoE
from ..parallel import run_tasks
from ..training import fit


def tile_rectangles(shape, tiles=(2, 2), tile_size: int | None = None) -> list[tuple[int, int, int, int]]:
    """Tiles as (y0, y1, x0, x1), row-major. ``tiles=(rows, cols)``, or square ``tile_size`` tiles."""
    H, W = int(shape[0]), int(shape[1])
    if tile_size is not None:
        if tile_size < 1:
            raise ValueError(f"tile_size must be >= 1, got {tile_size}")
        ys = list(range(0, H, tile_size)) + [H]
        xs = list(range(0, W, tile_size)) + [W]
    else:
        rows, cols = int(tiles[0]), int(tiles[1])
        if rows < 1 or cols < 1 or rows > H or cols > W:
            raise ValueError(f"tiles must be between (1, 1) and the image size {(H, W)}, got {tiles}")
        ys = [round(i * H / rows) for i in range(rows + 1)]
        xs = [round(j * W / cols) for j in range(cols + 1)]
    return [(ys[i], ys[i + 1], xs[j], xs[j + 1]) for i in range(len(ys) - 1) for j in range(len(xs) - 1)]


def split_budget(n_kernels: int, areas) -> list[int]:
    """Splits ``n_kernels`` over tiles in proportion to ``areas`` (largest remainders; sums exactly)."""
    areas = np.asarray(areas, dtype=np.float64)
    exact = n_kernels * areas / areas.sum()
    shares = np.floor(exact).astype(int)
    order = np.argsort(-(exact - shares), kind="stable")
    shares[order[: n_kernels - shares.sum()]] += 1
    return [max(1, int(s)) for s in shares]


def merge_models(models: list[SMoE], offsets: list[tuple[int, int]], image_shape) -> SMoE:
    """One model from tile models: centres translated by each tile's (x0, y0); all else kept."""
    if not models:
        raise ValueError("no models to merge")
    ms = [m.numpy() for m in models]
    mu = np.concatenate([m.mu + np.array([x0, y0], np.float32) for m, (x0, y0) in zip(ms, offsets)])
    fields = {k: (None if ms[0].fields()[k] is None else np.concatenate([m.fields()[k] for m in ms]))
              for k in ("chol", "pi", "experts", "slopes")}
    return SMoE(mu, **fields, rbf=ms[0].rbf, image_shape=image_shape, color_space=ms[0].color_space)


def tile_plan(image, n_kernels: int, tiles=(2, 2), tile_size: int | None = None):
    """The checked image, its tiles (:func:`tile_rectangles`) and each tile's share of ``n_kernels``
    (:func:`split_budget`, by area): ``(image, rects, budgets)``, as :func:`fit_tilewise` and
    :func:`initial_tilewise_model` cut it."""
    img = check_image(image, bounded=True)
    H, W = img.shape[:2]
    n_kernels = check_kernels(n_kernels, (H, W))
    rects = tile_rectangles((H, W), tiles, tile_size)
    return img, rects, split_budget(n_kernels, [(y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in rects])


def tile_images(img: np.ndarray, rects) -> list[np.ndarray]:
    """The tiles ``rects`` of ``img``, each a contiguous copy."""
    return [np.ascontiguousarray(img[y0:y1, x0:x1]) for y0, y1, x0, x1 in rects]


def init_tile(tile: np.ndarray, n_kernels: int, initializer="grid", init_kwargs: dict | None = None):
    """``initializer`` (a registered name or a function) on one tile: its ``(model, record)``."""
    return get_initializer(initializer)(tile, n_kernels, **dict(init_kwargs or {}))


def initial_tilewise_model(image, n_kernels: int, *, initializer="grid", init_kwargs: dict | None = None,
                           tiles=(2, 2), tile_size: int | None = None) -> SMoE:
    """The model :func:`fit_tilewise` starts from, before any training: ``initializer`` run on every tile with
    the tile's share of ``n_kernels`` (the same calls as :func:`fit_tilewise`'s), merged into one model of the
    whole image."""
    img, rects, budgets = tile_plan(image, n_kernels, tiles, tile_size)
    models = [init_tile(t, k, initializer, init_kwargs)[0] for t, k in zip(tile_images(img, rects), budgets)]
    return merge_models(models, [(x0, y0) for y0, _, x0, _ in rects], img.shape[:2])


@dataclass
class _TileTask:
    index: int
    image: np.ndarray
    n_kernels: int
    initializer: object
    init_kwargs: dict
    fit_kwargs: dict
    seed: int


def _fit_tile(task: _TileTask):
    t0 = time.perf_counter()
    model, record = init_tile(task.image, task.n_kernels, task.initializer, task.init_kwargs)
    fit_kwargs = dict(task.fit_kwargs)
    fit_kwargs["sparsity"] = fit_kwargs.get("sparsity", 0.0) / max(model.n_kernels, 1) ** 2
    fitted, hist = fit(task.image, model, seed=task.seed, progress=False, **fit_kwargs)
    return dict(index=task.index, model=fitted, init_kernels=model.n_kernels, kernels=fitted.n_kernels,
                init_seconds=record.get("seconds", float("nan")), seconds=time.perf_counter() - t0,
                iterations=len(hist), psnr=float(hist["psnr"].iloc[-1]) if len(hist) else float("nan"))


def fit_tilewise(image, n_kernels: int, *, initializer="grid", init_kwargs: dict | None = None, tiles=(2, 2),
                 tile_size: int | None = None, tile_iters: int = 500, sparsity: float = 0.0,
                 prune_below: float = 0.0, finetune_iters: int = 500, lr: dict | None = None,
                 backend: str = "tiled", tol: float = 1e-6, seed: int = 0, workers: int | None = None,
                 scheduler=None, progress: bool = True):
    """Tile-wise initialization and training, merging, and whole-image fine-tuning (see module docstring).

    ``initializer`` is a registered name ("grid", ...) or a function ``(image, n_kernels, **init_kwargs) ->
    InitResult``. Returns ``(model, record)``: the fine-tuned model and a record with the per-tile table
    (``record["tiles"]``, a DataFrame), the merged kernel count, seconds per stage and the fine-tuning history.
    """
    img, rects, budgets = tile_plan(image, n_kernels, tiles, tile_size)
    H, W = img.shape[:2]
    fit_kwargs = dict(iters=tile_iters, sparsity=sparsity, regularizer="l1_squared", prune_below=prune_below,
                      lr=lr, backend=backend, tol=tol)
    tasks = [_TileTask(i, t, k, initializer, dict(init_kwargs or {}), fit_kwargs, seed + i)
             for i, (t, k) in enumerate(zip(tile_images(img, rects), budgets))]
    t0 = time.perf_counter()
    results = run_tasks(_fit_tile, tasks, workers=workers, scheduler=scheduler, progress=progress, desc="tiles")
    t_tiles = time.perf_counter() - t0
    merged = merge_models([r["model"] for r in results], [(x0, y0) for y0, _, x0, _ in rects], (H, W))
    t1 = time.perf_counter()
    final, history = fit(img, merged, iters=finetune_iters, lr=lr, backend=backend, tol=tol, seed=seed,
                         progress=progress)
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "model"} for r in results])
    table[["y0", "y1", "x0", "x1"]] = np.array(rects)
    record = dict(method=f"tilewise[{initializer if isinstance(initializer, str) else initializer.__name__}]",
                  n_tiles=len(rects), tiles=table, merged_kernels=merged.n_kernels, n_kernels=final.n_kernels,
                  tile_seconds=t_tiles, finetune_seconds=time.perf_counter() - t1,
                  seconds=time.perf_counter() - t0, history=history, merged_model=merged)
    return final, record
