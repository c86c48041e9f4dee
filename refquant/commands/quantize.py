"""``refquant quantize MODEL --method gptq --bits 4 --group-size 128 -o DIR``.

Quantizes every block linear of a model (GGUF file or Hugging Face directory; default the
bundled SmolLM2) with the sequential pipeline and exports a GPTQ-style checkpoint
(:mod:`refquant.formats.gptq`) that ``refquant eval DIR`` reads back. The export is streamed: each
block is packed, written as its own shard and verified by re-reading as soon as it is quantized
(:class:`refquant.formats.gptq.CheckpointWriter`), so memory does not grow with the model's depth:
the source is read with a bounded float32 cache
(:data:`refquant.models.loaders.INFERENCE_CACHE_BYTES`) from which each finished block is
dropped, and every tensor the pipeline does not change (the blocks after ``--n-blocks``, the
embedding, the head, norms) is copied in its source dtype without being cached.
``--calib-batch`` sequences run through a block at a time.

Every argument is checked before any work (numbers by their argparse types, then the model's
tokenizer, the block count and the output directory), and the output directory is created
only once they all pass. A run that fails after that (e.g. GPTQ's Hessian of a layer cannot be
factored at any damping tried) removes what it wrote. Linears whose Hessian needed more
damping than ``--damp`` are printed as they happen and listed in ``quantize_config.json``
(``damp_retries``: layer -> [damp used, retries]).

``--format gguf --type TYPE -o OUT.gguf [--imatrix FILE|auto] [--method rtn|gptq|awq]`` writes a
llama.cpp GGUF file instead (``refquant.commands.quantize_gguf``; rtn is llama-quantize's, gptq
and awq quantize onto each tensor's block format with calibration data).

The directory is a complete Hugging Face one (``config.json`` with its ``quantization_config``,
the tokenizer files, ``generation_config.json``: :mod:`refquant.formats.gptq_hf`), so
transformers and GPTQModel read it as it is. With ``--format gptq`` (v1), a layer holding zero
points equal to 0, which some peer readers misread
(:func:`refquant.formats.gptq_layers.v1_zero_point_note`), is printed with the count as it is
written, and the summary points to ``--format gptq_v2``.
"""

from __future__ import annotations

import pathlib
import shutil
import time
import warnings

from refquant.commands._args import (check_n_blocks, finite_float, group_size, integer,
                                     output_path, require_tokenizer)
from refquant.commands._heap import keep_freed_memory


def add_arguments(p):
    p.add_argument("model", nargs="?", default=None, help="GGUF file or Hugging Face directory (default: bundled SmolLM2-135M)")
    p.add_argument("-o", "--output", required=True, type=output_path,
                   help="output directory (created; must not hold a checkpoint already), or the "
                        ".gguf file for --format gguf")
    p.add_argument("--method", choices=("rtn", "gptq", "awq"), default=None,
                   help="default gptq (rtn, as llama-quantize, for --format gguf)")
    p.add_argument("--bits", type=int, default=4, choices=(2, 3, 4, 8))
    p.add_argument("--group-size", type=group_size, default=128, help="group size along the input dimension; 0 or -1: per output channel")
    p.add_argument("--sym", action="store_true", help="symmetric codes (default asymmetric)")
    p.add_argument("--act-order", action="store_true", help="GPTQ: columns by decreasing Hessian diagonal")
    p.add_argument("--static-groups", action="store_true", help="GPTQ: group parameters fixed before the pass")
    p.add_argument("--damp", type=finite_float(0.0), default=0.01,
                   help="GPTQ: dampening, a fraction of mean(diag H) (finite, >= 0; default 0.01)")
    p.add_argument("--calib-tokens", type=integer(1), default=8192, help="calibration tokens (default 8192)")
    p.add_argument("--seq-len", type=integer(1), default=256, help="calibration sequence length")
    p.add_argument("--calib-batch", type=integer(1), default=8,
                   help="calibration sequences per forward chunk (default 8; bounds the block's "
                        "transient activations, [batch, seq-len, FFN] and [batch, heads, seq-len^2])")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=("gptq", "gptq_v2", "gguf"), default="gptq",
                   help="zero-point convention: gptq (v1, stores zero-1; a zero point of 0 is misread "
                        "by AutoGPTQ's CUDA kernel and GPTQModel's conversion, and warned about) or "
                        "gptq_v2 (stores zero); gguf: a llama.cpp file of --type")
    p.add_argument("--type", default=None, help="--format gguf: llama-quantize's type (Q8_0, Q4_0, "
                   "Q4_1, Q5_0, Q5_1, Q2_K, Q3_K_S/M/L, Q4_K_S/M, Q5_K_S/M, Q6_K, IQ4_NL, IQ4_XS, F16, F32)")
    p.add_argument("--imatrix", default=None, help="--format gguf: a llama.cpp imatrix file (GGUF or "
                   ".dat), or 'auto' to compute one on the calibration text")
    p.add_argument("--pure", action="store_true", help="--format gguf: every tensor of the type's "
                   "default block type (llama-quantize --pure)")
    p.add_argument("--n-blocks", type=integer(1), default=None, help="quantize only the first N blocks (quick checks)")
    p.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    import refquant as rq
    from refquant.pipeline.data import calibration_batch
    from refquant.models.loaders import INFERENCE_CACHE_BYTES
    from refquant.pipeline.recipes import LayerSetting

    if args.format == "gguf":
        from refquant.commands.quantize_gguf import run as run_gguf
        return run_gguf(args)
    args.method = args.method or "gptq"
    if pathlib.Path(args.output).is_file():
        raise ValueError(f"-o {args.output!r} exists and is not a directory")
    if args.calib_tokens < args.seq_len:
        raise ValueError(f"--calib-tokens {args.calib_tokens} is less than one sequence of "
                         f"--seq-len {args.seq_len}")
    gs = None if args.group_size in (0, -1) else args.group_size
    setting = LayerSetting(args.method, args.bits, gs, symmetric=args.sym, act_order=args.act_order,
                           static_groups=args.static_groups)
    keep_freed_memory()                                                 # see commands/_heap.py
    t0 = time.perf_counter()
    model = rq.load_model(args.model, cache=INFERENCE_CACHE_BYTES)      # bounded float32 cache
    require_tokenizer(model, "tokenize the calibration text")
    check_n_blocks(model, args.n_blocks)
    calib = calibration_batch(model.tokenizer, args.calib_tokens, args.seq_len, args.seed)
    out = pathlib.Path(args.output)
    existed = out.exists()
    writer = _writer(args, model, calib)      # the last check: refuses a directory holding a checkpoint
    try:
        print(f"model {model.source}; calibration {calib.shape[0]} x {calib.shape[1]} tokens; {setting.label()}")
        res = _quantize_and_write(args, model, calib, setting, writer)
    except BaseException:
        _discard(out, existed)
        raise
    retried = f"; damping raised for {len(res.damp_retries)} linears" if res.damp_retries else ""
    print(f"quantized {writer.n_layers} linears in {res.seconds:.1f} s{retried}; wrote {out} block by "
          f"block (each shard verified by re-import); total {time.perf_counter() - t0:.1f} s")
    if writer.v1_zero_points:
        print(f"{len(writer.v1_zero_points)} linears hold {sum(writer.v1_zero_points.values())} zero "
              "points equal to 0, which AutoGPTQ's qlinear_cuda and GPTQModel's v1 conversion misread "
              "in the v1 'gptq' format; re-export with --format gptq_v2 for those readers")
    return 0


def _writer(args, model, calib):
    from refquant.formats.gptq import CheckpointWriter

    # the stored sym is the writer's own reading of the zero points; "method" is GPTQModel's
    # name for the quantization method of the format (gptq), so refquant's is refquant_method
    return CheckpointWriter(args.output, checkpoint_format=args.format, desc_act=args.act_order,
                            static_groups=args.static_groups, damp_percent=args.damp, model=model,
                            extra_config={"source_model": str(model.source),
                                          "refquant_method": args.method,
                                          "calibration": {"tokens": int(calib.size), "seq_len": args.seq_len,
                                                          "seed": args.seed,
                                                          "batch": args.calib_batch}})


def _quantize_and_write(args, model, calib, setting, writer):
    """Run the pipeline with ``writer`` as its sink, then write the float rest and close."""
    from refquant.formats.gptq import layer_from_quantized
    from refquant.formats.gptq_layers import V1ZeroPointWarning, v1_zero_point_note
    from refquant.pipeline.blocks import block_tensor_names
    from refquant.pipeline.blockwise import quantize_model

    def sink(i, layers, tensors):
        t_write = time.perf_counter()
        for name, ly in layers.items():
            if ly.damp_retries:
                print(f"{name}: H + lambda I not positive definite at damp {args.damp:g}; "
                      f"factored at damp {ly.damp:g} after {ly.damp_retries} "
                      f"retr{'y' if ly.damp_retries == 1 else 'ies'}")
        packed = {n: layer_from_quantized(ly.codes, ly.qparams, ly.spec, ly.g_idx) for n, ly in layers.items()}
        with warnings.catch_warnings():          # printed here, as progress, instead
            warnings.simplefilter("ignore", V1ZeroPointWarning)
            writer.write(packed, tensors)
        for name in packed:
            if name in writer.v1_zero_points:
                print(f"warning: {v1_zero_point_note(name, writer.v1_zero_points[name], packed[name].bits)}")
        if args.no_progress:                     # a line per block instead of the bar
            print(f"block {i}: {len(layers)} linears quantized in "
                  f"{sum(ly.seconds for ly in layers.values()):.1f} s, shard written and verified "
                  f"in {time.perf_counter() - t_write:.1f} s", flush=True)

    # streamed: each block is packed, written and verified as soon as it is quantized, so peak
    # memory is one block plus the calibration activations whatever the model's size
    res = quantize_model(model, calib, setting, damp=args.damp, progress=not args.no_progress,
                         n_blocks=args.n_blocks, batch_size=args.calib_batch, sink=sink)
    # what the pipeline did not touch, copied in the source dtype (float16 stays float16), one
    # shard per block, nothing cached: the blocks after --n-blocks, then the rest
    stored = model.weights.stored
    for i in range(res.n_blocks, model.config.n_layers):
        writer.write({}, {k: stored(k) for k in block_tensor_names(model.weights, i)})
    writer.write({}, {k: stored(k) for k in model.weights if not k.startswith("layers.")})
    writer.extra_config["damp_retries"] = {n: [d, r] for n, (d, r) in res.damp_retries.items()}
    writer.close()
    return res


def _discard(out: pathlib.Path, existed: bool) -> None:
    """After a failed run: remove ``out`` if this run created it, else the shards it wrote there
    (the writer refuses a directory that held any, so every shard there is this run's)."""
    if not existed:
        shutil.rmtree(out, ignore_errors=True)
        return
    from refquant.formats.gptq_hf import HF_FILES

    for p in out.glob("model*.safetensors"):
        p.unlink(missing_ok=True)
    for name in ("model.safetensors.index.json", "quantize_config.json") + HF_FILES:
        (out / name).unlink(missing_ok=True)
