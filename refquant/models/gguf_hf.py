"""How a Llama GGUF file corresponds to a Hugging Face checkpoint: tensor names and Q/K rows.

Names
-----
refquant uses the Hugging Face names without the ``model.`` prefix (``layers.3.mlp.up_proj.weight``,
``embed_tokens.weight``, ``lm_head.weight``); llama.cpp's converter renames them
(``blk.3.ffn_up.weight``, ``token_embd.weight``, ``output.weight``). :func:`gguf_name` and
:func:`hf_name` are the two directions of the one table below.

Q/K row permutation
-------------------
llama.cpp rotates adjacent pairs ``(2j, 2j+1)`` of a head; Hugging Face rotates ``(j, j + h_d/2)``
("rotate half"). The converter therefore stores, within each of the ``H`` heads of a Q (or K)
weight ``W [H h_d, in]``, HF row ``j`` as row ``2j`` and HF row ``j + h_d/2`` as row ``2j + 1``:

.. math:: W^{\\mathrm{gguf}}_{h h_d + 2j + r} = W^{\\mathrm{hf}}_{h h_d + r h_d/2 + j},
          \\qquad r \\in \\{0, 1\\},\\ 0 \\le j < h_d / 2

:func:`permute_qk` applies it (HF -> GGUF), :func:`unpermute_qk` undoes it (GGUF -> HF).

References
----------
.. [1] ggml-org/llama.cpp, ``convert_hf_to_gguf.py`` (``LlamaModel.permute``) and
       ``gguf-py/gguf/tensor_mapping.py`` (the tensor names).
"""

from __future__ import annotations

import numpy as np

# per block: GGUF key (in "blk.{i}.{key}.weight") -> Hugging Face name without "layers.{i}."
BLOCK_NAMES = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# global tensors: Hugging Face name (first part) -> GGUF name (first part)
GLOBAL_NAMES = {"embed_tokens": "token_embd", "norm": "output_norm", "lm_head": "output"}
_HF_BLOCK = {v: k for k, v in BLOCK_NAMES.items()}
_GGUF_GLOBAL = {v: k for k, v in GLOBAL_NAMES.items()}


def gguf_name(hf_name: str) -> str:
    """The GGUF name of a refquant / Hugging Face weight name (an optional ``model.`` prefix is
    ignored).

    >>> gguf_name("layers.3.mlp.up_proj.weight"), gguf_name("model.embed_tokens.weight")
    ('blk.3.ffn_up.weight', 'token_embd.weight')
    """
    parts = hf_name.removeprefix("model.").split(".")
    if parts[0] == "layers" and len(parts) >= 4 and ".".join(parts[2:-1]) in _HF_BLOCK:
        return f"blk.{parts[1]}.{_HF_BLOCK['.'.join(parts[2:-1])]}.{parts[-1]}"
    if len(parts) == 2 and parts[0] in GLOBAL_NAMES:
        return f"{GLOBAL_NAMES[parts[0]]}.{parts[1]}"
    raise ValueError(f"{hf_name!r} is not a Llama weight name")


def hf_name(gguf_name: str) -> str | None:
    """The refquant / Hugging Face name (without ``model.``) of a GGUF tensor name; ``None`` for a
    name outside the table.

    >>> hf_name("blk.3.attn_q.weight"), hf_name("output_norm.weight"), hf_name("rope_freqs.weight")
    ('layers.3.self_attn.q_proj.weight', 'norm.weight', None)
    """
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in BLOCK_NAMES:
        return f"layers.{parts[1]}.{BLOCK_NAMES[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in _GGUF_GLOBAL:
        return f"{_GGUF_GLOBAL[parts[0]]}.{parts[1]}"
    return None


def qk_heads(hf_name: str, n_heads: int, n_kv_heads: int) -> int | None:
    """Heads of a weight whose rows llama.cpp permutes: ``n_heads`` for Q, ``n_kv_heads`` for K,
    ``None`` for every other weight."""
    if hf_name.endswith("q_proj.weight"):
        return n_heads
    if hf_name.endswith("k_proj.weight"):
        return n_kv_heads
    return None


def _check_rows(W: np.ndarray, n_heads: int) -> None:
    if W.ndim < 1 or n_heads <= 0 or W.shape[0] % (2 * n_heads):
        raise ValueError(f"a Q/K weight of shape {W.shape} cannot hold {n_heads} heads of even "
                         "size")


def permute_qk(W: np.ndarray, n_heads: int) -> np.ndarray:
    """Hugging Face -> GGUF row order of a Q or K weight ``[n_heads h_d, in]`` (a new array).

    >>> permute_qk(np.arange(4), 1).tolist()       # one head, h_d = 4: rows 0, 2, 1, 3
    [0, 2, 1, 3]
    """
    _check_rows(W, n_heads)
    hd = W.shape[0] // n_heads
    # [H, 2, h_d/2, in] (halves) -> [H, h_d/2, 2, in] (pairs)
    return np.ascontiguousarray(
        W.reshape(n_heads, 2, hd // 2, *W.shape[1:]).swapaxes(1, 2).reshape(W.shape))


def unpermute_qk(W: np.ndarray, n_heads: int) -> np.ndarray:
    """GGUF -> Hugging Face row order of a Q or K weight ``[n_heads h_d, in]`` (a new array);
    the inverse of :func:`permute_qk`.

    >>> unpermute_qk(np.array([0, 2, 1, 3]), 1).tolist()
    [0, 1, 2, 3]
    """
    _check_rows(W, n_heads)
    hd = W.shape[0] // n_heads
    # [H, h_d/2, 2, in] (pairs) -> [H, 2, h_d/2, in] (halves)
    return np.ascontiguousarray(
        W.reshape(n_heads, hd // 2, 2, *W.shape[1:]).swapaxes(1, 2).reshape(W.shape))


__all__ = ["BLOCK_NAMES", "GLOBAL_NAMES", "gguf_name", "hf_name", "qk_heads", "permute_qk",
           "unpermute_qk"]
