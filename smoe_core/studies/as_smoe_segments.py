"""The segmentation stage of [AS-SMoE]: Fig. 4 (MDBSCAN segment statistics), Table I (Segmentation
Reconstruction PSNR and time against Algorithm 1's epochs) and Fig. 10 (initialization time, serial and on
Dask workers), as table drivers the ``as_smoe_segments`` notebook calls.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd

from ..init import initializer_info
from ..init.as_smoe import adaptive_kernel_adjustment, cbb_seed_ids, crop_cbbs, segment_image
from ..io import check_image, image_key, load_image
from ..metrics import psnr
from ..parallel import run_tasks
from ..render import render
from ..segment import mdbscan, segment_stats
from .common import grid_items, init_kwargs, item_budget, load_case


# ---------------------------------------------------------------------- Fig. 4
def fig4_statistics(images: dict, thresholds=(20, 30, 40, 50), **mdbscan_kw) -> pd.DataFrame:
    """Paper Fig. 4: for each image and threshold, the number of segments and the distribution of the
    segment bounding-box size. The paper's box plot measures "pixel width=height of a bounding box", i.e. the
    side of the square box around a segment (``segment_stats``' ``side``): columns ``side_mean``, ``side_q1``,
    ``side_median``, ``side_q3``; ``width_mean`` and ``height_mean`` are the plain box means,
    ``pixels_median`` the median segment area and ``seconds`` the segmentation time. ``mdbscan_kw`` go to
    :func:`smoe_core.segment.mdbscan` (e.g. ``variant="authors"``). The paper's "average width or height between 20 and 40
    pixels" matches the *median* side (E = 20-50 on the four test images: 24-35 px with the authors'
    variant on the colour images, 26-41 px with the spec variant on the gray ones); the mean side is pulled
    up to 36-76 px by a few large flat segments.
    """
    rows = []
    for name, image in images.items():
        for t in thresholds:
            t0 = time.perf_counter()
            lab = mdbscan(image, t, **mdbscan_kw)
            sec = time.perf_counter() - t0
            st = segment_stats(lab)
            q = st.side.quantile([0.25, 0.5, 0.75]).to_numpy()
            rows.append(dict(image=name, d_th=t, n_segments=len(st), side_mean=st.side.mean(), side_q1=q[0],
                             side_median=q[1], side_q3=q[2], width_mean=st.width.mean(),
                             height_mean=st.height.mean(), pixels_median=st.n_pixels.median(), seconds=sec))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------- Table I
def segment_epochs_table(images: dict, epochs=(100, 200, 300, 400), d_th: float = 40, *, labels: dict | None = None,
                         mode: str = "algorithm1", cbb: int = 32, corona: int = 5, progress: bool = True,
                         **kwargs) -> pd.DataFrame:
    """Table I: mean PSNR over all segments' CBBs and total time of the Segmentation Reconstruction stage vs
    the number of epochs.

    ``images``: name -> image (float [0, 1]) or name -> None to load the test image of that name.
    ``labels``: optional name -> label map (else MDBSCAN with ``d_th``). ``mode``: "algorithm1" (the pipeline's
    Algorithm 1 with budget E) or "fixed" (``initial_kernels`` kernels, no doubling, no target stop).
    ``kwargs`` go to :func:`smoe_core.init.as_smoe.adaptive_kernel_adjustment`. One run per image with the largest E gives every
    column (:mod:`smoe_core.init.as_smoe`). Rows: one per image and E, and image "all" (mean over every CBB of every
    image, the paper's figure; total time). Columns: image, epochs, n_segments, mean_psnr, mean_psnr_finite
    (CBBs reconstructed exactly, PSNR = inf, left out: the mean is over the others), n_perfect, reached,
    mean_kernels, seconds.
    """
    if mode not in ("algorithm1", "fixed"):
        raise ValueError(f"mode must be 'algorithm1' or 'fixed', got {mode!r}")
    epochs = sorted({int(e) for e in epochs})
    if mode == "fixed":
        kwargs = dict(kwargs, target_psnr=math.inf, checkpoint=None)
    rows = []
    all_psnr, all_kernels, all_seconds = {e: [] for e in epochs}, {e: [] for e in epochs}, dict.fromkeys(epochs, 0.0)
    for name, image in images.items():
        img = load_image(name) if image is None else check_image(image)
        lab, _, _ = segment_image(img, None if labels is None else labels.get(name), d_th)
        cbbs = crop_cbbs(img, lab, cbb=cbb, corona=corona)
        local = adaptive_kernel_adjustment(cbbs.targets, cbb_seed_ids(cbbs.labels), epochs=max(epochs),
                                           snapshots=epochs, progress=progress, **kwargs)
        for e in epochs:
            s = local.snapshots.get(e)
            if s is None:  # every CBB reached its target before E: the state at the end
                s = dict(psnr=local.psnr, n_kernels=local.n_kernels, seconds=local.seconds)
            p = s["psnr"]
            fin = np.isfinite(p)
            rows.append(dict(image=name, epochs=e, n_segments=cbbs.n, mean_psnr=float(np.mean(p[fin])),
                             n_perfect=int((~fin).sum()), reached=int((p > kwargs.get("target_psnr", 25.0)).sum()),
                             mean_kernels=float(np.mean(s["n_kernels"])), seconds=float(s["seconds"])))
            all_psnr[e].append(p)
            all_kernels[e].append(s["n_kernels"])
            all_seconds[e] += float(s["seconds"])
    for e in epochs:
        p = np.concatenate(all_psnr[e])
        fin = np.isfinite(p)
        rows.append(dict(image="all", epochs=e, n_segments=int(p.size), mean_psnr=float(np.mean(p[fin])),
                         n_perfect=int((~fin).sum()), reached=int((p > kwargs.get("target_psnr", 25.0)).sum()),
                         mean_kernels=float(np.mean(np.concatenate(all_kernels[e]))), seconds=all_seconds[e]))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------- initializer timing (Fig. 10)
def timed_init(item: dict) -> dict:
    """One initialization of a grid item, timed (module-level so Dask can pickle it)."""
    image = load_case(item["image"], item.get("crop"))
    t0 = time.perf_counter()
    kw = init_kwargs(item["method"], item)
    model, record = initializer_info(item["method"]).fn(image, item_budget(item), **kw)
    seconds = time.perf_counter() - t0
    return dict(image=image_key(item["image"]), method=item["method"], seconds=seconds, kernels=model.n_kernels,
                psnr_db=psnr(render(model), image))


def initializer_timing(images, methods, *, workers_list=(0, 2), d_th=40, budgets=None, crop=None, seed=0,
                       progress=True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each initializer's time on each image, serially and with the images spread over Dask workers.

    Returns (per_image, totals): per_image has one row per (image, method) of the serial run (seconds,
    kernels, initial PSNR); totals one row per (method, workers) with the wall time for all images. The
    segmentation is part of the time of S-SMoE and AS-SMoE.
    """
    per_image, totals = [], []
    for method in methods:
        items = grid_items(images, [method], d_th=d_th, budgets=budgets, crop=crop, seed=seed, model_dir=".")
        for w in workers_list:
            t0 = time.perf_counter()
            rows = run_tasks(timed_init, items, workers=w or None, progress=progress,
                             desc=f"{method} ({w or 1} worker{'s' if w and w > 1 else ''})",
                             threads_per_task=None if not w else 1)
            wall = time.perf_counter() - t0
            totals.append(dict(method=method, workers=max(int(w or 1), 1), wall_seconds=wall,
                               sum_task_seconds=sum(r["seconds"] for r in rows)))
            if not w:
                per_image.extend(rows)
    return pd.DataFrame(per_image), pd.DataFrame(totals)
