"""Every public figure function of the studies, drawn on tiny synthetic data (Agg backend), with the properties a
reader relies on checked on the drawn figure: the number of panels, series and labels, panels in the papers'
image order, "dB" on PSNR axes, a distinct marker and line style per series, tick labels and titles that do not
overlap, kernel ellipses on the kernels' one-sigma contours, PSNR and kernel counts on crop panels. The list of
figure functions is read from the source (a function that makes a figure or draws on an Axes, or calls one that
does), so a new figure function without a test here fails ``test_every_figure_function_is_tested``; and
``smoe_core.studies.redraw`` is run on a synthetic results folder."""
from __future__ import annotations

import ast
import hashlib
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from smoe_core import render  # noqa: E402
from smoe_core.studies import (as_smoe_paper, as_smoe_segments, coding_paper, edge_paper, plotting,  # noqa: E402
                               r_smoe_paper, r_smoe_restoration)
from tests.conftest import random_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
STUDIES = Path(__file__).resolve().parents[1] / "smoe_core" / "studies"
#: modules that drive figure functions over saved results rather than draw (tested by test_redraw_*)
DRIVERS = {"redraw"}
TESTED: set[str] = set()


def covers(*names):
    """Marks a test as covering the figure functions ``module.function``."""
    TESTED.update(names)

    def deco(fn):
        return fn
    return deco


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


# ---------------------------------------------------------------------- what a figure function is
def figure_functions() -> set[str]:
    """module.function of every public function of the studies that makes a figure (plt.subplots / plt.figure),
    draws on an Axes (first parameter ``ax``), or calls such a function (also through private helpers)."""
    defs = {}
    for path in sorted(STUDIES.glob("*.py")):
        if path.stem in DRIVERS:
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef):
                defs[(path.stem, node.name)] = node

    def called(node):
        out = set()
        for n in ast.walk(node):
            if isinstance(n, ast.Call):
                f = n.func
                out.add(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None))
        return out

    figs = {k for k, node in defs.items()
            if {"subplots", "figure"} & called(node) or (node.args.args and node.args.args[0].arg == "ax")}
    while True:
        names = {name for _, name in figs}
        more = {k for k, node in defs.items() if k not in figs and names & called(node)}
        if not more:
            break
        figs |= more
    return {f"{m}.{n}" for m, n in figs if not n.startswith("_")}


# ---------------------------------------------------------------------- checks on a drawn figure
def drawn(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def extents(artists, renderer):
    return [a.get_window_extent(renderer) for a in artists if a.get_visible() and a.get_text()]


def assert_no_overlap(boxes, what):
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            a, b = boxes[i], boxes[j]
            inter_w = min(a.x1, b.x1) - max(a.x0, b.x0)
            inter_h = min(a.y1, b.y1) - max(a.y0, b.y0)
            assert inter_w <= 0.5 or inter_h <= 0.5, f"{what}: labels {i} and {j} overlap ({a} / {b})"


def check_readable(fig):
    """Tick labels of each axis do not overlap; the figure title lies above every panel title; a PSNR axis says
    dB."""
    r = drawn(fig)
    titles = []
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        assert_no_overlap(extents(ax.get_xticklabels(), r), "x tick labels")
        assert_no_overlap(extents(ax.get_yticklabels(), r), "y tick labels")
        for label in (ax.get_xlabel(), ax.get_ylabel()):
            if "psnr" in label.lower():
                assert "dB" in label, label
        if ax.get_title():
            titles.append(ax.title.get_window_extent(r))
    if fig._suptitle is not None and fig._suptitle.get_text():
        top = fig._suptitle.get_window_extent(r)
        for t in titles:
            assert t.y1 <= top.y0 + 0.5, "the figure title overlaps a panel title"
        for ax in fig.axes:
            assert ax.get_window_extent(r).y1 <= top.y0 + 0.5, "the figure title overlaps a panel"


def lines(ax):
    """The data lines of an axes (not grid or helper lines): those with a label."""
    return [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]


def assert_distinct_styles(ax):
    styles = [(ln.get_marker(), str(ln.get_linestyle()), ln.get_markerfacecolor() == "none") for ln in lines(ax)]
    markers = [s[0] for s in styles]
    dashes = [s[1] for s in styles]
    assert len(set(markers)) == len(markers), f"series share a marker: {styles}"
    assert len(set(dashes)) == len(dashes), f"series share a line style: {styles}"


def test_every_figure_function_is_tested():
    found = figure_functions()
    assert {"plotting.curves", "r_smoe_paper.fig4_figure", "as_smoe_segments.fig10_figure",
            "coding_paper.rd_figure"} <= found  # the reader sees what it should
    assert "as_smoe_segments.fig4_statistics" not in found  # a table, despite its name
    missing = found - TESTED
    assert not missing, f"figure functions without a test in tests/test_figures.py: {sorted(missing)}"


# ---------------------------------------------------------------------- plotting
@covers("plotting.curves", "plotting.readable_log_axis")
def test_curves_panels_series_and_ticks():
    rows = []
    for image in ("peppers", "mine", "barbara", "flower"):  # written out of the papers' order, one user image
        for k in (24, 96, 384):
            for s, off in (("R-SMoE", 1.0), ("G-SMoE", 1.0), ("RBF", 0.0)):  # R-SMoE and G-SMoE coincide
                rows.append(dict(image=image, kernels=k, series=s, psnr=20 + off + math.log(k)))
    df = pd.DataFrame(rows)
    fig = plotting.curves(df, "kernels", "psnr", by="series", panel="image", logx=True, title="a title")
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["barbara", "flower", "peppers", "mine"]
    for ax in axes:
        assert len(lines(ax)) == 3 and ax.get_ylabel() == "PSNR (dB)"
        assert_distinct_styles(ax)
        assert ax.get_xscale() == "log"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["24", "96", "384"]
        assert ax.xaxis.get_minor_ticks() == [] or all(not t.label1.get_text() for t in ax.xaxis.get_minor_ticks())
    assert [t.get_text() for t in axes[-1].get_legend().get_texts()] == ["R-SMoE", "G-SMoE", "RBF"]
    check_readable(fig)
    # many values: 1-2-5 ticks, still plain numbers that do not overlap
    fig2, ax = plt.subplots(figsize=(3, 2.5))
    plotting.readable_log_axis(ax, np.geomspace(7, 900, 40))
    ax.plot(np.geomspace(7, 900, 40), np.arange(40))
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels and all(s.isdigit() for s in labels) and len(labels) <= 5
    check_readable(fig2)


@covers("plotting.kernel_ellipses")
def test_kernel_ellipses_lie_on_the_one_sigma_contour():
    m = random_model(K=15, H=30, W=40, seed=4, bandwidth=(0.2, 0.6))
    fig, ax = plt.subplots()
    plotting.kernel_ellipses(ax, m, radius=1.5)
    (coll,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    segs = coll.get_segments()
    assert len(segs) == m.n_kernels
    P = m.precision().astype(np.float64)
    for k, seg in enumerate(segs):
        d = seg - m.mu[k].astype(np.float64)
        q = np.einsum("ti,ij,tj->t", d, P[k], d)
        np.testing.assert_allclose(q, 1.5 ** 2, rtol=1e-4)
    assert coll.get_alpha() < 1 and max(coll.get_linewidths()) <= 0.6  # translucent and thin
    window = (5, 25, 10, 30)
    fig, ax = plt.subplots()
    plotting.kernel_ellipses(ax, m, crop=window)
    inside = ((m.mu[:, 0] >= 10) & (m.mu[:, 0] < 30) & (m.mu[:, 1] >= 5) & (m.mu[:, 1] < 25)).sum()
    assert len(ax.collections[0].get_segments()) == inside


@covers("plotting.show_image")
def test_show_image_crops_clips_and_titles():
    img = np.linspace(-0.5, 1.5, 12 * 10).reshape(12, 10)
    fig, ax = plt.subplots()
    plotting.show_image(ax, img, "t", crop=(2, 8, 1, 5))
    (im,) = ax.get_images()
    assert im.get_array().shape == (6, 4) and float(im.get_array().min()) >= 0 and float(im.get_array().max()) <= 1
    assert ax.get_title() == "t" and list(ax.get_xticks()) == [] and list(ax.get_yticks()) == []


def striped_image(H=64, W=96, box=(30, 62, 50, 90)):
    yy, xx = np.mgrid[0:H, 0:W]
    img = 0.3 + 0.2 * (xx / W)
    y0, y1, x0, x1 = box
    stripes = 0.5 + 0.4 * np.sign(np.sin(xx * 1.7))
    img[y0:y1, x0:x1] = stripes[y0:y1, x0:x1]
    return img.astype(np.float32)


@covers("plotting.crops_with_kernels", "as_smoe_paper.fig6_crops_figure")
def test_crop_panels_show_psnr_kernels_and_the_textured_window():
    img = striped_image()
    window = plotting.texture_window(img, 24)
    y0, y1, x0, x1 = window
    assert y1 - y0 == 24 and x1 - x0 == 24 and 30 <= y0 and y1 <= 62 and 50 <= x0 and x1 <= 90  # inside the stripes
    models = {"a": random_model(K=30, H=64, W=96, seed=1, bandwidth=(0.05, 0.2)),
              "b": random_model(K=45, H=64, W=96, seed=2, bandwidth=(0.05, 0.2)),
              "c": random_model(K=12, H=64, W=96, seed=3, bandwidth=(0.05, 0.2)),
              "d": random_model(K=8, H=64, W=96, seed=5, bandwidth=(0.05, 0.2))}
    fig = as_smoe_paper.fig6_crops_figure(img, models, side=24)
    visible = [ax for ax in fig.axes if ax.axison]
    assert len(visible) == 5 and len(fig.axes) == 8  # 5 panels on two rows of 4
    assert visible[0].get_title() == "original"
    for ax, (name, m) in zip(visible[1:], models.items()):
        out = render(m, img.shape)
        expected = 10 * np.log10(1.0 / np.mean((out.astype(np.float64) - img) ** 2))
        assert ax.get_title() == f"{name}\n{expected:.2f} dB, K = {m.n_kernels}"
        (im,) = ax.get_images()
        np.testing.assert_allclose(np.asarray(im.get_array()), np.clip(out[y0:y1, x0:x1], 0, 1), atol=1e-6)
        inside = ((m.mu[:, 0] >= x0) & (m.mu[:, 0] < x1) & (m.mu[:, 1] >= y0) & (m.mu[:, 1] < y1)).sum()
        (coll,) = ax.collections
        assert len(coll.get_segments()) == inside and coll.get_alpha() < 1
    check_readable(fig)
    fig = plotting.crops_with_kernels(img, models, None, crop=window, ncols=10)
    assert len(fig.axes) == 5 and fig.axes[1].get_title() == "a\nK = 30"  # no render: the kernel count alone


# ---------------------------------------------------------------------- R-SMoE
def rsmoe_runs(images=("peppers", "barbara")):
    rows = []
    for image in images:
        for ch in ("gray", "rgb"):
            for K in (24, 96, 384):
                for v in r_smoe_paper.VARIANTS:
                    base = 20 + 2 * math.log(K) + (0 if v in ("smoe", "global") else -2)  # pairs coincide
                    rows.append(dict(image=image, channels=ch, kernels=K, variant=v,
                                     variant_label=r_smoe_paper.VARIANT_LABELS[v], kernels_init=K, kernels_final=K,
                                     kernels_per_block=K if v == "global" else K / 4 + 7, kernels_per_pixel=K / 4,
                                     flops_per_pixel=K * 20.0, psnr=base, ssim=0.5 + base / 100,
                                     lpips="n/a (weights missing here)", st_lpips=0.5 - base / 100))
    return pd.DataFrame(rows)


@covers("r_smoe_paper.fig4_figure")
def test_rsmoe_fig4_shows_all_four_variants():
    fig = r_smoe_paper.fig4_figure(r_smoe_paper.fig4_table(rsmoe_runs()), "gray")
    assert [ax.get_title() for ax in fig.axes] == ["barbara", "peppers"]
    for ax in fig.axes:
        assert [ln.get_label() for ln in lines(ax)] == ["R-SMoE", "G-SMoE", "RBF", "GaussianImage"]
        assert_distinct_styles(ax)
        fills = [ln.get_markerfacecolor() == "none" for ln in lines(ax)]
        assert fills == [False, True, False, True]  # the coinciding partner is hollow, so both show
        assert ax.get_ylabel() == "PSNR (dB)" and ax.get_xscale() == "log"
    assert "Fig. 4 (gray)" in fig._suptitle.get_text()
    check_readable(fig)


@covers("r_smoe_paper.fig5_figure", "r_smoe_paper.mean_curves")
def test_rsmoe_fig5_metrics_units_and_ticks():
    fig = r_smoe_paper.fig5_figure(r_smoe_paper.fig5_table(rsmoe_runs()), "rgb")
    ylabels = [ax.get_ylabel() for ax in fig.axes]
    assert ylabels == ["PSNR (dB) (mean over images)", "SSIM (mean over images)", "ST-LPIPS (mean over images)"]
    for ax in fig.axes:  # LPIPS ("n/a" here) left out
        assert [t.get_text() for t in ax.get_xticklabels()] == ["24", "96", "384"]
        assert len(lines(ax)) == 4
        assert_distinct_styles(ax)
        y = lines(ax)[0].get_ydata()
        assert len(y) == 3
    psnr_line = lines(fig.axes[0])[0]
    expected = [20 + 2 * math.log(K) for K in (24, 96, 384)]  # mean over the two images (equal here)
    np.testing.assert_allclose(psnr_line.get_ydata(), expected)
    check_readable(fig)
    fig = r_smoe_paper.mean_curves(rsmoe_runs(("peppers",)), "kernels", ["psnr"], logx=False)
    assert fig.axes[0].get_ylabel() == "PSNR (dB)"  # one image: no "mean over images"


@covers("r_smoe_paper.speed_memory_figure")
def test_rsmoe_speed_and_memory_figures():
    rows = [dict(image="peppers", channels=ch, kernels=K, renderer=r, kernels_model=K - 1,
                 best_ms=(2.0 if r == "tiled" else 0.5) * K ** (0.3 if r == "tiled" else 1.0), peak_mb=K / 10)
            for ch in ("gray", "rgb") for K in (256, 1024, 4096) for r in ("tiled", "dense")]
    fig = r_smoe_paper.speed_memory_figure(pd.DataFrame(rows), "best_ms")
    assert [ax.get_title() for ax in fig.axes] == ["gray", "rgb"]
    for ax in fig.axes:
        assert [ln.get_label() for ln in lines(ax)] == ["tiled", "dense"]
        assert ax.get_yscale() == "log" and ax.get_xscale() == "log"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["255", "1023", "4095"]
    check_readable(fig)
    fig = r_smoe_paper.speed_memory_figure(pd.DataFrame(rows), "peak_mb")
    assert fig.axes[0].get_yscale() == "linear" and "MiB" in fig.axes[0].get_ylabel()


# ---------------------------------------------------------------------- AS-SMoE segments
@covers("as_smoe_segments.fig4_figure")
def test_segment_size_figure():
    df = pd.DataFrame([dict(image=im, d_th=t, side_median=20 + t / 5 + i) for i, im in
                       enumerate(("peppers", "parrot", "barbara")) for t in (20, 30, 40, 50)])
    fig = as_smoe_segments.fig4_figure(df)
    (ax,) = fig.axes
    assert [ln.get_label() for ln in lines(ax)] == ["barbara", "parrot", "peppers"]
    assert_distinct_styles(ax)
    check_readable(fig)


@covers("as_smoe_segments.fig10_figure")
def test_fig10_integer_workers_one_point_each():
    totals = pd.DataFrame([dict(method="as_smoe", dask_workers=w, workers=max(w, 1), wall_seconds=s)
                           for w, s in ((0, 11.0), (1, 16.0), (2, 17.0), (2, 15.0))])  # 2 workers run twice
    fig = as_smoe_segments.fig10_figure(totals)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["serial", "1", "2"]
    assert list(ax.get_xticks()) == [0, 1, 2]
    dask, serial = lines(ax)
    assert list(dask.get_xdata()) == [1, 2] and list(dask.get_ydata()) == [16.0, 15.0]  # the latest run of 2
    assert list(serial.get_xdata()) == [0] and list(serial.get_ydata()) == [11.0]
    assert "serial" in serial.get_label() and "Dask" in dask.get_label()
    check_readable(fig)
    # a table from before the dask_workers column: rebuilt from the run's workers_list
    old = pd.DataFrame(dict(method="as_smoe", workers=[1, 1, 2], wall_seconds=[11.0, 16.0, 17.0]))
    assert list(as_smoe_segments.with_dask_workers(old, [0, 1, 2])["dask_workers"]) == [0, 1, 2]
    with pytest.raises(ValueError, match="do not match workers_list"):
        as_smoe_segments.with_dask_workers(old, [0, 2])
    with pytest.raises(ValueError, match="no dask_workers column"):
        as_smoe_segments.fig10_figure(old)


@covers("as_smoe_segments.fig10_breakdown_figure")
def test_fig10_breakdown_bars_stack_to_the_wall_time():
    rows = [dict(dask_workers=0, phase="serial, 1 thread", wall_seconds=10.0, max_worker_seconds=10.0,
                 overhead_seconds=0.0, cluster_start_seconds=float("nan"), ideal_seconds=10.0),
            dict(dask_workers=2, phase="cold", wall_seconds=14.0, max_worker_seconds=6.0, overhead_seconds=8.0,
                 cluster_start_seconds=2.0, ideal_seconds=5.5),
            dict(dask_workers=2, phase="warm", wall_seconds=6.2, max_worker_seconds=6.0, overhead_seconds=0.2,
                 cluster_start_seconds=float("nan"), ideal_seconds=5.5)]
    fig = as_smoe_segments.fig10_breakdown_figure(pd.DataFrame(rows))
    (ax,) = fig.axes
    labels = {round(v): t.get_text() for v, t in zip(ax.get_yticks(), ax.get_yticklabels())}
    assert labels == {2: "serial, 1 thread", 1: "2 workers, cold", 0: "2 workers, warm"}  # top to bottom
    ends = {}
    for patch in ax.patches:  # the three stacked bar series: tasks, overhead, cluster start
        y = round(patch.get_y() + patch.get_height() / 2)
        ends[y] = max(ends.get(y, 0.0), patch.get_x() + patch.get_width())
    assert ends == {2: 10.0, 1: 16.0, 0: 6.2}  # the cold run's bar includes the cluster's start
    (ideal,) = lines(ax)
    assert list(ideal.get_xdata()) == [10.0, 5.5, 5.5] and list(ideal.get_ydata()) == [2, 1, 0]
    check_readable(fig)


def test_fig10_breakdown_summary_reads_the_table():
    nan = float("nan")
    rows = [dict(dask_workers=0, phase="serial, 1 thread", threads=1, wall_seconds=7.0, sum_task_seconds=7.0,
                 cluster_start_seconds=nan, overhead_seconds=0.0, ideal_seconds=7.0),
            dict(dask_workers=0, phase="serial, torch's threads", threads=2, wall_seconds=4.5, sum_task_seconds=4.5,
                 cluster_start_seconds=nan, overhead_seconds=0.0, ideal_seconds=7.0),
            dict(dask_workers=2, phase="cold", threads=1, wall_seconds=7.5, sum_task_seconds=9.9,
                 cluster_start_seconds=0.7, overhead_seconds=2.3, ideal_seconds=3.5),
            dict(dask_workers=2, phase="warm", threads=1, wall_seconds=5.25, sum_task_seconds=9.9,
                 cluster_start_seconds=nan, overhead_seconds=0.0, ideal_seconds=3.5)]
    text = as_smoe_segments.fig10_breakdown_summary(pd.DataFrame(rows))
    assert text.startswith("Serial: 7.0 s with one torch thread, 4.5 s with torch's 2 threads.")
    assert "cold 7.5 s (cluster start 0.7 s not included, 2.3 s outside the tasks" in text
    assert "warm 5.2 s (-25% against one-thread serial; ideal 3.5 s, -50%)" in text
    assert "the tasks took 9.9 s in all against 7.0 s serially" in text and "malloc" not in text
    with pytest.raises(ValueError, match="no serial one-thread row"):
        as_smoe_segments.fig10_breakdown_summary(pd.DataFrame(rows[2:]))


def test_lpt_makespan_known_answers():
    assert as_smoe_segments.lpt_makespan([4, 3, 2, 2], 1) == 11
    assert as_smoe_segments.lpt_makespan([4, 3, 2, 2], 2) == 6  # {4, 2} and {3, 2}
    assert as_smoe_segments.lpt_makespan([4.0, 2.3, 2.2, 3.7], 4) == 4.0
    assert as_smoe_segments.lpt_makespan([], 3) == 0
    with pytest.raises(ValueError, match="workers must be >= 1"):
        as_smoe_segments.lpt_makespan([1.0], 0)


@covers("as_smoe_segments.table1_explanation_figure")
def test_table1_explanation_figure():
    runs = pd.DataFrame([dict(setting=s, seed=sd, epochs=e, mean_psnr=10 + k + math.log(e) + sd)
                         for k, s in enumerate(("ours", "random experts", "all three")) for sd in (0, 2)
                         for e in (1, 100, 200, 400)])
    paper = pd.DataFrame(dict(epochs=[100, 200, 300, 400], psnr_db=[18.37, 21.33, 23.13, 23.70]))
    fig = as_smoe_segments.table1_explanation_figure(runs, paper)
    (ax,) = fig.axes
    got = {ln.get_label(): ln for ln in lines(ax)}
    assert list(got) == ["ours", "random experts", "all three", "paper"]
    assert list(got["ours"].get_xdata()) == [1, 100, 200, 400]
    np.testing.assert_allclose(got["random experts"].get_ydata(), [11 + math.log(e) + 1 for e in (1, 100, 200, 400)])
    assert list(got["paper"].get_ydata()) == [18.37, 21.33, 23.13, 23.70]
    assert_distinct_styles(ax)
    assert "dB" in ax.get_ylabel()
    check_readable(fig)
    fig = as_smoe_segments.table1_explanation_figure(runs, paper.assign(epochs=[5, 6, 7, 8]), settings=["ours"])
    assert [ln.get_label() for ln in lines(fig.axes[0])] == ["ours"]  # no shared epochs: no paper curve


# ---------------------------------------------------------------------- AS-SMoE comparison
@covers("as_smoe_paper.history_figure")
def test_history_figures_in_paper_order():
    rows = [dict(image=im, method=m, iteration=i, seconds=0.1 * i, n_kernels=500 - i, psnr=20 + j + math.log1p(i))
            for im in ("peppers", "flower") for j, m in enumerate(("grid", "kmeans", "as_smoe")) for i in range(200)]
    for x in ("seconds", "n_kernels"):
        fig = as_smoe_paper.history_figure(pd.DataFrame(rows), x, published=False)
        assert [ax.get_title() for ax in fig.axes] == ["flower", "peppers"]
        for ax in fig.axes:
            series = [ln for ln in lines(ax) if ln.get_label() != "95% of best PSNR"]
            assert len(series) == 3 and ax.get_ylabel() == "PSNR (dB)"
            for ln in series:
                start, every = ln.get_markevery()
                assert 200 // every <= 12  # a few markers on a long history, not 200
        check_readable(fig)
    # Fig. 5 draws the paper's Table III points of the same methods (rows 1 and 2) beside ours; Fig. 9 does not
    fig = as_smoe_paper.history_figure(pd.DataFrame(rows), "n_kernels")
    assert [len(lines(ax)) for ax in fig.axes] == [6, 6]
    assert_published_points(fig, ("grid", "kmeans", "as_smoe"))
    (legend,) = fig.legends
    assert "kmeans (paper, Table III)" in [t.get_text() for t in legend.get_texts()]
    check_readable(fig)
    fig = as_smoe_paper.history_figure(pd.DataFrame(rows), "seconds")
    assert [len(lines(ax)) for ax in fig.axes] == [3, 4]  # the last panel also holds the triangles' legend entry
    # Fig. 9's triangles: where each run first reaches 95% of its best PSNR (20 + j + log(200) at i = 199)
    for ax in fig.axes:
        tri = [ln for ln in ax.get_lines() if ln.get_label() == "_95"]
        assert len(tri) == 3 and all(ln.get_marker() == "v" for ln in tri)
        for j, ln in enumerate(tri):
            i95 = next(i for i in range(200) if 20 + j + math.log1p(i) >= 0.95 * (20 + j + math.log1p(199)))
            assert math.isclose(ln.get_xdata()[0], 0.1 * i95)
            assert math.isclose(ln.get_ydata()[0], 20 + j + math.log1p(i95))
    assert "95% of best PSNR" in [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]
    check_readable(fig)


@covers("as_smoe_paper.claim_figure")
def test_claim_figure_has_one_legend_below():
    table3 = pd.DataFrame([dict(image=im, method=m, L_opt=1000 + 10 * j, psnr_db=25 + j)
                           for im in ("parrot", "barbara") for j, m in enumerate(("grid", "kmeans", "as_smoe"))])
    variants = pd.DataFrame([dict(image=im, variant=f"authors_code_margin{k}", L_opt=400 + 100 * k, psnr_db=24 + k)
                             for im in ("parrot", "barbara") for k in range(3)])
    points = as_smoe_paper.claim_points(table3, None, variants, None)
    fig = as_smoe_paper.claim_figure(points, published=False)
    assert [ax.get_title() for ax in fig.axes] == ["barbara", "parrot"]
    assert all(ax.get_legend() is None for ax in fig.axes)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["grid (ours)", "kmeans (ours)", "AS-SMoE (paper text)",
                                                          "AS-SMoE (authors' code, by export margin)"]
    check_readable(fig)
    # the published rows: Table III rows 1 and 2 of Grid, K-Means and AS-SMoE, where the CSV puts them
    fig = as_smoe_paper.claim_figure(points)
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels[:4] == ["grid (ours)", "kmeans (ours)", "AS-SMoE (paper text)",
                          "AS-SMoE (authors' code, by export margin)"]
    assert sorted(labels[4:]) == ["as_smoe (paper, Table III)", "grid (paper, Table III)", "kmeans (paper, Table III)"]
    assert_published_points(fig, ("grid", "kmeans", "as_smoe"))
    check_readable(fig)


def published_csv() -> pd.DataFrame:
    from smoe_core.io import paper_tables_dir

    return pd.read_csv(paper_tables_dir() / "as_smoe_table3_final_quality.csv")


def assert_published_points(fig, methods):
    """Every panel (an image) has one line per method at the CSV's (L_opt, PSNR) of Table III rows 1 and 2."""
    csv = published_csv()
    for ax in fig.axes:
        image = ax.get_title()
        by_label = {ln.get_label(): ln for ln in lines(ax)}
        for m in methods:
            ln = by_label[f"{m} (paper, Table III)"]
            rows = csv[(csv["image"] == image) & (csv["method"] == m)].sort_values("L_opt")
            assert len(rows) == 2
            np.testing.assert_allclose(ln.get_xdata(), rows["L_opt"].to_numpy(float))
            np.testing.assert_allclose(ln.get_ydata(), rows["psnr_db"].to_numpy(float))
            assert ln.get_markevery() is None and ln.get_marker() not in (None, "", "None")  # both points marked


def whole_psnr(out, img) -> float:
    return 10 * np.log10(1.0 / np.mean((np.asarray(out, np.float64) - img) ** 2))


@covers("as_smoe_paper.fig7_figure")
def test_fig7_crops_show_rbf_and_smoe_with_their_psnr():
    img = striped_image()
    models = {"KM-RBF": random_model(K=30, H=64, W=96, seed=1, rbf=True, bandwidth=(0.05, 0.2)),
              "AS-RBF": random_model(K=20, H=64, W=96, seed=2, rbf=True, bandwidth=(0.05, 0.2)),
              "KM-SMoE": random_model(K=30, H=64, W=96, seed=3, bandwidth=(0.05, 0.2)),
              "AS-SMoE": random_model(K=20, H=64, W=96, seed=4, bandwidth=(0.05, 0.2))}
    fig = as_smoe_paper.fig7_figure(img, models, side=24)
    assert len(fig.axes) == 5 and fig.axes[0].get_title() == "original"  # one row: the original and four panels
    for ax, (name, m) in zip(fig.axes[1:], models.items()):
        out = render(m, img.shape)
        assert ax.get_title() == f"{name}\n{whole_psnr(out, img):.2f} dB, K = {m.n_kernels}"
        assert not ax.collections  # no kernel ellipses
    assert models["KM-RBF"].rbf and fig.axes[1].get_title() != fig.axes[3].get_title()
    assert "Fig. 7" in fig._suptitle.get_text()
    check_readable(fig)


@covers("as_smoe_paper.fig7_gap_figure")
def test_fig7_gap_figure_draws_each_setup_and_the_papers_gap():
    gaps = pd.DataFrame([dict(image=im, variant="paper_text", as_setup=s, km_setup=k,
                              as_rbf_minus_km_rbf_db=-3.0 + i + 0.5 * j, as_smoe_minus_km_smoe_db=-2.0 + i)
                         for i, im in enumerate(("peppers", "barbara", "parrot"))
                         for j, (s, k) in enumerate((("switch", "switch"), ("least_squares", "least_squares")))])
    fig = as_smoe_paper.fig7_gap_figure(gaps)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["barbara", "parrot", "peppers"]
    drawn_lines = {ln.get_label(): ln for ln in lines(ax)}
    assert set(drawn_lines) == {"AS-RBF (paper_text, switch) - KM-RBF (switch)",
                                "AS-RBF (paper_text, least_squares) - KM-RBF (least_squares)",
                                "AS-SMoE (paper_text) - KM-SMoE"}
    ln = drawn_lines["AS-RBF (paper_text, least_squares) - KM-RBF (least_squares)"]
    expect = gaps[gaps["as_setup"] == "least_squares"].set_index("image").loc[["barbara", "parrot", "peppers"]]
    np.testing.assert_allclose(ln.get_xdata(), [0, 1, 2])
    np.testing.assert_allclose(ln.get_ydata(), expect["as_rbf_minus_km_rbf_db"].to_numpy())
    paper_line = [h for h in ax.get_lines() if h.get_label() == "_paper"]
    assert len(paper_line) == 1 and paper_line[0].get_ydata()[0] == pytest.approx(2.1)
    assert_distinct_styles(ax)
    check_readable(fig)


@covers("as_smoe_paper.fig8_figure")
def test_fig8_one_panel_per_initializer_with_psnr_and_kernels():
    img = striped_image()
    models = {"grid": random_model(K=40, H=64, W=96, seed=1, bandwidth=(0.05, 0.2)),
              "kmeans": random_model(K=35, H=64, W=96, seed=2, bandwidth=(0.05, 0.2)),
              "as_smoe": random_model(K=25, H=64, W=96, seed=3, bandwidth=(0.05, 0.2))}
    labels = np.zeros((64, 96), int)
    labels[30:, 50:] = 7
    labels[:10] = 3
    fig = as_smoe_paper.fig8_figure(img, models, labels, d_th=40)
    visible = [ax for ax in fig.axes if ax.axison]
    assert len(visible) == 4
    titles = [ax.get_title() for ax in visible]
    assert titles[2] == "MDBSCAN segmentation (d_th = 40)\n3 segments"  # the paper's Fig. 8c
    for title, (name, m) in zip(titles[:2] + titles[3:], models.items()):
        out = render(m, img.shape)
        assert title == f"{name}\n{whole_psnr(out, img):.2f} dB, K = {m.n_kernels}"
    (im,) = visible[0].get_images()
    assert im.get_array().shape == (64, 96)  # the whole image, not a crop
    check_readable(fig)
    fig = as_smoe_paper.fig8_figure(img, models)
    assert len([ax for ax in fig.axes if ax.axison]) == 3


@covers("as_smoe_paper.fig8_case_figure")
def test_fig8_case_adds_the_segmentation_panel_only_for_a_segmenting_initializer():
    """The notebook's and redraw's Fig. 8 for a test image: the image as the run cropped it, and the MDBSCAN
    panel (the labels of smoe_core.studies.common.segmentation_labels) only when S-SMoE or AS-SMoE is drawn."""
    from smoe_core.studies.common import load_case, segmentation_labels

    crop = 48
    models = {"grid": random_model(K=20, H=crop, W=crop, seed=1, bandwidth=(0.05, 0.2)),
              "s_smoe": random_model(K=15, H=crop, W=crop, seed=2, bandwidth=(0.05, 0.2))}
    fig = as_smoe_paper.fig8_case_figure("peppers", models, 40, crop)
    visible = [ax for ax in fig.axes if ax.axison]
    assert len(visible) == 3
    n_segments = len(np.unique(segmentation_labels("peppers", 40, crop)))
    assert visible[2].get_title() == f"MDBSCAN segmentation (d_th = 40)\n{n_segments} segments"
    (im,) = visible[0].get_images()
    assert np.allclose(im.get_array(), np.clip(render(models["grid"], (crop, crop)), 0, 1), atol=1e-6)
    assert load_case("peppers", crop).shape[:2] == (crop, crop)
    fig = as_smoe_paper.fig8_case_figure("peppers", {"grid": models["grid"]}, 40, crop)
    assert len([ax for ax in fig.axes if ax.axison]) == 1


@covers("as_smoe_paper.fig9c_figure")
def test_fig9c_bars_are_init_and_time_to_95pct():
    table3 = pd.DataFrame([dict(image=im, method=m, psnr_db_ours=25.0 + j, seconds_to_95pct=10.0 * (j + 1) + i)
                           for i, im in enumerate(("peppers", "flower")) for j, m in enumerate(("grid", "as_smoe"))])
    table5 = pd.DataFrame([dict(image=im, method=m, seconds=0.5 if m == "grid" else 7.0 + i)
                           for i, im in enumerate(("peppers", "flower")) for m in ("grid", "as_smoe")])
    times = as_smoe_paper.runtime_table(table3, table5)
    row = times[(times["image"] == "flower") & (times["method"] == "as_smoe")].iloc[0]
    assert row["init_seconds"] == 8.0 and row["training_seconds"] == 21.0 and row["seconds"] == 29.0
    fig = as_smoe_paper.fig9c_figure(times)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["flower", "peppers"]
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(bars) == 2 * 2 * 2  # an initialization and an optimization bar per (image, method)
    tops = sorted(round(b.get_y() + b.get_height(), 6) for b in bars)
    assert tops.count(29.0) == 1 and tops.count(8.0) == 1  # flower AS-SMoE: 21 s on top of its 8 s of initialization
    assert "95%" in ax.get_ylabel()
    check_readable(fig)


# ---------------------------------------------------------------------- edge paper
@covers("edge_paper.fig3_figure")
def test_fig3_says_what_the_signs_are():
    fig3 = pd.DataFrame([dict(image=im, sign=s, iteration=i, psnr_db=18 - (0.1 if s == "corrected" else 0.3) * i)
                         for s in ("corrected", "printed") for im in ("peppers", "barbara") for i in range(31)])
    fig = edge_paper.fig3_figure(fig3)
    t0, t1 = (ax.get_title() for ax in fig.axes)
    assert "corrected" in t0 and "L - L_hat" in t0 and "printed" in t1 and "L_hat - L" in t1
    assert any("L_hat" in t.get_text() and "eta" in t.get_text() for t in fig.texts)  # the caption
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["barbara", "peppers"]
    for ax in fig.axes:
        assert_distinct_styles(ax)
    check_readable(fig)


@covers("edge_paper.fig5_figure", "edge_paper.plot_times", "plotting.time_bars")
def test_edge_fig5_and_fig6():
    rows = [dict(image=im, method=m, kernels=k, psnr_db=20 + j + k / 1000, default_point=k == 800,
                 init_seconds=1.0 + j, training_seconds=5.0 + j, seconds=6.0 + 2 * j, cpu_seconds=6.0, converged=True)
            for im in ("peppers", "barbara", "parrot") for j, m in enumerate(("grid", "edge", "s_smoe"))
            for k in (400, 800)]
    fig5 = pd.DataFrame(rows)
    fig = edge_paper.fig5_figure(fig5)
    assert [ax.get_title() for ax in fig.axes] == ["barbara", "parrot", "peppers"]
    assert [ln.get_label() for ln in lines(fig.axes[0])] == ["edge", "grid", "s_smoe"]  # the proposed one first
    check_readable(fig)
    times = edge_paper.convergence_times(fig5)
    fig = edge_paper.plot_times(times)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["barbara", "parrot", "peppers"]
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(bars) == 2 * 3 * 3  # training and initialization per (image, method)
    heights = sorted(round(b.get_height(), 6) for b in bars)
    assert heights.count(1.0) == 3 and heights.count(5.0) == 3  # grid's init and training bars on every image
    check_readable(fig)


@covers("edge_paper.plot_stages")
def test_edge_stages_figure():
    yy, xx = np.mgrid[0:48, 0:64]
    img = np.where(xx + 0.5 * yy > 40, 0.8, 0.2).astype(np.float32)
    stages = edge_paper.edge_stages(img, 40)
    fig = edge_paper.plot_stages({"step": (img, stages)})
    assert len(fig.axes) == 4
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[1] == f"(b) line segments: {len(stages['segments'])}"
    assert titles[3] == f"(d) kernel centres: {len(stages['centres'])}"
    check_readable(fig)


@covers("edge_paper.fig7_figure")
def test_edge_fig7_centres_and_reconstructions_side_by_side():
    img = striped_image()
    cases = {"grid": (random_model(K=40, H=64, W=96, seed=1), random_model(K=31, H=64, W=96, seed=2)),
             "edge": (random_model(K=44, H=64, W=96, seed=3), random_model(K=37, H=64, W=96, seed=4))}
    fig = edge_paper.fig7_figure(img, cases)
    assert len(fig.axes) == 4
    t = [ax.get_title() for ax in fig.axes]
    assert t[0] == "(a) grid: kernel centres\nK = 40" and t[2] == "(c) edge: kernel centres\nK = 44"
    for title, (name, (_, final)), letter in ((t[1], list(cases.items())[0], "b"), (t[3], list(cases.items())[1], "d")):
        out = render(final, img.shape)
        assert title == f"({letter}) {name}: SMoE reconstruction\n{whole_psnr(out, img):.2f} dB, K = {final.n_kernels}"
    (dots,) = fig.axes[2].collections
    np.testing.assert_allclose(dots.get_offsets(), cases["edge"][0].mu)  # the initial centres, where they are
    check_readable(fig)
    window = (10, 40, 20, 60)
    fig = edge_paper.fig7_figure(img, cases, window=window)
    (dots,) = fig.axes[0].collections
    np.testing.assert_allclose(dots.get_offsets(), cases["grid"][0].mu - np.array([20, 10]), rtol=1e-6, atol=1e-5)
    assert fig.axes[1].get_images()[0].get_array().shape == (30, 40)


# ---------------------------------------------------------------------- R-SMoE restoration
@covers("r_smoe_restoration.crops_figure")
def test_crops_figure():
    ims = {f"m{i}": np.full((20, 20), 0.2 * i) for i in range(5)}
    fig = r_smoe_restoration.crops_figure(ims, (2, 12, 3, 13), titles={"m1": "one"}, ncols=3)
    visible = [ax for ax in fig.axes if ax.axison]
    assert len(fig.axes) == 6 and len(visible) == 5
    assert [ax.get_title() for ax in visible] == ["m0", "one", "m2", "m3", "m4"]
    assert visible[0].get_images()[0].get_array().shape == (10, 10)


@covers("r_smoe_restoration.denoise_crops_figure", "r_smoe_restoration.superres_crops_figure")
def test_restoration_crop_figures_from_real_items(tmp_path):
    d_item = r_smoe_restoration.denoise_items(["peppers"], [25], channels=["gray"], crop=24, models=2, iters=3,
                                              baselines=[], out_dir=tmp_path)[0]
    d_rows = pd.DataFrame(r_smoe_restoration.run_denoise_item(d_item)).assign(image="peppers", channels="gray",
                                                                                 sigma=25)
    fig = r_smoe_restoration.denoise_crops_figure(d_item, d_rows)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("clean") and len(titles) == 4  # clean, noisy, smoe S=1, smoe S=2
    for t, (_, r) in zip(titles[1:], d_rows.iterrows()):
        assert t.startswith(r["method"]) and f"{r['psnr']:.2f} dB" in t
    s_item = r_smoe_restoration.superres_items(["peppers"], [2], channels=["gray"], crop=24, iters=3,
                                               out_dir=tmp_path)[0]
    s_rows = pd.DataFrame(r_smoe_restoration.run_superres_item(s_item)).assign(image="peppers", channels="gray", scale=2)
    fig = r_smoe_restoration.superres_crops_figure(s_item, s_rows)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("original") and len(titles) == 4
    smoe = s_rows.set_index("method").loc["smoe"]
    assert titles[3].startswith("smoe x2") and f"{smoe['psnr']:.2f} dB" in titles[3]
    assert r_smoe_restoration.denoise_crops_figure(dict(d_item, out_dir=None), d_rows) is None


# ---------------------------------------------------------------------- coding paper
@covers("coding_paper.rd_figure")
def test_rd_figure():
    rows = []
    for im in ("lena", "baboon"):
        for c in ("smoe", "jpeg420", "jpeg2000"):
            for b in (0.2, 0.5, 1.0):
                rows.append(dict(image=im, codec=c, bpp=b, psnr=25 + 5 * b + (c == "smoe"), ssim611=0.8 + 0.1 * b))
    fig = coding_paper.rd_figure(pd.DataFrame(rows), highlight={"lena": 0.5})
    assert len(fig.axes) == 4  # 2 metrics x 2 images
    assert [ax.get_ylabel() for ax in fig.axes] == ["SSIM-611", "SSIM-611", "PSNR (dB)", "PSNR (dB)"]
    assert len(lines(fig.axes[0])) == 3
    check_readable(fig)
    # over the SMoE points' rates, log axis, the paper's image order: a JPEG point far beyond stays outside
    rows += [dict(image=im, codec="jpeg420", bpp=6.0, psnr=45.0, ssim611=0.99) for im in ("lena", "baboon")]
    fig = coding_paper.rd_figure(pd.DataFrame(rows), xlim="smoe", logx=True, images=["lena", "baboon"], margin=1.25)
    ax = fig.axes[0]
    assert ax.get_title() == "lena" and ax.get_xscale() == "log"
    assert ax.get_xlim() == pytest.approx((0.2 / 1.25, 1.0 * 1.25))
    assert ax.get_ylim()[1] < 0.99  # the quality axis covers the points inside the rate range
    check_readable(fig)
    with pytest.raises(ValueError, match="xlim"):
        coding_paper.rd_figure(pd.DataFrame(rows), xlim="all")


def visual(title="t"):
    rng = np.random.default_rng(0)
    ref = rng.uniform(0, 1, (16, 16, 3))
    dec = np.clip(ref + 0.05, 0, 1)
    return ref, dec, coding_paper.visual_figure(ref, {"reference": (ref, None), "SMoE": (dec, 0.5)}, (0, 8, 0, 8),
                                                title)


@covers("coding_paper.visual_figure")
def test_visual_figure():
    ref, dec, fig = visual(title="")
    assert [ax.get_title().split("\n")[0] for ax in fig.axes] == ["reference", "SMoE"]
    q = coding_paper.quality(dec, ref)
    assert f"{q['psnr']:.2f} dB" in fig.axes[1].get_title()
    check_readable(fig)


def test_visual_figure_title_clears_the_panel_titles():
    check_readable(visual(title="Fig. 2 (lena)")[2])


@covers("coding_paper.kernel_map_figure")
def test_kernel_map_figure():
    m = random_model(K=9, H=16, W=20, C=3, seed=1)
    fig = coding_paper.kernel_map_figure(render(m), m, title="t")
    a, b = fig.axes
    assert "K = 9" in a.get_title()
    labels = coding_paper.max_gate_map(m, (16, 20))
    assert len(np.unique(labels)) <= 9 and len(b.collections[0].get_segments()) == 9
    check_readable(fig)


# ---------------------------------------------------------------------- redrawing a results folder
def digest_tree(folder: Path, suffixes) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix in suffixes}


def test_redraw_writes_only_figures(tmp_path):
    """smoe_core.studies.redraw on a synthetic results folder of the R-SMoE, segments and edge notebooks: the
    figures are written from the tables, and no table, model or manifest changes."""
    from smoe_core.studies.redraw import redraw

    root = tmp_path / "results"
    r = root / "quick" / "r_smoe"
    r.mkdir(parents=True)
    runs = rsmoe_runs()
    r_smoe_paper.fig4_table(runs).to_csv(r / "fig4_psnr_vs_kernels_per_block.csv", index=False)
    r_smoe_paper.fig5_table(runs).to_csv(r / "fig5_quality_vs_pool_size.csv", index=False)
    (r / "manifest.json").write_text(json.dumps(dict(parameters=dict(fig_channels=["gray"]))))
    s = root / "quick" / "as_smoe_segments"
    s.mkdir()
    pd.DataFrame(dict(method="as_smoe", workers=[1, 2], wall_seconds=[3.0, 4.0])).to_csv(
        s / "fig10_init_time_vs_workers.csv", index=False)
    pd.DataFrame([dict(setting=st, seed=0, epochs=ep, mean_psnr=15.0 + k + ep / 100) for k, st in
                  enumerate(("ours", "random experts")) for ep in (1, 100, 200)]).to_csv(
        s / "table1_explanation.csv", index=False)
    (s / "manifest.json").write_text(json.dumps(dict(parameters=dict(workers_list=[0, 2],
                                                                     images=["peppers"]))))
    e = root / "quick" / "edge_aligned"
    e.mkdir()
    pd.DataFrame([dict(image="peppers", sign=sg, iteration=i, psnr_db=17 - i / 10) for sg in ("corrected", "printed")
                  for i in range(5)]).to_csv(e / "fig3_expert_iterations.csv", index=False)
    (e / "manifest.json").write_text(json.dumps(dict(parameters={})))
    before = digest_tree(root, {".csv", ".json", ".npz"})
    written = redraw(root, "quick")
    assert sorted(p.relative_to(root).as_posix() for p in written) == [
        "quick/as_smoe_segments/fig10_time_vs_workers.png", "quick/as_smoe_segments/table1_explanation.png",
        "quick/edge_aligned/fig3_psnr_vs_expert_iterations.png",
        "quick/r_smoe/fig4_psnr_vs_kernels_per_block_gray.png", "quick/r_smoe/fig5_quality_vs_pool_size_gray.png"]
    assert all(p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG" for p in written)
    assert digest_tree(root, {".csv", ".json", ".npz"}) == before
    assert not list(root.rglob(".*.tmp*"))
    with pytest.raises(ValueError, match="unknown notebook"):
        redraw(root, "quick", only=["coding"])


# ---------------------------------------------------------------------- N-SMoE
@pytest.fixture(scope="module")
def nsmoe_ckpt(tmp_path_factory):
    """An sr2 network after two smoke steps (drawn, not measured)."""
    pytest.importorskip("pydicom")
    import torch

    from smoe_core.tasks.nsmoe import train as nt

    d = tmp_path_factory.mktemp("nsmoe_fig")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        nt.train(nt.make_config("sr2", "smoke", steps=2, batch=2, val_crops=3, val_every=2, checkpoint_every=2), d,
                 progress=False)
    finally:
        torch.set_num_threads(n)
    return d / "sr2.ckpt"


@covers("nsmoe_paper.training_figure")
def test_nsmoe_training_figure():
    from smoe_core.studies import nsmoe_paper

    hist = pd.DataFrame(dict(task=["sr2"] * 3 + ["denoise"] * 3, step=[0, 500, 1000] * 2,
                             val_psnr=[22, 24, 25, 23, 25, 26], val_psnr_baseline=[31] * 3 + [20] * 3))
    fig = nsmoe_paper.training_figure(hist)
    assert [ax.get_title() for ax in fig.axes] == ["sr2", "denoise"]
    assert [len(lines(ax)) for ax in fig.axes] == [2, 2]  # the network and its baseline
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["N-SMoE", "noisy input"]
    check_readable(fig)


@covers("nsmoe_paper.draws_figure")
def test_nsmoe_draws_figure():
    from smoe_core.studies import nsmoe_paper

    rows = []
    for img, gains in (("a.dcm", [1.0, 2.0, 3.0]), ("b", [0.0, -1.0, 1.0])):
        for d, g in enumerate(gains):
            rows += [dict(task="blind", image=img, draw=d, method="bicubic", psnr=20.0),
                     dict(task="blind", image=img, draw=d, method="nsmoe", psnr=20.0 + g)]
    fig = nsmoe_paper.draws_figure(pd.DataFrame(rows), target_db=1.0, title="blind")
    ax = fig.axes[0]
    assert [round(p.get_height(), 6) for p in ax.patches] == [2.0, 0.0]  # each image's mean over its draws
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["mean over 3 draws: +1.00 dB", "draw 0 only: +0.50 dB", "target +1 dB"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    check_readable(fig)


@covers("nsmoe_paper.crops_figure")
def test_nsmoe_crops_figure():
    from smoe_core.studies import nsmoe_paper

    rng = np.random.default_rng(0)
    ref = np.full((40, 40), 0.5, np.float32)
    ref[20:36, 8:24] = rng.uniform(0, 1, (16, 16))  # the only texture: the crop
    noisy = np.clip(ref + 0.1, 0, 1)
    fig = nsmoe_paper.crops_figure({"bicubic": noisy, "same": ref}, ref, window=16, title="sr2: x")
    assert len(fig.axes) == 3
    assert np.array_equal(fig.axes[0].images[0].get_array(), ref[20:36, 8:24])
    win = (slice(20, 36), slice(8, 24))
    expected = 10 * math.log10(1 / np.mean((noisy[win] - ref[win]) ** 2))
    assert f"{expected:.2f} dB" in fig.axes[1].get_title() and "inf dB" in fig.axes[2].get_title()
    check_readable(fig)


@covers("nsmoe_paper.kernels_figure")
def test_nsmoe_kernels_figure(nsmoe_ckpt):
    from smoe_core.studies import nsmoe_paper

    lr = np.full((24, 24), 0.2, np.float32)
    lr[4:20, 8:24] = np.random.default_rng(1).uniform(0, 1, (16, 16))  # the most varied block: origin (4, 8)
    fig = nsmoe_paper.kernels_figure(nsmoe_ckpt, lr, title="sr2")
    k = nsmoe_paper.load_network(nsmoe_ckpt).net.config.n_kernels
    assert "(4, 8)" in fig.axes[0].get_title() and f"{k} kernels" in fig.axes[0].get_title()
    segs = [c for c in fig.axes[0].collections if isinstance(c, LineCollection)]
    assert len(segs) == 1 and len(segs[0].get_segments()) == k
    assert fig.axes[1].images[0].get_array().shape == (32, 32)  # the block decoded at x2
    check_readable(fig)
