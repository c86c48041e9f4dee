"""Integer-only execution after Jacob et al. (CVPR 2018): fixed-point requantization, integer
linears and MLPs, the W8A8 linear, and the integer ops of a whole Llama (issue 18):

==================  ==========================================================================
``requant``         dynamic per-token int8 (integer row max, fixed-point reciprocal), static
                    int8, per-row x per-column rescaling of int32 accumulators, residual adds
``ops_exp``         I-BERT's i-exp, integer softmax with a causal mask
``ops_norm``        integer square root (Newton), integer RMSNorm to per-token int8
``ops_rope``        Q30 cos/sin tables, integer rotation
``ops_act``         integer sigmoid, SiLU, SwiGLU
``ops_attention``   int8 Q K^T, integer softmax, uint8 probabilities x int8 V
``ops_linear``      int8 and W4 linears on per-token codes, the int8 embedding table
==================  ==========================================================================
"""
