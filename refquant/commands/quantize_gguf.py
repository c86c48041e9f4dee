"""``refquant quantize MODEL --format gguf --type TYPE -o OUT.gguf [--imatrix FILE|auto]``.

Writes a complete llama.cpp GGUF file as ``llama-quantize`` would make it from the same float
weights (:func:`refquant.formats.gguf_export.export_gguf`: the mix's per-tensor types, ggml's
quantizers, the importance matrix where given). ``--imatrix FILE`` reads a llama.cpp imatrix
(GGUF or legacy ``.dat``); ``--imatrix auto`` computes one on the bundled calibration text
(``--calib-tokens`` in sequences of ``--seq-len``, through the model's linear layers).

Every argument is checked before any work: the type name, the block types it needs (a type
:mod:`refquant.formats.ggml` does not have yet is named), the output path, the imatrix file and
its entries' lengths against the model's tensors, options that only GPTQ checkpoints use. The
file appears only once written and verified by re-reading.
"""

from __future__ import annotations

import collections
import pathlib
import time


def check_arguments(args) -> None:
    """ValueError for a GGUF run's arguments that cannot work, before the model is read."""
    from refquant.formats.gguf_mix import resolve_mix

    if not args.type:
        raise ValueError("--format gguf needs --type (e.g. Q8_0, Q4_K_M, IQ4_XS)")
    args.type = resolve_mix(args.type)
    if args.method not in (None, "rtn"):
        raise ValueError(f"--method {args.method} with --format gguf is not supported yet; "
                         "--format gguf quantizes as llama-quantize does (--method rtn)")
    for flag, value in (("--act-order", args.act_order), ("--static-groups", args.static_groups),
                        ("--sym", args.sym), ("--n-blocks", args.n_blocks is not None)):
        if value:
            raise ValueError(f"{flag} applies to GPTQ checkpoints, not to --format gguf")
    out = pathlib.Path(args.output)
    if out.is_dir():
        raise ValueError(f"-o {args.output!r} is a directory; --format gguf writes one file")
    if args.imatrix not in (None, "auto") and not pathlib.Path(args.imatrix).is_file():
        raise ValueError(f"--imatrix {args.imatrix!r}: no such file (or 'auto')")
    if args.imatrix == "auto" and args.calib_tokens < args.seq_len:
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
    elif args.imatrix == "auto":
        imatrix, source = _auto_imatrix(args, model), "auto"
    print(f"model {model.source}; GGUF {args.type}{' (pure)' if args.pure else ''}"
          f"{'' if imatrix is None else f'; imatrix {source} ({len(imatrix.entries)} entries)'}")
    path = export_gguf(model, args.output, args.type, imatrix=imatrix, pure=args.pure,
                       imatrix_source=source)
    counts = collections.Counter(t.type_name for t in plan)
    n_values = sum(_size(t.shape) for t in plan)
    bpw = 8 * path.stat().st_size / n_values
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {bpw:.2f} bits per weight with "
          f"the header; tensors: {', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}), "
          f"verified by re-reading; total {time.perf_counter() - t0:.1f} s")
    return 0


def _size(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _auto_imatrix(args, model):
    from refquant.commands._args import require_tokenizer
    from refquant.pipeline.data import calibration_batch
    from refquant.pipeline.imatrix import collect_imatrix

    require_tokenizer(model, "tokenize the calibration text for --imatrix auto")
    calib = calibration_batch(model.tokenizer, args.calib_tokens, args.seq_len, args.seed)
    t = time.perf_counter()
    imatrix = collect_imatrix(model, calib, dataset="refquant calibration split")
    print(f"imatrix: {calib.shape[0]} x {calib.shape[1]} calibration tokens in "
          f"{time.perf_counter() - t:.1f} s")
    return imatrix
