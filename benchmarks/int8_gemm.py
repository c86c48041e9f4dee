"""int8 GEMM throughput: the Numba kernel vs NumPy float32 matmul (OpenBLAS), same run.

For each shape (M, K, N) the script times ``rq.int8_matmul(a, b, backend="numba")`` on int8
operands and ``a_f @ b_f`` on float32 copies, interleaved, best of ``--repeats``, and prints the
ratio ``t_float32 / t_int8`` (> 1: int8 is faster), once for every int8 kernel path this CPU can
run (refquant.kernels.cpu_features: ``avx512_vnni``, ``pmaddwd``), forced through
``REFQUANT_INT8_PATH``. Targets (issue 17): on a VNNI machine >= 3x at (256, 4096, 4096) and >= 2x
at the model's shapes; >= 1.5x for ``pmaddwd`` (the AVX2 machines' path). ``of 4x`` is the ratio
as a fraction of the bound one ``vpdpbusd`` (64 multiply-adds) sets against one float32 FMA
instruction of the same width (16): 4x. The int8 result is checked against the NumPy
specification once per shape and path.
The other helpers share this machine's cores: numbers are noisy, which is why both sides are
measured in the same run and the best of several repeats is kept.

Usage: python benchmarks/int8_gemm.py [--repeats 7] [--threads N]
"""

import argparse
import os

# Threads: GOMP's default wait policy (spin a little, then sleep) for Numba's workers and
# OpenBLAS's defaults; OMP_WAIT_POLICY=passive costs a wake-up per parallel region (about a
# millisecond on this virtual machine), =active keeps Numba's workers spinning during the NumPy
# side. _timing.best_pair times each side in its own burst after a pause (see there).

from _timing import best_pair, print_machine  # (benchmarks/ is on sys.path)
import numpy as np

import refquant as rq
from refquant.kernels import cpu_features

SHAPES = [(512, 576, 1536), (512, 1536, 576), (256, 4096, 4096), (1, 4096, 4096)]


def main():
    print_machine()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="numba threads (default: all)")
    args = ap.parse_args()
    if args.threads:
        import numba
        numba.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"{'M':>5} {'K':>5} {'N':>5} | {'f32 ms':>8} {'int8 ms':>8} | {'f32 GFLOP/s':>11} "
          f"{'int8 GOP/s':>10} | {'ratio':>5} target")
    paths = [p for p in ("avx512_vnni", "pmaddwd") if not cpu_features.missing_features(p)]
    print(f"int8 paths this CPU can run: {paths}; default: {cpu_features.int8_path()}")
    for path in paths:
        os.environ[cpu_features.ENV] = path
        print(f"\npath {path}")
        for M, K, N in SHAPES:
            a = rng.integers(-128, 128, (M, K), dtype=np.int8)
            b = rng.integers(-128, 128, (K, N), dtype=np.int8)
            af, bf = a.astype(np.float32), b.astype(np.float32)
            c = rq.int8_matmul(a, b, backend="numba")                   # compile + check
            if not np.array_equal(c, rq.int8_matmul(a, b, backend="numpy")):
                raise SystemExit(f"numba result differs from the specification at {(M, K, N)}")
            t32, t8 = best_pair(lambda: af @ bf, lambda: rq.int8_matmul(a, b, backend="numba"),
                                args.repeats)
            ops = 2.0 * M * K * N
            if M == 1:
                target = "-"
            elif path == "avx512_vnni":
                target = ">=3" if (K, N) == (4096, 4096) else ">=2"
            else:
                target = ">=1.5" if max(K, N) >= 1536 else "-"
            print(f"{M:>5} {K:>5} {N:>5} | {t32 * 1e3:8.2f} {t8 * 1e3:8.2f} | {ops / t32 / 1e9:11.1f} "
                  f"{ops / t8 / 1e9:10.1f} | {t32 / t8:5.2f} {target:>6}  of 4x: {t32 / t8 / 4:4.0%}")
    os.environ.pop(cpu_features.ENV, None)


if __name__ == "__main__":
    main()
