"""Tokens/s of greedy decoding on the bundled model: float32 vs W4 (packed kernel) vs W8A8.

Three linear layers in the same forward pass (:mod:`refquant.models.llama`, KV cache), the same
prompt and the same number of new tokens, timed in the same run:

* ``float32``: the bundled SmolLM2-135M's dequantized weights, ``x @ W.T`` through BLAS;
* ``W4 g128``: a GPTQ 4-bit, group-128 checkpoint of that model, made here with
  ``refquant quantize --method gptq`` (``--calib-tokens`` calibration tokens), read back with
  ``refquant.formats.gptq.load_any`` and run through
  :class:`refquant.formats.gptq_linear.CheckpointLinear` (the packed W4A16 kernel, what
  ``refquant generate CKPT`` runs);
* ``W8A8``: :func:`refquant.integer.w8a8.w8a8_linear` on the float model (per-channel int8
  weights, per-token int8 activations, ``rq.int8_matmul``).

The embedding, norms, attention and the tied output head are float32 in all three. Decode
tokens/s is ``(n - 1) / (t(n) - t(1))`` with ``t(n)`` the best time of
``generate(prompt, n)`` (so the prompt's pass is not counted), best of ``--repeats``; the ratios
are against float32 measured in the same run. Prints the machine and the load average.

    python benchmarks/decode_speed.py [--new 32] [--repeats 3] [--checkpoint DIR]

``--checkpoint DIR``: make the W4 checkpoint there and keep it (a folder that already holds one
is reused); by default a temporary folder, removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "passive")     # see benchmarks/int8_gemm.py


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _timing import best_time, print_machine             # noqa: E402

PROMPT = "The capital of France is"


def make_checkpoint(directory: pathlib.Path, calib_tokens: int) -> float:
    """``refquant quantize --method gptq --bits 4 --group-size 128`` of the bundled model into
    ``directory`` unless one is there; the seconds it took (0 when reused)."""
    from refquant.cli import main
    if (directory / "quantize_config.json").is_file():
        return 0.0
    t = time.perf_counter()
    rc = main(["quantize", "-o", str(directory), "--method", "gptq", "--bits", "4",
               "--group-size", "128", "--calib-tokens", str(calib_tokens), "--seq-len", "256",
               "--no-progress"])
    if rc != 0:
        raise SystemExit(f"refquant quantize failed ({rc})")
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new", type=int, default=32, help="new tokens (default 32)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--calib-tokens", type=int, default=1024)
    ap.add_argument("--checkpoint", default=None, help="make / reuse the W4 checkpoint here")
    args = ap.parse_args()
    print_machine()

    import refquant as rq
    from refquant.formats.gptq import load_any
    from refquant.formats.gptq_linear import CheckpointLinear
    from refquant.integer.w8a8 import w8a8_linear
    from refquant.models.llama import generate

    ckpt = pathlib.Path(args.checkpoint) if args.checkpoint else pathlib.Path(tempfile.mkdtemp())
    try:
        t_q = make_checkpoint(ckpt, args.calib_tokens)
        print(f"W4 checkpoint: {ckpt} (GPTQ 4-bit g128, {args.calib_tokens} calibration tokens"
              + (f", made in {t_q:.0f} s)" if t_q else ", reused)"))
        model = rq.load_model()
        w4_model = load_any(ckpt)
        w4 = CheckpointLinear(w4_model, ckpt)
        sides = [("float32", model, None), ("W4 g128 (packed kernel)", w4_model, w4),
                 ("W8A8 (int8 GEMM)", model, w8a8_linear(model))]
        prompt = model.tokenizer.encode(PROMPT)
        rows, texts = [], []
        load = os.getloadavg()
        for name, m, linear in sides:
            def run(n, m=m, linear=linear):
                return generate(m, prompt, n, linear=linear, stop_at_eos=False)
            t1 = best_time(lambda: run(1), args.repeats)
            tn = best_time(lambda: run(args.new), args.repeats)
            rows.append((name, (args.new - 1) / (tn - t1), 1 / t1))
            texts.append((name, run(args.new)))
        load = tuple(max(a, b) for a, b in zip(load, os.getloadavg()))
        print(w4.describe())
        print(f"load average (1, 5, 15 min; the larger of start and end): "
              f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        print(f"prompt {PROMPT!r} ({len(prompt)} tokens), {args.new} new tokens, best of "
              f"{args.repeats}")
        print(f"{'linear layers':<26} {'decode tok/s':>12} {'vs float32':>10} {'prompt+1 s':>11}")
        base = rows[0][1]
        for name, tps, inv_t1 in rows:
            print(f"{name:<26} {tps:12.1f} {tps / base:10.2f} {1 / inv_t1:11.3f}")
        ref = texts[0][1]
        for name, toks in texts:
            same = next((i for i, (a, b) in enumerate(zip(ref, toks)) if a != b), len(toks))
            print(f"{name}: the first {same} of {len(toks)} greedy tokens are float32's: "
                  f"{model.tokenizer.decode(toks)!r}")
    finally:
        if not args.checkpoint:
            shutil.rmtree(ckpt, ignore_errors=True)


if __name__ == "__main__":
    main()
