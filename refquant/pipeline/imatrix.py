"""llama.cpp's importance matrix of a whole model, collected through the pluggable linear.

:func:`collect_imatrix` runs the float model on calibration sequences block by block (the
embedding once, then each block on the previous block's output, in chunks of ``batch_size``
sequences: the same activations as a full forward pass) and wraps the linear so that every
matrix product of block ``i`` adds its input to the entry of its weight
(:func:`refquant.algorithms.imatrix.accumulate`), keyed by llama.cpp's tensor name
(``blk.{i}.attn_q.weight`` ...). As in ``llama-imatrix`` [1]_:

* every linear of every block gets its own entry (q, k and v share their input, so their
  entries are equal; so are gate and up);
* the output head is not collected (llama.cpp does so only with ``--process-output``, and its
  importance is not used by the default mixes);
* a product of fewer than 16 tokens is not counted, so ``batch_size * seq_len`` should be at
  least 16 (checked);
* ``imatrix.chunk_count`` is the number of sequences, ``imatrix.chunk_size`` their length, and a
  token is counted once per product it enters.

The tokens are used as given: the tool replaces the first token of each chunk by BOS when the
vocabulary asks for one (``add_bos``); the bundled SmolLM2 adds none, and
:func:`refquant.pipeline.data.calibration_batch` gives the chunks.

References
----------
.. [1] ggml-org/llama.cpp, ``tools/imatrix/imatrix.cpp`` (``collect_imatrix``,
       ``compute_imatrix``).
"""

from __future__ import annotations

import numpy as np

from refquant.algorithms.imatrix import MIN_TOKENS, Imatrix, accumulate
from refquant.models.gguf_hf import gguf_name
from refquant.models.llama import default_linear
from refquant.pipeline.blocks import block_batched, embed_batched


def collect_imatrix(model, tokens, *, batch_size: int = 4, dataset: str = "refquant calibration",
                    n_blocks: int | None = None) -> Imatrix:
    """The importance matrix of ``model`` on ``tokens``.

    Parameters
    ----------
    model : LlamaModel
        Its float weights are used (the default linear).
    tokens : array_like of int, shape ``[n_chunks, T]``
        Calibration sequences, e.g. :func:`refquant.pipeline.data.calibration_batch`.
    batch_size : int
        Sequences per forward chunk (memory only; ``batch_size * T >= 16``).
    dataset : str
        Stored as ``imatrix.datasets``.
    n_blocks : int, optional
        Only the first ``n_blocks`` blocks (quick checks).

    Returns
    -------
    Imatrix
        One dense entry per block linear, ``chunk_count = n_chunks``, ``chunk_size = T``.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.size == 0:
        raise ValueError(f"tokens must be [n_chunks, T] sequences, got shape {tokens.shape}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if min(batch_size, len(tokens)) * tokens.shape[1] < MIN_TOKENS:
        raise ValueError(f"chunks of {min(batch_size, len(tokens))} x {tokens.shape[1]} tokens "
                         f"are fewer than the {MIN_TOKENS} llama.cpp counts in a product")
    L = model.config.n_layers if n_blocks is None else n_blocks
    if not 1 <= L <= model.config.n_layers:
        raise ValueError(f"n_blocks={n_blocks!r}: the model has {model.config.n_layers} blocks")
    entries: dict = {}
    base = default_linear(model)

    def recording(name: str, x: np.ndarray) -> np.ndarray:
        key = gguf_name(name + ".weight")
        entries[key] = accumulate(entries.get(key), x)
        return base(name, x)

    X = embed_batched(model, tokens, batch_size)                  # [n_chunks, T, d]
    for i in range(L):
        X = block_batched(model, i, X, batch_size, linear=recording)
    empty = [k for k, e in entries.items() if e is None]
    if empty:
        raise ValueError(f"no product of {empty[0]} had {MIN_TOKENS} tokens or more")
    return Imatrix(entries=dict(sorted(entries.items())), chunk_count=int(tokens.shape[0]),
                   chunk_size=int(tokens.shape[1]), datasets=(dataset,))


__all__ = ["collect_imatrix"]
