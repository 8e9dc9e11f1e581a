"""Denoising by multi-model fusion and native super-resolution ([R-SMoE]: the TL;DR's fusion claim and the
super-resolution of the abstract), as studies: tables over images and noise levels / scales beside the
classical baselines, resumable grid items that keep their outputs for crop figures, and the crop figures.
The algorithms are :mod:`smoe_core.tasks.denoise` and :mod:`smoe_core.tasks.superres`.

:func:`denoising_experiment` and :func:`superres_experiment` compute whole tables in memory;
:func:`run_denoise_item` / :func:`run_superres_item` compute the same rows per (image, channels, sigma / scale)
from the same public pieces (same noise seeds, fits and shaves; tested equal) and keep the output images.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import check_image, image_key
from ..metrics import psnr, ssim
from ..parallel import run_tasks, torch_threads
from ..tasks import denoise as dn
from ..tasks import superres as sr
from ..tasks.denoise import (BASELINES, add_noise, check_denoise_inputs, check_models, denoise_baseline,
                             fit_shifted_models, fuse, noise_seed)
from ..tasks.superres import METHODS, downsample, pil_resize, shave_border, upscale
from .common import run_items
from .plotting import pyplot, show_image
from .r_smoe_paper import DENOISE_KEYS, SUPERRES_KEYS, channels_list, load_item_image


# ---------------------------------------------------------------------- whole tables in memory
def denoising_experiment(images: dict, sigmas=(15, 25, 50), models=(1, 8), *, n_kernels: int | None = None,
                         iters: int | None = None, init="grid", baselines=BASELINES, border: str = "reflect",
                         seed: int = 0, workers: int | None = None, scheduler=None, progress: bool = True,
                         **fit_kwargs) -> pd.DataFrame:
    """PSNR / SSIM of the noisy input, SMoE with each S in ``models`` and the ``baselines``, per image and sigma.

    ``images``: name -> clean image in [0, 1]. The noise of (image, sigma) uses seed
    :func:`noise_seed` (``seed + 1000 * image_number(name) + sigma``: fixed per pair, the same for every method
    and whatever other images run). The SMoE fits run once per
    (image, sigma) for max(models) models; the row for S is the fusion of the first S of them (the first
    model is the S = 1 denoiser; see the module docstring). A baseline whose package is missing gets a row
    with NaN metrics and the error in ``note``.

    Columns: image, sigma, method ("noisy", "smoe S=1", "smoe S=8", "bm3d", "nlm", "tv"), models, psnr,
    ssim, seconds (the SMoE time of S fits is the sum of the first S fits' times), note.
    """
    S_list = sorted({check_models(S) for S in models})
    rows = []
    for name, clean in images.items():
        clean = check_image(clean)
        for sigma in sigmas:
            noisy = add_noise(clean, sigma, seed=noise_seed(seed, name, sigma))
            base = dict(image=name, sigma=sigma)
            rows.append(dict(base, method="noisy", models=np.nan, psnr=psnr(noisy, clean), ssim=ssim(noisy, clean),
                             seconds=0.0, note=""))
            if S_list:
                img, nk, it = check_denoise_inputs(noisy, n_kernels, iters, border)
                results = fit_shifted_models(img, S_list[-1], n_kernels=nk, iters=it, init=init, seed=seed, border=border,
                                   workers=workers, scheduler=scheduler, progress=progress, fit_kwargs=fit_kwargs)
                for S in S_list:
                    sub = results[:S]
                    out = np.clip(fuse([r["image"] for r in sub], [r["weight"] for r in sub]), 0.0, 1.0)
                    rows.append(dict(base, method=f"smoe S={S}", models=S, psnr=psnr(out, clean), ssim=ssim(out, clean),
                                     seconds=sum(r["record"]["seconds"] for r in sub), note=""))
            for method in baselines:
                t0 = time.perf_counter()
                try:
                    out = denoise_baseline(noisy, sigma, method)
                except ImportError as exc:
                    rows.append(dict(base, method=method, models=np.nan, psnr=np.nan, ssim=np.nan, seconds=np.nan,
                                     note=str(exc)))
                    continue
                rows.append(dict(base, method=method, models=np.nan, psnr=psnr(out, clean), ssim=ssim(out, clean),
                                 seconds=time.perf_counter() - t0, note=""))
    return pd.DataFrame(rows, columns=["image", "sigma", "method", "models", "psnr", "ssim", "seconds", "note"])


def superres_task(task: dict) -> list[dict]:
    """All methods for one (image, scale) (module-level so Dask can pickle it)."""
    name, original, scale = task["name"], task["image"], task["scale"]
    hr, lr = downsample(original, scale)
    b = int(scale) if task["shave"] is None else int(task["shave"])
    hr_s = shave_border(hr, b)
    rows = []
    for method in task["methods"]:
        t0 = time.perf_counter()
        if method == "smoe":
            big, rec = upscale(lr, scale, n_kernels=task["n_kernels"], iters=task["iters"], init=task["init"],
                               seed=task["seed"], progress=False, **(task["fit_kwargs"] or {}))
            note = f"{rec['kernels']} kernels, {rec['iterations']} iterations, fit {rec['psnr_fit']:.2f} dB"
        else:
            big = np.clip(pil_resize(lr, hr.shape[:2], method), 0.0, 1.0)
            note = ""
        seconds = time.perf_counter() - t0
        if big.shape != hr.shape:
            raise RuntimeError(f"{method} produced {big.shape}, expected {hr.shape}")
        out = shave_border(big, b)
        rows.append(dict(image=name, scale=scale, method=method, psnr=psnr(out, hr_s), ssim=ssim(out, hr_s),
                         seconds=seconds, hr_shape=hr.shape[:2], lr_shape=lr.shape[:2], shave=b, note=note))
    return rows


def superres_experiment(images: dict, scales=(2, 3, 4), *, methods=METHODS, n_kernels: int | None = None,
                        iters: int | None = None, init="grid", seed: int = 0, shave: int | None = None,
                        workers: int | None = None, scheduler=None, progress: bool = True,
                        **fit_kwargs) -> pd.DataFrame:
    """PSNR / SSIM of x``scale`` super-resolution per image, scale and method (see the module docstring).

    ``images``: name -> original in [0, 1]; each is cropped to a multiple of the (integer) scale, downsampled
    (PIL BICUBIC, antialiased) and upscaled back by every method in ``methods`` ("smoe", "bicubic",
    "lanczos", "nearest"). ``shave`` pixels are removed at each border before the metrics (default: the
    scale). ``n_kernels`` is per LR image (default one per 4 LR pixels). The (image, scale) pairs are
    independent tasks of :func:`smoe_core.parallel.run_tasks` (``workers`` / ``scheduler``: Dask).

    Columns: image, scale, method, psnr, ssim, seconds, hr_shape, lr_shape, shave, note.
    """
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)} (choose from {', '.join(METHODS)})")
    tasks = [dict(name=name, image=check_image(img), scale=int(s), shave=shave, methods=tuple(methods),
                  n_kernels=n_kernels, iters=iters, init=init, seed=int(seed), fit_kwargs=fit_kwargs)
             for name, img in images.items() for s in scales]
    for t, s in zip(tasks, [s for _ in images for s in scales]):
        if t["scale"] != s or s < 1:
            raise ValueError(f"scales must be integers >= 1, got {s}")
    results = run_tasks(superres_task, tasks, workers=workers, scheduler=scheduler, progress=progress, desc="superres")
    rows = [r for rs in results for r in rs]
    return pd.DataFrame(rows, columns=["image", "scale", "method", "psnr", "ssim", "seconds", "hr_shape", "lr_shape",
                                       "shave", "note"])


# ---------------------------------------------------------------------- resumable items that keep their outputs
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
    :func:`smoe_core.tasks.denoise.noise_seed` of the image's name, whatever other images are in ``images``).
    Outputs are kept in ``out_dir`` for the images in ``save_images`` (None: all) and sigmas in
    ``save_sigmas`` (None: all), cut to ``window`` = (y0, y1, x0, x1) when given."""
    items = []
    for im in images:
        for ch in channels_list(channels):
            for s in sigmas:
                keep = _keep(im, out_dir if (save_sigmas is None or s in save_sigmas) else None, save_images, window)
                items.append(dict(image=str(im), channels=ch, sigma=int(s), crop=crop,
                                  models=int(models), n_kernels=n_kernels, iters=iters, init=init,
                                  baselines=list(baselines), seed=int(seed), **keep))
    return items


def run_denoise_item(item: dict) -> list[dict]:
    """Rows of :func:`smoe_core.studies.r_smoe_restoration.denoising_experiment` for one (image, channels, sigma) -- noisy,
    "smoe S=1", "smoe S=<models>", the baselines -- computed from the same public pieces (add_noise with seed
    :func:`smoe_core.tasks.denoise.noise_seed`, the shifted fits, fuse, the baselines) so the outputs can be kept:
    with ``out_dir`` they are saved to ``denoise_<image>_<channels>.npz`` under keys ``s<sigma>_<method>``."""
    clean = load_item_image(item)
    sigma, S = int(item["sigma"]), int(item.get("models", 8))
    seed = int(item.get("seed", 0))
    noisy = dn.add_noise(clean, sigma, seed=dn.noise_seed(seed, item["image"], sigma))
    outputs = {"noisy": noisy}
    rows = [dict(method="noisy", models=np.nan, psnr=psnr(noisy, clean), ssim=ssim(noisy, clean), seconds=0.0, note="")]
    img, nk, it = dn.check_denoise_inputs(noisy, item.get("n_kernels"), item.get("iters"), "reflect")
    S_list = sorted({1, S})
    # the fits of denoising_experiment (one torch thread each, seeds seed + s)
    results = dn.fit_shifted_models(img, S_list[-1], n_kernels=nk, iters=it, init=item.get("init", "grid"), seed=seed,
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
            for im in images for ch in channels_list(channels) for s in scales]


def run_superres_item(item: dict) -> list[dict]:
    """Rows of :func:`smoe_core.studies.r_smoe_restoration.superres_experiment` for one (image, channels, scale) (same
    degradation, fits and shave), keeping the outputs: with ``out_dir`` they are saved to
    ``superres_<image>_<channels>.npz`` under keys ``x<scale>_<method>`` (and ``x<scale>_hr``, ``x<scale>_lr``)."""
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


def denoise_runs(items, store=None, *, name: str = "denoise_runs", **kw) -> pd.DataFrame:
    df = run_items(name, items, run_denoise_item, DENOISE_KEYS, store, **kw)
    return df.drop_duplicates(DENOISE_KEYS + ["method"], keep="last").reset_index(drop=True) if len(df) else df


def superres_runs(items, store=None, *, name: str = "superres_runs", **kw) -> pd.DataFrame:
    df = run_items(name, items, run_superres_item, SUPERRES_KEYS, store, **kw)
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
    plt = pyplot()
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
