"""Whole GGUF files: the tensors, the Q/K rows, the metadata and tokenizer, the checks.

Oracles: the ``gguf`` package's own quantizer (``gguf.quants.quantize``: Q8_0 bytes) and reader
(``gguf.GGUFReader``: the keys and their types), the rotary permutation written independently
in ``tests/helpers_model.py`` (``llamacpp_permute``), the tiny BPE vocabulary of the helpers, and
the source model's own forward pass (an F32 file must give the same logits bit for bit).
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers_model import (llamacpp_permute, tiny_config, tiny_vocab, tiny_weights,
                           write_tiny_gguf, write_tiny_hf)
from refquant.algorithms.imatrix import Imatrix, ImatrixEntry
from refquant.formats.gguf_export import GGUFExportError, GGUFExporter, export_gguf


def _model(tmp_path, source="gguf", **kw):
    from refquant import load_model

    cfg = tiny_config(**kw)
    W = tiny_weights(cfg)
    if source == "gguf":
        return load_model(write_tiny_gguf(tmp_path / "src.gguf", cfg, W)), W
    return load_model(write_tiny_hf(tmp_path / "hf", cfg, W)), W


def test_q8_0_bytes_and_qk_rows_match_gguf_quantizer(tmp_path):
    """Every matrix's bytes equal gguf.quants.quantize(Q8_0) of the weight, Q and K after the
    independent llama.cpp permutation; norms stay F32 as stored."""
    import gguf
    from refquant.models.gguffile import read_gguf

    model, W = _model(tmp_path)
    cfg = model.config
    out = export_gguf(model, tmp_path / "q8.gguf", "Q8_0")
    f = read_gguf(out)
    q8 = gguf.GGMLQuantizationType.Q8_0
    for name, heads in (("layers.1.self_attn.q_proj.weight", cfg.n_heads),
                        ("layers.0.self_attn.k_proj.weight", cfg.n_kv_heads),
                        ("layers.0.mlp.down_proj.weight", None), ("lm_head.weight", None)):
        w = W[name] if heads is None else llamacpp_permute(W[name], heads)
        t = f.tensors[{"lm_head.weight": "output.weight"}.get(name) or _gname(name)]
        assert t.type_name == "Q8_0" and t.shape == w.shape
        assert np.array_equal(np.asarray(t.data).reshape(w.shape[0], -1), gguf.quants.quantize(w, q8))
    norm = f.tensors["blk.0.attn_norm.weight"]
    assert norm.type_name == "F32"
    assert np.array_equal(np.frombuffer(norm.data, "<f4"), W["layers.0.input_layernorm.weight"])


def _gname(name):
    from refquant.models.gguf_hf import gguf_name
    return gguf_name(name)


def test_metadata_copied_with_types(tmp_path):
    """From a GGUF source every key comes back with the same GGUF type (gguf's reader), the
    file type set to the mix's (7 = MOSTLY_Q8_0) and the quantization version 2."""
    import gguf

    model, _ = _model(tmp_path)
    out = export_gguf(model, tmp_path / "q8.gguf", "Q8_0")
    src, dst = gguf.GGUFReader(model.source), gguf.GGUFReader(out)
    for key, field in src.fields.items():
        if key.startswith("GGUF."):
            continue
        assert dst.fields[key].types == field.types, key
        if key not in ("general.file_type",):
            assert dst.fields[key].contents() == field.contents(), key
    assert dst.fields["general.file_type"].contents() == 7
    assert dst.fields["general.quantization_version"].contents() == 2


def test_f32_file_gives_the_same_logits(tmp_path):
    """An F32 export is the same model: logits equal bit for bit after reloading."""
    from refquant import load_model
    from refquant.models.llama import forward

    model, _ = _model(tmp_path)
    back = load_model(export_gguf(model, tmp_path / "f32.gguf", "F32"))
    tokens = np.arange(12)[None] * 7 % model.config.vocab_size
    assert np.array_equal(forward(model, tokens), forward(back, tokens))


def test_hugging_face_source_tokenizer_and_logits(tmp_path):
    """From a Hugging Face directory: llama.* keys from config.json, the tokenizer from
    tokenizer.json (tokens, merges and types equal the helpers' vocabulary), same logits."""
    import gguf
    from refquant import load_model
    from refquant.models.llama import forward
    from refquant.models.loaders import save_hf

    gmodel, _ = _model(tmp_path)
    hf = load_model(save_hf(gmodel, tmp_path / "hf"))
    out = export_gguf(hf, tmp_path / "f32.gguf", "F32")
    r = gguf.GGUFReader(out)
    tokens, merges, types = tiny_vocab(gmodel.config.vocab_size)
    assert r.fields["tokenizer.ggml.tokens"].contents() == tokens
    assert r.fields["tokenizer.ggml.merges"].contents() == merges
    assert r.fields["tokenizer.ggml.token_type"].contents() == list(types)
    assert r.fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert r.fields["llama.attention.head_count_kv"].contents() == gmodel.config.n_kv_heads
    back = load_model(out)
    ids = back.tokenizer.encode("the an 2024 then")
    assert ids == gmodel.tokenizer.encode("the an 2024 then")
    t = np.array([ids])
    assert np.array_equal(forward(back, t), forward(gmodel, t))


def test_bundled_tokenizer_from_tokenizer_json(tmp_path):
    """The bundled SmolLM2 tokenizer saved as tokenizer.json and exported back gives the
    GGUF's own tokens, merges and token types (the source file's metadata is the oracle)."""
    from refquant.formats.gguf_export import tokenizer_metadata
    from refquant.models.gguffile import read_gguf
    from refquant.models.resources import bundled_model_path
    from refquant.models.tokenizer import tokenizer_from_gguf, tokenizer_from_hf

    f = read_gguf(bundled_model_path())
    tokenizer_from_gguf(f.metadata, f.path).save(tmp_path)
    tok = tokenizer_from_hf(tmp_path, {"bos_token_id": 1, "eos_token_id": 2})
    meta = tokenizer_metadata(tok)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.pre",
                "tokenizer.ggml.add_bos_token", "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.eos_token_id"):
        assert meta[key] == f.metadata[key], key
    want = f.metadata["tokenizer.ggml.token_type"]
    got = meta["tokenizer.ggml.token_type"]
    assert {(a, b) for a, b in zip(got, want) if a != b} == set()


def test_k_quant_mix_on_a_256_wide_model(tmp_path):
    """Q4_K_M on a model whose rows are multiples of 256: the mix's types are written and the
    file reloads; its weights (decoded by gguf, as the loader does) equal refquant's decoder of
    the stored bytes."""
    from refquant import load_model
    from refquant.models.gguffile import read_gguf

    model, W = _model(tmp_path, d_model=256, d_ff=512, n_heads=4, n_kv_heads=2)
    out = export_gguf(model, tmp_path / "q4km.gguf", "Q4_K_M")
    types = {n: t.type_name for n, t in read_gguf(out).tensors.items()}
    # 2 blocks, by hand: use_more_bits(i, 2) is i < 0 or i >= 14 // 8 = 1 or i % 3 == 2: i = 1 only
    assert types["output.weight"] == "Q6_K" and types["blk.0.attn_q.weight"] == "Q4_K"
    assert types["blk.1.ffn_down.weight"] == "Q6_K" and types["blk.1.attn_v.weight"] == "Q6_K"
    assert types["blk.0.ffn_down.weight"] == "Q4_K" and types["blk.0.attn_v.weight"] == "Q4_K"
    back = load_model(out)
    from refquant.formats import ggml
    raw = np.asarray(read_gguf(out).tensors["blk.0.ffn_up.weight"].data).reshape(512, -1)
    assert np.array_equal(back.weights["layers.0.mlp.up_proj.weight"], ggml.dequantize(raw, "Q4_K"))


def test_imatrix_length_and_missing_types_refused_before_writing(tmp_path, monkeypatch):
    """An imatrix entry of the wrong length names the file and tensor; a block type the
    registry lacks is named with its tensors; neither leaves a file behind."""
    from refquant.formats import ggml

    model, _ = _model(tmp_path)
    bad = Imatrix({"blk.0.attn_q.weight": ImatrixEntry(np.ones((1, 5)), np.array([3]))})
    with pytest.raises(ValueError, match="imat.gguf: imatrix entry 'blk.0.attn_q.weight' has 5 "
                                         "values; the tensor's rows have 32"):
        export_gguf(model, tmp_path / "x.gguf", "Q8_0", imatrix=bad, imatrix_source="imat.gguf")
    monkeypatch.delitem(ggml.TYPES, "Q8_0")
    with pytest.raises(ValueError, match="no block type Q8_0 .*token_embd.weight"):
        export_gguf(model, tmp_path / "x.gguf", "Q8_0")
    assert list(tmp_path.glob("x.gguf*")) == []


def test_verification_and_order(tmp_path):
    """Out-of-order writes are refused; bytes that do not read back as hashed fail the
    verification, and the file is not left behind."""
    from refquant.formats.gguf_export import tensor_bytes

    model, _ = _model(tmp_path)
    ex = GGUFExporter(tmp_path / "v.gguf", model, "Q8_0")
    with pytest.raises(GGUFExportError, match="expected embed_tokens.weight next"):
        ex.write("norm.weight", np.zeros(4, np.uint8))
    for t in ex.plan:
        ex.write(t.name, tensor_bytes(model.weights[t.name], t, model.config))
    ex._hashes["blk.0.attn_k.weight"] = "0" * 64
    with pytest.raises(GGUFExportError, match="blk.0.attn_k.weight: bytes differ"):
        ex.close()
    assert list(tmp_path.glob("v.gguf*")) == []
