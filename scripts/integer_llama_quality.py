"""Perplexity of the integer-only SmolLM2-135M (issue 18) beside float and simulated W8A8.

Rows (``--rows``, comma-separated; each result is merged into ``--out``, a JSON file):

=================  ==========================================================================
``float``          the float32 forward pass (the GGUF's Q4_1 weights dequantized)
``w8a8_sim``       W8A8 with float non-linear ops: ``refquant.integer.w8a8.w8a8_linear``
``int_dynamic``    integer-only, W8 per channel, per-token int8 activations (integer row max)
``int_static``     integer-only, static per-tensor activation scales (min-max, calibration split)
``int_w4_gptq``    integer-only, dynamic activations, W4 g128 GPTQ weights (asymmetric)
``w4_gptq_float``  the same GPTQ weights dequantized, float32 forward (what ``int_w4_gptq`` adds)
``abl_<op>``       ``int_dynamic`` with one op swapped back to float64 (``rms_norm``, ``rope``,
                   ``softmax``, ``attention``, ``swiglu``)
=================  ==========================================================================

Usage: nice -n 10 python scripts/integer_llama_quality.py --rows float,w8a8_sim --tokens 2048
"""

import argparse
import json
import os
import pathlib
import platform
import subprocess
import time

import numpy as np

import refquant as rq
from refquant.integer.w8a8 import w8a8_linear
from refquant.models.llama_int import FLOAT_OPS
from refquant.models.llama_int_prepare import prepare_integer
from refquant.pipeline.data import calibration_batch, calibration_tokens, evaluation_tokens
from refquant.pipeline.evaluate_int import integer_perplexity

OUT = pathlib.Path(__file__).with_name("integer_llama_results.json")


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines() if "Model name" in l)
    except Exception:                                          # noqa: BLE001 (informational)
        return platform.processor()


def gptq_result(model, n_calib: int):
    from refquant.pipeline.blockwise import quantize_model
    from refquant.pipeline.recipes import LayerSetting
    calib = calibration_batch(model.tokenizer, n_calib, 512)
    return quantize_model(model, calib, LayerSetting("gptq", 4, 128))


def gptq_w4(model, n_calib: int):
    res = gptq_result(model, n_calib)
    return {name: (ly.codes, np.asarray(ly.qparams.scale, np.float64),
                   np.asarray(ly.qparams.zero_point).astype(np.int16), 128)
            for name, ly in res.layers.items()}, res.seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="float,w8a8_sim,int_dynamic")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--calib-tokens", type=int, default=2048)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    model = rq.load_model()
    tokens = evaluation_tokens(model.tokenizer, args.tokens)
    calib = calibration_tokens(model.tokenizer, args.calib_tokens)
    out = pathlib.Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    prepared = {}
    for row in args.rows.split(","):
        t0 = time.perf_counter()
        extra = {}
        if row == "float":
            r = rq.perplexity(model, tokens, seq_len=args.seq_len)
        elif row == "w8a8_sim":
            r = rq.perplexity(model, tokens, seq_len=args.seq_len, linear=w8a8_linear(model))
        elif row == "w4_gptq_float":
            res = gptq_result(model, args.calib_tokens)
            extra["gptq_s"] = res.seconds
            r = rq.perplexity(res.apply(model), tokens, seq_len=args.seq_len)
        else:
            mode = "static" if row == "int_static" else "dynamic"
            w4 = None
            if row == "int_w4_gptq":
                w4, extra["gptq_s"] = gptq_w4(model, args.calib_tokens)
            key = (mode, w4 is not None)
            if key not in prepared:
                prepared[key] = prepare_integer(model, calib, mode=mode, w4=w4,
                                                seq_len=args.seq_len)
            float_ops = (row[4:],) if row.startswith("abl_") else ()
            if float_ops and float_ops[0] not in FLOAT_OPS:
                raise ValueError(f"unknown ablation {row!r}")
            r = integer_perplexity(prepared[key], tokens, seq_len=args.seq_len,
                                   float_ops=float_ops)
        dt = time.perf_counter() - t0
        results[row] = dict(ppl=r.ppl, nll=r.nll, n_tokens=r.n_tokens, seq_len=r.seq_len,
                            calib_tokens=args.calib_tokens, seconds=round(dt, 1),
                            cpu=cpu_model(), load=os.getloadavg()[0], **extra)
        print(f"{row:<16} ppl {r.ppl:8.3f}  ({r.n_tokens} predicted tokens, {dt:.0f} s)",
              flush=True)
        out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
