"""``refquant generate PROMPT [--model M] [--n-new N]``: greedy continuation of a prompt.

The prompt must be non-empty and ``--n-new >= 0``; a model without a tokenizer, or a prompt
whose tokens plus ``--n-new`` exceed the model's context length, is refused before any work.
Weights are read as ``refquant eval`` reads them: lazily, float32 cache bounded. A 4-bit GPTQ
checkpoint runs its linear layers on the packed codes (the W4A16 kernel,
:mod:`refquant.formats.gptq_linear`) unless ``--dequantize``; one line says which path ran.
"""

from __future__ import annotations

import time

from refquant.commands._args import integer, non_empty, require_tokenizer


def add_arguments(p) -> None:
    p.add_argument("prompt", type=non_empty, help="the text to continue")
    p.add_argument("--model", default=None,
                   help="GGUF file, Hugging Face directory or GPTQ checkpoint (default: the bundled "
                        "SmolLM2-135M)")
    p.add_argument("--n-new", type=integer(0), default=24, help="new tokens at most (default 24)")
    p.add_argument("--dequantize", action="store_true",
                   help="GPTQ checkpoint: dequantize every layer to float32 instead of running "
                        "the packed W4 kernel")
    from refquant.commands import integer_only
    integer_only.add_arguments(p)                  # --integer-only, --integer-mode, --calib-tokens


def run(args) -> int:
    from refquant.formats.gptq import load_any
    from refquant.formats.gptq_linear import checkpoint_linear
    from refquant.models.llama import generate
    from refquant.models.loaders import INFERENCE_CACHE_BYTES

    model = load_any(args.model, cache=INFERENCE_CACHE_BYTES)   # layers read as reached, cache bounded
    require_tokenizer(model, "encode the prompt")
    prompt = model.tokenizer.encode(args.prompt)
    if not prompt:
        raise ValueError(f"the prompt {args.prompt!r} encodes to no tokens")
    limit = model.config.max_seq_len
    if len(prompt) + args.n_new > limit:
        raise ValueError(f"the prompt's {len(prompt)} tokens plus --n-new {args.n_new} exceed the "
                         f"model's context length {limit}")
    linear = line = None
    t0 = time.perf_counter()
    if args.integer_only:               # the integer-only forward pass (issue 18)
        from refquant.commands import integer_only
        new, t_prep = integer_only.generate(model, prompt, args.n_new, args)
        t0 += t_prep
    else:               # a 4-bit GPTQ checkpoint: the packed W4 kernel unless --dequantize
        linear, line = checkpoint_linear(model, dequantize=args.dequantize)
        new = generate(model, prompt, args.n_new, linear=linear)
    dt = time.perf_counter() - t0
    print(args.prompt + model.tokenizer.decode(new))
    if linear is not None or line is not None:        # which path the linear layers ran
        print(line or linear.describe())
    print(f"[{len(new)} tokens greedy, {dt:.1f} s]")
    return 0
