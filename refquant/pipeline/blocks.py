"""The pipeline's handles on a Llama model: layer names, a view with replaced weights, and the
embedding and block forward passes over calibration batches in chunks.

The names come from the model module: ``f"layers.{i}." + name`` for each ``name`` of
:data:`refquant.models.llama.LINEAR_NAMES` (q, k, v, o, gate, up, down, in call order) is one
linear of block ``i``; :data:`SHORT_NAMES` keys them by their last part (``"q_proj"``), the keys
of a per-linear spec mapping of :func:`refquant.pipeline.awq_block.awq_block`.

Shapes: ``tokens [B, T]`` int, activations ``X [B, T, d]`` float32; a forward pass runs on
``batch_size`` sequences at a time, which bounds its transient memory (the MLP activation
``[chunk, T, d_ff]`` and the attention scores ``[chunk, heads, T, T]``).
"""

from __future__ import annotations

import dataclasses
from collections import ChainMap
from collections.abc import Mapping

import numpy as np

from refquant.models.llama import LINEAR_NAMES, block, embed

# short name -> path inside a block: {"q_proj": "self_attn.q_proj", ..., "down_proj": "mlp.down_proj"}
SHORT_NAMES = {name.rsplit(".", 1)[1]: name for name in LINEAR_NAMES}


def linear_names(n_layers: int) -> list[str]:
    """Names of all quantizable linears: ``layers.{i}.self_attn.q_proj`` ... ``mlp.down_proj``."""
    return [f"layers.{i}.{lin}" for i in range(n_layers) for lin in LINEAR_NAMES]


def block_tensor_names(weights, i: int) -> list[str]:
    """The names in ``weights`` that belong to block ``i`` (``layers.{i}.*``)."""
    prefix = f"layers.{i}."
    return [k for k in weights if k.startswith(prefix)]


def with_weights(model, overrides: Mapping):
    """A shallow copy of a ``LlamaModel`` whose ``weights`` look up ``overrides`` first.

    The caller's model is untouched; later changes to ``overrides`` show through the copy.
    """
    if not dataclasses.is_dataclass(model) or not hasattr(model, "weights"):
        raise ValueError(f"model must be a LlamaModel dataclass, got {type(model).__name__}")
    return dataclasses.replace(model, weights=ChainMap(overrides, model.weights))


def chunks(n: int, size: int):
    """``slice(a, min(a + size, n))`` for ``a = 0, size, 2 size, ...``: ``n`` items in chunks."""
    for a in range(0, n, size):
        yield slice(a, min(a + size, n))


def embed_batched(model, tokens: np.ndarray, batch_size: int) -> np.ndarray:
    """:func:`refquant.models.llama.embed` of ``tokens [B, T]`` in chunks: ``[B, T, d]``."""
    return np.concatenate([embed(model, tokens[s]) for s in chunks(len(tokens), batch_size)])


def block_batched(model, i: int, X: np.ndarray, batch_size: int, *, linear=None) -> np.ndarray:
    """Block ``i`` (:func:`refquant.models.llama.block`) on ``X [B, T, d]`` in chunks of
    ``batch_size`` sequences: ``[B, T, d]``. ``linear`` (default: the float weights) sees each
    chunk in turn. Each chunk's output is written into the result as it comes, so the input, the
    output and one chunk are held, not a list of every chunk beside the concatenation."""
    out = np.empty(X.shape, np.float32)                         # [B, T, d]
    for s in chunks(len(X), batch_size):
        out[s] = block(model, i, X[s], linear=linear)
    return out


__all__ = ["SHORT_NAMES", "linear_names", "block_tensor_names", "with_weights", "chunks",
           "embed_batched", "block_batched"]
