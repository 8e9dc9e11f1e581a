"""Helpers shared by the paper studies: test images and crops, published tables, grid items of an
initializer comparison, one initialization or one global optimization per item (picklable dicts, so items run
serially or on Dask and are saved one by one, :meth:`smoe_core.studies.results.ResultsStore.run_grid`), tables
side by side with the published ones, and a notebook's report fragment.

Choices the papers leave open, made here:

- Segmentation-based initializers (S-SMoE, AS-SMoE; ``segments`` in :mod:`smoe_core.init.registry`) segment the
  **colour** image with the authors' MDBSCAN variant when the image has colour (the authors' code segments the
  RGB PNG; this reproduces their segment counts exactly, see :mod:`smoe_core.segment`), and fit the gray
  image, as the papers do.
- Kernel budgets ([AS-SMoE] Table V): 3500 for Barbara, 1500 for the other images, for the initializers that
  take one (Grid, K-Means, edge-aligned); S-SMoE and AS-SMoE choose their own counts.
- Global optimization ([AS-SMoE] Table III): :func:`smoe_core.fit` with the L1 sparsity lambda * sum(pi) and
  kernel removal at pi <= 0, MSE loss, stopping at a loss decrease below ``tol`` or the iteration budget of the
  preset. The paper does not state lambda; ``sparsity`` is a parameter of the notebook.
- Time to 95%: the first time at which the PSNR reached 95% of the run's best PSNR ([AS-SMoE] Fig. 9).
- RBF networks from an initializer's kernels ([AS-SMoE] Fig. 7, item key ``rbf``): the initializer gives SMoE
  experts (the intensity a kernel's gate selects), which are not the weights of an RBF network over the same
  kernels (its output is the plain sum of the weighted kernels, so uneven overlap scales it). The RBF network
  starts from the same kernels with least-squares weights, pi folded into them
  (:func:`smoe_core.init.rbf_weights.rbf_least_squares`; ``rbf_start="least_squares"``, the default).
  ``rbf_start="switch"`` keeps the SMoE's pi and experts and only switches the model to RBF: what this module did
  before, an RBF start of -0.8 dB from AS-SMoE's kernels on Peppers (10.6 dB from K-Means').
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..init import initializer_info
from ..init.rbf_weights import rbf_least_squares
from ..io import TEST_IMAGES, image_key, load_image, paper_tables_dir
from ..metrics import psnr, ssim
from ..model import SMoE
from ..parallel import run_tasks
from ..render import render
from ..training import fit
from .perceptual import perceptual_columns
from .results import META_COLUMNS, atomic_write_text


def paper_table(name: str) -> pd.DataFrame:
    """A published table from smoe_core/data/paper_tables (e.g. "as_smoe_table5_init_quality")."""
    path = paper_tables_dir() / f"{name}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no published table {path}")
    return pd.read_csv(path)


def default_budget(image_name: str) -> int:
    """Table V's kernel budget: 3500 for Barbara, 1500 for the others (and for the user's own images)."""
    return 3500 if image_key(image_name) == "barbara" else 1500


def time_to_fraction(hist: pd.DataFrame, fraction: float = 0.95, x: str = "seconds") -> float:
    """The first ``x`` (time) of a training history at which its PSNR reaches ``fraction`` of its best (NaN for an
    empty history): Table III's ``seconds_to_95pct`` and the triangles of [AS-SMoE] Figs. 9a/b."""
    if not 0 < float(fraction) <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if not len(hist):
        return float("nan")
    best = hist["psnr"].max()
    return float(hist.loc[hist["psnr"] >= fraction * best, x].iloc[0])


def load_case(name_or_path, crop: int | None = None, color: bool = False) -> np.ndarray:
    """The image of an experiment: a test image's name or a path; ``crop`` takes the centred crop of that side
    (the ``smoke`` preset)."""
    return centre_crop(load_image(name_or_path, color=color), crop)


def centre_crop(image: np.ndarray, crop: int | None) -> np.ndarray:
    """The centred ``crop`` x ``crop`` window (the whole image for None or 0)."""
    if not crop:
        return image
    H, W = image.shape[:2]
    c = min(int(crop), H, W)
    y0, x0 = (H - c) // 2, (W - c) // 2
    return np.ascontiguousarray(image[y0:y0 + c, x0:x0 + c])


def segmentation_labels(name_or_path, d_th: float, crop: int | None = None) -> np.ndarray:
    """MDBSCAN labels for the segmentation initializers (colour image, authors' variant; module docstring)."""
    from ..segment import mdbscan

    color = load_case(name_or_path, crop, color=True)
    if np.allclose(color[..., 0], color[..., 1]) and np.allclose(color[..., 1], color[..., 2]):
        return mdbscan(color[..., 0], d_th)
    return mdbscan(color, d_th, variant="authors")


def init_kwargs(method: str, item: dict) -> dict:
    kw = dict(item.get("init_kwargs", {}).get(method, {}))
    info = initializer_info(method)
    if info.segments:
        kw.setdefault("labels", segmentation_labels(item["image"], item["d_th"], item.get("crop")))
        kw.setdefault("seed", item.get("seed", 0))
        if info.parallel:
            kw.setdefault("progress", False)
    elif info.takes_seed:
        kw.setdefault("seed", item.get("seed", 0))
    return kw


def model_path(model_dir, item: dict, stage: str) -> Path:
    """Where an item's model of a stage is saved; the image part is :func:`smoe_core.io.image_key` (a user's
    ``peppers.png`` never overwrites the test image's models)."""
    d = f"_d{item['d_th']}" if initializer_info(item["method"]).segments else ""
    tag = f"_{item['tag']}" if item.get("tag") else ""
    return Path(model_dir) / f"{image_key(item['image'])}_{item['method']}{d}{tag}_{stage}.npz"


def item_budget(item: dict):
    """The kernel budget passed to the initializer: none for the segmenting initializers (S-SMoE and AS-SMoE),
    which choose their own counts (4 kernels per segment; Algorithm 1), as in [AS-SMoE] Table V."""
    return None if initializer_info(item["method"]).segments else item["budget"]


def run_init(item: dict) -> dict:
    """Table V row: the initializer alone. ``item``: image, method, budget, d_th, seed, crop, model_dir."""
    image = load_case(item["image"], item.get("crop"))
    t0 = time.perf_counter()
    kw = init_kwargs(item["method"], item)
    t_seg = time.perf_counter() - t0
    model, record = initializer_info(item["method"]).fn(image, item_budget(item), **kw)
    seconds = time.perf_counter() - t0
    out = render(model)
    path = model_path(item["model_dir"], item, "init")
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return dict(L_init=model.n_kernels, psnr_db=psnr(out, image), ssim=ssim(out, image), seconds=seconds,
                segmentation_seconds=t_seg if initializer_info(item["method"]).segments else 0.0,
                n_segments=record.get("n_segments", np.nan))


RBF_STARTS = ("least_squares", "switch")


def rbf_start_model(model: SMoE, image, start: str = "least_squares") -> SMoE:
    """The RBF network started from ``model``'s kernels (module docstring): ``"least_squares"`` weights
    (pi folded) or ``"switch"`` (the same fields, ``rbf=True``; an RBF model is returned as it is)."""
    if start not in RBF_STARTS:
        raise ValueError(f"rbf_start must be one of {RBF_STARTS}, got {start!r}")
    if start == "least_squares":
        return rbf_least_squares(model, image)
    out = model.replace()
    out.rbf = True
    return out


def run_global(item: dict) -> dict:
    """Table III row: global optimization from the saved initial model (``run_init`` first). Extra item keys:
    iters, seconds_budget, sparsity, lr, tol, backend, rbf (fit the RBF network started from the same kernels by
    the rule ``rbf_start``, :func:`rbf_start_model`)."""
    image = load_case(item["image"], item.get("crop"))
    model = SMoE.load(model_path(item["model_dir"], item, "init"))
    if item.get("rbf"):
        model = rbf_start_model(model, image, item.get("rbf_start", "least_squares"))
    t0 = time.perf_counter()
    fitted, hist = fit(image, model, iters=item["iters"], seconds=item.get("seconds_budget"),
                       sparsity=item.get("sparsity", 0.0), lr=item.get("lr"), tol=item.get("tol", 1e-6),
                       seed=item.get("seed", 0), backend=item.get("backend", "tiled"), progress=False)
    seconds = time.perf_counter() - t0
    stage = "rbf" if item.get("rbf") else "final"
    fitted.save(model_path(item["model_dir"], item, stage))
    hist.to_csv(model_path(item["model_dir"], item, stage).with_suffix(".history.csv"), index=False)
    out = render(fitted)
    t95 = time_to_fraction(hist, 0.95)
    row = dict(L_init=model.n_kernels, L_opt=fitted.n_kernels, psnr_db=psnr(out, image), ssim=ssim(out, image),
               iterations=len(hist), seconds=seconds, seconds_to_95pct=t95)
    row.update(perceptual_columns(out, image))
    return row


def history(model_dir, item: dict, stage: str = "final") -> pd.DataFrame:
    return pd.read_csv(model_path(model_dir, item, stage).with_suffix(".history.csv"))


def kernels_at_target(hist: pd.DataFrame, target_db: float):
    """The fewest kernels of any iteration whose PSNR reached ``target_db`` (None if never reached)."""
    hit = hist[hist["psnr"] >= target_db]
    return None if hit.empty else int(hit["n_kernels"].min())


def only_test_images(images) -> bool:
    """Whether every image of a run is a test image (:func:`smoe_core.io.image_key`): a paper's figure over its
    test images is set beside our aggregate only then."""
    return all(image_key(i) in TEST_IMAGES for i in images)


def side_by_side(ours: pd.DataFrame, paper: pd.DataFrame, on, columns) -> pd.DataFrame:
    """Our columns next to the paper's with the difference (ours - paper), one row per key.

    When the key holds ``image``, our images are keyed by :func:`smoe_core.io.image_key` and only the test
    images meet the paper's rows: a user's image (keyed by its stem and content hash, ``peppers-1a2b3c4d``) keeps
    its row with empty paper columns, whatever its file is called."""
    ours = ours[list(on) + list(columns)]
    paper = paper[list(on) + [c for c in columns if c in paper.columns]]
    if "image" in on:
        ours = ours.assign(image=ours["image"].map(image_key))
        paper = paper[paper["image"].astype(str).isin(TEST_IMAGES)]
    merged = ours.merge(paper, on=list(on), how="left", suffixes=("_ours", "_paper"))
    for c in columns:
        if f"{c}_paper" in merged.columns:
            merged[f"{c}_diff"] = pd.to_numeric(merged[f"{c}_ours"], errors="coerce") - merged[f"{c}_paper"]
    return merged


def markdown_table(df: pd.DataFrame, floatfmt: str = ".2f") -> str:
    """A GitHub-markdown table (no extra dependency)."""
    def fmt(v):
        if isinstance(v, (float, np.floating)):
            if np.isnan(v):
                return ""
            return str(int(v)) if float(v).is_integer() and abs(v) >= 100 else format(v, floatfmt)
        return str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "| " + " | ".join("---" for _ in df.columns) + " |"
    rows = ["| " + " | ".join(fmt(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join([head, sep, *rows])


def grid_items(images, methods, *, d_th=40, budgets=None, crop=None, seed=0, model_dir, **extra) -> list[dict]:
    """One item per (image, method): the keys :func:`run_init` / :func:`run_global` read."""
    items = []
    for image in images:
        budget = (budgets or {}).get(image_key(image), default_budget(image))
        for method in methods:
            items.append(dict(image=str(image), method=method, budget=int(budget), d_th=d_th, crop=crop,
                              seed=seed, model_dir=str(model_dir), **extra))
    return items


def histories(items, stage: str = "final") -> pd.DataFrame:
    """All runs' histories in one frame (image, method, iteration, seconds, psnr, n_kernels)."""
    frames = []
    for it in items:
        try:
            h = history(it["model_dir"], it, stage)
        except FileNotFoundError:
            continue
        frames.append(h.assign(image=image_key(it["image"]), method=it["method"]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_models(items, stage: str) -> dict:
    """{(image, method): SMoE} of the saved models of a stage ("init", "final", "rbf")."""
    out = {}
    for it in items:
        p = model_path(it["model_dir"], it, stage)
        if p.is_file():
            out[(image_key(it["image"]), it["method"])] = SMoE.load(p)
    return out


def write_report(store, title: str, sections: list[tuple[str, object]]) -> Path:
    """The notebook's fragment of results/REPORT.md: markdown text, DataFrames (as tables) and figure names
    (PNG files of the store, embedded)."""
    parts = [f"### {title}\n"]
    for heading, content in sections:
        parts.append(f"#### {heading}\n")
        if isinstance(content, pd.DataFrame):
            cols = [c for c in content.columns if c not in (*META_COLUMNS, "model_dir", "crop")]
            parts.append(markdown_table(content[cols]) + "\n")
        elif isinstance(content, str) and content.endswith(".png"):
            parts.append(f"![{heading}](./{content})\n")
        else:
            parts.append(f"{content}\n")
    return atomic_write_text(store.dir / "report.md", "\n".join(parts))


def rows_of_items(df: pd.DataFrame, items, keys) -> pd.DataFrame:
    """The rows of a results table that belong to ``items`` (by the ``keys`` columns), not those of earlier,
    other grids written to the same table."""
    if df.empty:
        return df
    wanted = {tuple(str(it[k]) for k in keys) for it in items}
    return df[[tuple(str(v) for v in r) in wanted for r in df[keys].itertuples(index=False)]].reset_index(drop=True)


def run_items(name, items, fn, keys, store=None, *, workers=None, scheduler=None, progress=True) -> pd.DataFrame:
    """Runs grid items: resumable in ``store`` (table ``name``; returns the rows of these items only), or in
    memory without one."""
    if store is not None:
        df = store.run_grid(name, items, fn, keys, workers=workers, scheduler=scheduler, progress=progress)
        return rows_of_items(df, items, keys)
    rows = []
    for it, res in zip(items, run_tasks(fn, items, workers=workers, scheduler=scheduler, progress=progress, desc=name)):
        for r in ([res] if isinstance(res, dict) else res):
            rows.append(dict({k: it[k] for k in keys}, **r))
    return pd.DataFrame(rows)
