"""N-SMoE: a network predicting per-block SMoE kernels, decoded by our renderer, for medical super-resolution and
denoising ([N-SMoE] in :mod:`smoe_core.papers`: abstract only in our copy; the details follow the authors' code,
github.com/anatolicvs/n-smoe, read, not copied, as each module's docstring says).

- :mod:`.blocks`: overlapping LR blocks (16 x 16, stride 2 in training, 4 at test) and the averaging stitch.
- :mod:`.head`: the network's 7k numbers per block -> SMoE kernels (centre, two scales, angle, gate, expert);
  decoding with our gating (one call of the tiled renderer) or the authors'; export as :class:`~smoe_core.model.SMoE`.
- :mod:`.encoder`: Laplacian resizer + residual blocks with multi-head self-attention (compact: ~1.1M parameters).
- :mod:`.shared_encoder`: our variant, one fully convolutional trunk over the whole image pooled per kernel cell
  (77k parameters with 256 kernels a block; its work per pixel does not grow with the blocks' overlap).
- :mod:`.model`: :class:`~.model.NSMoE`, encoder + head + decoder as one torch module; losses; smoke training.
- :mod:`.degrade`: the stochastic degradation model (BSRGAN-plus chain, and bicubic + blur), seeded.
- :mod:`.data`: the DICOM (pydicom, pydicom-data) and scikit-image images, normalization, fixed splits, pairs.
- :mod:`.train`: the training loop of ``smoe nsmoe train`` (tasks sr2, sr4, denoise, blind; presets; schedule;
  validation; checkpoints every N steps and a bit-identical resume).
- :mod:`.checkpoint`: the checkpoint file (JSON header with a format version and sha256, then the torch state).
- :mod:`.infer`: a trained checkpoint on a whole image in chunks of blocks (``smoe nsmoe upscale / denoise``), and
  the predicted kernels as an SMoE model file.

The submodules are imported on use (``from smoe_core.tasks.nsmoe import model``).
"""
