"""GPU kernels: the numba.cuda int8 GEMM and W4 GEMV against vendor libraries, same run.

- int8 GEMM at 4096^3: ``refquant.kernels.cuda`` (shared-memory and register tiles, int32 accumulation)
  vs ``torch._int_mm`` (CUDA torch) or else CuPy's integer ``matmul``; ratio t_vendor / t_ours.
- W4 GEMV at [N, K] = [4096, 4096] and [11008, 4096], groups of 128: ours vs float16 cuBLAS
  GEMV on the dequantized weight (torch or CuPy); ratio t_fp16 / t_w4 (> 1: W4 is faster).

Both sides are timed on device-resident operands (no host transfers), after a warm-up, with a
device synchronization around each burst of 20 calls, best of ``--repeats`` bursts. Results are
checked against the specification on the host first (exact for int8, ``w4_tolerance`` for W4).

``--smoke`` runs tiny shapes, checks results and times only our kernels: usable under the CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1 python benchmarks/gpu_kernels.py --smoke``). Without a GPU
and without the simulator the script says so and exits with status 2.

Usage: python benchmarks/gpu_kernels.py [--smoke] [--repeats 10]
"""

import argparse
import os
import sys
import time

import numpy as np
from _cases import w4_problem  # (benchmarks/ is on sys.path)

import refquant as rq
from refquant.kernels import reference, w4_tolerance
from _timing import print_machine  # (benchmarks/ is on sys.path)


def _vendor():
    """(name, int_mm(a, b) on device, half GEMV(x, W) on device, to_device, sync) or None."""
    try:
        import torch
        if torch.cuda.is_available():
            dev = torch.device("cuda")
            return ("torch", lambda a, b: torch._int_mm(a, b), lambda x, w: x @ w.T,
                    lambda h: torch.from_numpy(h).to(dev), torch.cuda.synchronize)
    except ImportError:
        pass
    try:
        import cupy
        # CuPy's int8 matmul would wrap in int8: widen to int32 (no tensor cores on this path)
        return ("cupy", lambda a, b: cupy.matmul(a.astype(cupy.int32), b.astype(cupy.int32)),
                lambda x, w: x @ w.T, cupy.asarray, cupy.cuda.Device().synchronize)
    except ImportError:
        return None


def timed(fn, sync, repeats, burst=None):
    """Best over ``repeats`` of the mean time of ``burst`` back-to-back calls between two device
    synchronizations (a burst amortizes the host's launch and synchronization latency, tens of
    microseconds, which would otherwise dominate a GEMV of a few)."""
    burst = burst or (1 if repeats == 1 else 20)
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        for _ in range(burst):
            fn()
        sync()
        best = min(best, (time.perf_counter() - t) / burst)
    return best


def main():
    print_machine()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, simulator-friendly")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    if "cuda" not in rq.backends():
        print("no CUDA device (and NUMBA_ENABLE_CUDASIM is not set): nothing to run")
        return 2
    from numba import cuda

    from refquant.kernels import cuda as rq_cuda
    int8_gemm, w4_gemm = rq_cuda.int8_gemm(), rq_cuda.w4_gemm()
    simulated = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"
    vendor = None if (args.smoke or simulated) else _vendor()
    repeats = 1 if args.smoke else args.repeats
    rng = np.random.default_rng(0)
    T = rq_cuda.TILE

    n = 20 if args.smoke else 4096
    a = rng.integers(-128, 128, (n, n), dtype=np.int8)
    b = rng.integers(-128, 128, (n, n), dtype=np.int8)
    d_a, d_b = cuda.to_device(a), cuda.to_device(b)
    d_c = cuda.device_array((n, n), np.int32)
    grid = (-(-n // rq_cuda.GEMM_TILE), -(-n // rq_cuda.GEMM_TILE))
    ours = lambda: int8_gemm[grid, (T, T)](d_a, d_b, d_c)     # noqa: E731
    ours()
    # the oracle: the NumPy specification on small shapes; at 4096^3 a float64 BLAS product,
    # exact here (every partial sum is an integer below K 2^14 = 2^26 < 2^53) and much faster
    # than NumPy's integer matmul, which has no BLAS
    want = (reference.int8_matmul(a, b) if n <= 512
            else (a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64))
    if not np.array_equal(d_c.copy_to_host(), want):
        print("int8 GEMM differs from the specification")
        return 1
    t_ours = timed(ours, cuda.synchronize, repeats)
    ops = 2.0 * n**3
    print(f"{'kernel':<22} {'shape':<16} {'ours ms':>9} {'vendor ms':>9} {'ratio':>6}")
    if vendor:
        name, int_mm, _, to_dev, sync = vendor
        va, vb = to_dev(a), to_dev(b)
        t_v = timed(lambda: int_mm(va, vb), sync, repeats)
        print(f"{'int8 GEMM vs ' + name:<22} {f'{n}^3':<16} {t_ours * 1e3:9.3f} {t_v * 1e3:9.3f} "
              f"{t_v / t_ours:6.3f}   ({ops / t_ours / 1e12:.1f} vs {ops / t_v / 1e12:.1f} TOPS)")
    else:
        print(f"{'int8 GEMM':<22} {f'{n}^3':<16} {t_ours * 1e3:9.3f} {'-':>9} {'-':>6}")

    shapes = [(24, 40)] if args.smoke else [(4096, 4096), (11008, 4096)]
    gs = 8 if args.smoke else 128
    for N, K in shapes:
        x, packed, scales, zeros = w4_problem(rng, N, K, gs)
        dev = [cuda.to_device(v) for v in (x, packed, scales, zeros)]
        d_y = cuda.device_array((1, N), np.float32)
        grid_w4 = (-(-N // rq_cuda.W4_ROWS), 1)
        ours = lambda: w4_gemm[grid_w4, rq_cuda.W4_BLOCK](*dev, np.int32(gs), d_y)  # noqa
        ours()
        want = reference.w4_matmul(x, packed, scales, zeros, gs)
        if not np.all(np.abs(d_y.copy_to_host() - want) <= w4_tolerance(x, scales, zeros, gs)):
            print("W4 GEMV outside the tolerance of the specification")
            return 1
        t_ours = timed(ours, cuda.synchronize, repeats)
        if vendor:
            name, _, gemv, to_dev, sync = vendor
            W_hat = reference.dequantize_w4(packed, scales, zeros, gs, K).astype(np.float16)
            vx, vw = to_dev(x.astype(np.float16)), to_dev(W_hat)
            t_v = timed(lambda: gemv(vx, vw), sync, repeats)
            print(f"{'W4 GEMV vs fp16 ' + name:<22} {f'{N}x{K}':<16} {t_ours * 1e3:9.3f} "
                  f"{t_v * 1e3:9.3f} {t_v / t_ours:6.3f}")
        else:
            print(f"{'W4 GEMV':<22} {f'{N}x{K}':<16} {t_ours * 1e3:9.3f} {'-':>9} {'-':>6}")
    if args.smoke:
        print("smoke run: results checked against the specification; no vendor comparison")
    return 0


if __name__ == "__main__":
    sys.exit(main())
