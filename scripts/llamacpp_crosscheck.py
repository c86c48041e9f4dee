"""llama.cpp itself runs refquant's GGUF files: next-token logits and perplexity beside refquant's.

For each type, the bundled SmolLM2-135M is exported (``refquant quantize --format gguf``'s
:func:`refquant.formats.gguf_export.export_gguf`), then the same file is run by

* llama.cpp (llama-cpp-python's bindings over the library that ``scripts/build_llamacpp.sh``
  builds; ``logits_all`` so every position's logits come back), and
* refquant (:func:`refquant.load_model` of the file, :func:`refquant.models.llama.forward`),

on the same non-overlapping windows of the evaluation split. Both perplexities use refquant's
one log-softmax (:func:`refquant.pipeline.evaluate.token_nll`) with the windowing of
:func:`refquant.pipeline.evaluate.perplexity` (positions 1 .. L-1 of each window scored). llama.cpp multiplies quantized weights by activations that it quantizes to 8 bits
(Q8_0 / Q8_K) inside its dot products, so its logits are not refquant's exactly: the script
reports the largest difference and the share of positions whose argmax agrees.

Usage::

    bash scripts/build_llamacpp.sh            # once, ~14 min on 2 cores
    export LLAMA_CPP_LIB_PATH=build/llamacpp/build/bin PYTHONPATH=build/llamacpp/src:build/llamacpp/pydeps
    nice -n 10 .venv/bin/python scripts/llamacpp_crosscheck.py --types Q8_0,Q4_K_M --tokens 16384
    nice -n 10 .venv/bin/python scripts/llamacpp_crosscheck.py --files results/gguf/files/a.gguf
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import subprocess
import tempfile
import time

import numpy as np


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines()
                    if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


def llamacpp_logits(path, windows: np.ndarray, n_threads: int) -> np.ndarray:
    """``[n_windows, L, V]`` float32 logits of llama.cpp on each window (KV cache reset between)."""
    import llama_cpp

    L = windows.shape[1]
    m = llama_cpp.Llama(str(path), n_ctx=L, n_batch=L, n_ubatch=L, logits_all=True,
                        verbose=False, n_threads=n_threads, n_threads_batch=n_threads)
    out = np.empty((len(windows), L, m.n_vocab()), np.float32)
    for w, window in enumerate(windows):
        m.reset()
        m.eval([int(t) for t in window])
        out[w] = np.asarray(m.scores[:L], dtype=np.float32)
    m.close()
    return out


def compare(path, windows: np.ndarray, n_threads: int) -> dict:
    """llama.cpp and refquant on ``windows [n, L]`` of the file ``path``: max |logit diff|,
    the share of equal argmax, both perplexities (refquant's windowing and log-softmax)."""
    import refquant as rq
    from refquant.models.llama import forward
    from refquant.pipeline.evaluate import token_nll

    theirs = llamacpp_logits(path, windows, n_threads)
    model = rq.load_model(path)
    diff, agree, nll, nll_ours = 0.0, 0, [], []
    for w, window in enumerate(windows):
        ours = forward(model, window[None])[0]                       # [L, V]
        diff = max(diff, float(np.abs(ours - theirs[w]).max()))
        agree += int((ours.argmax(-1) == theirs[w].argmax(-1)).sum())
        nll.append(token_nll(theirs[w][:-1], window[1:]))
        nll_ours.append(token_nll(ours[:-1], window[1:]))
    ppl_ours = float(np.exp(np.mean(np.concatenate(nll_ours))))
    return {"max_abs_logit_diff": diff, "argmax_agree": agree / windows.size,
            "ppl_llamacpp": float(np.exp(np.mean(np.concatenate(nll)))), "ppl_refquant": ppl_ours,
            "bits_per_weight": 8 * pathlib.Path(path).stat().st_size / _n_values(model)}


def _n_values(model) -> int:
    return sum(int(np.prod(s)) for n, s in model.config.weight_shapes().items()
               if not (model.config.tied_embeddings and n == "lm_head.weight"))


def main(argv=None) -> int:
    import refquant as rq
    from refquant.formats.gguf_export import export_gguf
    from refquant.pipeline.data import evaluation_tokens

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--types", default="Q8_0,Q4_K_M", help="comma-separated GGUF types")
    p.add_argument("--tokens", type=int, default=4096, help="evaluation tokens (whole windows)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--imatrix", default=None, help="a llama.cpp imatrix file, or 'auto'")
    p.add_argument("--out-dir", default=None, help="keep the GGUF files here (default: temporary)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--files", default=None,
                   help="comma-separated GGUF files to compare as they are (e.g. the GPTQ / AWQ "
                        "files of scripts/gguf_table.py --keep) instead of exporting --types")
    args = p.parse_args(argv)
    print(f"CPU: {cpu_model()}; {args.threads} threads")
    model = rq.load_model()
    ids = evaluation_tokens(model.tokenizer, args.tokens)
    windows = ids[: len(ids) // args.seq_len * args.seq_len].reshape(-1, args.seq_len)
    imatrix = None
    if args.imatrix == "auto":
        from refquant.pipeline.data import calibration_batch
        from refquant.pipeline.imatrix import collect_imatrix
        imatrix = collect_imatrix(model, calibration_batch(model.tokenizer, 8192, 512))
    elif args.imatrix:
        from refquant.formats.imatrix_file import read_imatrix
        imatrix = read_imatrix(args.imatrix)
    out = pathlib.Path(args.out_dir or tempfile.mkdtemp(prefix="refquant-llamacpp-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"{windows.shape[0]} windows of {args.seq_len} evaluation tokens; imatrix "
          f"{args.imatrix or 'none'}")
    print("| type | bits/weight | llama.cpp PPL | refquant PPL | max abs logit diff | argmax agree |")
    print("|---|---|---|---|---|---|")
    jobs = [(pathlib.Path(f).name, pathlib.Path(f)) for f in args.files.split(",")] \
        if args.files else [(mix, None) for mix in args.types.split(",")]
    for mix, path in jobs:
        t0 = time.perf_counter()
        if path is None:
            path = export_gguf(model, out / f"smollm2-{mix}.gguf", mix, imatrix=imatrix)
        elif not path.is_file():
            raise SystemExit(f"--files: {path}: no such file")
        r = compare(path, windows, args.threads)
        print(f"| {mix} | {r['bits_per_weight']:.2f} | {r['ppl_llamacpp']:.3f} | "
              f"{r['ppl_refquant']:.3f} | {r['max_abs_logit_diff']:.3g} | "
              f"{100 * r['argmax_agree']:.1f}% |  ({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
