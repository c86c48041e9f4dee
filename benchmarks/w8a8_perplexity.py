"""W8A8 perplexity of the bundled SmolLM2-135M beside the float one, on the same tokens.

W8A8 = per-channel int8 weights, per-token dynamic int8 activations, every linear layer's
product exact in int32 through ``rq.int8_matmul`` (``refquant.integer.w8a8``). The float baseline uses
the model's float32 weights (the GGUF's Q4_1 weights dequantized). Both are evaluated on the
first ``--tokens`` tokens of the evaluation split in windows of ``--seq-len``; the script prints
both perplexities, their ratio and the wall times.

Usage: python benchmarks/w8a8_perplexity.py [--tokens 4096] [--seq-len 256] [--backend auto]
"""

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "passive")     # see benchmarks/int8_gemm.py

import refquant as rq                                    # noqa: E402
from refquant.pipeline.data import evaluation_tokens              # noqa: E402
from refquant.kernels import auto_backend                # noqa: E402
from refquant.integer.w8a8 import w8a8_linear                    # noqa: E402
from _timing import print_machine  # (benchmarks/ is on sys.path)


def main():
    print_machine()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--backend", default="auto")
    args = ap.parse_args()
    model = rq.load_model()
    tokens = evaluation_tokens(model.tokenizer, args.tokens)
    t0 = time.perf_counter()
    ref = rq.perplexity(model, tokens, seq_len=args.seq_len)
    t1 = time.perf_counter()
    q = rq.perplexity(model, tokens, seq_len=args.seq_len,
                      linear=w8a8_linear(model, backend=args.backend))
    t2 = time.perf_counter()
    backend = auto_backend() if args.backend == "auto" else args.backend
    print(f"bundled model {model.source}")
    print(f"{ref.n_tokens} predicted tokens, {ref.n_windows} windows of {ref.seq_len}")
    print(f"{'path':<28} {'ppl':>8} {'time s':>7}")
    print(f"{'float32':<28} {ref.ppl:8.3f} {t1 - t0:7.1f}")
    print(f"{'W8A8 (int8_matmul ' + backend + ')':<28} {q.ppl:8.3f} {t2 - t1:7.1f}")
    print(f"ppl ratio W8A8 / float: {q.ppl / ref.ppl:.4f}")


if __name__ == "__main__":
    main()
