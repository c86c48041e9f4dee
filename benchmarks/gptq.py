"""GPTQ speed: one 4096x4096 layer vs one float32 4096^3 matrix product, measured in the same run.

Target (issue 5): GPTQ (W4, groups of 128, lazy batches of 128) takes at most 3x the time of the
float32 product ``A @ B`` with A, B of shape [n, n]. The Hessian ``2 X X^T / n`` from ``n``
samples (itself one such product) is built before the timer starts and reported separately, as
is the factorization of ``H^-1`` inside GPTQ.

Usage: python benchmarks/gptq.py [--n 4096] [--repeats 3]
"""

import argparse
import time

import numpy as np

import refquant as rq
from refquant.algorithms._gptq_fast import _inverse_hessian_factor
from _timing import best_time as best_of, print_machine  # (benchmarks/ is on sys.path)


def main():
    print_machine()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096, help="layer size and number of samples")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    n = args.n
    rng = np.random.default_rng(0)
    W = rng.standard_normal((n, n)).astype(np.float32)                 # [out, in]
    X = rng.standard_normal((n, n)).astype(np.float32)                 # [in, samples]
    A = rng.standard_normal((n, n)).astype(np.float32)
    t_mm = best_of(lambda: A @ A, args.repeats)
    t0 = time.perf_counter()
    H = (2.0 / n) * (X @ X.T).astype(np.float64)                        # [in, in]
    H = (H + H.T) / 2
    t_h = time.perf_counter() - t0
    Hd = (H + 0.01 * np.mean(np.diag(H)) * np.eye(n)).astype(np.float32)   # as gptq() factors it
    t_f = best_of(lambda: _inverse_hessian_factor(Hd), 1)
    spec = rq.QuantSpec(bits=4, symmetric=False, granularity="group", group_size=128)
    t_g = best_of(lambda: rq.gptq(W, H, spec, block_size=128), max(1, args.repeats - 1))
    print(f"n = {n}: float32 matmul {t_mm:.3f} s (best of {args.repeats})")
    print(f"  Hessian 2XX^T/n from {n} samples   {t_h:.3f} s  ({t_h / t_mm:.2f}x matmul, not in GPTQ time)")
    print(f"  factor of H^-1 (part of GPTQ)      {t_f:.3f} s  ({t_f / t_mm:.2f}x matmul)")
    print(f"  GPTQ W4 g128, block 128            {t_g:.3f} s  ({t_g / t_mm:.2f}x matmul; target <= 3x)")


if __name__ == "__main__":
    main()
