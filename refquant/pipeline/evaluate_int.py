"""Perplexity of the integer-only Llama (:mod:`refquant.models.llama_int`).

The windows, the scored positions and the float64 log-softmax are those of
:func:`refquant.pipeline.evaluate.perplexity` (its :func:`~refquant.pipeline.evaluate.token_nll`
and non-finite check); the logits are the integer model's int32 codes turned into floats by
:func:`refquant.models.llama_int.logits_to_float`, the one float step after the token ids.
"""

from __future__ import annotations

import numpy as np

from refquant.models.llama_int import head_int, hidden_states_int, logits_to_float
from refquant.pipeline.evaluate import (HEAD_CHUNK, PerplexityResult, _check_finite, _windows,
                                        token_nll)


def integer_perplexity(model, tokens, *, seq_len: int = 512, max_windows: int | None = None,
                       backend: str = "auto", float_ops=(), progress: bool = False
                       ) -> PerplexityResult:
    """Perplexity of an :class:`~refquant.models.llama_int.IntLlama` on ``tokens`` (1-D int) over
    non-overlapping windows of ``seq_len``; ``float_ops`` as in
    :func:`~refquant.models.llama_int.forward_int` (the ablation)."""
    tokens, n_windows = _windows(tokens, seq_len, max_windows)
    windows = range(n_windows)
    if progress:
        from tqdm.auto import tqdm
        windows = tqdm(windows, desc=f"integer perplexity (seq_len {seq_len})", unit="window")
    total = 0.0
    for w in windows:
        x = tokens[w * seq_len:(w + 1) * seq_len][None, :]                  # [1, L]
        h = hidden_states_int(model, x, backend=backend, float_ops=float_ops)[0]   # [L, d] int32
        for a in range(0, seq_len - 1, HEAD_CHUNK):
            b = min(a + HEAD_CHUNK, seq_len - 1)
            logits = logits_to_float(head_int(model, h[a:b], backend=backend,
                                              float_ops=float_ops))        # [b-a, V]
            nll = token_nll(logits, x[0, a + 1:b + 1])
            _check_finite(nll, logits, x[0], w, a, seq_len)
            total += float(nll.sum())
    n = n_windows * (seq_len - 1)
    return PerplexityResult(ppl=float(np.exp(total / n)), nll=total / n, n_tokens=n,
                            seq_len=seq_len, n_windows=n_windows)
