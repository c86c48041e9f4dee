"""Perplexity of a (float or quantized) model on a token stream.

.. math::

    \\mathrm{PPL} = \\exp\\Big(\\frac{1}{N} \\sum_{w} \\sum_{t=1}^{L-1}
        -\\log p_\\theta(x_{w,t} \\mid x_{w,0} \\dots x_{w,t-1})\\Big)

over non-overlapping windows ``w`` of ``L = seq_len`` tokens (the remainder of the stream that
does not fill a window is dropped); within a window the first token has no context and is not
scored, so ``N = n_windows * (L - 1)`` predicted tokens. The log-probabilities come from a
numerically stable log-softmax in float64, :math:`\\log p_i = z_i - m - \\log\\sum_j e^{z_j - m}`
with :math:`m = \\max_j z_j`, applied to the float32 logits in chunks of positions so that memory
stays bounded. With the float linear, :data:`WINDOW_BATCH` windows run through the model as one
batch (larger matrix products; at the bundled model's shapes each window's floats are those of
its own pass, to the last bit: ``test_batched_windows_are_single_windows``); a custom ``linear``
sees one window per call.

The result is never NaN: a non-finite log-likelihood (the forward pass overflowed, or the model
holds non-finite weights) raises ``ValueError`` naming the window and the position in it (and in
the token stream) whose logits fail.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from refquant.models.llama import head, hidden_states

HEAD_CHUNK = 128     # positions per log-softmax chunk: [128, V] float64 = 50 MB for V = 49152
WINDOW_BATCH = 8     # windows per forward pass with the float linear (one [8, L] batch)


@dataclasses.dataclass(frozen=True)
class PerplexityResult:
    """``ppl = exp(nll)``; ``nll`` is the mean negative log-likelihood (nats) of ``n_tokens``
    predicted tokens in ``n_windows`` windows of ``seq_len`` tokens."""

    ppl: float
    nll: float
    n_tokens: int
    seq_len: int
    n_windows: int


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``-log softmax(logits)[target]`` per row, in float64.

    ``logits``: ``[N, V]`` float; ``targets``: ``[N]`` int; returns ``[N]`` float64.
    """
    z = logits.astype(np.float64)                               # [N, V]
    m = z.max(axis=-1, keepdims=True)                           # [N, 1]
    z -= m
    z_t = z[np.arange(len(targets)), targets]                   # [N]
    np.exp(z, out=z)                                            # in place: one [N, V] array
    return np.log(z.sum(axis=-1)) - z_t                         # log sum exp - z_target


def _windows(tokens, seq_len, max_windows) -> tuple[np.ndarray, int]:
    """``tokens`` as a 1-D integer array and the number of whole windows of ``seq_len`` to
    evaluate (at most ``max_windows``); ``ValueError`` naming a bad argument."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must be a 1-D integer array, got shape {tokens.shape} "
                         f"dtype {tokens.dtype}")
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 2:
        raise ValueError(f"seq_len must be an integer >= 2, got {seq_len!r}")
    n_windows = len(tokens) // seq_len
    if max_windows is not None:
        if isinstance(max_windows, bool) or not isinstance(max_windows, (int, np.integer)) \
                or max_windows < 1:
            raise ValueError(f"max_windows must be a positive integer, got {max_windows!r}")
        n_windows = min(n_windows, max_windows)
    if n_windows == 0:
        raise ValueError(f"{len(tokens)} tokens do not fill one window of seq_len={seq_len}")
    return tokens, n_windows


def perplexity(model, tokens, *, seq_len: int = 512, linear=None, max_windows: int | None = None,
               progress: bool = False) -> PerplexityResult:
    """Perplexity of ``model`` on ``tokens`` (1-D int) over non-overlapping windows.

    Parameters
    ----------
    model : LlamaModel
    tokens : 1-D integer array, the token stream (e.g. :func:`refquant.pipeline.data.evaluation_tokens`).
    seq_len : window length ``L`` (>= 2).
    linear : the linear layer of the forward pass (``None``: float32 weights).
    max_windows : evaluate at most this many windows (the first ones).
    progress : show a tqdm progress bar over windows.

    Raises
    ------
    ValueError
        For bad arguments, and where a predicted token's log-likelihood is not finite (the first
        such window and position are named; see the module docstring).
    """
    tokens, n_windows = _windows(tokens, seq_len, max_windows)
    # the float linear sees WINDOW_BATCH windows at once (larger products, the same row sums);
    # a custom linear, which may keep per-call state (e.g. activation ranges), one at a time
    per_pass = WINDOW_BATCH if linear is None else 1
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=n_windows, desc=f"perplexity (seq_len {seq_len})", unit="window")
    total = 0.0
    try:
        for w0 in range(0, n_windows, per_pass):
            ws = range(w0, min(w0 + per_pass, n_windows))
            x = tokens[w0 * seq_len:ws.stop * seq_len].reshape(len(ws), seq_len)    # [b, L]
            h = hidden_states(model, x, linear=linear)          # [b, L, d]
            for j, w in enumerate(ws):
                for a in range(0, seq_len - 1, HEAD_CHUNK):
                    b = min(a + HEAD_CHUNK, seq_len - 1)
                    logits = head(model, h[j, a:b])             # [b-a, V]
                    nll = token_nll(logits, x[j, a + 1:b + 1])  # [b-a] float64
                    _check_finite(nll, logits, x[j], w, a, seq_len)
                    total += float(nll.sum())
            if bar is not None:
                bar.update(len(ws))
    finally:
        if bar is not None:
            bar.close()
    n = n_windows * (seq_len - 1)
    nll = total / n
    return PerplexityResult(ppl=float(np.exp(nll)), nll=nll, n_tokens=n, seq_len=seq_len,
                            n_windows=n_windows)


def _check_finite(nll: np.ndarray, logits: np.ndarray, window: np.ndarray, w: int, a: int,
                  seq_len: int) -> None:
    """Raise ``ValueError`` at the first non-finite ``nll [b-a]``: the log-likelihood from the
    logits at positions ``a ...`` of window ``w`` (tokens ``window [L]``) of their next tokens;
    the message names the window, the position and what its logits hold."""
    bad = np.flatnonzero(~np.isfinite(nll))
    if bad.size == 0:
        return
    j = int(bad[0])
    t = a + j                                                   # the position whose logits fail
    n_bad = int(np.count_nonzero(~np.isfinite(logits[j])))
    cause = (f"its logits hold {n_bad} NaN or Inf value(s): the forward pass overflowed or the "
             f"model holds non-finite weights" if n_bad else "its logits are finite")
    raise ValueError(f"non-finite log-likelihood ({nll[j]}) in window {w} at position {t} "
                     f"(token {w * seq_len + t} of the stream, id {int(window[t])}, predicting "
                     f"id {int(window[t + 1])}); {cause}")
