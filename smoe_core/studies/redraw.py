"""Redraws a results folder's figures from what a run saved (its tables, model files and histories and its
``manifest.json``), with the same figure functions the notebooks call, without running anything: after a change
to how a figure is drawn, the committed figures follow without rerunning hours of experiments.

Only PNG files are written; tables, models and manifests are read and never changed. Figures that need
computation a run did not save (the edge paper's Fig. 2 stages, the restoration crops' outputs are saved but
unchanged here) are not redrawn. ``python -m smoe_core.studies.redraw RESULTS --preset quick [--only NOTEBOOK]``.

What each notebook's figures are drawn from (the rows the notebook itself would select, by the items its
manifest's parameters define):

- ``as_smoe_segments``: Fig. 4 from ``fig4_segment_sizes.csv``; Fig. 10 from ``fig10_init_time_vs_workers.csv``
  (a table written before the ``dask_workers`` column gets it from the manifest's ``workers_list``,
  :func:`smoe_core.studies.as_smoe_segments.with_dask_workers`); Table I's explanation from
  ``table1_explanation.csv`` (the paper's curve when the manifest's images are the test images); where its time
  goes from ``fig10_breakdown.csv``.
- ``compare_initializers``: Figs. 9 and 5 from the saved histories (``models/*_final.history.csv``), Table III's
  claim figure from the Table III tables, Fig. 6 from the final models (rendered) and the images, Fig. 8 from
  the initial models (with MDBSCAN's segments, recomputed, when a segmenting initializer is among them), Fig. 7
  from the saved RBF and SMoE models (``fig7_rbf_setup``) and ``fig7_rbf_gaps.csv``, Fig. 9c from
  ``fig9c_runtime.csv``.
- ``edge_aligned``: Fig. 3 from ``fig3_expert_iterations.csv``; Figs. 5 and 6 from ``fig5_psnr_vs_kernels.csv``,
  the rows of the manifest's items only.
- ``r_smoe``: Figs. 4 and 5 from their tables; speed and memory from ``speed_memory_runs.csv``, the manifest's
  items only.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from ..init import INITIALIZERS, initializer_info
from ..io import image_key
from ..model import SMoE
from . import as_smoe_paper, as_smoe_segments, edge_paper, r_smoe_paper
from .common import grid_items, load_case, only_test_images, paper_table, rows_of_items
from .results import save_figure

NOTEBOOKS = ("as_smoe_segments", "compare_initializers", "edge_aligned", "r_smoe")


def manifest(folder) -> dict:
    """The parameters of the run that wrote ``folder`` (its manifest.json)."""
    return json.loads((Path(folder) / "manifest.json").read_text())["parameters"]


def _table(folder: Path, name: str) -> pd.DataFrame:
    p = folder / f"{name}.csv"
    return pd.read_csv(p) if p.is_file() else pd.DataFrame()


def redraw_as_smoe_segments(folder) -> list[Path]:
    folder = Path(folder)
    params, out = manifest(folder), []
    fig4 = _table(folder, "fig4_segment_sizes")
    if len(fig4):
        out.append(save_figure(as_smoe_segments.fig4_figure(fig4), folder / "fig4_side_vs_dth.png"))
    totals = _table(folder, "fig10_init_time_vs_workers")
    if len(totals):
        totals = as_smoe_segments.with_dask_workers(totals, params["workers_list"])
        out.append(save_figure(as_smoe_segments.fig10_figure(totals), folder / "fig10_time_vs_workers.png"))
    explain = _table(folder, "table1_explanation")
    if len(explain):
        paper = paper_table("as_smoe_table1_segment_epochs")
        if not only_test_images(params.get("images", [])):
            paper = paper.iloc[0:0]
        out.append(save_figure(as_smoe_segments.table1_explanation_figure(explain, paper),
                               folder / "table1_explanation.png"))
    breakdown = _table(folder, "fig10_breakdown")
    if len(breakdown):
        out.append(save_figure(as_smoe_segments.fig10_breakdown_figure(breakdown), folder / "fig10_breakdown.png"))
    return out


def _model_file(models: Path, image: str, method: str, d_th, stage: str) -> Path:
    """:func:`smoe_core.studies.common.model_path` for a method that may not be registered in this process (a
    notebook's own initializer, e.g. ``wide_grid``: it does not segment, so its name has no ``_d`` part)."""
    segments = method in INITIALIZERS and initializer_info(method).segments
    return models / f"{image_key(image)}_{method}{f'_d{d_th}' if segments else ''}_{stage}.npz"


def redraw_compare_initializers(folder) -> list[Path]:
    folder = Path(folder)
    params, out = manifest(folder), []
    models = folder / "models"
    table3 = _table(folder, "table3_final_quality").drop_duplicates(["image", "method"], keep="last")
    images = [i for i in params["images"] if image_key(i) in set(table3["image"].map(image_key))]
    methods = list(params["initializers"]) + [m for m in table3["method"] if m not in params["initializers"]]
    methods = list(dict.fromkeys(methods))
    frames = []
    for image in images:
        for m in methods:
            h = _model_file(models, image, m, params["d_th"], "final").with_suffix(".history.csv")
            if h.is_file():
                frames.append(pd.read_csv(h).assign(image=image_key(image), method=m))
    if frames:
        hist = pd.concat(frames, ignore_index=True)
        out.append(save_figure(as_smoe_paper.history_figure(hist, "seconds"), folder / "fig9_psnr_vs_time.png"))
        out.append(save_figure(as_smoe_paper.history_figure(hist, "n_kernels"), folder / "fig5_psnr_vs_kernels.png"))
    side = _table(folder, "table3_side_by_side")
    if len(side):
        protocol = _table(folder, "table3_paper_protocol_side_by_side")
        variants = _table(folder, "table3_as_smoe_variants")
        if len(variants):
            variants = variants.assign(image=variants["image"].map(image_key)).drop_duplicates(
                ["image", "variant"], keep="last").reset_index(drop=True)
        matched = _table(folder, "table3_matched_rivals")
        if len(matched):
            keys = ["image", "method", "variant", "protocol"]
            matched = matched.assign(image=matched["image"].map(image_key)).drop_duplicates(keys, keep="last")
        points = as_smoe_paper.claim_points(side, protocol, variants, matched)
        out.append(save_figure(as_smoe_paper.claim_figure(points), folder / "fig_table3_claim_psnr_vs_kernels.png"))
    runtimes = _table(folder, "fig9c_runtime")
    if len(runtimes):
        out.append(save_figure(as_smoe_paper.fig9c_figure(runtimes), folder / "fig9c_runtime.png"))
    gaps = _table(folder, "fig7_rbf_gaps")
    if len(gaps):
        out.append(save_figure(as_smoe_paper.fig7_gap_figure(gaps), folder / "fig7_rbf_gap_by_setup.png"))
    rbf_methods = [m for m in ("kmeans", "as_smoe") if m in params["initializers"]]
    fig7_items = grid_items(images, rbf_methods, d_th=params["d_th"], budgets=params.get("budgets"),
                            crop=params.get("crop"), seed=params.get("seed", 0), model_dir=models)
    fig7 = as_smoe_paper.fig7_models(fig7_items, params.get("fig7_rbf_setup", "least_squares"))
    for image in images:
        img = None
        finals, inits = {}, {}
        for m in methods:
            for stage, found in (("final", finals), ("init", inits)):
                p = _model_file(models, image, m, params["d_th"], stage)
                if p.is_file():
                    found[m] = SMoE.load(p)
        if finals or inits or image_key(image) in fig7:
            img = load_case(image, params.get("crop"))
        if finals:
            out.append(save_figure(as_smoe_paper.fig6_crops_figure(img, finals),
                                   folder / f"fig6_crops_{image_key(image)}.png"))
        if inits:  # Fig. 8
            out.append(save_figure(as_smoe_paper.fig8_case_figure(image, inits, params["d_th"], params.get("crop")),
                                   folder / f"fig8_initializations_{image_key(image)}.png"))
        if image_key(image) in fig7:
            out.append(save_figure(as_smoe_paper.fig7_figure(img, fig7[image_key(image)]),
                                   folder / f"fig7_rbf_vs_smoe_{image_key(image)}.png"))
    return out


def redraw_edge_aligned(folder) -> list[Path]:
    folder = Path(folder)
    params, out = manifest(folder), []
    fig3 = _table(folder, "fig3_expert_iterations")
    if len(fig3):
        out.append(save_figure(edge_paper.fig3_figure(fig3), folder / "fig3_psnr_vs_expert_iterations.png"))
    table = _table(folder, "fig5_psnr_vs_kernels")
    if len(table):
        keys = ("methods", "budget_factors", "budgets", "d_th", "as_smoe_d_th", "crop", "seed", "tiles", "tile_iters",
                "finetune_iters", "sparsity", "prune_below", "lr", "tol", "backend")
        items = edge_paper.fig5_items(params["images"], **{k: params[k] for k in keys if k in params},
                                      model_dir=folder / "models")
        fig5 = edge_paper.fig5_rows(table, items)
        out.append(save_figure(edge_paper.fig5_figure(fig5), folder / "fig5_psnr_vs_kernels.png"))
        times = edge_paper.convergence_times(fig5)
        out.append(save_figure(edge_paper.plot_times(times), folder / "fig6_time_to_convergence.png"))
    return out


def redraw_r_smoe(folder) -> list[Path]:
    folder = Path(folder)
    params, out = manifest(folder), []
    fig4 = _table(folder, "fig4_psnr_vs_kernels_per_block")
    fig5 = _table(folder, "fig5_quality_vs_pool_size")
    for ch in params.get("fig_channels", ["gray", "rgb"]):
        if len(fig4) and (fig4["channels"] == ch).any():
            out.append(save_figure(r_smoe_paper.fig4_figure(fig4, ch),
                                   folder / f"fig4_psnr_vs_kernels_per_block_{ch}.png"))
        if len(fig5) and (fig5["channels"] == ch).any():
            out.append(save_figure(r_smoe_paper.fig5_figure(fig5, ch), folder / f"fig5_quality_vs_pool_size_{ch}.png"))
    runs = _table(folder, "speed_memory_runs")
    if len(runs):
        items = r_smoe_paper.speed_memory_items(params["speed_images"], params["speed_kernels"],
                                                channels=params["speed_channels"], crop=params["speed_crop"])
        runs = rows_of_items(runs, items, r_smoe_paper.SPEED_KEYS).drop_duplicates(
            r_smoe_paper.SPEED_KEYS + ["renderer"], keep="last")
        out.append(save_figure(r_smoe_paper.speed_memory_figure(runs, "best_ms"), folder / "speed_vs_kernels.png"))
        out.append(save_figure(r_smoe_paper.speed_memory_figure(runs, "peak_mb"), folder / "memory_vs_kernels.png"))
    return out


REDRAW = {"as_smoe_segments": redraw_as_smoe_segments, "compare_initializers": redraw_compare_initializers,
          "edge_aligned": redraw_edge_aligned, "r_smoe": redraw_r_smoe}


def redraw(results_dir="results", preset: str = "quick", only=None) -> list[Path]:
    """Redraws the figures of ``results_dir/preset/<notebook>`` for every notebook of :data:`NOTEBOOKS` that has
    a folder there (or those in ``only``); returns the PNG files written."""
    out = []
    for name in (only or NOTEBOOKS):
        if name not in REDRAW:
            raise ValueError(f"unknown notebook {name!r} (redrawable: {', '.join(NOTEBOOKS)})")
        folder = Path(results_dir) / preset / name
        if (folder / "manifest.json").is_file():
            out.extend(REDRAW[name](folder))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m smoe_core.studies.redraw", description=__doc__.split("\n")[0])
    p.add_argument("results", nargs="?", default="results")
    p.add_argument("--preset", default="quick")
    p.add_argument("--only", nargs="+", default=None)
    args = p.parse_args(argv)
    for path in redraw(args.results, args.preset, args.only):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
