"""``refquant quantize MODEL --method gptq --bits 4 --group-size 128 -o DIR``.

Quantizes every block linear of a model (GGUF file or Hugging Face directory; default the
bundled SmolLM2) with the sequential pipeline and exports a GPTQ-style checkpoint
(:mod:`refquant.formats.gptq`) that ``refquant eval DIR`` reads back. The export is streamed: each
block is packed, written as its own shard and verified by re-reading as soon as it is quantized
(:class:`refquant.formats.gptq.CheckpointWriter`), so memory does not grow with the model's depth.
"""

from __future__ import annotations

import time


def add_arguments(p):
    p.add_argument("model", nargs="?", default=None, help="GGUF file or Hugging Face directory (default: bundled SmolLM2-135M)")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("--method", choices=("rtn", "gptq", "awq"), default="gptq")
    p.add_argument("--bits", type=int, default=4, choices=(2, 3, 4, 8))
    p.add_argument("--group-size", type=int, default=128, help="group size along the input dimension; 0 or -1: per output channel")
    p.add_argument("--sym", action="store_true", help="symmetric codes (default asymmetric)")
    p.add_argument("--act-order", action="store_true", help="GPTQ: columns by decreasing Hessian diagonal")
    p.add_argument("--static-groups", action="store_true", help="GPTQ: group parameters fixed before the pass")
    p.add_argument("--damp", type=float, default=0.01)
    p.add_argument("--calib-tokens", type=int, default=8192, help="calibration tokens (default 8192)")
    p.add_argument("--seq-len", type=int, default=256, help="calibration sequence length")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=("gptq", "gptq_v2"), default="gptq",
                   help="zero-point convention: gptq (v1, stores zero-1) or gptq_v2 (stores zero)")
    p.add_argument("--n-blocks", type=int, default=None, help="quantize only the first N blocks (quick checks)")
    p.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    import refquant as rq
    from refquant.formats.gptq import CheckpointWriter, layer_from_quantized
    from refquant.pipeline.blocks import block_tensor_names
    from refquant.pipeline.blockwise import quantize_model
    from refquant.pipeline.data import calibration_batch
    from refquant.pipeline.recipes import LayerSetting

    gs = None if args.group_size in (0, -1) else args.group_size
    setting = LayerSetting(args.method, args.bits, gs, symmetric=args.sym, act_order=args.act_order,
                           static_groups=args.static_groups)
    t0 = time.perf_counter()
    model = rq.load_model(args.model)
    calib = calibration_batch(model.tokenizer, args.calib_tokens, args.seq_len, args.seed)
    print(f"model {model.source}; calibration {calib.shape[0]} x {calib.shape[1]} tokens; {setting.label()}")
    # streamed: each block is packed, written and verified as soon as it is quantized, so peak
    # memory is one block plus the calibration activations whatever the model's size
    writer = CheckpointWriter(args.output, checkpoint_format=args.format, desc_act=args.act_order,
                              static_groups=args.static_groups, damp_percent=args.damp,
                              extra_config={"source_model": str(model.source), "sym": bool(args.sym),
                                            "method": args.method,
                                            "calibration": {"tokens": int(calib.size), "seq_len": args.seq_len,
                                                            "seed": args.seed}})
    def sink(i, layers, tensors):
        writer.write({n: layer_from_quantized(ly.codes, ly.qparams, ly.spec, ly.g_idx) for n, ly in layers.items()},
                     tensors)

    res = quantize_model(model, calib, setting, damp=args.damp, progress=not args.no_progress,
                         n_blocks=args.n_blocks, sink=sink)
    # what the pipeline did not touch, in float: the blocks after --n-blocks, then the rest
    for i in range(res.n_blocks, model.config.n_layers):
        writer.write({}, {k: model.weights[k] for k in block_tensor_names(model.weights, i)})
    writer.write({}, {k: model.weights[k] for k in model.weights if not k.startswith("layers.")})
    out = writer.close()
    print(f"quantized {writer.n_layers} linears in {res.seconds:.1f} s; wrote {out} block by block "
          f"(each shard verified by re-import); total {time.perf_counter() - t0:.1f} s")
    return 0
