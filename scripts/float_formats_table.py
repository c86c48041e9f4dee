"""The bundled model's perplexity with the floating-point and microscaled weight formats,
beside INT8 and INT4 g128, at 16k evaluation tokens.

Rows (see :mod:`refquant.pipeline.weight_formats` for each format): the float model; RTN of
every block linear in INT8 per-channel, INT4 g128, FP8 E4M3 per-channel, FP8 E4M3 128x128
blocks, MXFP6 E2M3, MXFP4 and NVFP4; W8A8 FP8 (per-channel E4M3 weights and dynamic per-token
E4M3 activations through the pluggable linear); GPTQ with act_order at INT4 g128 (static
groups), MXFP4 and NVFP4 (static block scales, :mod:`refquant.algorithms.gptq_mx`), with
:func:`refquant.pipeline.blockwise.quantize_model` on 8 x 512 calibration tokens. Every row is evaluated on the same
tokens (the evaluation split, windows of 512) and its bits per weight counted by
:func:`refquant.size_report` over the block linears (codes, scales and zero points as stored:
INT fp16 scales and b-bit zeros; FP8 float32 scales; MX one E8M0 byte per 32; NVFP4 one E4M3
byte per 16 plus a float32 per tensor).

Rows are kept in ``<output>/float_formats.json`` as they finish; ``--only`` runs a subset and
adds it to what is there, so the table can be measured in several shorter runs. The table
printed at the end holds every row in the file.

Perplexities do not depend on the number of BLAS threads (README, "What refquant refuses"); on a
machine shared with other work ``OPENBLAS_NUM_THREADS=1`` is much faster than a spinning pool.

Usage::

    python scripts/float_formats_table.py [-o results/float_formats] [--only fp8,mxfp4]
           [--eval-tokens 16384]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

import refquant as rq
from refquant.pipeline.blocks import with_weights
from refquant.pipeline.blockwise import quantize_model
from refquant.pipeline.data import calibration_batch, evaluation_tokens
from refquant.pipeline.recipes import LayerSetting
from refquant.pipeline.weight_formats import (WEIGHT_FORMATS, format_bits_per_weight,
                                              rtn_weights, w8a8_model)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _tables import RowFile, cpu_name, ppl_table, selected_rows  # noqa: E402

SIZES = dict(eval_tokens=16384, seq_len=512, calib_tokens=4096, calib_seq_len=512)
#: row key -> (method, weight format); "float" is the baseline
ROWS = {"float": ("float", None)}
ROWS.update({f"rtn:{n}": ("rtn", n) for n in WEIGHT_FORMATS if n != "fp8_w8a8"})
ROWS["w8a8:fp8_w8a8"] = ("w8a8", "fp8_w8a8")
ROWS.update({f"gptq:{n}": ("gptq", n) for n in ("int4g128", "mxfp4", "nvfp4")})


def measure(key, model, ev, calib, seq_len):
    """One row: ``dict(key, method, format, label, bits_per_weight, ppl, seconds)``."""
    method, fmt = ROWS[key]
    t = time.perf_counter()
    linear = None
    if method == "float":
        view, bpw, label = model, 16.0, "float (bundled GGUF dequantized)"
    elif method == "rtn":
        view = with_weights(model, rtn_weights(model, fmt))
        bpw, label = format_bits_per_weight(model, fmt), WEIGHT_FORMATS[fmt].label
    elif method == "w8a8":
        view, linear = w8a8_model(model, fmt)
        bpw, label = format_bits_per_weight(model, fmt), WEIGHT_FORMATS[fmt].label
    else:                                  # GPTQ with act_order (static groups / block scales)
        setting = LayerSetting("gptq", 4, 128, act_order=True, static_groups=True) \
            if fmt == "int4g128" else LayerSetting("gptq", fmt=fmt, act_order=True)
        view = quantize_model(model, calib, setting).apply(model)
        bpw, label = format_bits_per_weight(model, fmt), WEIGHT_FORMATS[fmt].label
    ppl = rq.perplexity(view, ev, seq_len=seq_len, linear=linear).ppl
    return dict(key=key, method=method, format=fmt, label=label, bits_per_weight=bpw, ppl=ppl,
                seconds=time.perf_counter() - t)


def format_table(rows) -> str:
    return ppl_table(rows, ROWS, [("method", 6, lambda r: r["method"]),
                                  ("format", 44, lambda r: r["label"])])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--output", default="results/float_formats")
    ap.add_argument("--only", default=",".join(ROWS),
                    help=f"comma-separated subset of {','.join(ROWS)}")
    ap.add_argument("--eval-tokens", type=int, default=SIZES["eval_tokens"])
    args = ap.parse_args(argv)
    keys = selected_rows(ap, args.only, ROWS)
    store = RowFile(pathlib.Path(args.output) / "float_formats.json",
                    dict(eval_tokens=args.eval_tokens, seq_len=SIZES["seq_len"]))

    model = rq.load_model(None)
    ev = np.asarray(evaluation_tokens(model.tokenizer, args.eval_tokens)).reshape(-1)
    calib = calibration_batch(model.tokenizer, SIZES["calib_tokens"], SIZES["calib_seq_len"], 0) \
        if any(ROWS[k][0] == "gptq" for k in keys) else None
    print(f"model: {model.source}; evaluation {ev.size} tokens in windows of {SIZES['seq_len']}; "
          f"CPU: {cpu_name()}", flush=True)
    for key in keys:
        r = measure(key, model, ev, calib, SIZES["seq_len"])
        store.save(r)
        print(f"{r['method']} {r['label']}: perplexity {r['ppl']:.3f}, {r['bits_per_weight']:.3f} "
              f"bits/w ({r['seconds']:.0f} s)", flush=True)
    print()
    print(format_table(list(store.rows.values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
