"""Tasks built on the SMoE engine (model, renderer, training, initializers):

- :mod:`.denoise`: denoising by multi-model fusion of shifted fits ([R-SMoE]), with classical baselines.
- :mod:`.superres`: native super-resolution (a fitted model rendered at any scale).
- :mod:`.tilewise`: tile-wise training and merging ([EDGE] section IV).
- :mod:`.coding`: image coding ([QSMoE]): quantization-aware training, the entropy-coded bitstream.
- :mod:`.nsmoe`: N-SMoE, a network predicting per-block SMoE kernels for medical super-resolution ([N-SMoE]).

Papers are cited by the keys of :mod:`smoe_core.papers`.
"""
