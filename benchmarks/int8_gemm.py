"""int8 GEMM throughput: the Numba kernel vs NumPy float32 matmul (OpenBLAS), same run.

For each shape (M, K, N) the script times ``rq.int8_matmul(a, b, backend="numba")`` on int8
operands and ``a_f @ b_f`` on float32 copies, interleaved, best of ``--repeats``, and prints the
ratio ``t_float32 / t_int8`` (> 1: int8 is faster), once for every int8 kernel path this CPU can
run (refquant.kernels.cpu_features: ``amx_int8``, ``avx512_vnni``, ``avx_vnni``, ``pmaddwd``),
forced through ``REFQUANT_INT8_PATH``. Targets (issue 17): on a VNNI machine >= 3x at
(256, 4096, 4096) and >= 2x at the model's shapes (the AMX path is held to the same); >= 1.5x for
``pmaddwd`` (the AVX2 machines' path). ``of Bx`` is the ratio as a fraction of the bound the
path's instruction sets against float32 FMAs of the same register width: 4x for ``vpdpbusd``
(64 multiply-adds against 16), 2x for ``pmaddwd`` (32 against 16), 32x for AMX (one ``tdpbssd``,
16384 multiply-adds, per 16 cycles against two 512-bit FMAs per cycle). ``of peak`` is the int8
rate as a fraction of the path's measured peak: its micro-kernel run in the same run on data that
stays in L1, on every thread (what the instruction rate of the core allows, with no memory
traffic, packing or edges).
The int8 result is checked against the NumPy specification once per shape and path.
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
from refquant.kernels import cpu_features, cpu_int8_amx, cpu_int8_vnni

SHAPES = [(512, 576, 1536), (512, 1536, 576), (256, 4096, 4096), (1, 4096, 4096)]
BOUND = {"amx_int8": 32, "avx512_vnni": 4, "avx_vnni": 4, "pmaddwd": 2}   # vs float32 FMAs (above)


def _best_rate(run, madds_per_rep: int, seconds: float, reps: int) -> float:
    """Operations per second (2 per multiply-add) of ``run(reps)``: one call to compile, one to
    size ``reps`` to about ``seconds``, then the best of three bursts."""
    import time
    run(1)
    t = time.perf_counter()
    run(reps)
    reps = max(1, int(reps * seconds / (time.perf_counter() - t)))
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        run(reps)
        best = min(best, time.perf_counter() - t)
    return 2.0 * reps * madds_per_rep / best


def amx_peak(seconds: float = 0.5) -> float:
    """Operations per second of the AMX micro-kernel (:func:`cpu_int8_amx.amx_panel`) on
    L1-resident operands, one panel per thread: 64 blocks of 32 rows whose ``A`` rows are all the
    same 512 bytes (row stride 0) against one 16 KiB panel of ``B`` (k = 512), best of three."""
    import numba
    from numba import njit, prange
    panel, S, blocks = cpu_int8_amx.amx_panel(), 8, 64
    T = numba.get_num_threads()

    @njit(parallel=True)
    def run(A, Bq, C, cfg, reps):
        for t in prange(T):
            for _ in range(reps):
                panel(A, 0, 32 * blocks, Bq, t * 2048 * S, C, t * 32, 0, S, cfg)

    A = np.zeros(64 * S, np.int8)
    Bq = np.zeros(T * 2048 * S, np.int8)
    C = np.zeros(T * 32, np.int32)
    cfg = cpu_int8_amx.tile_config()
    return _best_rate(lambda reps: run(A, Bq, C, cfg, reps), T * blocks * 32 * 32 * 64 * S, seconds, 100)


def kernel_peak(path: str, seconds: float = 0.5) -> float:
    """Operations per second (2 per multiply-add) of ``path``'s micro-kernel on L1-resident
    operands, one tile per thread, best of three bursts: the path's instruction-bound peak."""
    import numba
    from numba import njit, prange
    if path == "amx_int8":
        return amx_peak(seconds)
    if path in cpu_int8_vnni.PATH_LANES:
        k, lanes = cpu_int8_vnni, cpu_int8_vnni.PATH_LANES[path]
        mr, nr = k.TILES[lanes]
        tile, per_p, b_dtype, b_len = k.dpbusd_tile(lanes), 4, np.int8, 4 * nr
    else:
        from refquant.kernels import cpu_int8 as k
        tile, mr, nr, per_p, b_dtype, b_len = k.madd_tile(), k.MR, k.NR, 2, np.int16, 2 * k.NR
    P = 128
    T = numba.get_num_threads()

    @njit(parallel=True)
    def run(Aw, Bp, C, reps):
        for t in prange(T):
            for _ in range(reps):
                tile(Aw, t * mr * P, P, Bp, t * b_len * P, C, t * mr * nr, nr, P)

    Aw = np.zeros(T * mr * P, np.int32)
    Bp = np.zeros(T * b_len * P, b_dtype)
    C = np.zeros(T * mr * nr, np.int32)
    return _best_rate(lambda reps: run(Aw, Bp, C, reps), T * P * mr * nr * per_p, seconds, 1000)


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
    paths = [p for p in cpu_features.INT8_PATHS if not cpu_features.missing_features(p)]
    print(f"int8 paths this CPU can run: {paths}; default: {cpu_features.int8_path()}")
    for path in paths:
        os.environ[cpu_features.ENV] = path
        peak = kernel_peak(path)
        print(f"\npath {path}: micro-kernel peak on L1 data {peak / 1e9:.0f} GOP/s")
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
            elif path in cpu_int8_vnni.PATH_LANES or path == "amx_int8":
                target = ">=3" if (K, N) == (4096, 4096) else ">=2"
            else:
                target = ">=1.5" if max(K, N) >= 1536 else "-"
            print(f"{M:>5} {K:>5} {N:>5} | {t32 * 1e3:8.2f} {t8 * 1e3:8.2f} | {ops / t32 / 1e9:11.1f} "
                  f"{ops / t8 / 1e9:10.1f} | {t32 / t8:5.2f} {target:>6}  of {BOUND[path]}x: {t32 / t8 / BOUND[path]:4.0%}  of peak: {ops / t8 / peak:4.0%}")
    os.environ.pop(cpu_features.ENV, None)


if __name__ == "__main__":
    main()
