"""``refquant quantize MODEL --format gguf --type TYPE [--method rtn|gptq|awq] -o OUT.gguf
[--imatrix FILE|auto] [--act-order]``.

Writes a complete llama.cpp GGUF file. ``--method rtn`` (the default) makes it as
``llama-quantize`` would from the same float weights
(:func:`refquant.formats.gguf_export.export_gguf`: the mix's per-tensor types, ggml's
quantizers, the importance matrix where given). ``--method gptq`` and ``--method awq`` write the
same kind of file (the same types, an ordinary GGUF that llama.cpp runs) with each block linear
quantized on the calibration text, block by block, onto its planned type's own grid
(:func:`refquant.pipeline.gguf_methods.export_gguf_method`: GPTQ on the type's grid with the
imatrix-fixed scales, ``--act-order`` for GPTQ's column order; AWQ's scales searched with the
type's quantizer, folded, then the block quantizer); one line per block. ``--imatrix FILE``
reads a llama.cpp imatrix (GGUF or legacy ``.dat``); ``--imatrix auto`` computes one on the
bundled calibration text (``--calib-tokens`` in sequences of ``--seq-len``, through the model's
linear layers; the same sequences GPTQ and AWQ calibrate on).

Every argument is checked before any work: the type name, the block types it needs (a type
:mod:`refquant.formats.ggml` does not have yet is named), the output path, the imatrix file and
its entries' lengths against the model's tensors, options that only GPTQ checkpoints use,
``--act-order`` without ``--method gptq``. The file appears only once written and verified by
re-reading.
"""

from __future__ import annotations

import collections
import pathlib
import time


def check_arguments(args) -> None:
    """ValueError for a GGUF run's arguments that cannot work, before the model is read."""
    from refquant.formats.gguf_mix import MIXES, resolve_mix

    if not args.type:
        raise ValueError("--format gguf needs --type (e.g. Q8_0, Q4_K_M, IQ4_XS)")
    args.type = resolve_mix(args.type)
    args.method = args.method or "rtn"
    if args.method != "rtn" and MIXES[args.type][1] in ("F32", "F16"):
        raise ValueError(f"--method {args.method} with --type {args.type}: that type quantizes "
                         "nothing (choose a quantized type, e.g. Q4_K_M)")
    if args.act_order and args.method != "gptq":
        raise ValueError(f"--act-order is GPTQ's column order; --method {args.method} has none")
    for flag, value in (("--static-groups", args.static_groups),
                        ("--sym", args.sym), ("--n-blocks", args.n_blocks is not None)):
        if value:
            raise ValueError(f"{flag} applies to GPTQ checkpoints, not to --format gguf")
    out = pathlib.Path(args.output)
    if out.is_dir():
        raise ValueError(f"-o {args.output!r} is a directory; --format gguf writes one file")
    if args.imatrix not in (None, "auto") and not pathlib.Path(args.imatrix).is_file():
        raise ValueError(f"--imatrix {args.imatrix!r}: no such file (or 'auto')")
    if (args.imatrix == "auto" or args.method != "rtn") and args.calib_tokens < args.seq_len:
        raise ValueError(f"--calib-tokens {args.calib_tokens} is less than one sequence of "
                         f"--seq-len {args.seq_len}")


def run(args) -> int:
    import refquant as rq
    from refquant.formats.gguf_export import export_gguf, importance_for, plan_tensors, require_types

    check_arguments(args)
    t0 = time.perf_counter()
    imatrix, source = None, None
    if args.imatrix not in (None, "auto"):
        from refquant.formats.imatrix_file import read_imatrix
        imatrix, source = read_imatrix(args.imatrix), args.imatrix
    model = rq.load_model(args.model)
    plan = plan_tensors(model.config, args.type, has_imatrix=args.imatrix is not None,
                        pure=args.pure)
    require_types(plan, args.type)
    if imatrix is not None:
        for t in plan:
            importance_for(imatrix, t, source)                 # lengths checked before any work
    calib = _calibration(args, model) if args.imatrix == "auto" or args.method != "rtn" else None
    if args.imatrix == "auto":
        imatrix, source = _auto_imatrix(model, calib), "auto"
    print(f"model {model.source}; GGUF {args.type}{' (pure)' if args.pure else ''}; method "
          f"{args.method}{' (act-order)' if args.act_order else ''}"
          f"{'' if imatrix is None else f'; imatrix {source} ({len(imatrix.entries)} entries)'}")
    if args.method == "rtn":
        path = export_gguf(model, args.output, args.type, imatrix=imatrix, pure=args.pure,
                           imatrix_source=source)
    else:
        from refquant.pipeline.gguf_methods import export_gguf_method

        print(f"{args.method}: {calib.shape[0]} x {calib.shape[1]} calibration tokens, "
              f"block by block", flush=True)
        path = export_gguf_method(model, args.output, args.type, calib, method=args.method,
                                  imatrix=imatrix, pure=args.pure, act_order=args.act_order,
                                  damp=args.damp, batch_size=args.calib_batch,
                                  imatrix_source=source, progress=_print_block)
    counts = collections.Counter(t.type_name for t in plan)
    n_values = sum(_size(t.shape) for t in plan)
    bpw = 8 * path.stat().st_size / n_values
    types = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(f"wrote {path} ({args.method}; {path.stat().st_size / 2**20:.1f} MiB, {bpw:.2f} bits "
          f"per weight with the header; tensors: {types}), "
          f"verified by re-reading; total {time.perf_counter() - t0:.1f} s")
    return 0


def _size(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _calibration(args, model):
    """The calibration sequences of ``--imatrix auto`` and of GPTQ / AWQ."""
    from refquant.commands._args import require_tokenizer
    from refquant.pipeline.data import calibration_batch

    need = "--imatrix auto" if args.method == "rtn" else f"--method {args.method}"
    require_tokenizer(model, f"tokenize the calibration text for {need}")
    return calibration_batch(model.tokenizer, args.calib_tokens, args.seq_len, args.seed)


def _print_block(r) -> None:
    """One line per block of :func:`refquant.pipeline.gguf_methods.export_gguf_method`."""
    types = ", ".join(f"{k} {v}" for k, v in sorted(r.types.items()))
    loss = (f"loss {r.loss:.4g}" if r.loss_rtn is None else
            f"block output MSE {r.loss:.4g} (RTN {r.loss_rtn:.4g})")
    print(f"block {r.block + 1}/{r.n_blocks}: {r.method} onto {types}; {loss}; "
          f"{r.seconds:.1f} s", flush=True)


def _auto_imatrix(model, calib):
    from refquant.pipeline.imatrix import collect_imatrix

    t = time.perf_counter()
    imatrix = collect_imatrix(model, calib, dataset="refquant calibration split")
    print(f"imatrix: {calib.shape[0]} x {calib.shape[1]} calibration tokens in "
          f"{time.perf_counter() - t:.1f} s")
    return imatrix
