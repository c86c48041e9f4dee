"""``refquant generate PROMPT [--model M] [--n-new N]``: greedy continuation of a prompt."""

from __future__ import annotations

import time


def add_arguments(p) -> None:
    p.add_argument("prompt", help="the text to continue")
    p.add_argument("--model", default=None,
                   help="GGUF file, Hugging Face directory or GPTQ checkpoint (default: the bundled "
                        "SmolLM2-135M)")
    p.add_argument("--n-new", type=int, default=24, help="new tokens at most (default 24)")


def run(args) -> int:
    from refquant.formats.gptq import load_any
    from refquant.models.llama import generate

    model = load_any(args.model)
    if model.tokenizer is None:
        raise SystemExit(f"{model.source}: the model has no tokenizer (tokenizer.json)")
    prompt = model.tokenizer.encode(args.prompt)
    t0 = time.perf_counter()
    new = generate(model, prompt, args.n_new)
    dt = time.perf_counter() - t0
    print(args.prompt + model.tokenizer.decode(new))
    print(f"[{len(new)} tokens greedy, {dt:.1f} s]")
    return 0
