"""A small NumPy training stack, fake quantization with the straight-through estimator and LSQ,
and quantization-aware training of a SwiGLU MLP.
"""
