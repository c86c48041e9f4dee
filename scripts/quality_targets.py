"""The quality targets on the bundled model, at >= 16k evaluation tokens.

Runs the float baseline and RTN / GPTQ / AWQ at W8 per-channel, W4 g128, W4 per-channel and
W3 g128 (GPTQ both plain, in column order with dynamic groups, and in its best setting:
act_order with static groups), evaluates each on the same evaluation tokens, prints the table
and checks each target as a line "met" / "NOT met". Writes ``quality.json`` beside the table.

The runs (:func:`quality_runs`), their sizes (``QUALITY_SIZES``) and the arithmetic of the
targets (:func:`quality_targets`) live here; ``tests/test_pipeline.py`` checks the arithmetic on
made-up perplexities and, in a slow test, repeats the whole run.

This is a measurement, not a test: it takes about half an hour on 2 cores.

Usage: python scripts/quality_targets.py [-o results/quality] [--eval-tokens 16384]
"""

import argparse
import json
import pathlib
import time

import numpy as np

import refquant as rq
from refquant.commands.demo import format_table, run_experiments
from refquant.pipeline.data import calibration_batch, evaluation_tokens
from refquant.pipeline.recipes import LayerSetting

# >= 16k evaluation tokens
QUALITY_SIZES = dict(eval_tokens=16384, seq_len=512, calib_tokens=4096, calib_seq_len=512, awq_seqs=4, awq_grid=20)


def quality_runs():
    """The runs of the quality targets: ``(method, LayerSetting)``; ``gptq-plain`` is GPTQ in
    column order with dynamic groups."""
    best = dict(act_order=True)
    return [
        ("rtn", LayerSetting("rtn", 8, None)),
        ("gptq", LayerSetting("gptq", 8, None, **best)),
        ("awq", LayerSetting("awq", 8, None)),
        ("rtn", LayerSetting("rtn", 4, 128)),
        ("gptq-plain", LayerSetting("gptq", 4, 128)),
        ("gptq", LayerSetting("gptq", 4, 128, static_groups=True, **best)),
        ("awq", LayerSetting("awq", 4, 128)),
        ("rtn", LayerSetting("rtn", 4, None)),
        ("gptq-plain", LayerSetting("gptq", 4, None)),
        ("gptq", LayerSetting("gptq", 4, None, **best)),
        ("rtn", LayerSetting("rtn", 3, 128)),
        ("gptq", LayerSetting("gptq", 3, 128, static_groups=True, **best)),
        ("awq", LayerSetting("awq", 3, 128)),
    ]


def quality_targets(rows):
    """The targets as ``(text, met)`` pairs from the rows of
    :func:`refquant.commands.demo.run_experiments` over :func:`quality_runs` (``met`` is None for
    a line that reports without a target). ``recovered = 1 - (ppl - ppl_float) / (ppl_RTN -
    ppl_float)``: the share of RTN's perplexity increase that a method removes."""
    base = rows[0]["ppl"]
    ppl = {(r["method"], r["bits"], r["group"]): r["ppl"] for r in rows[1:]}
    inc = {k: v - base for k, v in ppl.items()}

    def recovered(method, bits, group):
        return 1 - inc[(method, bits, group)] / inc[("rtn", bits, group)]

    out = [(f"W8 per-channel RTN increase {100 * inc[('rtn', 8, None)] / base:+.2f}% <= 0.5%",
            inc[("rtn", 8, None)] / base <= 0.005)]
    for m in ("gptq", "awq"):
        out.append((f"W4 g128 {m} {ppl[(m, 4, 128)]:.3f} < RTN {ppl[('rtn', 4, 128)]:.3f}",
                    ppl[(m, 4, 128)] < ppl[("rtn", 4, 128)]))
    plain, rtn = ppl[("gptq-plain", 4, 128)], ppl[("rtn", 4, 128)]
    out.append((f"(not a target) W4 g128 plain GPTQ {plain:.3f} vs RTN {rtn:.3f}: plain GPTQ "
                f"{'beats' if plain < rtn else 'does not beat'} RTN", None))
    r = recovered("gptq", 4, None)
    out.append((f"W4 per-channel GPTQ recovers {100 * r:.0f}% of RTN's increase (>= 33%)", r >= 1 / 3))
    rg, ra = recovered("gptq", 3, 128), recovered("awq", 3, 128)
    out.append((f"W3 g128 best of GPTQ/AWQ recovers {100 * max(rg, ra):.0f}% (>= 50%)", max(rg, ra) >= 0.5))
    out.append((f"W3 g128 GPTQ recovers {100 * rg:.0f}%, AWQ {100 * ra:.0f}% (each >= 25%)",
                min(rg, ra) >= 0.25))
    return out


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
