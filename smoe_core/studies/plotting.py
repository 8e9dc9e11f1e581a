"""Figures for the notebooks ([AS-SMoE] Figs. 5-9; [EDGE] Figs. 2-6; [R-SMoE] Figs. 4, 5): kernel ellipses
drawn on images, crops side by side, curves of quality against kernels and time.

Every function draws on a given matplotlib Axes (or makes a figure) and returns it; nothing is saved here
(:meth:`smoe_core.studies.results.ResultsStore.save_figure` does that).

Rules every figure follows (tests/test_figures.py checks them on every figure function of the studies):

- Series are told apart by marker **and** line style as well as colour (:func:`series_styles`), so a series
  lying exactly on another (G-SMoE on R-SMoE, RBF on GaussianImage) still shows: alternate series have hollow,
  larger markers that ring the filled ones, and dashed or dotted lines.
- Panels of the test images come in the papers' order, Barbara, Flower, Parrot, Peppers (:func:`paper_order`),
  whatever order the rows were written in (a preset run image by image).
- A log axis gets a few ticks labelled as plain numbers (:func:`readable_log_axis`: the data's own values when
  there are few and they are well apart, else 1-2-5 per decade) and no minor labels, so labels never overlap.
- A PSNR axis says "dB" (:func:`axis_label`).
- A figure title sits above the panel titles (:func:`finish`).
"""
from __future__ import annotations

import math

import numpy as np

from ..io import TEST_IMAGES
from ..metrics import psnr
from ..model import SMoE

#: markers and line styles of the series, in order (:func:`series_styles`)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1.5)), (0, (3, 1, 1, 1, 1, 1)))
#: axis labels of the metrics, with their units
LABELS = {"psnr": "PSNR (dB)", "psnr_db": "PSNR (dB)", "ssim": "SSIM", "lpips": "LPIPS", "st_lpips": "ST-LPIPS"}


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def axis_label(column: str, label: str | None = None) -> str:
    """``label`` if given, else the metric's label with its unit (:data:`LABELS`: "psnr" -> "PSNR (dB)"), else
    the column name."""
    return label or LABELS.get(str(column), str(column))


def paper_order(values) -> list:
    """The distinct ``values`` with the test images first, in the papers' order (Barbara, Flower, Parrot,
    Peppers), then the others in their order of appearance."""
    vals = list(dict.fromkeys(values))
    return [v for v in TEST_IMAGES if v in vals] + [v for v in vals if v not in TEST_IMAGES]


def series_styles(keys) -> dict:
    """key -> plot keywords (color, marker, linestyle, marker size and fill) for each series, in order: colour from
    matplotlib's cycle, marker and line style from :data:`MARKERS` / :data:`LINESTYLES`; odd series have larger
    hollow markers, so two series on the same points both show."""
    plt = pyplot()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    out = {}
    for i, k in enumerate(keys):
        hollow = i % 2 == 1
        c = colours[i % len(colours)]
        out[k] = dict(color=c, marker=MARKERS[i % len(MARKERS)], linestyle=LINESTYLES[i % len(LINESTYLES)],
                      markersize=7.0 if hollow else 4.5, markerfacecolor="none" if hollow else c,
                      markeredgewidth=1.1 if hollow else 0.8, linewidth=1.3)
    return out


def _decade_ticks(lo: float, hi: float) -> list[float]:
    for mults in ((1, 2, 5), (1, 3), (1,)):
        ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
                 for m in mults if lo / 1.2 <= m * 10.0 ** e <= hi * 1.2]
        if len(ticks) <= 5:
            break
    return ticks or [lo, hi]


def readable_log_axis(ax, values, axis: str = "x"):
    """Puts ``axis`` of ``ax`` on a log scale with readable ticks: the data's distinct ``values`` when there are
    at most 5 and each is at least 1.8x the one before, else 1-2-5 (or 1-3, or 1) per decade over their range,
    at most 5 ticks; labels as plain numbers, no minor tick labels."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    v = np.asarray([float(x) for x in values if x is not None], np.float64)
    v = np.unique(v[np.isfinite(v) & (v > 0)])
    getattr(ax, f"set_{axis}scale")("log")
    if v.size == 0:
        return ax
    if v.size <= 5 and np.all(v[1:] / v[:-1] >= 1.8):
        ticks = list(v)
    else:
        ticks = _decade_ticks(float(v[0]), float(v[-1]))
    a = getattr(ax, f"{axis}axis")
    a.set_major_locator(FixedLocator(ticks))
    a.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.0f}" if 1 <= x < 1e6 else f"{x:.2g}"))
    a.set_minor_locator(NullLocator())
    a.set_minor_formatter(NullFormatter())
    return ax


def finish(fig, title: str | None = None, *, legend=None, caption: str | None = None):
    """Lays the figure out: ``title`` above everything (the panel titles included), ``legend`` = (handles,
    labels) in one row block under the panels, ``caption`` (a sentence saying what the figure shows) under
    that."""
    top = 1.0
    if title:
        top = 1.0 - 0.25 / fig.get_figheight()
        fig.suptitle(title, fontsize=10, y=top, va="bottom")
    fig.tight_layout(rect=(0, 0, 1, top), h_pad=1.8)
    y = 0.0
    if legend is not None and legend[0]:
        handles, labels = legend
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, y), ncol=min(4, len(labels)),
                   fontsize=7, frameon=False)
        y -= (0.05 + 0.045 * math.ceil(len(labels) / 4)) * 3.0 / fig.get_figheight()
    if caption:
        fig.text(0.5, y, caption, ha="center", va="top", fontsize=7, wrap=True)
    return fig


def kernel_ellipses(ax, model: SMoE, *, radius: float = 1.0, crop=None, color="red", linewidth=0.5, alpha=0.55,
                    max_kernels=None):
    """Draws each kernel's ellipse {x : (x - mu)^T P (x - mu) = radius^2} (one sigma by default), thin and
    translucent so the image shows through.

    ``crop`` = (y0, y1, x0, x1) restricts the drawing to kernels whose centres lie in that window, in the
    window's coordinates (as shown by ``ax.imshow(image[y0:y1, x0:x1])``).
    """
    from matplotlib.collections import LineCollection

    m = model.numpy()
    cov = np.linalg.inv(m.precision().astype(np.float64))
    vals, vecs = np.linalg.eigh(cov)
    t = np.linspace(0, 2 * np.pi, 48)
    circle = np.stack([np.cos(t), np.sin(t)], 0)  # (2, T)
    pts = m.mu.astype(np.float64)[:, :, None] + radius * np.einsum("kij,kj,jt->kit", vecs, np.sqrt(np.clip(vals, 0, None)), circle)
    keep = np.ones(m.n_kernels, bool)
    if crop is not None:
        y0, y1, x0, x1 = crop
        keep = (m.mu[:, 0] >= x0) & (m.mu[:, 0] < x1) & (m.mu[:, 1] >= y0) & (m.mu[:, 1] < y1)
        pts = pts - np.array([x0, y0], np.float64)[None, :, None]
    idx = np.nonzero(keep)[0]
    if max_kernels is not None:
        idx = idx[:max_kernels]
    segs = [pts[k].T for k in idx]
    ax.add_collection(LineCollection(segs, colors=color, linewidths=linewidth, alpha=alpha))
    return ax


def show_image(ax, image, title=None, crop=None):
    img = np.asarray(image)
    if crop is not None:
        y0, y1, x0, x1 = crop
        img = img[y0:y1, x0:x1]
    ax.imshow(np.clip(img, 0, 1), cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)
    return ax


def texture_window(image, side: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): the ``side`` x ``side`` window (clipped to the image) with the largest mean gradient
    magnitude, searched on a grid of step side / 8: the most textured part of the image, where initializations
    differ most (on Barbara, the striped cloth)."""
    g = np.asarray(image, np.float64)
    if g.ndim == 3:
        g = g.mean(axis=2)
    H, W = g.shape
    s = int(min(side, H, W))
    mag = np.zeros((H, W))
    mag[:, :-1] += np.abs(np.diff(g, axis=1))
    mag[:-1, :] += np.abs(np.diff(g, axis=0))
    ii = np.pad(mag.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    step = max(1, s // 8)
    ys = np.arange(0, H - s + 1, step)
    xs = np.arange(0, W - s + 1, step)
    score = ii[ys[:, None] + s, xs[None, :] + s] - ii[ys[:, None], xs[None, :] + s] - ii[ys[:, None] + s, xs[None, :]] \
        + ii[ys[:, None], xs[None, :]]
    i, j = np.unravel_index(int(np.argmax(score)), score.shape)
    return int(ys[i]), int(ys[i]) + s, int(xs[j]), int(xs[j]) + s


def crops_with_kernels(image, models: dict, renders: dict | None = None, *, crop, ellipses: bool = True,
                       ncols: int = 4, title: str | None = None):
    """The original, then one panel per model: its render over ``crop`` with the kernel ellipses (thin,
    translucent; :func:`kernel_ellipses`), titled with the model's name, its PSNR (the render against ``image``
    over the whole image, dB) and its kernel count K (Figs. 6 and 8). ``ncols`` panels per row."""
    plt = pyplot()
    n = len(models) + 1
    ncols = max(1, min(int(ncols), n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.5 * ncols, 2.75 * nrows), squeeze=False)
    flat = axes.ravel()
    for ax in flat[n:]:
        ax.axis("off")
    show_image(flat[0], image, "original", crop)
    for ax, (name, model) in zip(flat[1:], models.items()):
        if renders is not None and name in renders:
            label = f"{name}\n{psnr(renders[name], image):.2f} dB, K = {model.n_kernels}"
            show_image(ax, renders[name], label, crop)
        else:
            show_image(ax, image, f"{name}\nK = {model.n_kernels}", crop)
        if ellipses:
            kernel_ellipses(ax, model, crop=crop)
            y0, y1, x0, x1 = crop
            ax.set_xlim(-0.5, x1 - x0 - 0.5)
            ax.set_ylim(y1 - y0 - 0.5, -0.5)
    return finish(fig, title)


def legend_entries(axes) -> dict:
    """label -> handle over all ``axes`` (a series may be missing from some panels), in order of appearance;
    matplotlib leaves out labels starting with "_"."""
    seen = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    return seen


def curves(df, x: str, y: str, *, by: str, panel: str | None = None, xlabel=None, ylabel=None, logx=False,
           logy=False, markers=True, legend_below: bool = False, order=None, panel_titles: dict | None = None,
           title: str | None = None, caption: str | None = None):
    """Line plot of ``y`` against ``x`` per ``by`` value, one panel per ``panel`` value (e.g. per image; test
    images in the papers' order). Series keep one style over all panels (:func:`series_styles`), in ``order``
    (values of ``by``; the rest after them in order of appearance). ``markers=False`` (long histories) marks
    about eight points per series, staggered between series (every point of a series of at most eight). ``legend_below``: one legend for the figure
    under the panels (for many series) instead of one in the last panel. ``panel_titles``: panel value -> title;
    ``title`` above the figure, ``caption`` under it (:func:`finish`)."""
    plt = pyplot()
    panels = [None] if panel is None else paper_order(df[panel])
    keys = list(dict.fromkeys(list(order or []) + paper_order(df[by])))
    keys = [k for k in keys if k in set(df[by])]
    styles = series_styles(keys)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.0), squeeze=False)
    for ax, p in zip(axes[0], panels):
        sub = df if p is None else df[df[panel] == p]
        for i, key in enumerate(keys):
            g = sub[sub[by] == key].sort_values(x)
            if not len(g):
                continue
            st = dict(styles[key])
            if not markers and len(g) > 8:  # a long history: a few staggered markers (a short series: all)
                every = max(1, round(len(g) / 8))
                st["markevery"] = (min(i * max(1, every // max(len(keys), 1)), len(g) - 1), every)
            ax.plot(g[x], g[y], label=str(key), zorder=2 + i * 0.01, **st)
        if p is not None:
            ax.set_title(str((panel_titles or {}).get(p, p)), fontsize=9)
        ax.set_xlabel(xlabel or x)
        ax.set_ylabel(axis_label(y, ylabel))
        if logx:
            readable_log_axis(ax, df[x], "x")
        if logy:
            readable_log_axis(ax, df[y], "y")
        ax.grid(alpha=0.3)
    seen = legend_entries(axes[0])
    if legend_below:
        return finish(fig, title, legend=(list(seen.values()), list(seen.keys())), caption=caption)
    if seen:
        axes[0][-1].legend(list(seen.values()), list(seen.keys()), fontsize=7)
    return finish(fig, title, caption=caption)


def time_bars(times, *, ylabel: str, title: str | None = None):
    """Grouped bars of run time per image (the papers' order) and method: ``training_seconds`` on top of
    ``init_seconds`` (hatched, lighter), one colour per method in order of appearance ([EDGE] Fig. 6,
    [AS-SMoE] Fig. 9c)."""
    plt = pyplot()
    images = paper_order(times["image"])
    methods = list(dict.fromkeys(times["method"]))
    fig, ax = plt.subplots(figsize=(1.9 * len(images) + 1.5, 3.2))
    width = 0.8 / max(len(methods), 1)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, m in enumerate(methods):
        sub = times[times["method"] == m].set_index("image").reindex(images)
        x = np.arange(len(images)) + (j - (len(methods) - 1) / 2) * width
        c = colours[j % len(colours)]
        ax.bar(x, sub["training_seconds"], width, bottom=sub["init_seconds"], color=c, label=m)
        ax.bar(x, sub["init_seconds"], width, color=c, alpha=0.5, hatch="///", edgecolor="white")
    ax.set_xticks(np.arange(len(images)))
    ax.set_xticklabels(images)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return finish(fig, title)
