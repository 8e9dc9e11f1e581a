"""N-SMoE: a network predicting per-block SMoE kernels, decoded by our renderer, for medical super-resolution and
denoising ([N-SMoE] in :mod:`smoe_core.papers`: abstract only in our copy; the details follow the authors' code,
github.com/anatolicvs/n-smoe, read, not copied, as each module's docstring says).

- :mod:`.blocks`: overlapping LR blocks (16 x 16, stride 2 in training, 4 at test) and the averaging stitch.
- :mod:`.head`: the network's 7k numbers per block -> SMoE kernels (centre, two scales, angle, gate, expert);
  decoding with our gating (one ``render_many`` call) or the authors'; export as :class:`~smoe_core.model.SMoE`.
- :mod:`.encoder`: Laplacian resizer + residual blocks with multi-head self-attention (compact: ~1.1M parameters).
- :mod:`.model`: :class:`~.model.NSMoE`, encoder + head + decoder as one torch module; losses; smoke training.
- :mod:`.degrade`: the stochastic degradation model (BSRGAN-plus chain, and bicubic + blur), seeded.
- :mod:`.data`: the DICOM (pydicom, pydicom-data) and scikit-image images, normalization, fixed splits, pairs.

The submodules are imported on use (``from smoe_core.tasks.nsmoe import model``).
"""
