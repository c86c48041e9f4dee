"""refquant's tokenizer and forward pass against Hugging Face transformers on the bundled model.

The independent path: transformers reads the same GGUF file itself
(``AutoTokenizer/AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)``): its own metadata
reader and tokenizer builder, ``gguf``-based dequantization and its own Q/K un-permutation, then
torch's Llama (CPU, float32). Nothing of refquant is used on that side.

Measured (2-core CPU, torch 2.13.0, transformers 5.24): logits over 96 tokens of real text agree
to max |diff| = 7.8e-5; the tolerance asserted is 1e-3 with identical argmax at every position.
Token ids agree on 12 evaluation paragraphs and three hand-written edge cases.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")     # a local file: never ask the hub
torch = pytest.importorskip("torch", reason="cross-check needs torch (pip install '.[crosscheck]')")
transformers = pytest.importorskip(
    "transformers", reason="cross-check needs transformers (pip install '.[crosscheck]')")

import refquant as rq  # noqa: E402
from refquant.pipeline.data import evaluation_tokens, load_articles, split_articles  # noqa: E402
from refquant.models.llama import forward  # noqa: E402
from refquant.models.resources import bundled_model_path  # noqa: E402

LOGIT_TOL = 1e-3


@pytest.fixture(scope="module")
def ours():
    return rq.load_model()


@pytest.fixture(scope="module")
def theirs():
    pytest.importorskip("accelerate", reason="transformers needs accelerate to read a GGUF file")
    path = bundled_model_path()
    torch.set_num_threads(2)
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32)
    model.eval()
    return tok, model


def test_token_ids_match_transformers(ours, theirs):
    tok, _ = theirs
    articles = load_articles()
    _, evaluation = split_articles()
    texts = [articles[t] for t in evaluation[:12]] + [
        "The capital of France is", "In 1969, 3 astronauts flew 384,400 km.  Twice-spaced\n\nlines",
        "Ünïcödé — “quotes” and emoji 🙂 <|im_start|>user"]
    n_tokens = 0
    for text in texts:
        expected = tok.encode(text, add_special_tokens=False)
        got = ours.tokenizer.encode(text)
        assert got == expected, text[:60]
        assert ours.tokenizer.decode(got) == text
        n_tokens += len(got)
    assert n_tokens > 1000


def test_logits_match_transformers(ours, theirs):
    _, model = theirs
    tokens = evaluation_tokens(ours.tokenizer, 96)[None, :]     # [1, 96] real text
    ref = model(torch.from_numpy(tokens)).logits.detach().numpy()   # [1, 96, V]
    got = forward(ours, tokens)
    diff = float(np.max(np.abs(got - ref)))
    print(f"max |logits - transformers| over {tokens.shape[1]} tokens: {diff:.2e}")
    assert got.shape == ref.shape and got.dtype == np.float32
    assert diff < LOGIT_TOL
    assert np.array_equal(got.argmax(-1), ref.argmax(-1))


def test_weights_match_transformers(ours, theirs):
    """The un-permuted Q/K (and every other matrix) equal transformers' own, bit for bit."""
    _, model = theirs
    sd = model.state_dict()
    for name in ("layers.0.self_attn.q_proj.weight", "layers.7.self_attn.k_proj.weight",
                 "layers.29.mlp.down_proj.weight", "embed_tokens.weight", "norm.weight"):
        np.testing.assert_array_equal(ours.weights[name], sd["model." + name].numpy(),
                                      err_msg=name)


@pytest.mark.parametrize("tied", [False, True])
def test_save_hf_directory_loads_in_transformers(tmp_path, tied):
    """A tiny random model exported by save_hf is read by transformers' LlamaForCausalLM
    (config mapping, tensor names, Q/K layout) and gives refquant's logits."""
    from helpers_model import tiny_config, tiny_weights
    from refquant.models.llama import LlamaModel
    from refquant.models.loaders import save_hf

    cfg = tiny_config(tied_embeddings=tied, rope_theta=500.0)
    m = LlamaModel(cfg, tiny_weights(cfg, seed=3))
    d = save_hf(m, tmp_path / "tiny")
    ref = transformers.LlamaForCausalLM.from_pretrained(str(d), dtype=torch.float32).eval()
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 12))
    with torch.no_grad():
        expected = ref(torch.from_numpy(tokens)).logits.numpy()
    np.testing.assert_allclose(forward(m, tokens), expected, rtol=0, atol=1e-5)
