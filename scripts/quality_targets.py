"""Issue 5's quality targets on the bundled model, at >= 16k evaluation tokens.

Runs the float baseline and RTN / GPTQ / AWQ at W8 per-channel, W4 g128, W4 per-channel and
W3 g128 (GPTQ both plain, in column order with dynamic groups, and in its best setting:
act_order with static groups), evaluates each on the same evaluation tokens, prints the table
and checks each target as a line "met" / "NOT met". Writes ``quality.json`` beside the table.

This is a measurement, not a test: it takes about half an hour on 2 cores.

Usage: python scripts/quality_targets.py [-o results/quality] [--eval-tokens 16384]
"""

import argparse
import json
import pathlib
import time

import numpy as np

import refquant as rq
from refquant.commands.demo import QUALITY_SIZES, format_table, quality_runs, quality_targets, run_experiments
from refquant.commands.quantize import calibration_batch
from refquant.pipeline.data import evaluation_tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default="results/quality")
    for k, v in QUALITY_SIZES.items():
        ap.add_argument("--" + k.replace("_", "-"), type=int, default=v)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-blocks", type=int, default=None, help="only the first N blocks (smoke test)")
    args = ap.parse_args()
    out = pathlib.Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = rq.load_model()
    calib = calibration_batch(model.tokenizer, args.calib_tokens, args.calib_seq_len, args.seed)
    ev = np.asarray(evaluation_tokens(model.tokenizer, args.eval_tokens)).reshape(-1)
    print(f"calibration {calib.shape[0]} x {calib.shape[1]} tokens (AWQ searches: {args.awq_seqs} "
          f"sequences, {args.awq_grid} grid points); evaluation {ev.size} tokens, windows of {args.seq_len}",
          flush=True)
    rows = run_experiments(model, calib, ev, quality_runs(), seq_len=args.seq_len, n_blocks=args.n_blocks,
                           progress=False, log=lambda s: print(s, flush=True), awq_max_seqs=args.awq_seqs,
                           awq_kw=dict(n_grid=args.awq_grid, clip_grid=args.awq_grid))
    table = format_table(rows)
    targets = quality_targets(rows)
    print()
    print(table)
    print()
    for text, met in targets:
        print(("" if met is None else "met      " if met else "NOT met  ") + text)
    (out / "quality.txt").write_text(table + "\n\n" + "\n".join(
        ("" if met is None else "met      " if met else "NOT met  ") + t for t, met in targets) + "\n")
    (out / "quality.json").write_text(json.dumps(dict(
        args=vars(args), rows=rows, targets=[dict(text=t, met=m) for t, m in targets],
        total_seconds=time.perf_counter() - t0), indent=2) + "\n")
    print(f"\n{time.perf_counter() - t0:.0f} s in total")


if __name__ == "__main__":
    main()
