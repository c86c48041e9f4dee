"""What a number becomes: integer ranges and rounding, the quantization spec, uniform affine
and non-uniform (log-scale, codebook) schemes, FP16/BF16 casts, bit packing, sizes.

The bottom layer: it imports nothing else from refquant.
"""
