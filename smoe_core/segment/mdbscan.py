"""MDBSCAN segmentation ([AS-SMoE], section IV "Starting with a MDBSCAN segmentation
stage", section V-A "Parameter Settings in Segmentation Reconstruction" and Fig. 4; the segmentation of
S-SMoE, ref. [38]) and the per-segment statistics behind Fig. 4 (its driver:
:func:`smoe_core.studies.as_smoe_segments.fig4_statistics`).

The paper names MDBSCAN (a modified DBSCAN superpixel method after Shen et al., IEEE TIP 2016) but does not
define it. ``variant="spec"`` (default) implements /work/shared/mdbscan.md, the authors' algorithm described
in words (steps 1-5 below); ``variant="authors"`` reproduces the authors' public code (yihsinli/AS-SMoE,
MDBSCAN-old/code/DBscan.h, regionQuery.h; MDBSCAN-old/test.m for the pre-filter) where it departs from those
words. E = ``d_th`` is the paper's pixel-difference threshold (20-50 on 0-255 intensities).

1. **Pre-filter.** The [0, 1] image is taken to 0-255 integers (``round(255 x)``, half up); a gray image is
   replicated to three channels (every squared RGB distance below is then 3x the gray one). Gaussian blur,
   sigma 1, 5 x 5 window: the normalized 5-tap kernel ``GAUSS5 = exp(-k^2/2) / sum``, k = -2..2
   (= [0.0545, 0.2442, 0.4026, 0.2442, 0.0545]), applied along rows then columns in float64 with
   replicated ("edge") borders, rounded half up to uint8 once at the end. Its outer product is the
   normalized 5 x 5 kernel, so this is MATLAB's ``imgaussfilt(uint8 image, 1)`` (filter size
   2 ceil(2 sigma) + 1 = 5, 'replicate' padding), which the authors run per channel.
2. **Grow clusters.** Pixels in raster order; each pixel in no cluster seeds a new one, grown breadth-first
   (FIFO): for each dequeued pixel n, its 4-neighbours in the order right, up, left, down that are in no
   cluster join when ``0.62 |c_q - c_seed|^2 + 0.38 |c_q - c_n|^2 < E^2``; a pixel joins when it is
   enqueued, so at most once. *spec*: every neighbour inside the image; the test evaluated exactly, in
   integers, as ``62 a + 38 b < 100 E^2`` (0.62 and 0.38 are not exact in floating point).
   *authors*: their border neighbourhoods -- top row: down, right (never left); left column: down, right;
   right column: down, left; bottom row: left, right (its first pixel's "left" is the last pixel of the row
   above); bottom-right pixel: none; no border pixel looks up -- and the test in double precision.
3. **Merge small clusters** (both variants). Clusters in label order; one with fewer than ``min_size`` = 50
   pixels (its current size, counting clusters merged into it earlier) merges into the 4-adjacent cluster
   minimizing ``|mean RGB difference|^2 + 2 |centroid difference|^2`` (means of the filtered integer RGB,
   centroids in pixels (row, col)) if that is below ``merge_threshold`` = 100000. The target's mean,
   centroid and size are kept as running sums (= the size-weighted average update); the merged cluster
   disappears (only the visited cluster is ever absorbed, so label order is well defined); the adjacency of
   a cluster is that of all its pixels. Left open by the spec: exact ties in the cost go to the smaller
   label (the authors' code takes the first neighbour found; equal real-valued costs practically never occur).
4. **Clean thin strands.** *spec*: (a) each interior pixel p in raster order, in place (its left and upper
   neighbours already cleaned): if its left and right neighbours both carry another label than p, p takes
   the label of the larger of the two (left on a tie); then the same for up/down (up on a tie) against
   p's possibly new label; sizes are updated as pixels move. (b) Then every 4-connected same-label
   component (flood fill from the first unvisited pixel in raster order) with fewer than ``strand_size`` = 30
   pixels takes the label of the adjacent pixel whose colour is closest to the component's mean colour, if
   that squared RGB distance is below ``strand_threshold`` = 10000 (first such pixel on a tie). We read
   "any component ... reached this way" as "found by this scan", i.e. every small component.
   *authors*: their code reads "reached this way" narrowly and differs from the words in three ways: it
   takes the **smaller** of the two labels (left, resp. down, on a tie), with all five labels read before p
   changes and sizes frozen after step 3; only the components of the two pixels across the change (below
   and above p after a left/right change, right and left after an up/down one) are examined, by a
   breadth-first search abandoned beyond 30 pixels whose +-1 steps wrap across row ends; pixel index 0 is
   never a target.
5. **Renumber** labels 1..N in order of first appearance in raster order. A label split into several
   4-connected pieces by step 4 stays one segment (one label), as in the authors' count.

**Reproduction.** Segment counts on Peppers, E = 20 / 30 / 40 / 50, against the authors' 665 / 397 / 231 / 165
(mdbscan.md, "Peppers (gray)"):

=====================  ===========================  ==================
input                  variant="spec"               variant="authors"
=====================  ===========================  ==================
colour (RGB PNG)       678 / 406 / 232 / 166        665 / 397 / 231 / 165 (exact)
gray (601 luma, x3)    463 / 288 / 177 / 124        461 / 280 / 177 / 128
=====================  ===========================  ==================

So the authors' numbers are those of the **colour** image: their script (MDBSCAN-old/test.m) replicates a
2-D image to three channels but segments a colour PNG as it is, and the test images are distributed as
RGB PNGs (data/README.md). On the gray image both variants give 23-30% fewer segments: luma drops
the chroma differences, and a gray step of d becomes a distance of d sqrt(3), which does not make up for
them. The spec variant is within 2.1% of the authors on colour; the rest of its difference is step 4
(before step 4 the variants differ by at most 2 segments; step 2's border rule changes the count by 0-2).

The pre-filter is NumPy; steps 2-5 are sequential pixel loops, compiled (raw_kernels/mdbscan.cpp, built by
:mod:`smoe_core.segment.build` with the system C++ compiler on first use, cached): about 0.2 s on a
768 x 512 image. ``backend="python"`` runs :func:`_mdbscan_python`, a line-by-line pure Python twin of the
C++ code (about 10 s on 768 x 512), used by the tests to check the compiled code and as the fallback of
``backend="auto"`` when there is no compiler. Not reproduced from the authors' code: its uint16 labels
(wrap beyond 65535 clusters) and its out-of-bounds reads at the last pixel.
"""
from __future__ import annotations

from collections import deque

import numpy as np
import pandas as pd

from ..io import check_image

#: sigma-1 Gaussian, 5 taps, normalized: exp(-k^2/2) / sum, k = -2..2.
GAUSS5 = np.exp(-0.5 * np.arange(-2, 3, dtype=np.float64) ** 2)
GAUSS5 /= GAUSS5.sum()

#: Segment counts of the authors' code on Peppers (mdbscan.md), by E; reproduced by variant="authors" on the
#: colour image (module docstring).
AUTHORS_PEPPERS_COUNTS = {20: 665, 30: 397, 40: 231, 50: 165}

VARIANTS = ("spec", "authors")


def to_rgb8(image) -> np.ndarray:
    """(H, W, 3) uint8: a [0, 1] float image (gray (H, W) / (H, W, 1), or RGB (H, W, 3)) as 0-255 integers
    (rounded half up); gray is replicated to three channels."""
    img = check_image(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 3 and img.shape[2] != 3:
        raise ValueError(f"MDBSCAN takes a gray or RGB image, got {img.shape[2]} channels")
    u8 = np.floor(np.clip(img.astype(np.float64), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if u8.ndim == 2:
        u8 = np.repeat(u8[..., None], 3, axis=2)
    return np.ascontiguousarray(u8)


def prefilter(rgb8: np.ndarray) -> np.ndarray:
    """Step 1: 5 x 5 sigma-1 Gaussian blur with replicated borders, rounded half up to uint8 (H, W, 3)."""
    x = np.asarray(rgb8, dtype=np.float64)
    pad = np.pad(x, ((2, 2), (2, 2), (0, 0)), mode="edge")
    H, W = x.shape[:2]
    horiz = sum(GAUSS5[k] * pad[:, k:k + W] for k in range(5))     # 5 taps along each row
    out = sum(GAUSS5[k] * horiz[k:k + H, :] for k in range(5))     # then along each column
    return np.ascontiguousarray(np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8))


def mdbscan(image, d_th: float = 40, *, min_size: int = 50, merge_threshold: float = 100000.0,
            strand_size: int = 30, strand_threshold: float = 10000.0, variant: str = "spec",
            last_step: int = 4, backend: str = "auto") -> np.ndarray:
    """MDBSCAN segmentation (module docstring, steps 1-5) of a [0, 1] float image, gray (H, W) or RGB (H, W, 3).

    Returns int32 labels (H, W), 1..N numbered in raster order of first appearance. ``d_th`` is E, the pixel
    difference threshold on 0-255 intensities. ``variant``: "spec" (mdbscan.md as written) or "authors" (the
    authors' code, which reproduces their segment counts; its strand search size is fixed at 30, so
    ``strand_size`` applies to "spec" only). ``last_step`` 2 or 3 stops after growing or merging (for
    diagnostics; the renumbering always runs). ``backend``: "cpp" (compiled; raises
    :class:`smoe_core.segment.build.MDBSCANBuildError` without a C++ compiler), "python" (the slow twin) or
    "auto" (compiled, else Python with a warning).
    """
    if not d_th > 0:
        raise ValueError(f"d_th must be positive, got {d_th}")
    if last_step not in (2, 3, 4):
        raise ValueError(f"last_step must be 2, 3 or 4, got {last_step}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    rgb = prefilter(to_rgb8(image))
    args = (float(d_th), int(min_size), float(merge_threshold), int(strand_size), float(strand_threshold),
            int(last_step), VARIANTS.index(variant))
    if backend == "python":
        return _mdbscan_python(rgb, *args)
    if backend not in ("auto", "cpp"):
        raise ValueError(f"backend must be 'auto', 'cpp' or 'python', got {backend!r}")
    from . import build

    try:
        lib = build.load()
    except build.MDBSCANBuildError:
        if backend == "cpp":
            raise
        import warnings

        warnings.warn("MDBSCAN: no compiled build (no C++ compiler?); using the slow pure Python loops")
        return _mdbscan_python(rgb, *args)
    H, W = rgb.shape[:2]
    labels = np.empty((H, W), np.int32)
    n = lib.mdbscan_segment(rgb.ctypes.data, H, W, *args, labels.ctypes.data)
    if n < 1:
        raise RuntimeError(f"mdbscan_segment failed with code {n} on a {H} x {W} image")
    return labels


# ---------------------------------------------------------------------------------------------- Python twin
def _neighbours(p: int, H: int, W: int):
    r, c = divmod(p, W)
    out = []
    if c + 1 < W:
        out.append(p + 1)
    if r > 0:
        out.append(p - W)
    if c > 0:
        out.append(p - 1)
    if r + 1 < H:
        out.append(p + W)
    return out


def _neighbours_authors(p: int, H: int, W: int):
    x, y = p // W + 1, p % W + 1
    out = []
    if 1 < x < H and 1 < y < W:
        out += [p + 1, p - W, p - 1, p + W]
    if x == H and y < W:
        out += [p - 1, p + 1]
    if x < H and y == W:
        out += [p + W, p - 1]
    if x < H and y == 1:
        out += [p + W, p + 1]
    if x == 1 and 1 < y < W:
        out += [p + W, p + 1]
    return [q for q in out if 0 <= q < H * W]


def _mdbscan_python(rgb: np.ndarray, E: float, min_size: int, merge_threshold: float, strand_size: int,
                    strand_threshold: float, last_step: int, variant: int) -> np.ndarray:
    """Steps 2-5 on a pre-filtered uint8 (H, W, 3) image, in plain Python: the twin of mdbscan.cpp."""
    H, W = rgb.shape[:2]
    HW = H * W
    col = [tuple(int(v) for v in px) for px in rgb.reshape(HW, 3)]

    def d2(p, q):
        a, b = col[p], col[q]
        return (a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2 + (a[2] - b[2]) ** 2

    # step 2
    rhs, E2 = 100.0 * E * E, E * E
    grow_nb = _neighbours_authors if variant else _neighbours
    lab = [0] * HW
    N = 0
    for p in range(HW):
        if lab[p]:
            continue
        N += 1
        lab[p] = N
        queue = deque([p])
        while queue:
            n = queue.popleft()
            for q in grow_nb(n, H, W):
                if lab[q]:
                    continue
                a, b = d2(q, p), d2(q, n)
                if (0.62 * a + 0.38 * b < E2) if variant else (float(62 * a + 38 * b) < rhs):
                    lab[q] = N
                    queue.append(q)

    # step 3
    if last_step >= 3:
        sums = [[0.0] * 5 for _ in range(N + 1)]
        size = [0] * (N + 1)
        adj = [set() for _ in range(N + 1)]
        for p in range(HW):
            l = lab[p]
            s = sums[l]
            r, c = divmod(p, W)
            for k in range(3):
                s[k] += col[p][k]
            s[3] += r
            s[4] += c
            size[l] += 1
            if c + 1 < W and lab[p + 1] != l:
                adj[l].add(lab[p + 1])
                adj[lab[p + 1]].add(l)
            if r + 1 < H and lab[p + W] != l:
                adj[l].add(lab[p + W])
                adj[lab[p + W]].add(l)
        parent = list(range(N + 1))
        members = [[l] for l in range(N + 1)]

        def find(x):
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for i in range(1, N + 1):
            if parent[i] != i or size[i] >= min_size:
                continue
            mi = [v / size[i] for v in sums[i]]
            cand = sorted({find(o) for m in members[i] for o in adj[m]} - {i})
            best, best_cost = 0, float("inf")
            for j in cand:
                cost = 0.0
                for k in range(5):
                    d = mi[k] - sums[j][k] / size[j]
                    cost += (1.0 if k < 3 else 2.0) * d * d
                if cost < best_cost:
                    best, best_cost = j, cost
            if best and best_cost < merge_threshold:
                parent[i] = best
                for k in range(5):
                    sums[best][k] += sums[i][k]
                size[best] += size[i]
                members[best].extend(members[i])
        lab = [find(l) for l in lab]

    # step 4, the authors' way
    if last_step >= 4 and variant:
        size = [0] * (N + 1)
        for l in lab:
            size[l] += 1

        def mergin(n):
            comp, border = [n], []
            j = 0
            while j < len(comp):
                p = comp[j]
                for q in (p + 1, p - 1, p + W, p - W):
                    if q < 0 or q >= HW:
                        continue
                    if lab[q] == lab[p]:
                        if q not in comp:
                            comp.append(q)
                    else:
                        border.append(q)
                if len(comp) > 30:
                    return
                j += 1
            if len(comp) >= 30:
                return
            mean = [sum(col[q][k] for q in comp) / len(comp) for k in range(3)]
            best_d, target = strand_threshold, 0
            for t in border:
                if t <= 0:
                    continue
                d = 0.0
                for k in range(3):
                    x = mean[k] - col[t][k]
                    d += x * x
                if d < best_d:
                    best_d, target = d, t
            if target > 0:
                L = lab[target]
                for q in comp:
                    lab[q] = L

        for r in range(1, H - 1):
            for c in range(1, W - 1):
                n = r * W + c
                l, lr, ll, lu, ld = lab[n], lab[n + 1], lab[n - 1], lab[n - W], lab[n + W]
                if lr != l and ll != l:
                    lab[n] = ll if size[lr] >= size[ll] else lr
                    mergin(n + W)
                    mergin(n - W)
                if lu != l and ld != l:
                    lab[n] = ld if size[lu] >= size[ld] else lu
                    mergin(n + 1)
                    mergin(n - 1)

    # step 4
    if last_step >= 4 and not variant:
        size = [0] * (N + 1)
        for l in lab:
            size[l] += 1

        def move(p, to):
            size[lab[p]] -= 1
            size[to] += 1
            lab[p] = to

        for r in range(1, H - 1):
            for c in range(1, W - 1):
                p = r * W + c
                L, R = lab[p - 1], lab[p + 1]
                if L != lab[p] and R != lab[p]:
                    move(p, L if size[L] >= size[R] else R)
                U, D = lab[p - W], lab[p + W]
                if U != lab[p] and D != lab[p]:
                    move(p, U if size[U] >= size[D] else D)
        seen = [False] * HW
        for p in range(HW):
            if seen[p]:
                continue
            l = lab[p]
            comp = [p]
            seen[p] = True
            h = 0
            while h < len(comp):
                for q in _neighbours(comp[h], H, W):
                    if not seen[q] and lab[q] == l:
                        seen[q] = True
                        comp.append(q)
                h += 1
            if len(comp) >= strand_size:
                continue
            mean = [sum(col[q][k] for q in comp) / len(comp) for k in range(3)]
            best, best_d = 0, float("inf")
            for q in comp:
                for o in _neighbours(q, H, W):
                    if lab[o] == l:
                        continue
                    d = 0.0
                    for k in range(3):
                        x = col[o][k] - mean[k]
                        d += x * x
                    if d < best_d:
                        best, best_d = lab[o], d
            if best and best_d < strand_threshold:
                for q in comp:
                    lab[q] = best

    # step 5
    mapping = {}
    out = np.empty(HW, np.int32)
    for p, l in enumerate(lab):
        if l not in mapping:
            mapping[l] = len(mapping) + 1
        out[p] = mapping[l]
    return out.reshape(H, W)


# ---------------------------------------------------------------------------------------------- statistics
def segment_stats(labels) -> pd.DataFrame:
    """One row per segment: label, n_pixels, bounding box (row_min, row_max, col_min, col_max, inclusive),
    width = col span + 1, height = row span + 1, side = max(width, height) (the side of the square box
    AS-SMoE crops before adding its corona). A label split into pieces has one box around all of them."""
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"labels must be (H, W), got {lab.shape}")
    flat = lab.ravel().astype(np.int64)
    n = int(flat.max()) + 1 if flat.size else 0
    H, W = lab.shape
    rows = np.repeat(np.arange(H), W)
    cols = np.tile(np.arange(W), H)
    count = np.bincount(flat, minlength=n)
    big = np.iinfo(np.int64).max
    rmin = np.full(n, big)
    rmax = np.full(n, -1)
    cmin = np.full(n, big)
    cmax = np.full(n, -1)
    np.minimum.at(rmin, flat, rows)
    np.maximum.at(rmax, flat, rows)
    np.minimum.at(cmin, flat, cols)
    np.maximum.at(cmax, flat, cols)
    present = np.flatnonzero(count)
    df = pd.DataFrame(dict(label=present, n_pixels=count[present], row_min=rmin[present], row_max=rmax[present],
                           col_min=cmin[present], col_max=cmax[present]))
    df["width"] = df.col_max - df.col_min + 1
    df["height"] = df.row_max - df.row_min + 1
    df["side"] = np.maximum(df.width, df.height)
    return df.reset_index(drop=True)
