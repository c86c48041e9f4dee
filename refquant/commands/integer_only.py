"""``--integer-only`` for ``refquant eval`` and ``refquant generate``: the model is prepared for
the integer-only forward pass (:func:`refquant.models.llama_int_prepare.prepare_integer`: int8
weights per channel, per-token int8 activations, K/V scales calibrated on the calibration
split) and runs in integer arithmetic from the token ids to the int32 logits.
"""

from __future__ import annotations

import time


def add_arguments(p) -> None:
    from refquant.commands._args import integer
    p.add_argument("--integer-only", action="store_true",
                   help="run the integer-only forward pass (W8A8, integer norms, softmax, RoPE, "
                        "SwiGLU, int8 KV cache; issue 18)")
    p.add_argument("--integer-mode", choices=("dynamic", "static"), default="dynamic",
                   help="--integer-only activations: per-token int8 from integer row maxima "
                        "(default) or static per-tensor scales from calibration")
    p.add_argument("--calib-tokens", type=integer(16), default=1024,
                   help="--integer-only: calibration tokens for the static scales (default 1024)")


def prepare(model, args):
    """The integer model of ``model`` (seconds spent preparing it as a second value)."""
    from refquant.models.llama_int_prepare import prepare_integer
    from refquant.pipeline.data import calibration_tokens

    t0 = time.perf_counter()
    calib = calibration_tokens(model.tokenizer, args.calib_tokens, seed=getattr(args, "seed", 0))
    im = prepare_integer(model, calib, mode=args.integer_mode,
                         seq_len=min(512, args.calib_tokens))
    return im, time.perf_counter() - t0


def perplexity(model, tokens, args):
    """``refquant eval --integer-only``: (PerplexityResult, the model's description, seconds
    spent preparing)."""
    from refquant.pipeline.evaluate_int import integer_perplexity

    im, dt = prepare(model, args)
    r = integer_perplexity(im, tokens, seq_len=args.seq_len, progress=True)
    return r, (f"{model.source} (integer-only, {args.integer_mode} activations, prepared in "
               f"{dt:.0f} s from {args.calib_tokens} calibration tokens)"), dt


def generate(model, prompt, n_new: int, args) -> tuple[list[int], float]:
    """``refquant generate --integer-only``: greedy ids from the integer model, and the seconds
    spent preparing it."""
    from refquant.models.llama_int import generate_int

    im, dt = prepare(model, args)
    return generate_int(im, prompt, n_new), dt
