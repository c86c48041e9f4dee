"""The NumPy Llama forward pass against a naive float64 oracle written here with explicit loops
over positions and heads (independent of refquant.models.llama), plus KV cache, batching, the
linear hook, generation and input errors. The comparison with transformers on the real model is
in test_crosscheck_transformers.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from refquant.models.llama import (LINEAR_NAMES, KVCache, LlamaConfig, LlamaModel, block,
                                   default_linear, embed,
                                   forward, generate, head)

from helpers_model import tiny_config, tiny_weights


def naive_logits(cfg: LlamaConfig, W: dict, seq: list[int]) -> np.ndarray:
    """One sequence, float64, loops: the Llama equations as written in the papers."""
    W = {k: v.astype(np.float64) for k, v in W.items()}
    hd, H, Hkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads

    def norm(v, g):
        return v / math.sqrt(sum(float(a) * float(a) for a in v) / len(v) + cfg.norm_eps) * g

    def rope(v, t):                       # v: [hd], pairs (j, j + hd/2)
        out = v.copy()
        for j in range(hd // 2):
            phi = t * cfg.rope_theta ** (-2 * j / hd)
            a, b = v[j], v[j + hd // 2]
            out[j] = a * math.cos(phi) - b * math.sin(phi)
            out[j + hd // 2] = b * math.cos(phi) + a * math.sin(phi)
        return out

    xs = [W["embed_tokens.weight"][i].copy() for i in seq]
    T = len(seq)
    for layer in range(cfg.n_layers):
        p = f"layers.{layer}."
        a = [norm(x, W[p + "input_layernorm.weight"]) for x in xs]
        q = [W[p + "self_attn.q_proj.weight"] @ v for v in a]
        k = [W[p + "self_attn.k_proj.weight"] @ v for v in a]
        v_ = [W[p + "self_attn.v_proj.weight"] @ v for v in a]
        new = []
        for t in range(T):
            heads = []
            for h in range(H):
                g = h // (H // Hkv)           # the KV head this query head reads
                qt = rope(q[t][h * hd:(h + 1) * hd], t)
                scores = [float(qt @ rope(k[s][g * hd:(g + 1) * hd], s)) / math.sqrt(hd)
                          for s in range(t + 1)]
                mx = max(scores)
                e = [math.exp(sc - mx) for sc in scores]
                heads.append(sum(e[s] / sum(e) * v_[s][g * hd:(g + 1) * hd] for s in range(t + 1)))
            new.append(xs[t] + W[p + "self_attn.o_proj.weight"] @ np.concatenate(heads))
        xs = new
        out = []
        for x in xs:
            m = norm(x, W[p + "post_attention_layernorm.weight"])
            gt = W[p + "mlp.gate_proj.weight"] @ m
            up = W[p + "mlp.up_proj.weight"] @ m
            out.append(x + W[p + "mlp.down_proj.weight"] @ (gt / (1 + np.exp(-gt)) * up))
        xs = out
    Wout = W["embed_tokens.weight"] if cfg.tied_embeddings else W["lm_head.weight"]
    return np.stack([Wout @ norm(x, W["norm.weight"]) for x in xs])


def tiny_model(seed=0, **kw) -> LlamaModel:
    cfg = tiny_config(**kw)
    return LlamaModel(cfg, tiny_weights(cfg, seed))


@pytest.mark.parametrize("kw", [{}, {"tied_embeddings": True}, {"n_kv_heads": 4},
                                {"n_kv_heads": 1, "rope_theta": 500.0}])
def test_forward_matches_naive_oracle(kw):
    m = tiny_model(**kw)
    tokens = np.random.default_rng(1).integers(0, m.config.vocab_size, (2, 7))
    # (the causal query blocks are exercised with QUERY_BLOCK lowered in the test below)
    got = forward(m, tokens)
    assert got.shape == (2, 7, m.config.vocab_size) and got.dtype == np.float32
    for b in range(2):
        ref = naive_logits(m.config, m.weights, tokens[b].tolist())
        np.testing.assert_allclose(got[b], ref, rtol=0, atol=2e-5)


def test_kv_cache_step_by_step_equals_full_sequence():
    m = tiny_model()
    tokens = np.random.default_rng(2).integers(0, 300, (2, 9))
    full = forward(m, tokens)
    cache = KVCache.empty(m.config, 2, 9)
    parts = [forward(m, tokens[:, :4], cache=cache)]
    for t in range(4, 9):
        parts.append(forward(m, tokens[:, t:t + 1], cache=cache))
    assert cache.pos == 9
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="cannot hold"):
        forward(m, tokens[:, :1], cache=cache)


def test_batch_rows_are_independent():
    m = tiny_model()
    tokens = np.random.default_rng(3).integers(0, 300, (3, 6))
    full = forward(m, tokens)
    for b in range(3):
        np.testing.assert_allclose(forward(m, tokens[b:b + 1])[0], full[b], rtol=0, atol=1e-5)


def test_linear_hook_sees_every_projection_and_changes_the_output():
    m = tiny_model()
    tokens = np.arange(5)[None, :]
    seen = []
    base = default_linear(m)

    def recording(name, x):
        seen.append((name, x.shape))
        return base(name, x)

    np.testing.assert_array_equal(forward(m, tokens, linear=recording), forward(m, tokens))
    names = [n for n, _ in seen]
    assert len(names) == 7 * m.config.n_layers
    assert names[:7] == ["layers.0.self_attn.q_proj", "layers.0.self_attn.k_proj",
                         "layers.0.self_attn.v_proj", "layers.0.self_attn.o_proj",
                         "layers.0.mlp.gate_proj", "layers.0.mlp.up_proj", "layers.0.mlp.down_proj"]
    assert names[:7] == ["layers.0." + n for n in LINEAR_NAMES]
    assert dict(seen)["layers.1.mlp.down_proj"] == (1, 5, m.config.d_ff)

    def zero_mlp(name, x):
        y = base(name, x)
        return y * 0 if name.endswith("down_proj") else y

    assert not np.allclose(forward(m, tokens, linear=zero_mlp), forward(m, tokens))


def test_assigned_weight_is_used():
    m = tiny_model()
    tokens = np.arange(4)[None, :]
    before = forward(m, tokens)
    m.weights["lm_head.weight"] = np.zeros_like(m.weights["lm_head.weight"])
    assert np.all(forward(m, tokens) == 0)
    assert before.any()


def test_block_and_head_compose_to_forward():
    m = tiny_model()
    tokens = np.arange(6)[None, :]
    x = embed(m, tokens)
    x0 = x.copy()
    for i in range(m.config.n_layers):
        x = block(m, i, x)
    np.testing.assert_array_equal(head(m, x), forward(m, tokens))
    np.testing.assert_array_equal(embed(m, tokens), x0)     # block does not mutate its input


def test_generate_is_greedy_argmax_without_cache():
    m = tiny_model()
    prompt = [5, 17, 42]
    got = generate(m, prompt, 6, stop_at_eos=False)
    seq = list(prompt)
    for _ in range(6):
        seq.append(int(np.argmax(forward(m, np.array([seq]))[0, -1])))
    assert got == seq[3:]


def test_input_errors():
    m = tiny_model()
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        forward(m, np.arange(4))
    with pytest.raises(ValueError, match="token id 300"):
        forward(m, np.array([[1, 300]]))
    with pytest.raises(ValueError, match="token id -1"):
        forward(m, np.array([[-1, 2]]))
    with pytest.raises(ValueError, match="dtype"):
        forward(m, np.array([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="start_pos"):
        block(m, 0, embed(m, np.array([[1]])), start_pos=3)
    with pytest.raises(ValueError, match="n_new"):
        generate(m, [1], -1)
    with pytest.raises(ValueError, match="n_kv_heads"):
        tiny_config(n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="n_layers"):
        tiny_config(n_layers=0)
    with pytest.raises(ValueError, match="rope_theta"):
        tiny_config(rope_theta=float("nan"))


def test_bundled_model_knows_the_capital_of_france():
    import refquant as rq
    m = rq.load_model()
    ids = generate(m, m.tokenizer.encode("The capital of France is"), 3)
    assert m.tokenizer.decode(ids).startswith(" Paris")


def test_causal_query_blocks_match_the_oracle(monkeypatch):
    """Queries processed in blocks of 3 (several blocks, a short last one, with a KV cache)."""
    import refquant.models.llama as llama
    monkeypatch.setattr(llama, "QUERY_BLOCK", 3)
    m = tiny_model()
    tokens = np.random.default_rng(4).integers(0, 300, (1, 11))
    ref = naive_logits(m.config, m.weights, tokens[0].tolist())
    np.testing.assert_allclose(forward(m, tokens)[0], ref, rtol=0, atol=2e-5)
    cache = KVCache.empty(m.config, 1, 11)
    parts = [forward(m, tokens[:, :4], cache=cache), forward(m, tokens[:, 4:11], cache=cache)]
    np.testing.assert_allclose(np.concatenate(parts, axis=1)[0], ref, rtol=0, atol=2e-5)


def test_outputs_of_the_linear_are_not_modified():
    m = tiny_model()
    base = default_linear(m)
    kept = []

    def keeping(name, x):
        y = base(name, x)
        kept.append((y, y.copy()))
        return y

    forward(m, np.arange(5)[None, :], linear=keeping)
    assert all(np.array_equal(y, c) for y, c in kept)
