"""W4 GEMV (one token): refquant's W4A16 and W4A8 kernels beside ggml's own Q4_0 / Q4_K
``mul_mat`` and float32 BLAS, same machine, same threads, same run.

For each weight shape [N, K] the script builds random 4-bit codes with per-group scales and
zero points (GPTQ packing, ``rq.pack(codes, 4, "int32")``) at group sizes 32 (Q4_0's block) and
128, and times, in alternating bursts (``_timing.best_of``: per round each side gets a pause, a
warm-up call that wakes any sleeping thread pool, then back-to-back timed calls):

- ``f32``: ``x @ W_hat.T`` with the float32 weight already dequantized (NumPy/BLAS);
- ``ggml Q4_0``, ``ggml Q4_K``: ``ggml_mul_mat`` of ``W_hat`` quantized by ggml's C (through the
  ``libggml-python`` wheel, ``benchmarks/_ggml.py``) and one float32 row; ggml quantizes the row
  to Q8_0 / Q8_K inside, so its arithmetic is W4A8;
- ``a16 gN``: ``refquant.kernels.w4_matmul`` (float activations), group size N;
- ``a8 gN``: ``refquant.kernels.w4a8_matmul`` (activations to int8 per block of 32, as ggml);

both through ``refquant.kernels.W4Weights`` (the weight checked once, as a model's linear holds
it; the per-call functions re-check scales and zero points on every call, which at group size
32 costs about as much as the kernel). ggml likewise checks nothing per call.

Every kernel output is checked once per shape against the specification (``w4_tolerance``,
``w4a8_tolerance``). Ratios are ``t(ggml Q4_0) / t(refquant)``: >= 1 means refquant is at least
as fast (issue 17's targets: a16 >= 1 at both group sizes, a8 > 1). The paths each kernel took
are printed (``rq.backends(detail=True)``). Timings on a shared machine are noisy: compare the
ratios of one run, not figures of different runs.

With ``--runs R`` the whole comparison (every side, in alternating bursts) is repeated R times
and each ratio is printed as the median of the R runs with its range: on a shared virtual machine
one run's best times can be misleading (ggml's Q4_0 time at 4096 x 4096 moved from 0.69 to 1.69
ms between two runs on one day).

Usage: python benchmarks/w4_gemv.py [--repeats 40] [--threads N] [--runs R]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from _cases import w4_problem  # (benchmarks/ is on sys.path)
from _ggml import GGMLMatVec
from _timing import best_of, print_machine
import numpy as np

import refquant as rq
from refquant.kernels import W4Weights, reference, w4_tolerance, w4a8_matmul, w4a8_tolerance

SHAPES = [(4096, 4096), (11008, 4096)]      # [N, K]: out, in
GROUPS = (32, 128)
GGML_TYPES = {"Q4_0": 2, "Q4_K": 12}        # ggml_type ids


def _ours(N, K, rng, threads):
    """The refquant sides of one shape: ``{name: callable}``, each checked once."""
    sides, x = {}, None
    for gs in GROUPS:
        x, packed, scales, zeros = w4_problem(rng, N, K, gs, 1) if x is None else \
            (x,) + w4_problem(rng, N, K, gs, 1)[1:]
        y = rq.w4_matmul(x, packed, scales, zeros, gs, backend="numba")
        if not np.all(np.abs(y - reference.w4_matmul(x, packed, scales, zeros, gs))
                      <= w4_tolerance(x, scales, zeros, gs)):
            raise SystemExit(f"W4A16 result outside the tolerance at {(N, K, gs)}")
        y8 = w4a8_matmul(x, packed, scales, zeros, gs, backend="numba")
        if not np.all(np.abs(y8 - reference.w4a8_matmul(x, packed, scales, zeros, gs))
                      <= w4a8_tolerance(x, scales, zeros, gs)):
            raise SystemExit(f"W4A8 result outside the tolerance at {(N, K, gs)}")
        w = W4Weights.prepare(packed, scales, zeros, gs, K)                 # checked once
        sides[f"a16 g{gs}"] = lambda w=w: w.matmul(x, backend="numba")
        sides[f"a8 g{gs}"] = lambda w=w: w.matmul_a8(x, backend="numba")
        if gs == 128:
            W_hat = reference.dequantize_w4(packed, scales, zeros, gs, K)      # [N, K] float32
    return x, W_hat, sides


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--runs", type=int, default=1,
                    help="repeat the whole comparison; ratios are then the median of the runs "
                         "with their range (this machine's ggml times move by up to 2.5x)")
    args = ap.parse_args()
    import ggml_oracle                                                       # tests/: ggml's C
    import numba
    numba.set_num_threads(args.threads)
    print_machine()
    print(f"threads: {args.threads} (Numba, ggml)")
    print("paths:", rq.backends(detail=True).get("numba", "numba missing"))
    rng = np.random.default_rng(0)
    for N, K in SHAPES:
        x, W_hat, sides = _ours(N, K, rng, args.threads)
        ggml = {}
        for name, tid in GGML_TYPES.items():
            mv = GGMLMatVec(ggml_oracle.quantize(W_hat, name).reshape(N, -1), tid, K, args.threads)
            ggml[f"ggml {name}"] = (mv, lambda mv=mv: mv(x[0]))
        fns = {"f32": lambda: x @ W_hat.T, **{k: f for k, (_, f) in ggml.items()}, **sides}
        runs = [dict(zip(fns, best_of(list(fns.values()), args.repeats, burst=10)))
                for _ in range(args.runs)]
        print(f"\n[N, K] = [{N}, {K}], ms (best of {args.repeats}, bursts of 10); "
              f"ratio = t(ggml Q4_0) / t" + (f", median [min, max] of {args.runs} runs"
                                             if args.runs > 1 else ""))
        for name in fns:
            ratios = sorted(t["ggml Q4_0"] / t[name] for t in runs)
            spread = (f" [{ratios[0]:.2f}, {ratios[-1]:.2f}]" if args.runs > 1 else "")
            print(f"  {name:<10} {min(t[name] for t in runs) * 1e3:7.3f} ms   "
                  f"ratio {float(np.median(ratios)):5.2f}{spread}")
        for mv, _ in ggml.values():
            mv.close()


if __name__ == "__main__":
    main()
