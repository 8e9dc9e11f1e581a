"""SMoE image coding (R. Jongebloed, E. Bochinski, L. Lange, T. Sikora, "Quantized and Regularized
Optimization for Coding Images Using Steered Mixtures-of-Experts"): quantization-aware training and an
entropy-coded bitstream.

- :mod:`.quantize`: the parameter quantizers (section 2, eqs. 13-15), ranges, pruning rule and the fake
  quantization transform for ``smoe_core.fit(..., transform=...)``.
- :mod:`.bitstream`: :func:`encode`, :func:`decode`, :func:`describe` (section 3 "Arithmetic Coding").
- :mod:`.color`: :func:`rgb_to_yuv`, :func:`yuv_to_rgb` (the authors' OpenCV YUV, exact inverse).
- :mod:`.loss`: :func:`ssim611_loss` (eq. 9 with Y:U:V = 6:1:1), :func:`ssim611` for validation.
- :mod:`.codec`: :func:`~.codec.encode_image`, :func:`~.codec.decode_image` (``smoe encode`` / ``smoe decode``).
- :mod:`.schedule`: :func:`train`, the paper's initialization / pre-training / sparsification / fine-tuning
  schedule with fake quantization throughout, returning the model and its quantized (file) form.
"""
from ...lazy import lazy_exports

#: every public name, with the module that defines it; imported on first use (PEP 562), so that the decoder
#: (``smoe decode``: :mod:`.bitstream`, :mod:`.quantize`, :mod:`.color`) starts without torch, which :mod:`.loss`
#: and :mod:`.schedule` import
_EXPORTS = {
    ".bitstream": ("FORMAT_VERSION", "decode", "describe", "encode", "encode_with_info"),
    ".color": ("rgb_to_yuv", "yuv_to_rgb"),
    ".loss": ("YUV_WEIGHTS", "ssim611", "ssim611_loss", "weighted_ssim"),
    ".schedule": ("CodingResult", "grid_init", "kernel_snapshots_due", "pixel_learning_rates", "sparsity_schedule",
                  "train"),
    ".quantize": ("PI_RANGE", "FakeQuantizer", "QuantizedSMoE", "QuantSpec", "active_mask", "fake_quantize",
                  "from_indices", "grid_centres", "grid_shape", "quantize_model", "ranges", "step", "to_indices"),
}
__getattr__, __dir__ = lazy_exports(__name__, globals(), {
    name: f"{module}:{name}" for module, names in _EXPORTS.items() for name in names})

__all__ = [name for names in _EXPORTS.values() for name in names]
