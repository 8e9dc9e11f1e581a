"""Figures for the notebooks ([AS-SMoE] Figs. 5-9; [EDGE] Figs. 2-6): kernel
ellipses drawn on images, crops side by side, curves of quality against kernels and time.

Every function draws on a given matplotlib Axes (or makes a figure) and returns it; nothing is saved here
(:meth:`smoe_core.studies.results.ResultsStore.save_figure` does that).
"""
from __future__ import annotations

import numpy as np

from ..model import SMoE


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def kernel_ellipses(ax, model: SMoE, *, radius: float = 1.0, crop=None, color="red", linewidth=0.6, max_kernels=None):
    """Draws each kernel's ellipse {x : (x - mu)^T P (x - mu) = radius^2} (one sigma by default).

    ``crop`` = (y0, y1, x0, x1) restricts the drawing to kernels whose centres lie in that window, in the
    window's coordinates (as shown by ``ax.imshow(image[y0:y1, x0:x1])``).
    """
    from matplotlib.collections import LineCollection

    m = model.numpy()
    cov = np.linalg.inv(m.precision().astype(np.float64))
    vals, vecs = np.linalg.eigh(cov)
    t = np.linspace(0, 2 * np.pi, 48)
    circle = np.stack([np.cos(t), np.sin(t)], 0)  # (2, T)
    pts = m.mu.astype(np.float64)[:, :, None] + radius * np.einsum("kij,kj,jt->kit", vecs, np.sqrt(vals), circle)
    keep = np.ones(m.n_kernels, bool)
    if crop is not None:
        y0, y1, x0, x1 = crop
        keep = (m.mu[:, 0] >= x0) & (m.mu[:, 0] < x1) & (m.mu[:, 1] >= y0) & (m.mu[:, 1] < y1)
        pts = pts - np.array([x0, y0], np.float64)[None, :, None]
    idx = np.nonzero(keep)[0]
    if max_kernels is not None:
        idx = idx[:max_kernels]
    segs = [pts[k].T for k in idx]
    ax.add_collection(LineCollection(segs, colors=color, linewidths=linewidth))
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
        ax.set_title(title, fontsize=9)
    return ax


def crops_with_kernels(image, models: dict, renders: dict | None = None, *, crop, ellipses: bool = True):
    """One column per model: the render of ``crop`` with the kernel ellipses (Figs. 6 and 8)."""
    plt = pyplot()
    n = len(models) + 1
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.8))
    show_image(axes[0], image, "original", crop)
    for ax, (name, model) in zip(axes[1:], models.items()):
        if renders is not None and name in renders:
            show_image(ax, renders[name], name, crop)
        else:
            show_image(ax, image, name, crop)
        if ellipses:
            kernel_ellipses(ax, model, crop=crop)
            y0, y1, x0, x1 = crop
            ax.set_xlim(-0.5, x1 - x0 - 0.5)
            ax.set_ylim(y1 - y0 - 0.5, -0.5)
    fig.tight_layout()
    return fig


def curves(df, x: str, y: str, *, by: str, panel: str | None = None, xlabel=None, ylabel=None, logx=False,
           markers=True, legend_below: bool = False):
    """Line plot of ``y`` against ``x`` per ``by`` value, one panel per ``panel`` value (e.g. per image).
    ``legend_below``: one legend for the figure under the panels (for many series) instead of one in the last
    panel."""
    plt = pyplot()
    panels = [None] if panel is None else list(dict.fromkeys(df[panel]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.0), squeeze=False)
    for ax, p in zip(axes[0], panels):
        sub = df if p is None else df[df[panel] == p]
        for key, g in sub.groupby(by, sort=False):
            g = g.sort_values(x)
            ax.plot(g[x], g[y], marker="o" if markers else None, markersize=3, label=str(key))
        if p is not None:
            ax.set_title(str(p), fontsize=9)
        ax.set_xlabel(xlabel or x)
        ax.set_ylabel(ylabel or y)
        if logx:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    if legend_below:
        seen = {}  # label -> handle, over all panels (a series may be missing from some)
        for ax in axes[0]:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                seen.setdefault(lab, h)
        fig.tight_layout()
        fig.legend(list(seen.values()), list(seen.keys()), loc="upper center", bbox_to_anchor=(0.5, 0.0),
                   ncol=min(4, len(seen)), fontsize=7, frameon=False)
    else:
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
    return fig
