"""Tokenizer from GGUF metadata (tiny vocabulary, ids worked out by hand from the merge ranks)
and from tokenizer.json; unsupported vocabularies raise. The bundled tokenizer is checked
against transformers in test_crosscheck_transformers.py."""

from __future__ import annotations

import pytest

from refquant.models import ModelFormatError
from refquant.models.tokenizer import tokenizer_from_gguf, tokenizer_from_hf

from helpers_model import bytes_to_unicode, tiny_vocab


def tiny_meta(pre="smollm", model="gpt2", **extra):
    tokens, merges, types = tiny_vocab(300)
    meta = {"tokenizer.ggml.model": model, "tokenizer.ggml.pre": pre,
            "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": merges,
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.bos_token_id": 0,
            "tokenizer.ggml.eos_token_id": 0}
    meta.update(extra)
    return meta


def byte_id(ch: str) -> int:
    """Id of a single byte's symbol in tiny_vocab: 1 + the byte value."""
    return 1 + ord(ch)


# tiny_vocab ids: 0 <|endoftext|>, 1..256 bytes, 257 "th", 258 "the", 259 "Ġthe", 260 "Ġa", 261 "an"
def test_merges_by_rank():
    tok = tokenizer_from_gguf(tiny_meta(), "tiny.gguf")
    # " the": Ġ t h e -> (t h) rank 0 -> Ġ th e -> (th e) rank 1 -> Ġ the -> (Ġ the) rank 2
    assert tok.encode(" the") == [259]
    # "the" alone: th, then the
    assert tok.encode("the") == [258]
    # " an": (Ġ a) rank 3 beats (a n) rank 4, and there is no merge "Ġa n"
    assert tok.encode(" an") == [260, byte_id("n")]
    # "an" without a space: (a n)
    assert tok.encode("an") == [261]
    assert tok.decode([259, 260, byte_id("n")]) == " the an"


def test_digits_split_one_by_one_with_smollm_pre():
    smol = tokenizer_from_gguf(tiny_meta("smollm"), "tiny.gguf")
    gpt2 = tokenizer_from_gguf(tiny_meta("gpt2"), "tiny.gguf")
    g = bytes_to_unicode()[ord(" ")]
    assert g == "Ġ"
    # no digit merges: the ids agree; the pre-tokens differ (digits are isolated)
    assert smol.backend.pre_tokenizer.pre_tokenize_str("a 12")[1:] == [("Ġ", (1, 2)), ("1", (2, 3)),
                                                                        ("2", (3, 4))]
    assert gpt2.backend.pre_tokenizer.pre_tokenize_str("a 12")[1] == ("Ġ12", (1, 4))
    assert smol.encode("a 12") == [byte_id("a"), byte_id(" "), byte_id("1"), byte_id("2")]


def test_special_token_kept_whole_and_utf8_roundtrip():
    tok = tokenizer_from_gguf(tiny_meta(), "tiny.gguf")
    assert tok.encode("x<|endoftext|>") == [byte_id("x"), 0]
    text = "Zürich — ok"
    ids = tok.encode(text)
    assert len(ids) == len(text.encode("utf-8")) and tok.decode(ids) == text
    assert tok.bos_id == 0 and tok.eos_id == 0 and tok.vocab_size == 300


def test_add_bos_token():
    tok = tokenizer_from_gguf(tiny_meta(**{"tokenizer.ggml.add_bos_token": True}), "tiny.gguf")
    assert tok.encode("the") == [0, 258]


def test_tokenizer_json_roundtrip(tmp_path):
    tok = tokenizer_from_gguf(tiny_meta(), "tiny.gguf")
    tok.save(tmp_path)
    back = tokenizer_from_hf(tmp_path, {"bos_token_id": 0, "eos_token_id": 0})
    for text in [" the an 12", "Zürich<|endoftext|>the"]:
        assert back.encode(text) == tok.encode(text)
    assert tokenizer_from_hf(tmp_path).eos_id == 0     # from tokenizer_config.json


def test_unsupported():
    with pytest.raises(ModelFormatError, match="tiny.gguf.*SentencePiece.*not supported yet"):
        tokenizer_from_gguf(tiny_meta(model="llama"), "tiny.gguf")
    with pytest.raises(ModelFormatError, match="tokenizer.ggml.model='bert'"):
        tokenizer_from_gguf(tiny_meta(model="bert"), "tiny.gguf")
    with pytest.raises(ModelFormatError, match="tokenizer.ggml.pre='qwen2'"):
        tokenizer_from_gguf(tiny_meta(pre="qwen2"), "tiny.gguf")
    meta = tiny_meta()
    meta["tokenizer.ggml.merges"] = ["q z"]
    with pytest.raises(ModelFormatError, match="merges"):
        tokenizer_from_gguf(meta, "tiny.gguf")
    del meta["tokenizer.ggml.tokens"]
    with pytest.raises(ModelFormatError, match="tokenizer.ggml.tokens"):
        tokenizer_from_gguf(meta, "tiny.gguf")


def test_hf_sentencepiece_only(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(b"\x0a")
    with pytest.raises(ModelFormatError, match="SentencePiece"):
        tokenizer_from_hf(tmp_path)
    assert tokenizer_from_hf(tmp_path / "none") is None
