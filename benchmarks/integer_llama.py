"""Tokens/s of the integer-only Llama forward pass against the float one, in the same run.

Prefill: one forward pass over ``--tokens`` tokens of the evaluation text; decode: greedy
generation of ``--new`` tokens after a short prompt (one position per pass through the KV cache;
int8 cache for the integer model). Prints the machine first.

Usage: python benchmarks/integer_llama.py [--tokens 256] [--new 16] [--backend auto]
"""

import argparse
import os
import time

# Threads: GNU OpenMP's default wait policy for Numba's workers, as `refquant eval` runs them (an
# OMP_WAIT_POLICY=passive environment was set here before: it costs ~0.13 ms per parallel region
# on this virtual machine, which the many small products of a decoded token pay).

import refquant as rq
from refquant.models.llama import forward, generate
from refquant.models.llama_int import forward_int, generate_int
from refquant.models.llama_int_prepare import prepare_integer
from refquant.pipeline.data import calibration_tokens, evaluation_tokens
from _timing import best_time as best, print_machine  # (benchmarks/ is on sys.path)


def main():
    print_machine()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--new", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--backend", default="auto")
    args = ap.parse_args()
    model = rq.load_model()
    t0 = time.perf_counter()
    im = prepare_integer(model, calibration_tokens(model.tokenizer, 512), seq_len=256)
    print(f"prepare_integer: {time.perf_counter() - t0:.1f} s (512 calibration tokens)")
    x = evaluation_tokens(model.tokenizer, args.tokens)[None, :]
    prompt = model.tokenizer.encode("The capital of France is")
    forward_int(im, x[:, :8], backend=args.backend)                 # compile the kernels
    rows = []
    tf = best(lambda: forward(model, x), args.repeats)
    ti = best(lambda: forward_int(im, x, backend=args.backend), args.repeats)
    rows.append((f"prefill {args.tokens} tokens", args.tokens / tf, args.tokens / ti))
    df = best(lambda: generate(model, prompt, args.new, stop_at_eos=False), args.repeats)
    di = best(lambda: generate_int(im, prompt, args.new, stop_at_eos=False,
                                   backend=args.backend), args.repeats)
    rows.append((f"decode {args.new} tokens", args.new / df, args.new / di))
    print(f"load average {os.getloadavg()[0]:.1f}; backend {args.backend}")
    print(f"{'':<22} {'float tok/s':>12} {'integer tok/s':>14} {'int/float':>10}")
    for name, f, i in rows:
        print(f"{name:<22} {f:12.1f} {i:14.1f} {i / f:10.3f}")


if __name__ == "__main__":
    main()
