"""llama-quantize's per-tensor type choices on the bundled SmolLM2-135M's tensor list.

Oracle: tables derived by hand from ``src/llama-quant.cpp`` (llama_tensor_get_type_impl and
tensor_type_fallback) for this model: 30 blocks, n_gqa = 9 / 3 = 3, tied embeddings, hidden
576 (not a multiple of 256: every 576-column K-quant falls back) and FFN 1536 = 6 x 256.
use_more_bits(i, 30) holds for i in MORE below (i < 3, i >= 26, (i - 3) % 3 == 2), worked
out by hand.
"""

from __future__ import annotations

import pytest

from refquant.formats.gguf_mix import file_type, resolve_mix, tensor_type, tensor_types

N = 30
MORE = {0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29}
KINDS = {"attn_norm": (576,), "attn_q": (576, 576), "attn_k": (192, 576), "attn_v": (192, 576),
         "attn_output": (576, 576), "ffn_norm": (576,), "ffn_gate": (1536, 576),
         "ffn_up": (1536, 576), "ffn_down": (576, 1536)}


def smollm_shapes():
    shapes = {"token_embd.weight": (49152, 576)}
    for i in range(N):
        shapes.update({f"blk.{i}.{k}.weight": s for k, s in KINDS.items()})
    shapes["output_norm.weight"] = (576,)
    return shapes


def expected(mix: str, has_imatrix: bool = False) -> dict:
    """The hand-derived table: per (kind, layer) the type llama-quantize writes."""
    def block(kind, i):
        if kind.endswith("norm"):
            return "F32"
        table = {
            "Q8_0": {},
            "Q4_0": {"ffn_down": "Q4_1" if has_imatrix and i < 3 else "Q4_0"},
            "Q4_K_M": {"attn_v": "Q8_0" if i in MORE else "Q5_0",
                       "ffn_down": "Q6_K" if i in MORE else "Q4_K"},
            "Q5_K_M": {"attn_v": "Q8_0" if i in MORE else "Q5_1",
                       "ffn_down": "Q6_K" if i in MORE else "Q5_K"},
            "Q3_K_M": {"attn_v": "Q5_1" if i < 2 else "Q5_0",
                       "ffn_down": "Q5_K" if i < 1 else "Q4_K", "attn_output": "Q5_0"},
            "Q2_K": {"ffn_down": "Q3_K"},
            "IQ4_XS": {"ffn_down": "Q5_K" if i < 3 and not has_imatrix else "IQ4_XS"},
        }[mix]
        rest = {"Q8_0": "Q8_0", "Q4_0": "Q4_0", "Q4_K_M": "Q5_0", "Q5_K_M": "Q5_1",
                "Q3_K_M": "Q4_0", "Q2_K": "Q4_0", "IQ4_XS": "IQ4_NL"}[mix]
        return table.get(kind, rest)

    out = {"token_embd.weight": "Q8_0"}       # tied: output rule, 576 % block -> Q8_0 / Q6_K -> Q8_0
    for i in range(N):
        out.update({f"blk.{i}.{k}.weight": block(k, i) for k in KINDS})
    out["output_norm.weight"] = "F32"
    return out


@pytest.mark.parametrize("mix", ["Q8_0", "Q4_0", "Q4_K_M", "Q5_K_M", "Q3_K_M", "Q2_K", "IQ4_XS"])
@pytest.mark.parametrize("has_imatrix", [False, True])
def test_smollm_table(mix, has_imatrix):
    """Every tensor of the bundled model, every mix of the issue, with and without imatrix."""
    got = tensor_types(smollm_shapes(), mix, n_layers=N, n_gqa=3, has_imatrix=has_imatrix)
    want = expected(mix, has_imatrix)
    diff = {n: (got[n], want[n]) for n in want if got[n] != want[n]}
    assert diff == {}


def test_untied_model_of_256_multiples():
    """Hand-derived for a 16-block model of width 512 with n_gqa 4 and its own output: the
    output gets Q6_K, attn_v Q4_K (Q2_K mix, n_gqa >= 4), no fallback anywhere."""
    kw = dict(n_layers=16, n_gqa=4, tied_embeddings=False)
    assert tensor_type("output.weight", (32000, 512), "Q4_K_M", **kw) == "Q6_K"
    assert tensor_type("output.weight", (32000, 512), "Q8_0", **kw) == "Q8_0"
    assert tensor_type("token_embd.weight", (32000, 512), "Q4_K_M", **kw) == "Q4_K"
    assert tensor_type("blk.3.attn_v.weight", (128, 512), "Q2_K", **kw) == "Q4_K"
    assert tensor_type("blk.3.attn_v.weight", (128, 512), "IQ4_XS", **kw) == "Q5_K"
    assert tensor_type("blk.1.ffn_down.weight", (512, 1024), "Q3_K_M", **kw) == "Q4_K"
    assert tensor_type("blk.0.ffn_down.weight", (512, 1024), "Q3_K_M", **kw) == "Q5_K"
    assert tensor_type("blk.3.attn_v.weight", (128, 512), "Q4_K_S", **kw) == "Q5_K"
    assert tensor_type("blk.4.attn_v.weight", (128, 512), "Q4_K_S", **kw) == "Q4_K"


def test_pure_aliases_and_errors():
    """--pure: the default type everywhere (fallback still applies); Q4_K is Q4_K_M as in
    llama-quantize; unknown names and rows without a fallback are errors naming them."""
    kw = dict(n_layers=N, n_gqa=3, tied_embeddings=True)
    assert tensor_type("blk.0.ffn_down.weight", (576, 1536), "Q4_K", pure=True, **kw) == "Q4_K"
    assert tensor_type("blk.0.attn_q.weight", (576, 576), "Q6_K", pure=True, **kw) == "Q8_0"
    assert tensor_type("token_embd.weight", (49152, 576), "Q4_0", pure=True, **kw) == "Q4_0"
    assert tensor_type("blk.0.attn_v.weight", (192, 576), "F16", **kw) == "F16"
    assert resolve_mix("q4_k") == "Q4_K_M" and file_type("Q4_K_M") == 15 and file_type("Q8_0") == 7
    with pytest.raises(ValueError, match="unknown GGUF type 'Q7_K'"):
        resolve_mix("Q7_K")
    with pytest.raises(ValueError, match="blk.0.attn_q.weight: row length 48 .* Q4_0"):
        tensor_type("blk.0.attn_q.weight", (48, 48), "Q4_0", **kw)
    assert tensor_type("blk.0.attn_q.weight", (48, 48), "Q4_K_M", **kw) == "F16"
