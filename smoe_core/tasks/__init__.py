"""Tasks built on the SMoE engine: image coding with quantized, entropy-coded SMoE models (:mod:`.coding`)."""
