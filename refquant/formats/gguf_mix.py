"""Which GGML type each tensor of a Llama gets in each of ``llama-quantize``'s mixes.

A *mix* (llama.cpp's ``llama_ftype``: ``Q4_K_M``, ``Q3_K_M`` ...) is not one type: it has a
default type and rules that give some tensors more bits. :func:`tensor_type` is those rules for
the Llama architecture, written from ``llama_tensor_get_type`` / ``llama_tensor_get_type_impl``
and ``tensor_type_fallback`` of ``src/llama-quant.cpp`` [1]_ (read at commit ``007dbbf``), for a
dense model (one expert, not Falcon, not 70B), the mixes of :data:`MIXES`:

1. **Not quantized**: tensors that are not 2-D or whose name does not end in ``weight`` or ends
   in ``_norm.weight`` stay F32 (``tensor_allows_quantization``).
2. **Output** (``output.weight``, and ``token_embd.weight`` when the embeddings are tied): Q8_0 if
   the row length is not a multiple of the default type's block, else Q6_K unless the default
   is Q8_0.
3. **attn_v** of layer ``i`` (of ``n``): Q2_K -> Q4_K if ``n_gqa >= 4`` else Q3_K; Q3_K_M -> Q5_K
   for ``i < 2`` else Q4_K; Q3_K_L -> Q5_K; IQ4_NL/IQ4_XS with ``n_gqa >= 4`` -> Q5_K;
   Q4_K_M/Q5_K_M -> Q6_K where ``use_more_bits(i, n)``; Q4_K_S -> Q5_K for ``i < 4``.
4. **ffn_down** of layer ``i``: Q2_K -> Q3_K; Q3_K_M -> Q5_K for ``i < n/16`` else Q4_K; Q3_K_L
   -> Q5_K; Q4_K_M -> Q6_K where ``use_more_bits``; IQ4_NL/IQ4_XS without an imatrix -> Q5_K for
   ``i < n/8``; Q5_K_M -> Q6_K where ``use_more_bits``; Q4_K_S -> Q5_K for ``i < n/8``;
   Q4_0/Q5_0 *with* an imatrix -> Q4_1/Q5_1 for ``i < n/8``.
5. **attn_output**: Q2_K -> Q3_K, Q3_K_M -> Q4_K, Q3_K_L -> Q5_K.
6. Everything else (attn_q, attn_k, ffn_gate, ffn_up, an untied token_embd): the default type.
7. **Fallback**: a row length that is not a multiple of the chosen type's block (256 for the
   K-quants) takes ``IQ4_XS -> IQ4_NL``, ``Q2_K, Q3_K -> Q4_0``, ``Q4_K -> Q5_0``,
   ``Q5_K -> Q5_1``, ``Q6_K -> Q8_0``, and F16 if even that block does not divide it; a
   type of blocks of 32 with no fallback (Q4_0, Q8_0 ...) on such a row is an error, as in
   llama.cpp ("no tensor type fallback is defined"). (Older
   llama.cpp sent Q2_K and Q3_K to IQ4_NL; refquant follows the current code.)

with :math:`\\text{use\\_more\\_bits}(i, n) = i < n/8 \\lor i \\ge 7n/8 \\lor (i - n/8) \\bmod 3 = 2`
in C integer division. llama.cpp counts attn_v and ffn_down tensors as it meets them, in its
loader's order (by block number, then name), so the count is the block number ``i`` used here.
``pure=True`` is ``llama-quantize --pure``: every quantizable tensor gets the default type
(rule 7 still applies). F16 and F32 are not quantized types: rules 2-7 do not apply.

On the bundled SmolLM2-135M (hidden size 576 = 2.25 x 256) the fallback decides most tensors:
in Q4_K_M only ffn_down (rows of 1536) holds K-quants; the 576-column tensors become Q5_0 (or
Q8_0 where Q6_K was chosen), exactly as ``llama-quantize`` makes them.

References
----------
.. [1] ggml-org/llama.cpp, ``src/llama-quant.cpp`` (``tensor_allows_quantization``,
       ``tensor_type_fallback``, ``llama_tensor_get_type_impl``, ``llama_ftype_get_default_type``)
       and ``tools/quantize/quantize.cpp`` (the mix names and aliases).
"""

from __future__ import annotations

import re

#: mix name -> (``gguf.LlamaFileType`` member, default GGML type), as llama-quantize names them
MIXES = {
    "F32": ("ALL_F32", "F32"), "F16": ("MOSTLY_F16", "F16"),
    "Q8_0": ("MOSTLY_Q8_0", "Q8_0"), "Q4_0": ("MOSTLY_Q4_0", "Q4_0"),
    "Q4_1": ("MOSTLY_Q4_1", "Q4_1"), "Q5_0": ("MOSTLY_Q5_0", "Q5_0"),
    "Q5_1": ("MOSTLY_Q5_1", "Q5_1"), "Q2_K": ("MOSTLY_Q2_K", "Q2_K"),
    "Q3_K_S": ("MOSTLY_Q3_K_S", "Q3_K"), "Q3_K_M": ("MOSTLY_Q3_K_M", "Q3_K"),
    "Q3_K_L": ("MOSTLY_Q3_K_L", "Q3_K"), "Q4_K_S": ("MOSTLY_Q4_K_S", "Q4_K"),
    "Q4_K_M": ("MOSTLY_Q4_K_M", "Q4_K"), "Q5_K_S": ("MOSTLY_Q5_K_S", "Q5_K"),
    "Q5_K_M": ("MOSTLY_Q5_K_M", "Q5_K"), "Q6_K": ("MOSTLY_Q6_K", "Q6_K"),
    "IQ4_NL": ("MOSTLY_IQ4_NL", "IQ4_NL"), "IQ4_XS": ("MOSTLY_IQ4_XS", "IQ4_XS"),
}
#: llama-quantize's aliases: the bare K-quant names are the _M mixes
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}
#: values per block of every type a mix can choose
BLOCK = {"F32": 1, "F16": 1, "Q8_0": 32, "Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32,
         "IQ4_NL": 32, "Q2_K": 256, "Q3_K": 256, "Q4_K": 256, "Q5_K": 256, "Q6_K": 256,
         "IQ4_XS": 256}
FALLBACK = {"IQ4_XS": "IQ4_NL", "Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0",
            "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.")


def resolve_mix(mix: str) -> str:
    """The canonical mix name of ``mix`` (case-insensitive; aliases resolved), or ValueError
    naming it and the choices."""
    name = ALIASES.get(str(mix).upper(), str(mix).upper())
    if name not in MIXES:
        raise ValueError(f"unknown GGUF type {mix!r}; choose from "
                         f"{', '.join(list(MIXES) + list(ALIASES))}")
    return name


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's choice of the layers that get more bits: the first and last eighth and
    every third layer between (C integer division)."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _mix_rule(mix: str, kind: str, i: int, n: int, *, n_gqa: int, has_imatrix: bool,
              default: str) -> str:
    """Rules 3-6 of the module docstring: the type ``mix`` gives tensor ``kind`` of layer ``i``."""
    if kind == "attn_v":
        rules = {"Q2_K": "Q4_K" if n_gqa >= 4 else "Q3_K",
                 "Q3_K_M": "Q5_K" if i < 2 else "Q4_K", "Q3_K_L": "Q5_K",
                 "IQ4_NL": "Q5_K" if n_gqa >= 4 else default,
                 "IQ4_XS": "Q5_K" if n_gqa >= 4 else default,
                 "Q4_K_M": "Q6_K" if use_more_bits(i, n) else default,
                 "Q5_K_M": "Q6_K" if use_more_bits(i, n) else default,
                 "Q4_K_S": "Q5_K" if i < 4 else default}
        return rules.get(mix, default)
    if kind == "ffn_down":
        rules = {"Q2_K": "Q3_K", "Q3_K_M": "Q5_K" if i < n // 16 else "Q4_K", "Q3_K_L": "Q5_K",
                 "Q4_K_M": "Q6_K" if use_more_bits(i, n) else default,
                 "IQ4_NL": "Q5_K" if i < n // 8 and not has_imatrix else default,
                 "IQ4_XS": "Q5_K" if i < n // 8 and not has_imatrix else default,
                 "Q5_K_M": "Q6_K" if use_more_bits(i, n) else default,
                 "Q4_K_S": "Q5_K" if i < n // 8 else default,
                 "Q4_0": "Q4_1" if has_imatrix and i < n // 8 else default,
                 "Q5_0": "Q5_1" if has_imatrix and i < n // 8 else default}
        return rules.get(mix, default)
    if kind == "attn_output":
        return {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K"}.get(mix, default)
    return default


def tensor_type(name: str, shape: tuple, mix: str, *, n_layers: int, n_gqa: int,
                tied_embeddings: bool, has_imatrix: bool = False, pure: bool = False) -> str:
    """The GGML type ``llama-quantize`` gives tensor ``name`` in ``mix``.

    Parameters
    ----------
    name : str
        llama.cpp tensor name (``"blk.3.attn_v.weight"``, ``"token_embd.weight"``).
    shape : tuple
        NumPy order, ``(rows, row_length)`` for a matrix.
    mix : str
        A name of :data:`MIXES` or :data:`ALIASES`.
    n_layers, n_gqa : int
        Blocks of the model and ``n_heads / n_kv_heads``.
    tied_embeddings : bool
        The model has no ``output.weight`` (the embedding is also the output head).
    has_imatrix, pure : bool
        An importance matrix is given; ``--pure`` (no mix rules).

    Returns
    -------
    str
        A GGML type name (``"Q6_K"``, ``"F32"`` ...).
    """
    mix = resolve_mix(mix)
    default = MIXES[mix][1]
    if len(shape) != 2 or not name.endswith("weight") or name.endswith("_norm.weight"):
        return "F32"                                                       # rule 1
    if default in ("F32", "F16"):
        return default
    K = shape[-1]
    if pure:
        chosen = default
    elif name == "output.weight" or (tied_embeddings and name == "token_embd.weight"):
        chosen = "Q8_0" if K % BLOCK[default] else ("Q6_K" if default != "Q8_0" else "Q8_0")
    else:
        m = _BLOCK_RE.match(name)
        kind = name.split(".")[2] if m else ""
        chosen = _mix_rule(mix, kind, int(m.group(1)) if m else 0, n_layers, n_gqa=n_gqa,
                           has_imatrix=has_imatrix, default=default)
    if K % BLOCK[chosen]:                                                  # rule 7
        if chosen not in FALLBACK:          # llama.cpp: "no tensor type fallback is defined"
            raise ValueError(f"{name}: row length {K} is not a multiple of {BLOCK[chosen]}, "
                             f"the block of {chosen}, and {chosen} has no fallback type")
        chosen = FALLBACK[chosen]
        if K % BLOCK[chosen]:
            chosen = "F16"
    return chosen


def tensor_types(shapes: dict, mix: str, *, n_layers: int, n_gqa: int,
                 has_imatrix: bool = False, pure: bool = False) -> dict[str, str]:
    """:func:`tensor_type` of every tensor of ``shapes`` (llama.cpp name -> NumPy shape); the
    embeddings count as tied when there is no ``output.weight``."""
    tied = "output.weight" not in shapes
    return {n: tensor_type(n, tuple(s), mix, n_layers=n_layers, n_gqa=n_gqa,
                           tied_embeddings=tied, has_imatrix=has_imatrix, pure=pure)
            for n, s in shapes.items()}


def file_type(mix: str) -> int:
    """``general.file_type`` of ``mix`` (``gguf.LlamaFileType``: 15 for Q4_K_M ...)."""
    import gguf

    return int(gguf.LlamaFileType[MIXES[resolve_mix(mix)][0]])


__all__ = ["MIXES", "ALIASES", "BLOCK", "FALLBACK", "resolve_mix", "use_more_bits",
           "tensor_type", "tensor_types", "file_type"]
