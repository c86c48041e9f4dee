"""``refquant demo``: RTN, GPTQ and AWQ at W8 per-channel, W4 g128 and W3 g128 on the bundled model,
plus a mixed-precision recipe: perplexity, size and time in one table, JSON and a plot.

Every run starts from the same float model (the bundled GGUF's dequantized weights) and the same
calibration and evaluation tokens (disjoint article splits). The default sizes are chosen to
finish in about 15 minutes on a 2-core machine and are printed; ``--full`` uses 16k evaluation
tokens (the size of ``scripts/quality_targets.py``) and more calibration data.

Every argument is checked before any work (numbers and lists by their argparse types, the sizes
against each other, then the model's tokenizer); the output directory is created only when the
results are written.
"""

from __future__ import annotations

import json
import pathlib
import time

import numpy as np

from refquant.commands._args import (check_n_blocks, integer, output_directory,
                                     require_tokenizer, subset)

# default: ~15 minutes on 2 cores (an evaluation of 2048 tokens is ~0.55 TFLOP of forward pass)
# AWQ's searches dominate the default's time (each grid point re-runs a sub-module of every block):
# the default gives them 2 sequences and 10 grid points; --full the paper's 20 points.
DEFAULTS = dict(calib_tokens=2048, eval_tokens=2048, seq_len=256, calib_seq_len=256, awq_seqs=2, awq_grid=10)
FULL = dict(calib_tokens=16384, eval_tokens=16384, seq_len=512, calib_seq_len=512, awq_seqs=16, awq_grid=20)


SETTINGS = {"w8": (8, None), "w4g128": (4, 128), "w3g128": (3, 128), "w4": (4, None)}
# float and microscaled weight formats (refquant.pipeline.weight_formats; RTN for all, GPTQ with
# static block scales for the MX/NVFP4 ones, no AWQ); the same names as recipes.FLOAT_FORMATS_RTN
FORMAT_SETTINGS = ("fp8", "fp8_b128", "mxfp6", "mxfp4", "nvfp4", "fp8_w8a8")
METHODS = ("rtn", "gptq", "awq")


def add_arguments(p):
    p.add_argument("--model", default=None, help="GGUF file or Hugging Face directory (default: bundled SmolLM2-135M)")
    p.add_argument("-o", "--output", default="results", type=output_directory,
                   help="output directory (default results/)")
    p.add_argument("--full", action="store_true", help="larger calibration/evaluation sets (slow)")
    p.add_argument("--calib-tokens", type=integer(1), default=None)
    p.add_argument("--eval-tokens", type=integer(2), default=None)
    p.add_argument("--seq-len", type=integer(2), default=None, help="evaluation window length")
    p.add_argument("--methods", type=subset(METHODS), default="rtn,gptq,awq",
                   help="comma-separated subset of rtn,gptq,awq")
    p.add_argument("--settings", type=subset(tuple(SETTINGS) + FORMAT_SETTINGS),
                   default="w8,w4g128,w3g128",
                   help="comma-separated subset of w8,w4g128,w3g128,w4 and the float formats "
                        + ",".join(FORMAT_SETTINGS) + " (RTN; GPTQ for mxfp6,mxfp4,nvfp4)")
    p.add_argument("--no-mixed", action="store_true", help="skip the mixed-precision recipe")
    p.add_argument("--n-blocks", type=integer(1), default=None, help="quantize only the first N blocks (quick checks)")
    p.add_argument("--awq-grid", type=integer(1), default=None,
                   help="AWQ: grid points of alpha and of the clipping search (default 10; --full 20)")
    p.add_argument("--awq-seqs", type=integer(1), default=None, help="AWQ: calibration sequences its searches see")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")


def _setting(method, bits, group, fmt=None):
    """The LayerSetting of a run; None where ``method`` does not take the float format ``fmt``."""
    from refquant.pipeline.recipes import FLOAT_FORMATS_GPTQ, LayerSetting

    if fmt is not None:
        if method == "rtn" or (method == "gptq" and fmt in FLOAT_FORMATS_GPTQ):
            return LayerSetting(method, fmt=fmt, act_order=method == "gptq")
        return None
    if method == "gptq":                          # the best GPTQ setting: act_order + static groups
        return LayerSetting("gptq", bits, group, act_order=True, static_groups=group is not None)
    return LayerSetting(method, bits, group)


def mixed_recipe(n_layers: int):
    """W3 g128 GPTQ, with the first and last blocks' linears and every down_proj at W4 g128."""
    from refquant.pipeline.recipes import LayerSetting

    w4 = LayerSetting("gptq", 4, 128, act_order=True, static_groups=True)
    w3 = LayerSetting("gptq", 3, 128, act_order=True, static_groups=True)
    return [("layers.0.*", w4), (f"layers.{n_layers - 1}.*", w4), ("*.down_proj", w4), ("*", w3)]


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    base = next(r for r in rows if r["method"] == "float")
    ax.axhline(base["ppl"], color="k", ls="--", lw=1, label=f"float ({base['ppl']:.2f})")
    for method, marker in (("rtn", "o"), ("gptq", "s"), ("awq", "^"), ("mixed", "*")):
        rs = sorted((r for r in rows if r["method"] == method), key=lambda r: r["bits_per_weight"])
        if rs:
            ax.plot([r["bits_per_weight"] for r in rs], [r["ppl"] for r in rs], marker=marker, label=method)
    ax.set_xlabel("stored bits per weight (block linears)")
    ax.set_ylabel("perplexity (evaluation split)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("SmolLM2-135M: perplexity vs bits per weight")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_table(rows) -> str:
    w = max([8] + [len(r["method"]) for r in rows])
    head = f"{'method':<{w}} {'bits':>4} {'group':>6} {'ppl':>9} {'change':>8} {'size MB':>8} {'bits/w':>7} {'seconds':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        g = "-" if r["group"] is None else str(r["group"])
        b = "-" if r["bits"] is None else str(r["bits"])
        lines.append(f"{r['method']:<{w}} {b:>4} {g:>6} {r['ppl']:>9.3f} {r['change_pct']:>+7.2f}% "
                     f"{r['size_mb']:>8.1f} {r['bits_per_weight']:>7.3f} {r['seconds']:>8.1f}")
    return "\n".join(lines)


def run_experiments(model, calib, eval_tokens, runs, *, seq_len, n_blocks=None, progress=False,
                    log=None, awq_max_seqs=8, awq_kw=None):
    """Float baseline, then each ``(method, recipe)`` of ``runs``: quantize with
    :func:`refquant.pipeline.blockwise.quantize_model` on ``calib`` and measure perplexity on
    ``eval_tokens``. Returns one row (dict) per run, the float baseline first."""
    import refquant as rq
    from refquant.pipeline.blocks import linear_names
    from refquant.pipeline.blockwise import quantize_model
    from refquant.pipeline.recipes import recipe_size, resolve_recipe
    from refquant.pipeline.weight_formats import activation_linear

    def evaluate(m, settings=None):
        linear = activation_linear(m, settings or {})           # W8A8 formats: quantized inputs
        return rq.perplexity(m, eval_tokens, seq_len=seq_len, linear=linear,
                             progress=progress).ppl

    t = time.perf_counter()
    base_ppl = evaluate(model)
    float_size = recipe_size(model, {})
    rows = [dict(method="float", bits=None, group=None, label="float", ppl=base_ppl, change_pct=0.0,
                 size_mb=float_size.total_mb, bits_per_weight=float_size.bits_per_weight,
                 seconds=0.0, eval_seconds=time.perf_counter() - t)]
    if log:
        log(f"float: perplexity {base_ppl:.3f}")
    for method, recipe in runs:
        res = quantize_model(model, calib, recipe, n_blocks=n_blocks, progress=progress,
                             awq_max_seqs=awq_max_seqs, awq_kw=awq_kw)
        settings = resolve_recipe(recipe, linear_names(res.n_blocks))
        size = recipe_size(model, settings)
        t = time.perf_counter()
        ppl = evaluate(res.apply(model), settings)
        one = next(iter(settings.values()))
        mixed = isinstance(recipe, list)
        fmt = None if mixed else one.fmt
        rows.append(dict(method=method if fmt is None else f"{method} {fmt}",
                         bits=None if mixed or fmt else one.bits,
                         group=None if mixed or fmt else one.group_size,
                         label=("mixed: " + ", ".join(f"{p}={s.label()}" for p, s in recipe)) if mixed else one.label(),
                         ppl=ppl, change_pct=100 * (ppl / base_ppl - 1), size_mb=size.total_mb,
                         bits_per_weight=size.bits_per_weight, seconds=res.seconds,
                         eval_seconds=time.perf_counter() - t))
        rows[-1]["damp_retries"] = {n: list(v) for n, v in res.damp_retries.items()}
        if log:
            raised = f", damping raised for {len(res.damp_retries)} linears" if res.damp_retries else ""
            log(f"{rows[-1]['label']}: perplexity {ppl:.3f} ({rows[-1]['change_pct']:+.2f}%), "
                f"quantized in {res.seconds:.1f} s{raised}, evaluated in {rows[-1]['eval_seconds']:.1f} s")
    return rows


def _sizes(args) -> dict:
    """The run's sizes: the defaults (or ``--full``'s) with the options given; ``ValueError``
    where the tokens do not fill one sequence or window."""
    sizes = dict(FULL if args.full else DEFAULTS)
    for k in ("calib_tokens", "eval_tokens", "seq_len", "awq_seqs", "awq_grid"):
        if getattr(args, k) is not None:
            sizes[k] = getattr(args, k)
    if sizes["calib_tokens"] < sizes["calib_seq_len"]:
        raise ValueError(f"--calib-tokens {sizes['calib_tokens']} is less than one calibration "
                         f"sequence of {sizes['calib_seq_len']} tokens")
    if sizes["eval_tokens"] < sizes["seq_len"]:
        raise ValueError(f"--eval-tokens {sizes['eval_tokens']} do not fill one window of "
                         f"--seq-len {sizes['seq_len']}")
    return sizes


def run(args) -> int:
    import refquant as rq
    from refquant.pipeline.data import calibration_batch, evaluation_tokens

    sizes = _sizes(args)
    progress = not args.no_progress
    out = pathlib.Path(args.output)
    methods, settings = args.methods, args.settings          # lists (their argparse types)

    t0 = time.perf_counter()
    model = rq.load_model(args.model)
    require_tokenizer(model, "tokenize the calibration and evaluation text")
    check_n_blocks(model, args.n_blocks)
    calib = calibration_batch(model.tokenizer, sizes["calib_tokens"], sizes["calib_seq_len"], args.seed)
    ev = np.asarray(evaluation_tokens(model.tokenizer, sizes["eval_tokens"])).reshape(-1)
    print(f"model: {model.source}")
    print(f"calibration: {calib.shape[0]} sequences x {calib.shape[1]} tokens = {calib.size} tokens "
          f"(seed {args.seed}; AWQ's searches use the first {sizes['awq_seqs']} sequences and "
          f"{sizes['awq_grid']} grid points); "
          f"evaluation: {ev.size} tokens in windows of {sizes['seq_len']}")

    runs = []
    for key in settings:
        bits, group = SETTINGS.get(key, (None, None))
        for method in methods:
            setting = _setting(method, bits, group, key if key in FORMAT_SETTINGS else None)
            if setting is not None:
                runs.append((method, setting))
    if not args.no_mixed and "gptq" in methods:
        runs.append(("mixed", mixed_recipe(model.config.n_layers)))
    rows = run_experiments(model, calib, ev, runs, seq_len=sizes["seq_len"], n_blocks=args.n_blocks,
                           progress=progress, log=print, awq_max_seqs=sizes["awq_seqs"],
                           awq_kw=dict(n_grid=sizes["awq_grid"], clip_grid=sizes["awq_grid"]))
    n_blocks = args.n_blocks
    table = format_table(rows)
    print()
    print(table)
    summary = dict(model=str(model.source), sizes=sizes, seed=args.seed, n_blocks=n_blocks,
                   awq_grid=sizes["awq_grid"], methods=",".join(methods), settings=",".join(settings),
                   total_seconds=time.perf_counter() - t0, rows=rows,
                   notes="size: block linears as stored in the GPTQ format (codes, float16 scales, "
                         "b-bit zeros, int32 g_idx), everything else float16; float = 16 bits/weight")
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "demo.txt").write_text(table + "\n")
    plot(rows, out / "demo.png")
    print(f"\nwrote {out / 'demo.json'}, {out / 'demo.txt'}, {out / 'demo.png'} "
          f"({summary['total_seconds']:.0f} s in total)")
    return 0
