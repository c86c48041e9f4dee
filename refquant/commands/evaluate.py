"""``refquant eval [MODEL] [--seq-len L] [--tokens N]``: perplexity on the evaluation articles."""

from __future__ import annotations

import pathlib
import time


def add_arguments(p) -> None:
    p.add_argument("model", nargs="?", default=None,
                   help="GGUF file, Hugging Face directory, or a GPTQ checkpoint written by "
                        "`refquant quantize` (default: the bundled SmolLM2-135M)")
    p.add_argument("--seq-len", type=int, default=512, help="window length (default 512)")
    p.add_argument("--tokens", type=int, default=16384,
                   help="evaluation tokens taken from the stream (default 16384)")
    p.add_argument("--seed", type=int, default=0, help="seed of the article split (default 0)")


def run(args) -> int:
    from refquant.pipeline.data import evaluation_tokens
    from refquant.pipeline.evaluate import perplexity
    from refquant.formats.gptq import is_gptq_checkpoint, load_quantized_model
    from refquant.models.loaders import load_model

    if args.model is not None and pathlib.Path(args.model).is_dir() and is_gptq_checkpoint(args.model):
        model = load_quantized_model(args.model)    # dequantized linears over the source model
    else:
        model = load_model(args.model)
    if model.tokenizer is None:
        raise SystemExit(f"{model.source}: the model has no tokenizer (tokenizer.json)")
    tokens = evaluation_tokens(model.tokenizer, args.tokens, seed=args.seed)
    t0 = time.perf_counter()
    r = perplexity(model, tokens, seq_len=args.seq_len, progress=True)
    dt = time.perf_counter() - t0
    print(f"model:      {model.source}")
    print(f"text:       evaluation split (seed {args.seed}), {len(tokens)} tokens, "
          f"{r.n_windows} windows of {r.seq_len}")
    print(f"perplexity: {r.ppl:.3f}  (mean NLL {r.nll:.4f} nats over {r.n_tokens} "
          f"predicted tokens, {dt:.1f} s, {r.n_windows * r.seq_len / dt:.0f} tokens/s)")
    return 0
