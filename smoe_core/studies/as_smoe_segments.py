"""The segmentation stage of [AS-SMoE]: Fig. 4 (MDBSCAN segment statistics), Table I (Segmentation
Reconstruction PSNR and time against Algorithm 1's epochs) and Fig. 10 (initialization time, serial and on
Dask workers), as table drivers and figures the ``as_smoe_segments`` notebook calls.

Fig. 10's table has one row per (method, run): ``dask_workers`` is the number of Dask workers (0: the serial run,
in the notebook's process, no Dask) and ``workers`` the processes that did the work (1 for the serial run); the
figure (:func:`fig10_figure`) shows one point per run, the serial one apart from the Dask curve.
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
from .plotting import curves, finish, pyplot, series_styles


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
    kernels, initial PSNR); totals one row per (method, entry of ``workers_list``) with the wall time for all
    images: ``dask_workers`` (0: serial, no Dask), ``workers`` (processes doing the work: 1 for the serial
    run), wall_seconds, sum_task_seconds. The segmentation is part of the time of S-SMoE and AS-SMoE.
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
            totals.append(dict(method=method, dask_workers=int(w or 0), workers=max(int(w or 1), 1),
                               wall_seconds=wall, sum_task_seconds=sum(r["seconds"] for r in rows)))
            if not w:
                per_image.extend(rows)
    return pd.DataFrame(per_image), pd.DataFrame(totals)


# ---------------------------------------------------------------------- figures
def fig4_figure(fig4: pd.DataFrame):
    """Fig. 4 (rows of :func:`fig4_statistics`): the median segment box side against d_th, one series per image."""
    return curves(fig4, "d_th", "side_median", by="image", xlabel="MDBSCAN threshold d_th",
                  ylabel="median box side (px)")


def with_dask_workers(totals: pd.DataFrame, workers_list) -> pd.DataFrame:
    """A Fig. 10 table written before the ``dask_workers`` column existed, with that column: its rows of each
    method were written in the order of the run's ``workers_list`` (the notebook's parameter, in its
    manifest), so the k-th row of a method is the run of ``workers_list[k]``. ValueError when the counts do not
    match."""
    if "dask_workers" in totals.columns:
        return totals
    wl = [int(w or 0) for w in workers_list]
    parts = []
    for method, g in totals.groupby("method", sort=False):
        if len(g) != len(wl) or any(max(w, 1) != int(k) for w, k in zip(wl, g["workers"])):
            raise ValueError(f"Fig. 10 rows of {method} ({list(g['workers'])}) do not match workers_list {wl}")
        parts.append(g.assign(dask_workers=wl))
    return pd.concat(parts).sort_index()


def fig10_figure(totals: pd.DataFrame):
    """Fig. 10: wall time of the initialization of all images against the number of Dask workers, one curve per
    method over its Dask runs (integer ticks), and the serial run (no Dask, in the notebook's process) as its own
    point at "serial". One point per worker count: a count run more than once shows its latest run."""
    if "dask_workers" not in totals.columns:
        raise ValueError("the Fig. 10 table has no dask_workers column: add it with with_dask_workers()")
    plt = pyplot()
    d = totals.drop_duplicates(["method", "dask_workers"], keep="last")
    methods = list(dict.fromkeys(d["method"]))
    styles = series_styles(methods)
    fig, ax = plt.subplots(figsize=(3.8, 3.0))
    for m in methods:
        g = d[d["method"] == m].sort_values("dask_workers")
        dask = g[g["dask_workers"] > 0]
        serial = g[g["dask_workers"] == 0]
        st = styles[m]
        if len(dask):
            ax.plot(dask["dask_workers"], dask["wall_seconds"], label=f"{m} (Dask)", **st)
        if len(serial):
            ax.plot([0] * len(serial), serial["wall_seconds"], linestyle="none", marker="*", markersize=10,
                    color=st["color"], label=f"{m} (serial, no Dask)")
    xs = sorted(set(int(w) for w in d["dask_workers"]) | {0})
    ax.set_xticks(xs)
    ax.set_xticklabels(["serial" if w == 0 else str(w) for w in xs])
    ax.set_xlim(-0.5, max(xs) + 0.5)
    ax.set_xlabel("Dask workers")
    ax.set_ylabel("wall time, all images (s)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return finish(fig)
