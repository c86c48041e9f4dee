"""Random problems shared by the benchmark scripts (run them as ``python benchmarks/NAME.py``)."""

import numpy as np

import refquant as rq


def w4_problem(rng, N, K, group_size, m=1):
    """A random W4 layer ``[N, K]`` and input: ``(x [m, K] f32, packed i32, scales f32 [N, G],
    zeros i32 [N, G])``, codes packed as ``rq.pack(codes, 4, "int32")``."""
    G = -(-K // group_size)
    codes = rng.integers(0, 16, (N, K), dtype=np.uint8)
    packed = rq.pack(codes, 4, "int32")
    scales = rng.uniform(0.001, 0.02, (N, G)).astype(np.float32)
    zeros = rng.integers(0, 16, (N, G), dtype=np.int32)
    x = rng.standard_normal((m, K)).astype(np.float32)
    return x, packed, scales, zeros
