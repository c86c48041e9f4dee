"""W4 GEMV (one token): the fused Numba kernel vs NumPy float32 GEMV on the dequantized weight.

For each weight shape [N, K] (4-bit codes, groups of 128, packed int32 as
``rq.pack(codes, 4, "int32")``) the script times ``rq.w4_matmul(x, packed, scales, zeros, 128,
backend="numba")`` for ``x`` of shape [1, K] and ``x @ W_hat.T`` with the float32 weight
``W_hat`` already dequantized (the baseline reads 8x more bytes), interleaved, best of
``--repeats``. Target (issue 3): ratio t_float32 / t_w4 >= 2. The kernel's output is checked
against the specification within :func:`refquant.kernels.w4_tolerance` once per shape.

Usage: python benchmarks/w4_gemv.py [--repeats 15] [--m 1]
"""

import argparse

# Threads: GOMP's default wait policy (spin a little, then sleep) for Numba's workers and
# OpenBLAS's defaults; OMP_WAIT_POLICY=passive costs a wake-up per parallel region (about a
# millisecond on this virtual machine), =active keeps Numba's workers spinning during the NumPy
# side. _timing.best_pair times each side in its own burst after a pause (see there).

from _cases import w4_problem  # (benchmarks/ is on sys.path)
from _timing import best_pair, print_machine
import numpy as np

import refquant as rq
from refquant.kernels import reference, w4_tolerance

SHAPES = [(4096, 4096), (11008, 4096)]      # [N, K]: out, in
GROUP = 128


def main():
    print_machine()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--m", type=int, default=1, help="tokens (1 = GEMV)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'N':>6} {'K':>5} {'M':>3} | {'f32 ms':>7} {'w4 ms':>7} | {'f32 GB/s':>8} "
          f"{'w4 GB/s':>7} | {'ratio':>5} target")
    for N, K in SHAPES:
        x, packed, scales, zeros = w4_problem(rng, N, K, GROUP, args.m)
        W_hat = reference.dequantize_w4(packed, scales, zeros, GROUP, K)    # [N, K] float32
        y = rq.w4_matmul(x, packed, scales, zeros, GROUP, backend="numba")  # compile + check
        if not np.all(np.abs(y - x @ W_hat.T) <= w4_tolerance(x, scales, zeros, GROUP)):
            raise SystemExit(f"numba W4 result outside the tolerance at {(N, K)}")
        t32, t4 = best_pair(lambda: x @ W_hat.T,
                            lambda: rq.w4_matmul(x, packed, scales, zeros, GROUP,
                                                 backend="numba"), args.repeats)
        print(f"{N:>6} {K:>5} {args.m:>3} | {t32 * 1e3:7.2f} {t4 * 1e3:7.2f} | "
              f"{W_hat.nbytes / t32 / 1e9:8.1f} {packed.nbytes / t4 / 1e9:7.1f} | "
              f"{t32 / t4:5.2f} >=2")


if __name__ == "__main__":
    main()
