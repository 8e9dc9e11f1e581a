"""SMoE image coding (Jongebloed et al., "Quantized and Regularized Optimization for Coding Images Using
Steered Mixtures-of-Experts"): quantization-aware training and an entropy-coded bitstream."""
from .quantize import (PI_RANGE, FakeQuantizer, QuantizedSMoE, QuantSpec, active_mask, fake_quantize,
                       from_indices, grid_centres, grid_shape, quantize_model, ranges, step, to_indices)

__all__ = ["PI_RANGE", "FakeQuantizer", "QuantizedSMoE", "QuantSpec", "active_mask", "fake_quantize",
           "from_indices", "grid_centres", "grid_shape", "quantize_model", "ranges", "step", "to_indices"]
