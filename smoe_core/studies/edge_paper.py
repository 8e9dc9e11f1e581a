"""Experiments of [EDGE] (Determann and Fleig, "Edge-Aligned Initialization of Kernels for
Steered Mixture of Experts"), as functions the notebook ``notebooks/edge_aligned.ipynb`` calls:

- **Fig. 2** (section III-A to III-C: (a) Canny edge mask, (b) initial line segments, (c) segments after
  reduction, (d) final kernel centres): :func:`edge_stages`, :func:`stage_counts`, :func:`plot_stages`.
- **Fig. 3** (section III-D, eqs. 10-12: PSNR across the expert-initialization iterations):
  :func:`expert_iterations_table`.
- **Fig. 5** (section IV: PSNR against the number of kernels for the four initializers the paper compares:
  the proposed edge-aligned one, the uniform grid, S-SMoE and AS-SMoE; each trained tile-wise as in section
  III-E / Fig. 4): :func:`fig5_items`, :func:`run_fig5_item` (one picklable item per (image, initializer,
  kernel budget, d_th), run and saved one by one by :meth:`smoe_core.studies.results.ResultsStore.run_grid`, so a
  grid resumes where it stopped), :func:`kernels_vs_psnr_table`.
- **Fig. 6** (section IV: time to convergence of the four initializers, per image): :func:`convergence_times`,
  :func:`plot_times`, read off the Fig. 5 runs at the default budget.
- **Fig. 7** (section IV: (a) grid kernel centres, (b) the SMoE reconstruction from them, (c) edge-aligned kernel
  centres, (d) their reconstruction): :func:`fig7_models` and :func:`fig7_figure`, from the Fig. 5 runs at the
  default budget: the centres of the tile-wise initialization (every tile initialized as the run did it,
  :func:`smoe_core.tasks.tilewise.initial_tilewise_model`) and the run's final model.
- The paper prints no numbers for its figures (no tables either); its text makes claims about them, which
  :func:`paper_claims_table` puts beside our measurements, with the difference and whether the claim holds.

Choices the paper leaves open, made here (every one a parameter):

- Fig. 2 takes the intermediate stages from :func:`smoe_core.init.edge.edge_layout`, the function the
  initializer itself runs for steps A-C, with the defaults of :func:`smoe_core.init.edge` (read from its
  signature).
- Fig. 3: the edge-aligned initializer at the Table V budgets (:func:`smoe_core.studies.common.default_budget`:
  3500 kernels for Barbara, 1500 for the others) run for a fixed number of iterations (``tol=None``), the PSNR
  of the whole image after each iteration (index 0 is m^(0), the luma sampled at the kernel centres, eq. 10).
  Both signs of eq. 12: ``"corrected"`` (m + eta (L - L_hat), the convergent one the initializer uses) and
  ``"printed"`` (m + eta (L_hat - L), as printed in the paper; see :mod:`smoe_core.init.edge`), eta = 0.1.
- Fig. 5 training (section III-E, Fig. 4): :func:`smoe_core.tasks.tilewise.fit_tilewise` with 2 x 2 tiles, the
  initializer applied per tile with the tile's share of the budget, training of each tile with
  lambda (sum |pi|)^2 (``sparsity`` = 0.1, divided by the tile's kernel count squared) and pruning of the
  kernels whose pi falls below ``prune_below`` = 0.05, learning rate of pi 1e-2 (over
  :data:`smoe_core.training.DEFAULT_LR`, so that pruning can happen within a few hundred iterations), merging,
  and fine-tuning of the whole image without regularization. Each stage stops at a mean loss decrease below
  ``tol`` per iteration (:func:`smoe_core.fit`) or at its iteration cap. The paper gives none of these values.
- Fig. 5 kernel counts: the x axis is the number of kernels of the final model (after pruning). Grid, edge
  and S-SMoE take a budget: ``budget_factors`` times the Table V budget. AS-SMoE chooses its own count
  (Algorithm 1): its points come from the MDBSCAN thresholds ``as_smoe_d_th`` instead. S-SMoE and AS-SMoE
  segment each tile's gray pixels with MDBSCAN at ``d_th`` (40, [AS-SMoE]s' default; the tiles
  are segmented on their own because the tile-wise training initializes each tile on its own). A tile in
  which Canny finds no line segment gets 4 grid kernels instead of edge pairs (:func:`edge_tile`; the paper
  does not say what happens to flat tiles, and a tile model needs kernels). AS-SMoE's tile models start with
  every pi = 1 (:func:`as_smoe_tile`), as Grid, edge and S-SMoE do: the (sum |pi|)^2 term lowers all pis at
  about the pi learning rate per step (a common scale of pi leaves the render unchanged), so the 0.05
  threshold acts as a clock that removes a kernel after about (pi_0 - 0.05) / 0.01 steps unless the data
  holds it up. AS-SMoE's exported pis spread from 0.09 to 2.35 (5-95%, Peppers, mean 0.98), and with them
  the tile stage removed nearly every kernel that started below 1 whether the image needed it or not (489 ->
  167 kernels on Peppers, final 22.45 dB); starting at 1 it keeps 376 (26.00 dB), losing 21% in the tile
  stage like the others. The AS-SMoE rows carry ``config`` + "_pi1", so rows of the earlier rule are not
  reused.
- Fig. 6 time to convergence: the wall time of the whole pipeline of one Fig. 5 run at the default budget
  (factor 1; AS-SMoE at ``d_th``): initialization of all tiles (segmentation included), tile training,
  merging and fine-tuning, each stage ending by the stopping rule above; ``converged`` says whether every
  stage stopped by the rule rather than by its cap. Each process first runs every initializer once on a tiny
  synthetic image (:func:`warm_up`), so that importing scikit-image or loading compiled libraries is not
  charged to the first run. Times depend on the machine; the paper's claim is about their order. Wall time
  (``seconds``) is the paper's measure; ``cpu_seconds`` (the process's CPU time, all threads) is recorded
  beside it because it is less disturbed by other work sharing the machine.
"""
from __future__ import annotations

import inspect
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..init import get_initializer, grid, initializer_info
from ..init.edge import ANGLES, edge, edge_layout, resolve_max_pts, sample_bilinear
from ..io import check_image, image_key
from ..metrics import psnr, ssim
from ..model import SMoE
from ..render import render
from ..tasks.tilewise import fit_tilewise, initial_tilewise_model
from ..training import fit
from .common import default_budget, load_case
from .plotting import curves, finish, pyplot, show_image, time_bars

#: The four initializers of the paper's Figs. 5 and 6, the proposed one first.
PAPER_METHODS = ("edge", "grid", "s_smoe", "as_smoe")
#: Key columns of the Fig. 5 table (one row per item; ``config`` names the training settings, so that a rerun
#: with other settings does not reuse stale rows).
FIG5_KEYS = ["image", "method", "budget", "d_th", "config"]
#: Appended to the ``config`` of AS-SMoE's Fig. 5 items: its tile models start with pi = 1 (:func:`as_smoe_tile`).
AS_SMOE_CONFIG_SUFFIX = "_pi1"
#: What the paper's text says about Figs. 3, 5 and 6 (it prints no numbers for them).
PAPER_CLAIMS = {
    "fig3": "PSNR shown across the iterations; no numbers in the text",
    "fig5_grid": "edge above grid ('outperforms the grid baseline for the most part')",
    "fig5_s_smoe": "edge slightly below S-SMoE",
    "fig5_as_smoe": "edge slightly below AS-SMoE",
    "fig6": "edge fastest on every image except Peppers, where S-SMoE is fastest",
}


# ---------------------------------------------------------------------------------------------- Fig. 2
def edge_parameters(**overrides) -> dict:
    """The keyword defaults of :func:`smoe_core.init.edge`, updated by ``overrides`` (unknown names fail)."""
    params = {k: p.default for k, p in inspect.signature(edge).parameters.items()
              if p.default is not inspect.Parameter.empty}
    unknown = set(overrides) - set(params)
    if unknown:
        raise TypeError(f"unknown edge() parameter(s): {sorted(unknown)}")
    params.update(overrides)
    return params


def edge_stages(image, n_kernels: int | None = None, **edge_kwargs) -> dict:
    """The stages of the edge-aligned initializer on ``image`` (Fig. 2).

    Returns a dict: ``edges`` (H, W) bool Canny mask (a); ``segments`` DataFrame of all line segments (b):
    x, y (centre), orientation (index into the scan directions), angle_deg, length (pixels), score (eq. 8);
    ``reduced`` DataFrame of the segments after reduction (c): x, y, orientation, angle_deg; ``centres``
    (K, 2) kernel centres (x, y) (d); ``model`` and ``record`` of :func:`smoe_core.init.edge` with the same
    arguments, and ``reduction`` (eps, n_clusters, n_clustered, n_noise, n_noise_kept).
    """
    p = edge_parameters(**edge_kwargs)
    img = check_image(image)
    lay = edge_layout(img, resolve_max_pts(n_kernels, p["max_pts"]),
                      **{k: p[k] for k, v in inspect.signature(edge_layout).parameters.items()
                         if v.kind is inspect.Parameter.KEYWORD_ONLY})
    model, record = edge(img, n_kernels, **edge_kwargs)
    angles = np.asarray(ANGLES)
    c, o = lay.centres, lay.orientation
    segments = pd.DataFrame(dict(x=c[:, 0], y=c[:, 1], orientation=o, angle_deg=angles[o], length=lay.lengths,
                                 score=lay.scores))
    kc, ko = lay.kept_centres, lay.kept_orientation
    reduced = pd.DataFrame(dict(x=kc[:, 0], y=kc[:, 1], orientation=ko, angle_deg=angles[ko]))
    return dict(edges=lay.edges, segments=segments, reduced=reduced, centres=lay.mu, model=model, record=record,
                reduction=lay.reduction)


def stage_counts(stages: dict, image: str = "") -> dict:
    """One row of the Fig. 2 table: what each stage leaves."""
    r = stages["record"]
    return dict(image=image, edge_pixels=int(stages["edges"].sum()), line_segments=len(stages["segments"]),
                clusters=int(r["n_clusters"]), clustered_segments=int(r["n_clustered"]),
                noise_segments=int(r["n_noise"]), reduced_segments=len(stages["reduced"]),
                kernels=int(r["n_kernels"]), kernels_requested=r["kernels_requested"], eps_px=float(r["eps"]),
                initial_psnr_db=float(r["psnr_per_iteration"][r["best_iteration"]]), seconds=float(r["seconds"]))


def plot_stages(cases: dict, *, window=None, marker_size: float = 3.0):
    """Fig. 2 with one row per image: (a) edge mask, (b) all line segments, (c) reduced segments, (d) kernel
    centres on the image. ``cases``: {name: (image, stages)}. ``window`` = (y0, y1, x0, x1) zooms every
    panel (None: the whole image). Segments are drawn as short strokes along their direction."""
    from matplotlib.collections import LineCollection

    plt = pyplot()
    n = len(cases)
    fig, axes = plt.subplots(n, 4, figsize=(12, 2.9 * n), squeeze=False)
    rad = np.deg2rad(np.asarray(ANGLES))

    def strokes(df, half):
        d = np.stack([np.cos(rad[df["orientation"].to_numpy()]), np.sin(rad[df["orientation"].to_numpy()])], 1)
        c = df[["x", "y"]].to_numpy()
        return np.stack([c - half * d, c + half * d], 1)

    for row, (name, (image, st)) in zip(axes, cases.items()):
        H, W = image.shape[:2]
        y0, y1, x0, x1 = window or (0, H, 0, W)
        off = np.array([x0, y0], np.float64)
        show_image(row[0], st["edges"].astype(np.float32), f"{name}: (a) Canny edges", window)
        for ax, key, title, colour in ((row[1], "segments", "(b) line segments", "tab:blue"),
                                       (row[2], "reduced", "(c) after reduction", "tab:red")):
            show_image(ax, 0.35 + 0.4 * np.asarray(image), f"{title}: {len(st[key])}", window)
            half = 0.7 if key == "segments" else 2.5
            ax.add_collection(LineCollection(strokes(st[key], half) - off, colors=colour,
                                             linewidths=0.5 if key == "segments" else 0.9))
        show_image(row[3], image, f"(d) kernel centres: {len(st['centres'])}", window)
        c = st["centres"] - off
        row[3].scatter(c[:, 0], c[:, 1], s=marker_size, c="red", linewidths=0)
        for ax in row:
            ax.set_xlim(-0.5, x1 - x0 - 0.5)
            ax.set_ylim(y1 - y0 - 0.5, -0.5)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------- Fig. 3
SIGNS = {"corrected": False, "printed": True}


def _images(images, crop=None) -> dict:
    """{name: image}: a mapping is taken as is; names/paths are loaded (``crop``: centred crop)."""
    if isinstance(images, dict):
        return {str(k): check_image(v) for k, v in images.items()}
    return {image_key(name): load_case(name, crop) for name in images}


def expert_iterations_table(images, iterations: int, *, budgets: dict | None = None, crop=None,
                            signs=("corrected", "printed"), **edge_kwargs) -> pd.DataFrame:
    """Fig. 3: the PSNR of the edge-aligned initialization after each expert iteration (eqs. 10-12).

    ``images``: names/paths (loaded with ``crop``) or {name: array}. ``budgets``: {name: kernels}; default
    :func:`smoe_core.studies.common.default_budget`. Runs ``iterations`` iterations without early stop for each
    sign in ``signs`` ("corrected": the convergent sign the initializer uses; "printed": the paper's).
    Returns one row per (image, sign, iteration): psnr_db (whole image), centre_mse (model at the kernel
    centres against the image there), n_kernels, best_iteration, seconds (the whole initialization).
    """
    rows = []
    for name, img in _images(images, crop).items():
        budget = (budgets or {}).get(name, default_budget(name))
        for sign in signs:
            if sign not in SIGNS:
                raise ValueError(f"sign must be one of {list(SIGNS)}, got {sign!r}")
            _, rec = edge(img, budget, n_iter=int(iterations), tol=None, paper_sign=SIGNS[sign], **edge_kwargs)
            for it, (p, c) in enumerate(zip(rec["psnr_per_iteration"], rec["centre_mse_per_iteration"])):
                rows.append(dict(image=name, sign=sign, iteration=it, psnr_db=float(p), centre_mse=float(c),
                                 n_kernels=rec["n_kernels"], best_iteration=rec["best_iteration"],
                                 seconds=rec["seconds"]))
    return pd.DataFrame(rows)


#: what the two signs of Fig. 3 are (panel titles and the figure's caption)
SIGN_TITLES = {"corrected": "corrected sign (what the initializer runs):\nm <- m + eta (L - L_hat)",
               "printed": "printed sign (eq. 12 as the paper prints it):\nm <- m + eta (L_hat - L)"}
FIG3_CAPTION = ("Expert iteration (eqs. 10-12), eta = 0.1. L: the image at the kernel centres; L_hat: the SMoE with "
                "the current experts m evaluated there. Iteration 0 is eq. 10 (m = L). Corrected: the convergent sign "
                "(the model at the centres approaches the image there); printed: eq. 12's sign, which moves each "
                "expert away from the image value. PSNR over the whole image.")


def fig3_figure(fig3: pd.DataFrame):
    """Fig. 3 (rows of :func:`expert_iterations_table`): PSNR against the expert iteration, one panel per sign
    (titled with its update rule), one series per image, and a caption saying what "corrected" and "printed"
    mean."""
    return curves(fig3, "iteration", "psnr_db", by="image", panel="sign", xlabel="expert iteration",
                  ylabel="PSNR (dB)", markers=False, panel_titles=SIGN_TITLES, caption=FIG3_CAPTION,
                  legend_below=True)


def iteration0_psnr(image, model) -> float:
    """Eq. 10 computed directly: the PSNR of ``model`` with experts set to the image sampled (bilinearly) at
    its kernel centres."""
    img = check_image(image)
    img3 = img if img.ndim == 3 else img[..., None]
    m0 = sample_bilinear(img3, np.asarray(model.mu, np.float64)).astype(np.float32)
    return psnr(render(model.replace(experts=m0), img.shape[:2]), img)


def expert_iterations_summary(fig3: pd.DataFrame) -> pd.DataFrame:
    """Per (image, sign): PSNR at iteration 0 (eq. 10), at iterations 1 and 5, the best and the last, and the
    best iteration."""
    rows = []
    for (image, sign), g in fig3.groupby(["image", "sign"], sort=False):
        g = g.sort_values("iteration")
        p = g.set_index("iteration")["psnr_db"]
        rows.append(dict(image=image, sign=sign, psnr_iter0_db=p.iloc[0], psnr_iter1_db=p.get(1, np.nan),
                         psnr_iter5_db=p.get(5, np.nan), best_iteration=int(p.idxmax()), psnr_best_db=p.max(),
                         last_iteration=int(p.index[-1]), psnr_last_db=p.iloc[-1],
                         gain_best_db=p.max() - p.iloc[0]))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------- Figs. 5, 6
def _even(n: float) -> int:
    return max(2, 2 * int(round(n / 2)))


def fig5_items(images, methods=PAPER_METHODS, *, budget_factors=(0.5, 1.0), budgets: dict | None = None,
               d_th: int = 40, as_smoe_d_th=(40,), crop=None, seed: int = 0, tiles=(2, 2), tile_iters: int = 300,
               finetune_iters: int = 300, sparsity: float = 0.1, prune_below: float = 0.05,
               lr: dict | None = None, tol: float = 1e-5, backend: str = "tiled", model_dir=None) -> list[dict]:
    """The Fig. 5 grid: one picklable item per (image, method, budget) -- per (image, d_th) for AS-SMoE --
    with everything :func:`run_fig5_item` reads. Budgets are ``budget_factors`` x the Table V budget
    (``budgets`` overrides the latter per image), rounded to an even count (the edge initializer places pairs).
    ``default_point`` marks the run of each (image, method) that Fig. 6 times: factor 1 (or the factor
    closest to 1), and AS-SMoE at ``d_th``."""
    lr = {"pi": 1e-2} if lr is None else dict(lr)
    factors = [float(f) for f in budget_factors]
    f_default = min(factors, key=lambda f: abs(f - 1.0))
    common = dict(crop=crop, seed=int(seed), tiles=[int(t) for t in tiles], tile_iters=int(tile_iters),
                  finetune_iters=int(finetune_iters), sparsity=float(sparsity), prune_below=float(prune_below),
                  lr=lr, tol=float(tol), backend=backend, model_dir=None if model_dir is None else str(model_dir))
    common["config"] = training_config(common)
    items = []
    for name in images:
        key = image_key(name)
        base = (budgets or {}).get(key, default_budget(name))
        for method in methods:
            if method == "as_smoe":
                thresholds = sorted(set(int(t) for t in as_smoe_d_th) | {int(d_th)})
                for t in thresholds:
                    items.append(dict(image=str(name), method=method, budget=_even(base), d_th=t,
                                      budget_factor=float("nan"), default_point=t == int(d_th),
                                      **dict(common, config=common["config"] + AS_SMOE_CONFIG_SUFFIX)))
            else:
                for f in factors:
                    items.append(dict(image=str(name), method=method, budget=_even(f * base), d_th=int(d_th),
                                      budget_factor=f, default_point=f == f_default, **common))
    return items


def training_config(item: dict) -> str:
    """A short name of an item's training settings (a key column of the Fig. 5 table)."""
    lr = ",".join(f"{k}{v:g}" for k, v in sorted((item.get("lr") or {}).items()))
    return (f"t{'x'.join(map(str, item['tiles']))}_i{item['tile_iters']}-{item['finetune_iters']}"
            f"_s{item['sparsity']:g}_p{item['prune_below']:g}_tol{item['tol']:g}_lr{lr}_c{item.get('crop')}"
            f"_seed{item.get('seed', 0)}_{item.get('backend', 'tiled')}")


_WARM = False


def warm_up() -> None:
    """Runs grid, edge and S-SMoE once on a tiny synthetic image and fits a few iterations (once per process):
    imports, compiled libraries and caches are then loaded before anything is timed."""
    global _WARM
    if _WARM:
        return
    yy, xx = np.mgrid[0:48, 0:48]
    img = np.where(xx + 0.3 * yy > 30, 0.8, 0.2).astype(np.float32)
    for method in ("grid", "edge", "s_smoe"):
        model, _ = get_initializer(method)(img, 16)
        fit(img, model, iters=2, progress=False)
    _WARM = True


def edge_tile(image, n_kernels=None, *, flat_kernels: int = 4, **kwargs):
    """The edge-aligned initializer for one tile of the tile-wise training: :func:`smoe_core.init.edge`, except
    that a tile in which Canny finds no line segment (a flat tile; the paper does not say what happens there)
    gets ``flat_kernels`` grid kernels instead (at most its budget), since a tile model needs kernels."""
    try:
        return edge(image, n_kernels, **kwargs)
    except ValueError as err:
        if "no line segments" not in str(err):
            raise
        k = int(flat_kernels) if n_kernels is None else max(1, min(int(flat_kernels), int(n_kernels)))
        model, record = grid(image, k)
        return model, dict(record, method="edge", flat_tile=True)


def as_smoe_tile(image, n_kernels=None, **kwargs):
    """AS-SMoE for one tile of the tile-wise training: :func:`smoe_core.init.as_smoe` (which ignores
    ``n_kernels``) with every pi set to 1, the start of the other initializers (module docstring: with its
    exported pis the tile stage's pruning removes the kernels that start small, regardless of the data)."""
    model, record = get_initializer("as_smoe")(image, n_kernels, **kwargs)
    return model.replace(pi=np.ones_like(np.asarray(model.pi))), dict(record, pi_reset=True)


def _tile_initializer(method: str):
    return {"edge": edge_tile, "as_smoe": as_smoe_tile}.get(method, method)


def _tile_init_kwargs(item: dict) -> dict:
    kw = dict(item.get("init_kwargs") or {})
    info = initializer_info(item["method"])
    if info.segments:
        kw.setdefault("d_th", item["d_th"])
    if info.takes_seed:  # (grid's seed only draws random experts, which the default rule does not)
        kw.setdefault("seed", item.get("seed", 0))
    if info.parallel:
        kw.setdefault("progress", False)
    return kw


def fig5_model_path(item: dict) -> Path:
    return (Path(item["model_dir"]) / item.get("config", "default")
            / f"{image_key(item['image'])}_{item['method']}_k{item['budget']}_d{item['d_th']}.npz")


def run_fig5_item(item: dict) -> dict:
    """One Fig. 5 point (and, at the default budget, one Fig. 6 bar): the tile-wise pipeline of section III-E
    (:func:`smoe_core.tasks.tilewise.fit_tilewise`) from ``item["method"]``. With ``model_dir`` the final model and
    the fine-tuning history are saved there. Returns the row: kernels (merged, final), PSNR/SSIM (merged,
    final), seconds by stage, iterations and whether every stage stopped by the rule."""
    warm_up()
    image = load_case(item["image"], item.get("crop"))
    t0, c0 = time.perf_counter(), time.process_time()
    model, rec = fit_tilewise(image, int(item["budget"]), initializer=_tile_initializer(item["method"]),
                              init_kwargs=_tile_init_kwargs(item), tiles=tuple(item["tiles"]),
                              tile_iters=item["tile_iters"], sparsity=item["sparsity"],
                              prune_below=item["prune_below"], finetune_iters=item["finetune_iters"],
                              lr=item.get("lr"), backend=item.get("backend", "tiled"), tol=item["tol"],
                              seed=item.get("seed", 0), progress=False)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    tiles, hist = rec["tiles"], rec["history"]
    out = render(model)
    merged = render(rec["merged_model"])
    if item.get("model_dir"):
        path = fig5_model_path(item)
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save(path)
        hist.to_csv(path.with_suffix(".history.csv"), index=False)
    converged = bool((tiles["iterations"] < item["tile_iters"]).all() and len(hist) < item["finetune_iters"])
    init_s = float(tiles["init_seconds"].sum())
    return dict(budget_factor=item.get("budget_factor", np.nan), default_point=bool(item.get("default_point")),
                kernels_init=int(tiles["init_kernels"].sum()), kernels_merged=int(rec["merged_kernels"]),
                kernels=int(model.n_kernels), psnr_merged_db=psnr(merged, image), psnr_db=psnr(out, image),
                ssim=ssim(out, image), init_seconds=init_s, tile_seconds=float(rec["tile_seconds"]),
                finetune_seconds=float(rec["finetune_seconds"]), seconds=seconds, cpu_seconds=cpu_seconds,
                training_seconds=seconds - init_s, tile_iterations_max=int(tiles["iterations"].max()),
                finetune_iterations=int(len(hist)), converged=converged)


def kernels_vs_psnr_table(store, items, *, workers=None, scheduler=None, progress=True) -> pd.DataFrame:
    """Fig. 5 table: every item run (resumably) into the store's ``fig5_psnr_vs_kernels`` table; returns the
    rows of these items (latest run of each key), image as its short name."""
    df = store.run_grid("fig5_psnr_vs_kernels", items, run_fig5_item, FIG5_KEYS, workers=workers,
                        scheduler=scheduler, progress=progress)
    return fig5_rows(df, items)


def fig5_rows(df: pd.DataFrame, items) -> pd.DataFrame:
    """The rows of a Fig. 5 table that belong to ``items`` (latest run of each key; rows of other settings, e.g.
    superseded AS-SMoE rows, left out), image as its short name."""
    df = df.assign(image=df["image"].map(image_key))
    wanted = {(image_key(it["image"]), it["method"], str(it["budget"]), str(it["d_th"]), it["config"])
              for it in items}
    keep = [(r.image, r.method, str(r.budget), str(r.d_th), r.config) in wanted for r in df.itertuples()]
    return df[keep].drop_duplicates(FIG5_KEYS, keep="last").reset_index(drop=True)


def convergence_times(fig5: pd.DataFrame) -> pd.DataFrame:
    """Fig. 6: the default-budget run of each (image, method): time to convergence (s) split into the
    initialization and the training (tile training, merging, fine-tuning), kernels, PSNR, whether every stage
    converged, and the rank of the time within the image (1 = fastest)."""
    d = fig5[fig5["default_point"].astype(str).str.lower() == "true"].copy()
    cols = ["image", "method", "kernels", "psnr_db", "init_seconds", "training_seconds", "seconds", "cpu_seconds",
            "converged"]
    d = d[[c for c in cols if c in d.columns]].reset_index(drop=True)
    d["rank"] = d.groupby("image")["seconds"].rank(method="min").astype(int)
    return d


def fig5_figure(fig5: pd.DataFrame):
    """Fig. 5 (rows of :func:`kernels_vs_psnr_table`): PSNR against the final kernel count, one panel per image
    (the papers' order), one series per initializer (the proposed one first)."""
    return curves(fig5, "kernels", "psnr_db", by="method", panel="image", xlabel="kernels (final)",
                  ylabel="PSNR (dB)", order=PAPER_METHODS)


def plot_times(times: pd.DataFrame):
    """Fig. 6: grouped bars of the time to convergence per image (the papers' order) and method (the
    initialization hatched)."""
    return time_bars(times, ylabel="time to convergence (s)\n(hatched: initialization)")


# ---------------------------------------------------------------------------------------------- Fig. 7
def fig7_models(item: dict) -> tuple:
    """(initial model, final model) of one Fig. 5 run (``item`` of :func:`fig5_items`, run with a ``model_dir``):
    the tile-wise initialization recomputed with the run's initializer, budget and tiles (no training; the
    initializers of Fig. 7, grid and edge, are deterministic), and the saved final model."""
    image = load_case(item["image"], item.get("crop"))
    init = initial_tilewise_model(image, int(item["budget"]), initializer=_tile_initializer(item["method"]),
                                  init_kwargs=_tile_init_kwargs(item), tiles=tuple(item["tiles"]))
    return init, SMoE.load(fig5_model_path(item))


def fig7_figure(image, cases: dict, *, window=None, marker_size: float = 2.0):
    """Fig. 7: for each initializer in ``cases`` (name -> (initial model, final model); the paper: grid, then
    edge), its kernel centres on the image and the SMoE reconstruction of the trained model, side by side; the
    centre panels say the initial kernel count, the reconstructions their PSNR against ``image`` and kernel count.
    ``window`` = (y0, y1, x0, x1) zooms every panel (PSNR still over the whole image)."""
    plt = pyplot()
    H, W = image.shape[:2]
    y0, y1, x0, x1 = window or (0, H, 0, W)
    n = 2 * len(cases)
    fig, axes = plt.subplots(1, n, figsize=(2.9 * n, 2.9 * (y1 - y0) / (x1 - x0) + 0.7), squeeze=False)
    letters = "abcdefghijklmnop"
    for i, (name, (init, final)) in enumerate(cases.items()):
        a, b = axes[0][2 * i], axes[0][2 * i + 1]
        show_image(a, image, f"({letters[2 * i]}) {name}: kernel centres\nK = {init.n_kernels}", window)
        mu = init.numpy().mu.astype(np.float64) - np.array([x0, y0], np.float64)
        a.scatter(mu[:, 0], mu[:, 1], s=marker_size, c="red", linewidths=0)
        out = render(final, (H, W))
        show_image(b, out, f"({letters[2 * i + 1]}) {name}: SMoE reconstruction\n"
                           f"{psnr(out, image):.2f} dB, K = {final.n_kernels}", window)
        for ax in (a, b):
            ax.set_xlim(-0.5, x1 - x0 - 0.5)
            ax.set_ylim(y1 - y0 - 0.5, -0.5)
    return finish(fig, "Fig. 7: grid against edge-aligned initialization")


def psnr_at_kernels(curve: pd.DataFrame, kernels: float) -> float:
    """A method's PSNR interpolated at ``kernels`` (linearly in log kernels) from its Fig. 5 points; NaN outside
    their range."""
    c = curve.sort_values("kernels")
    k, p = c["kernels"].to_numpy(float), c["psnr_db"].to_numpy(float)
    if len(k) == 0 or kernels < k[0] or kernels > k[-1]:
        return float("nan")
    if len(k) == 1:
        return float(p[0])
    return float(np.interp(np.log(kernels), np.log(k), p))


def _fmt(v, unit=""):
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.2f}{unit}"


def paper_claims_table(fig5: pd.DataFrame, times: pd.DataFrame, fig3: pd.DataFrame | None = None) -> pd.DataFrame:
    """The paper's statements about Figs. 3, 5 and 6 beside our measurements, per image.

    Fig. 5 rows compare edge with each other method: ``difference`` is edge minus the other method in dB at the
    default budget (their final kernel counts in ``ours``); ``difference_equal_kernels`` is the edge curve
    interpolated at the other method's kernel count minus the other method's PSNR (NaN when that count is
    outside the edge curve). The claim holds when the sign agrees (above grid, below S-SMoE/AS-SMoE; for
    "equal kernels" when available, else at the default budget). Fig. 6 rows: ``difference`` is edge's time
    minus the fastest other method's (s); the claim holds when the fastest method is the paper's.
    Fig. 3 rows (if given): PSNR gain of the best iteration over iteration 0 (corrected sign)."""
    rows = []
    default = times.set_index(["image", "method"])
    for image in dict.fromkeys(fig5["image"]):
        sub = fig5[fig5["image"] == image]
        edge_curve = sub[sub["method"] == "edge"]
        if (image, "edge") in default.index:
            e = default.loc[(image, "edge")]
            for other in ("grid", "s_smoe", "as_smoe"):
                if (image, other) not in default.index:
                    continue
                o = default.loc[(image, other)]
                diff = float(e["psnr_db"] - o["psnr_db"])
                diff_k = psnr_at_kernels(edge_curve, float(o["kernels"])) - float(o["psnr_db"])
                ref = diff_k if not np.isnan(diff_k) else diff
                holds = ref > 0 if other == "grid" else ref < 0
                rows.append(dict(image=image, figure="Fig. 5", claim=PAPER_CLAIMS[f"fig5_{other}"],
                                 paper="edge > grid" if other == "grid" else f"edge < {other}",
                                 ours=f"edge {e['psnr_db']:.2f} dB ({int(e['kernels'])} kernels), {other} "
                                      f"{o['psnr_db']:.2f} dB ({int(o['kernels'])} kernels)",
                                 difference=diff, difference_equal_kernels=diff_k, holds=bool(holds)))
        t = times[times["image"] == image]
        if len(t) and "edge" in set(t["method"]):
            fastest = t.loc[t["seconds"].idxmin(), "method"]
            others = t[t["method"] != "edge"]
            paper_fastest = "s_smoe" if image == "peppers" else "edge"
            te = float(t.loc[t["method"] == "edge", "seconds"].iloc[0])
            ours = "; ".join(f"{r.method} {r.seconds:.1f} s" for r in t.sort_values("seconds").itertuples())
            rows.append(dict(image=image, figure="Fig. 6", claim=PAPER_CLAIMS["fig6"],
                             paper=f"fastest: {paper_fastest}", ours=f"fastest: {fastest} ({ours})",
                             difference=te - float(others["seconds"].min()) if len(others) else np.nan,
                             difference_equal_kernels=np.nan, holds=bool(fastest == paper_fastest)))
        if fig3 is not None and len(fig3):
            g = fig3[(fig3["image"] == image) & (fig3["sign"] == "corrected")].sort_values("iteration")
            if len(g):
                p = g["psnr_db"].to_numpy()
                best = int(g["iteration"].to_numpy()[p.argmax()])
                rows.append(dict(image=image, figure="Fig. 3", claim=PAPER_CLAIMS["fig3"], paper="",
                                 ours=f"iteration 0: {p[0]:.2f} dB, best {p.max():.2f} dB at iteration {best}, "
                                      f"last ({len(p) - 1}): {p[-1]:.2f} dB",
                                 difference=float(p.max() - p[0]), difference_equal_kernels=np.nan,
                                 holds=np.nan))
    order = {"Fig. 3": 0, "Fig. 5": 1, "Fig. 6": 2}
    df = pd.DataFrame(rows)
    if len(df):
        df = df.sort_values(["figure", "image"], key=lambda s: s.map(order) if s.name == "figure" else s,
                            kind="stable").reset_index(drop=True)
    return df


__all__ = ["PAPER_METHODS", "PAPER_CLAIMS", "FIG5_KEYS", "edge_parameters", "edge_stages", "stage_counts",
           "plot_stages", "expert_iterations_table", "fig3_figure", "fig5_figure", "SIGN_TITLES", "iteration0_psnr", "expert_iterations_summary", "fig5_items",
           "run_fig5_item", "edge_tile", "warm_up", "kernels_vs_psnr_table", "fig5_rows", "convergence_times", "plot_times",
           "psnr_at_kernels", "paper_claims_table", "as_smoe_tile", "AS_SMOE_CONFIG_SUFFIX"]
