"""AWQ's forward passes of one Llama block with the linears' weights given by short name
(``{"q_proj": W_q, ...}``, :data:`refquant.pipeline.blocks.SHORT_NAMES`): the pieces
:mod:`refquant.pipeline.awq_block` runs its searches with.

Every pass is :func:`refquant.models.llama.block` (or its second half, the MLP after the
attention's residual) through a ``linear`` computing ``x @ W.T`` in float32 on the flattened
``[B*T, in]`` input, as the model's default linear does, so the passes here and the model's
own give the same floats.
"""

from __future__ import annotations

import numpy as np

from refquant.models.llama import block, mlp, rms_norm
from refquant.pipeline.blocks import SHORT_NAMES



def block_linear(i: int, W: dict, record: dict | None = None, outputs: dict | None = None):
    """A ``linear(name, x)`` for block ``i`` computing ``x @ W[short name].T`` (float32);
    with ``record``, each linear's input ``x [B, T, in]`` is stored under its short name, with
    ``outputs`` its output ``[B, T, out]``."""
    prefix = f"layers.{i}."
    short = {prefix + path: k for k, path in SHORT_NAMES.items()}

    def linear(name, x):
        k = short.get(name)
        if k is None:
            raise ValueError(f"block {i} called linear {name!r}, not one of its own")
        if record is not None:
            record[k] = x.copy()
        y = x.reshape(-1, x.shape[-1]) @ W[k].T                              # [B*T, out]
        y = y.reshape(x.shape[:-1] + (W[k].shape[0],))                       # [B, T, out]
        if outputs is not None:
            outputs[k] = y.copy()
        return y

    return linear


def block_out(model, i: int, X_in: np.ndarray, W: dict) -> np.ndarray:
    """Block ``i`` of ``model`` (its norms) with the linears ``W``: ``[B, T, d]``."""
    return block(model, i, X_in, linear=block_linear(i, W))


def record_inputs(model, i: int, X_in: np.ndarray, W: dict) -> tuple[np.ndarray, dict, dict]:
    """Step 1: ``(Y [B, T, d], {short name: X_k [B, T, in_k]}, {short name: X_k W_k^T})``,
    block ``i``'s output and the input and output of every linear."""
    X: dict = {}
    Z: dict = {}
    Y = block(model, i, X_in, linear=block_linear(i, W, record=X, outputs=Z))
    return Y, X, Z


def block_after_attention(model, i: int, X_in: np.ndarray, X_o: np.ndarray, W: dict):
    """Block ``i``'s output ``[B, T, d]`` with the linears ``W`` where the attention's o_proj
    input is already known, ``X_o [B, T, n_heads h_d]``: the residual ``X_in + X_o W_o^T``,
    then the block's second half as :func:`refquant.models.llama.block` computes it. With
    ``X_o`` recorded in a run of the block whose q/k/v weights are ``W``'s, this equals
    ``block_out(model, i, X_in, W)`` bit for bit without the attention (the o search changes
    only ``W_o``). Pinned by ``test_block_after_attention_is_the_block``."""
    linear = block_linear(i, W)
    x = X_in + linear(f"layers.{i}.self_attn.o_proj", X_o)                   # [B, T, d]
    m = rms_norm(x, model.weights[f"layers.{i}.post_attention_layernorm.weight"],
                 model.config.norm_eps)
    x += mlp(model, i, m, linear=linear)
    return x
