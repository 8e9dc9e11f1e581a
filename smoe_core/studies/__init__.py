"""The paper studies: everything that reproduces a paper's tables and figures, apart from the algorithms.

- :mod:`.as_smoe_paper`: [AS-SMoE] section VI, Tables III-V and the export study behind Table III's claim.
- :mod:`.as_smoe_segments`: [AS-SMoE] Fig. 4, Table I, Fig. 10 (the segmentation stage).
- :mod:`.edge_paper`: [EDGE] Figs. 2, 3, 5, 6 and the paper's claims beside ours.
- :mod:`.r_smoe_paper`: [R-SMoE] Figs. 4 and 5, FLOPs, tiled vs dense speed and memory.
- :mod:`.r_smoe_restoration`: [R-SMoE] denoising by fusion and native super-resolution, with crop figures.
- :mod:`.coding_paper`: [QSMoE] rate-distortion against JPEG / JPEG 2000 (Fig. 1), BD-rates, claims, QAT vs PTQ,
  Figs. 2 and 3.
- :mod:`.common` (items, published tables, side-by-side tables, report fragments), :mod:`.results`
  (:class:`~.results.ResultsStore`), :mod:`.reproduce` (``smoe reproduce``), :mod:`.bench` (``smoe bench``),
  :mod:`.plotting`, :mod:`.redraw` (a results folder's figures redrawn from its saved tables),
  :mod:`.determinism` (what changes the last bits: builds, PyTorch's CPU kernels, libm; the reproducible build's
  cost), :mod:`.perceptual` (LPIPS, ST-LPIPS, attention PSNR), :mod:`.profiling` (memory, load).

Papers are cited by the keys of :mod:`smoe_core.papers`. The notebooks call these modules and hold no
algorithm code; a study module holds no algorithm of its own (those are in the library layers below).
"""
