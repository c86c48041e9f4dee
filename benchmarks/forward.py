"""Throughput of refquant's NumPy Llama forward pass against transformers (torch CPU), same run.

Both run the bundled SmolLM2-135M (float32 weights dequantized from the Q4_1 GGUF; torch loads
them from the directory refquant's ``save_hf`` exports) on the same batches of real evaluation
text, with the same number of threads (``--threads``, default 2: set for OpenBLAS/OpenMP before
NumPy is imported, and ``torch.set_num_threads``). Prints tokens/s of each and the ratio.

    python benchmarks/forward.py [--threads 2] [--seq-len 512] [--batches 4] [--batch-size 1]

Measured on the development machine (2 cores shared with other jobs, load average 5-9):
``--threads 1``: 138.2 vs 138.1 tokens/s, ratio 1.00; ``--threads 2``: ratios 0.48-1.16 over five
runs (0.55 at load 4: 54 vs 98 tokens/s; 0.60 with 4 x 512-token batches), varying with the load.
What limits the 2-thread number: OpenBLAS's threading on oversubscribed cores (a [1, 576] x
[576, 1536] product took 16 ms with 2 threads against 0.17 ms with 1; NumPy ran slower with 2
threads than with 1), and NumPy's element-wise work (softmax, RoPE, SiLU, RMSNorm) runs on one
thread where torch uses both. Rerun on an idle machine for a clean 2-thread ratio. Logits agree
to ~2e-4.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--seq-len", type=int, default=512)
parser.add_argument("--batches", type=int, default=4)
parser.add_argument("--batch-size", type=int, default=1)
parser.add_argument("--repeats", type=int, default=2, help="best of this many timed passes")
args = parser.parse_args()
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import numpy as np  # noqa: E402

import refquant as rq  # noqa: E402
from refquant.pipeline.data import evaluation_tokens  # noqa: E402
from refquant.models.llama import forward  # noqa: E402
from refquant.models.loaders import save_hf  # noqa: E402
from _timing import print_machine  # (benchmarks/ is on sys.path)


def best_time(fn, batches, repeats):
    fn(batches[0])                                   # warm-up (first-touch, caches)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in batches:
            fn(b)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    print_machine()
    try:
        import torch
        import transformers
    except ImportError as exc:
        print(f"needs torch and transformers for the baseline: {exc}", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    model = rq.load_model()
    B, L = args.batch_size, args.seq_len
    tokens = evaluation_tokens(model.tokenizer, args.batches * B * L)
    batches = [tokens[i * B * L:(i + 1) * B * L].reshape(B, L) for i in range(args.batches)]
    n_tok = args.batches * B * L
    with tempfile.TemporaryDirectory() as d:
        save_hf(model, d)
        ref = transformers.LlamaForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    t_ours = best_time(lambda b: forward(model, b), batches, args.repeats)

    def torch_forward(b):
        with torch.no_grad():
            return ref(torch.from_numpy(b)).logits

    t_torch = best_time(torch_forward, batches, args.repeats)
    diff = float(np.abs(forward(model, batches[0]) - torch_forward(batches[0]).numpy()).max())
    ours, theirs = n_tok / t_ours, n_tok / t_torch
    print(f"threads {args.threads}, {args.batches} batches of {B} x {L} tokens "
          f"(numpy {np.__version__}, torch {torch.__version__}, transformers "
          f"{transformers.__version__})")
    print(f"refquant (NumPy)       {ours:8.1f} tokens/s")
    print(f"transformers (torch)   {theirs:8.1f} tokens/s")
    print(f"ratio refquant/torch   {ours / theirs:8.2f}   (target >= 0.8)")
    print(f"max |logits diff|      {diff:8.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
