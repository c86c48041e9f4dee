"""``refquant eval [MODEL] [--seq-len L] [--tokens N]``: perplexity on the evaluation articles.

The numbers are checked by their argparse types and against each other (``--tokens`` must fill
one window) before the model is read; a model without a tokenizer is refused before any work.
The model is read lazily with a bounded float32 cache
(:data:`refquant.models.loaders.INFERENCE_CACHE_BYTES`): a layer that does not fit is read (a
GPTQ layer dequantized) again whenever the forward pass reaches it, so memory does not grow with
the model's depth. A 4-bit GPTQ checkpoint runs its linear layers on the packed codes (the
W4A16 kernel, :mod:`refquant.formats.gptq_linear`; each layer prepared once) unless
``--dequantize``; one line after the result says which path the linear layers ran, and why.
"""

from __future__ import annotations

import math
import time

from refquant.commands._args import integer, require_tokenizer


def add_arguments(p) -> None:
    p.add_argument("model", nargs="?", default=None,
                   help="GGUF file, Hugging Face directory, or a GPTQ checkpoint written by "
                        "`refquant quantize` (default: the bundled SmolLM2-135M)")
    p.add_argument("--seq-len", type=integer(2), default=512, help="window length (>= 2; default 512)")
    p.add_argument("--tokens", type=integer(2), default=16384,
                   help="evaluation tokens taken from the stream (default 16384)")
    p.add_argument("--seed", type=int, default=0, help="seed of the article split (default 0)")
    p.add_argument("--dequantize", action="store_true",
                   help="GPTQ checkpoint: dequantize every layer to float32 instead of running "
                        "the packed W4 kernel")
    from refquant.commands import integer_only
    integer_only.add_arguments(p)                  # --integer-only, --integer-mode, --calib-tokens


def run(args) -> int:
    from refquant.pipeline.data import evaluation_tokens
    from refquant.pipeline.evaluate import perplexity
    from refquant.formats.gptq import load_any
    from refquant.formats.gptq_linear import checkpoint_linear
    from refquant.models.loaders import INFERENCE_CACHE_BYTES

    if args.tokens < args.seq_len:
        raise ValueError(f"--tokens {args.tokens} do not fill one window of --seq-len {args.seq_len}")
    # a GPTQ checkpoint must hold every weight of the model; each layer is read (and a GPTQ
    # layer dequantized) when the forward pass reaches it, and the float32 cache is bounded
    model = load_any(args.model, cache=INFERENCE_CACHE_BYTES)
    require_tokenizer(model, "tokenize the evaluation text")
    tokens = evaluation_tokens(model.tokenizer, args.tokens, seed=args.seed)
    linear = line = None
    t0 = time.perf_counter()
    if args.integer_only:               # the integer-only forward pass (issue 18)
        from refquant.commands import integer_only
        r, source, t_prep = integer_only.perplexity(model, tokens, args)
        t0 += t_prep
    else:               # a 4-bit GPTQ checkpoint: the packed W4 kernel unless --dequantize
        linear, line = checkpoint_linear(model, dequantize=args.dequantize)
        r = perplexity(model, tokens, seq_len=args.seq_len, linear=linear,
                       progress=True)                                    # raises on a NaN/Inf NLL
        source = model.source
    dt = time.perf_counter() - t0
    if not math.isfinite(r.ppl):        # a finite mean NLL above ~709 nats: exp overflows
        raise ValueError(f"{model.source}: perplexity is {r.ppl} (mean NLL {r.nll})")
    print(f"model:      {source}")
    print(f"text:       evaluation split (seed {args.seed}), {len(tokens)} tokens, "
          f"{r.n_windows} windows of {r.seq_len}")
    print(f"perplexity: {r.ppl:.3f}  (mean NLL {r.nll:.4f} nats over {r.n_tokens} "
          f"predicted tokens, {dt:.1f} s, {r.n_windows * r.seq_len / dt:.0f} tokens/s)")
    if linear is not None or line is not None:        # which path the linear layers ran
        print(line or linear.describe())
    return 0
