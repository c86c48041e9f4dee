"""The Hugging Face files of a GPTQ directory: ``config.json`` with its ``quantization_config``,
the tokenizer files and ``generation_config.json``.

Oracles: Hugging Face ``transformers`` itself (``AutoConfig``, ``AutoTokenizer``,
``GenerationConfig`` and ``GPTQConfig`` read the directory, CPU only), refquant's own tokenizer
for the token ids, and the hand-written expectations stated in each test.
"""

from __future__ import annotations

import json

import pytest

from helpers_model import tiny_config, tiny_vocab
from refquant.models.config_checks import hf_config, hf_config_json
from refquant.models.tokenizer import tokenizer_from_gguf

transformers = pytest.importorskip("transformers")

SENTENCES = ["The quick brown fox jumps over the lazy dog in 2024.",
             "  Zürich, 東京 and naïve café\tcosts $12.50\n\nOK?",
             "<|endoftext|>the an"]


def tiny_meta(**kw):
    tokens, merges, types = tiny_vocab(300)
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm",
            "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": merges,
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.bos_token_id": 0,
            "tokenizer.ggml.eos_token_id": 0}
    meta.update(kw)
    return meta


@pytest.mark.parametrize("kw", [{}, {"tied_embeddings": True, "head_dim": 16, "rope_theta": 5e5}])
def test_hf_config_json_round_trips_and_transformers_reads_it(tmp_path, kw):
    """hf_config(hf_config_json(c)) == c; transformers' LlamaConfig holds the same numbers."""
    c = tiny_config(**kw)
    obj = hf_config_json(c)
    assert hf_config(obj, "config.json") == c
    (tmp_path / "config.json").write_text(json.dumps(obj))
    t = transformers.AutoConfig.from_pretrained(tmp_path)
    assert type(t).__name__ == "LlamaConfig"
    assert (t.num_hidden_layers, t.hidden_size, t.num_attention_heads, t.num_key_value_heads,
            t.intermediate_size, t.vocab_size, t.head_dim, t.max_position_embeddings,
            t.tie_word_embeddings) == (c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.d_ff,
                                       c.vocab_size, c.head_dim, c.max_seq_len, c.tied_embeddings)
    rope = getattr(t, "rope_parameters", None) or {"rope_theta": t.rope_theta}
    assert rope["rope_theta"] == c.rope_theta and t.rms_norm_eps == c.norm_eps


def test_saved_gguf_tokenizer_has_special_tokens_and_chat_template(tmp_path):
    """tokenizer_config.json names the GGUF's BOS/EOS/UNK/PAD tokens and carries its chat
    template; an out-of-vocabulary padding id is left out (the file still loads)."""
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tok = tokenizer_from_gguf(tiny_meta(**{"tokenizer.ggml.unknown_token_id": 3,
                                           "tokenizer.ggml.padding_token_id": 257,
                                           "tokenizer.chat_template": template}), "tiny.gguf")
    tok.save(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert cfg["bos_token"] == cfg["eos_token"] == "<|endoftext|>"
    assert cfg["unk_token"] == tok.token(3) and cfg["pad_token"] == tok.token(257) == "th"
    assert cfg["chat_template"] == template
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf.apply_chat_template([{"role": "user", "content": "the"}], tokenize=False) == "the"
    off = tokenizer_from_gguf(tiny_meta(**{"tokenizer.ggml.padding_token_id": 300}), "tiny.gguf")
    assert off.pad_id is None
