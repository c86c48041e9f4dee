"""Perplexity: the float64 log-softmax against scipy, the windowing against a brute-force loop,
and a hand-computed case (zero logits give perplexity = vocabulary size)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import log_softmax

import refquant as rq
from refquant.pipeline.evaluate import token_nll
from refquant.models.llama import LlamaModel, forward

from helpers_model import tiny_config, tiny_weights


def tiny_model():
    cfg = tiny_config()
    return LlamaModel(cfg, tiny_weights(cfg))


def test_token_nll_matches_scipy_and_is_stable():
    z = np.random.default_rng(0).standard_normal((5, 40)).astype(np.float32) * 30
    z[0, 3] = 1e30                                  # huge logit: no overflow
    t = np.array([3, 0, 39, 7, 7])
    ref = -log_softmax(z.astype(np.float64), axis=-1)[np.arange(5), t]
    np.testing.assert_allclose(token_nll(z, t), ref, rtol=1e-12, atol=1e-12)
    assert token_nll(z, t)[0] == 0.0


def test_perplexity_equals_brute_force_windows():
    m = tiny_model()
    tokens = np.random.default_rng(1).integers(0, 300, 50)
    r = rq.perplexity(m, tokens, seq_len=16)
    assert (r.n_windows, r.n_tokens, r.seq_len) == (3, 45, 16)
    total = 0.0
    for w in range(3):
        x = tokens[16 * w:16 * (w + 1)]
        lp = log_softmax(forward(m, x[None])[0].astype(np.float64), axis=-1)
        total -= sum(lp[t, x[t + 1]] for t in range(15))
    # float32 logits: the head runs on position chunks here and on the whole window there, and
    # BLAS may round differently for different block sizes (~1e-9 relative on the NLL)
    assert r.nll == pytest.approx(total / 45, rel=1e-6)
    assert r.ppl == pytest.approx(np.exp(total / 45), rel=1e-6)
    assert rq.perplexity(m, tokens, seq_len=16, max_windows=1).n_windows == 1


def test_zero_logits_give_vocabulary_size():
    m = tiny_model()
    m.weights["lm_head.weight"] = np.zeros((300, 32), np.float32)
    r = rq.perplexity(m, np.arange(40), seq_len=20)
    assert r.ppl == pytest.approx(300.0, rel=1e-12)      # -log(1/300) per token


def test_perplexity_input_errors():
    m = tiny_model()
    with pytest.raises(ValueError, match="seq_len"):
        rq.perplexity(m, np.arange(10), seq_len=1)
    with pytest.raises(ValueError, match="one window"):
        rq.perplexity(m, np.arange(10), seq_len=16)
    with pytest.raises(ValueError, match="1-D integer"):
        rq.perplexity(m, np.zeros((2, 16), int), seq_len=16)
    with pytest.raises(ValueError, match="max_windows"):
        rq.perplexity(m, np.arange(32), seq_len=16, max_windows=0)


def test_eval_and_generate_commands_on_a_tiny_checkpoint(tmp_path, capsys):
    """The two commands end to end on a tiny random GGUF (real text, tiny byte-level vocabulary)."""
    from refquant.cli import main

    from helpers_model import write_tiny_gguf
    cfg = tiny_config()
    path = write_tiny_gguf(tmp_path / "tiny.gguf", cfg, tiny_weights(cfg))
    assert main(["eval", str(path), "--tokens", "64", "--seq-len", "16"]) == 0
    out = capsys.readouterr().out
    m = rq.load_model(path)
    from refquant.pipeline.data import evaluation_tokens
    expected = rq.perplexity(m, evaluation_tokens(m.tokenizer, 64), seq_len=16)
    assert f"perplexity: {expected.ppl:.3f}" in out and "4 windows of 16" in out
    assert main(["generate", "the", "--model", str(path), "--n-new", "3"]) == 0
    out = capsys.readouterr().out
    from refquant.models.llama import generate
    new = generate(m, m.tokenizer.encode("the"), 3)
    assert out.startswith("the" + m.tokenizer.decode(new) + "\n")


def test_batched_windows_are_single_windows():
    """With the float linear the windows run through the model in batches of WINDOW_BATCH; a
    custom linear (here the same float linear, passed explicitly) runs them one at a time. On
    the bundled SmolLM2 (2 windows of 64 tokens) the two give the same log-likelihood to the
    last bit: BLAS sums each row of a product in the same order whatever the number of rows.
    The tiny model's products are small enough for BLAS's small-matrix paths, which round the
    last bits differently (~1e-9 relative on the NLL; 11 windows: a full batch and a partial one).
    """
    from refquant.models.llama import default_linear
    from refquant.pipeline import evaluate

    m = tiny_model()
    tokens = np.random.default_rng(2).integers(0, 300, 11 * 16 + 5)
    batched = rq.perplexity(m, tokens, seq_len=16)
    single = rq.perplexity(m, tokens, seq_len=16, linear=default_linear(m))
    assert evaluate.WINDOW_BATCH == 8 and batched.n_windows == single.n_windows == 11
    assert batched.nll == pytest.approx(single.nll, rel=1e-7)
    model = rq.load_model()
    tokens = np.random.default_rng(3).integers(0, model.config.vocab_size, 128)
    assert (rq.perplexity(model, tokens, seq_len=64).nll
            == rq.perplexity(model, tokens, seq_len=64, linear=default_linear(model)).nll)
