"""Tests of refquant.algorithms.awq (matrix level) and refquant.pipeline.awq_block (one Llama block).

Oracles written here, independent of the code under test:
- ``naive_fake_quantize``: asymmetric/symmetric min-max quantization by a loop over rows and
  groups (the formulas of refquant.schemes.uniform's module docstring);
- ``authors_clip``: the clipping loop of the authors' ``auto_clip_layer`` (llm-awq,
  ``awq/quantize/auto_clip.py``) transcribed group by group, with ``naive_fake_quantize``;
- ``naive_block`` (``naive_attention``, ``naive_mlp``): a Llama decoder block (RMSNorm, rotary
  embeddings in the Hugging Face rotate-half layout, grouped-query causal attention with
  ``repeat_kv``, SwiGLU MLP) with the ``linear(name, x)`` protocol of refquant.models.llama, on
  a tiny random ``LlamaModel`` (tests/helpers_model.py); it is checked against
  refquant.models.llama.block, which awq_block runs.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers_model import tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

import refquant as rq
from refquant.algorithms.awq import (activation_scale, awq_clip, awq_search_scale, clip_range,
                                     fold_scales, group_output_error, scale_from_alpha,
                                     scaled_fake_quantize)
from refquant.models import llama
from refquant.pipeline.awq_block import awq_block, gqa_channel_map
from refquant.pipeline.blocks import SHORT_NAMES

G4 = rq.QuantSpec(bits=4, symmetric=False, granularity="group", group_size=16)
G3 = rq.QuantSpec(bits=3, symmetric=False, granularity="group", group_size=16)


# ---------------------------------------------------------------------------------------------
# oracles


def naive_fake_quantize(W, bits, group_size, symmetric=False):
    """Min-max quantize-dequantize, one (row, group) at a time, float64 with float32 scales."""
    W = np.asarray(W, np.float64)
    out = np.empty_like(W)
    for r in range(W.shape[0]):
        for a in range(0, W.shape[1], group_size):
            w = W[r, a:a + group_size]
            if symmetric:
                qmax = 2 ** (bits - 1) - 1
                amax = np.abs(w).max()
                s = np.float64(np.float32(amax / qmax)) if amax > 0 else 1.0
                q = np.clip(np.rint(w / s), -qmax - 1, qmax)
                out[r, a:a + group_size] = s * q
            else:
                qmax = 2 ** bits - 1
                lo, hi = min(w.min(), 0.0), max(w.max(), 0.0)
                s = np.float64(np.float32((hi - lo) / qmax)) if hi > lo else 1.0
                z = np.clip(-np.rint(lo / s), 0, qmax)
                q = np.clip(np.rint(w / s) + z, 0, qmax)
                out[r, a:a + group_size] = s * (q - z)
    return out


def authors_clip(W, X, bits, group_size, symmetric=False, n_grid=20, max_shrink=0.5):
    """llm-awq's ``auto_clip_layer``, one (row, group) at a time: for ``i_s < max_shrink n_grid``
    clamp the group at ``+-max|w| (1 - i_s / n_grid)``, quantize the clamped group (min-max),
    keep the first strictly smaller ``mean_t (x_t . (q - w))^2``; then the weight clamped at the
    chosen bound, quantized. Returns (chosen ``i_s`` [out, G], W_hat [out, in] float64).

    The quantizer is this file's ``naive_fake_quantize`` (zero inside the range); the authors'
    ``pseudo_quantize_tensor`` takes the clamped group's own [min, max], the same range for a
    group with both signs, as every group of the tests here has (asserted)."""
    W, X = np.asarray(W, np.float64), np.asarray(X, np.float64)
    n_out, k = W.shape
    starts = range(0, k, group_size)
    best_i = np.zeros((n_out, len(starts)), int)
    W_hat = np.empty_like(W)
    for r in range(n_out):
        for g, a in enumerate(starts):
            w, x = W[r, a:a + group_size], X[:, a:a + group_size]
            assert w.min() < 0 < w.max()
            org_out = x @ w                                              # [n]
            org_max = np.abs(w).max()
            min_err, best = 1e9, org_max
            for i_s in range(int(max_shrink * n_grid)):
                max_val = org_max * (1 - i_s / n_grid)
                q = naive_fake_quantize(np.clip(w, -max_val, max_val)[None], bits, group_size,
                                        symmetric)[0]
                err = np.mean((x @ q - org_out) ** 2)
                if err < min_err:
                    min_err, best, best_i[r, g] = err, max_val, i_s
            W_hat[r, a:a + group_size] = naive_fake_quantize(np.clip(w, -best, best)[None], bits,
                                                             group_size, symmetric)[0]
    return best_i, W_hat


def rmsnorm(x, g, eps=1e-5):
    x = x.astype(np.float32)
    return (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)) * g


def rope(x, theta):
    """Rotary embedding, Hugging Face layout (rotate the two halves); x [B, T, H, hd]."""
    T, hd = x.shape[1], x.shape[-1]
    inv = theta ** (-np.arange(0, hd, 2) / hd)                       # [hd/2]
    ang = np.arange(T)[:, None] * inv[None, :]                       # [T, hd/2]
    cos = np.concatenate([np.cos(ang)] * 2, -1)[None, :, None, :]
    sin = np.concatenate([np.sin(ang)] * 2, -1)[None, :, None, :]
    x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
    rot = np.concatenate([-x2, x1], -1)
    return (x * cos + rot * sin).astype(np.float32)


def float_linear(model):
    def linear(name, v):
        return v @ model.weights[name + ".weight"].T
    return linear


def naive_attention(model, i, h, linear):
    """Causal GQA self-attention of block ``i`` on the normalized input ``h`` [B, T, d]."""
    c = model.config
    p = f"layers.{i}.self_attn."
    B, T, _ = h.shape
    hd, H, K = c.head_dim, c.n_heads, c.n_kv_heads
    q = rope(linear(p + "q_proj", h).reshape(B, T, H, hd), c.rope_theta)
    k = rope(linear(p + "k_proj", h).reshape(B, T, K, hd), c.rope_theta)
    v = linear(p + "v_proj", h).reshape(B, T, K, hd)
    kv_of = np.arange(H) // (H // K)                                  # repeat_kv
    k, v = k[:, :, kv_of], v[:, :, kv_of]                             # [B, T, H, hd]
    att = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(hd)
    att = np.where(np.tril(np.ones((T, T), bool)), att, -np.inf)
    att = np.exp(att - att.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    o = np.einsum("bhts,bshd->bthd", att, v).reshape(B, T, H * hd).astype(np.float32)
    return linear(p + "o_proj", o)


def naive_mlp(model, i, h, linear):
    """SwiGLU MLP of block ``i`` on the normalized input ``h``."""
    p = f"layers.{i}.mlp."
    gate = linear(p + "gate_proj", h)
    return linear(p + "down_proj", (gate / (1 + np.exp(-gate))) * linear(p + "up_proj", h))


def naive_block(model, i, x, *, linear=None):
    linear = linear or float_linear(model)
    Wt, eps = model.weights, model.config.norm_eps
    p = f"layers.{i}."
    x = x + naive_attention(model, i, rmsnorm(x, Wt[p + "input_layernorm.weight"], eps), linear)
    m = naive_mlp(model, i, rmsnorm(x, Wt[p + "post_attention_layernorm.weight"], eps), linear)
    return (x + m).astype(np.float32)


def naive_forward(model, tokens):
    x = model.weights["embed_tokens.weight"][tokens]
    for i in range(model.config.n_layers):
        x = naive_block(model, i, x)
    head = model.weights["lm_head.weight"]
    return rmsnorm(x, model.weights["norm.weight"], model.config.norm_eps) @ head.T


def llama_tiny(seed=0):
    """Two blocks, d = 32, 4 query and 2 key/value heads, MLP 48; three salient channels in
    every RMSNorm weight."""
    return tiny_model(seed, salient=3, d_model=32, n_heads=4, n_kv_heads=2, d_ff=48)


def block_input(model, seed=1, B=2, T=12):
    rng = np.random.default_rng(seed)
    return model.weights["embed_tokens.weight"][rng.integers(0, model.config.vocab_size, (B, T))]


def replaced(model, new):
    return dataclasses.replace(model, weights={**model.weights, **new})


# ---------------------------------------------------------------------------------------------
# scale search


def test_alpha_zero_is_rtn_exactly():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 40)) * rng.uniform(0.1, 10, 40)
    W = rng.normal(size=(24, 40)).astype(np.float32)
    assert np.array_equal(scale_from_alpha(activation_scale(X), 0.0), np.ones(40, np.float32))
    assert np.array_equal(scaled_fake_quantize(W, np.ones(40), G4), rq.fake_quantize(W, G4))
    X64 = X.astype(np.float64)
    r = awq_search_scale([W], X, G4, forward_fn=lambda ws: X64 @ ws[0].astype(np.float64).T)
    rtn = rq.fake_quantize(W, G4).astype(np.float64)
    assert r.losses[0] == np.mean((X64 @ W.astype(np.float64).T - X64 @ rtn.T) ** 2)


@settings(max_examples=15)
@given(seed=st.integers(0, 2**16), bits=st.sampled_from([3, 4]), k=st.sampled_from([24, 40]),
       symmetric=st.booleans(), n_grid=st.integers(1, 8))
def test_losses_match_naive_oracle(seed, bits, k, symmetric, n_grid):
    """Every grid point's loss equals one computed here from the formulas (naive quantizer)."""
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(50, k)) * rng.uniform(0.05, 8, k)).astype(np.float32)
    Ws = [rng.normal(size=(m, k)).astype(np.float32) for m in (8, 12)]
    spec = rq.QuantSpec(bits=bits, symmetric=symmetric, granularity="group", group_size=16)
    r = awq_search_scale(Ws, X, spec, n_grid=n_grid)
    s_x = np.abs(X.astype(np.float64)).mean(axis=0)
    Y = np.concatenate([X @ W.T for W in Ws], -1).astype(np.float64)
    for j in range(n_grid):
        alpha = j / n_grid
        s = np.maximum(s_x ** alpha, 1e-4)
        s = (s / np.sqrt(s.max() * s.min())).astype(np.float32)
        W_hat = [(naive_fake_quantize(W * s, bits, 16, symmetric) / s).astype(np.float32)
                 for W in Ws]
        Y_hat = np.concatenate([X @ W.T for W in W_hat], -1).astype(np.float64)
        assert r.losses[j] == pytest.approx(np.mean((Y - Y_hat) ** 2), rel=1e-5)
    best = int(np.argmin(r.losses))                  # argmin returns the first minimum
    assert r.alpha == best / n_grid and r.loss == r.losses[best] <= r.loss_rtn
    assert np.array_equal(r.s, scale_from_alpha(s_x, r.alpha))


def test_salient_channels_beat_rtn():
    """The paper's premise: with a few large-activation channels, AWQ's loss is well below RTN."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(256, 64)) * np.where(np.arange(64) % 16 == 3, 25.0, 1.0)
    W = rng.normal(size=(48, 64))
    r = awq_search_scale([W], X, G3)
    assert r.alpha > 0 and r.loss < 0.7 * r.loss_rtn


def test_forward_fn_and_none_spec():
    """A custom forward (a nonlinearity after the layer) and a weight kept in float."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(40, 32)) * rng.uniform(0.2, 5, 32)
    Wa, Wb = rng.normal(size=(16, 32)), rng.normal(size=(8, 32))

    def f(ws):
        return np.tanh(X @ ws[0].T).sum(-1, keepdims=True) + X @ ws[1].T
    r = awq_search_scale([Wa, Wb], X, [G4, None], forward_fn=f, n_grid=5)
    s = scale_from_alpha(activation_scale(X), 0.4)
    Wa_hat = naive_fake_quantize(Wa.astype(np.float32) * s, 4, 16) / s
    expect = np.mean((f([Wa, Wb]) - f([Wa_hat.astype(np.float32), Wb.astype(np.float32)])) ** 2)
    assert r.losses[2] == pytest.approx(expect, rel=1e-5)


def test_activation_scale_with_channel_map():
    X = np.array([[1.0, 2, 3, 4, 5, 6], [3, 0, -1, 2, -3, 4]])      # mean |X|: 2 1 2 3 4 5
    np.testing.assert_allclose(activation_scale(X), [2, 1, 2, 3, 4, 5])
    c = np.array([0, 1, 0, 0, 2, 2])
    np.testing.assert_allclose(activation_scale(X, c), [7 / 3, 1, 4.5])


# ---------------------------------------------------------------------------------------------
# folding


@settings(max_examples=20)
@given(seed=st.integers(0, 2**16), log_s=st.floats(0.1, 4.0))
def test_fold_into_norm_and_linear_keeps_function(seed, log_s):
    rng = np.random.default_rng(seed)
    d, f = 24, 40
    s = np.exp(rng.uniform(-log_s, log_s, d)).astype(np.float32)
    x = rng.normal(size=(10, d)).astype(np.float32)
    g = rng.uniform(0.5, 2, d).astype(np.float32)
    Wq, Wk = rng.normal(size=(16, d)), rng.normal(size=(8, d))
    fr = fold_scales(s, g, [Wq, Wk])
    for W, W2 in zip((Wq, Wk), fr.weights):
        np.testing.assert_allclose(rmsnorm(x, fr.prev) @ W2.T,
                                   rmsnorm(x, g) @ W.astype(np.float32).T, rtol=1e-4, atol=1e-4)
    # up -> down through SwiGLU
    s2 = np.exp(rng.uniform(-log_s, log_s, f)).astype(np.float32)
    Wg, Wu = rng.normal(size=(2, f, d)).astype(np.float32)
    Wd = rng.normal(size=(d, f)).astype(np.float32)
    fr2 = fold_scales(s2, Wu, [Wd])

    def mlp(Wu_, Wd_):
        gate = x @ Wg.T
        return ((gate / (1 + np.exp(-gate))) * (x @ Wu_.T)) @ Wd_.T
    np.testing.assert_allclose(mlp(fr2.prev, fr2.weights[0]), mlp(Wu, Wd), rtol=1e-4, atol=1e-3)
    assert fr2.prev.dtype == np.float32 and not np.shares_memory(fr2.prev, Wu)


def test_gqa_channel_map_matches_loop():
    c = gqa_channel_map(9, 3, 4)
    expect = [(h // 3) * 4 + d for h in range(9) for d in range(4)]
    assert c.tolist() == expect


def test_fold_v_into_o_with_gqa_keeps_attention():
    model = llama_tiny(5)
    x = block_input(model)
    cfg = model.config
    s = np.exp(np.random.default_rng(6).uniform(-2, 2, cfg.n_kv_heads * cfg.head_dim))
    pv, po = "layers.0.self_attn.v_proj.weight", "layers.0.self_attn.o_proj.weight"
    fr = fold_scales(s, model.weights[pv], [model.weights[po]],
                     channel_map=gqa_channel_map(cfg.n_heads, cfg.n_kv_heads, cfg.head_dim))
    y = naive_block(replaced(model, {pv: fr.prev, po: fr.weights[0]}), 0, x)
    np.testing.assert_allclose(y, naive_block(model, 0, x), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# clipping


@settings(max_examples=15)
@given(seed=st.integers(0, 2**16), bits=st.sampled_from([3, 4]), symmetric=st.booleans(),
       per_channel=st.booleans())
def test_clip_never_worse_and_matches_oracle(seed, bits, symmetric, per_channel):
    rng = np.random.default_rng(seed)
    W = rng.laplace(size=(12, 40)).astype(np.float32)
    X = rng.normal(size=(30, 40)) * rng.uniform(0.2, 4, 40)
    spec = (rq.QuantSpec(bits=bits, symmetric=symmetric, granularity="channel") if per_channel
            else rq.QuantSpec(bits=bits, symmetric=symmetric, granularity="group", group_size=16))
    gs = 40 if per_channel else 16
    c = awq_clip(W, X, spec, max_tokens=None)
    assert np.all(c.group_loss <= c.group_loss_noclip) and c.loss <= c.loss_noclip
    assert np.array_equal(c.w_hat, rq.dequantize(c.codes, c.qparams, spec))
    # the objective, recomputed by a loop over rows and groups
    for r in range(W.shape[0]):
        for gi, a in enumerate(range(0, 40, gs)):
            e = X[:, a:a + gs] @ (W[r, a:a + gs].astype(np.float64) - c.w_hat[r, a:a + gs])
            assert c.group_loss[r, gi] == pytest.approx(np.mean(e ** 2), rel=1e-5, abs=1e-9)
    # no-clip loss is that of the naive min-max quantizer
    rtn = naive_fake_quantize(W, bits, gs, symmetric).astype(np.float32)
    np.testing.assert_allclose(c.group_loss_noclip, group_output_error(X, W, rtn, gs), rtol=1e-12)
    assert set(np.unique(c.shrink)) <= {1 - j / 20 for j in range(10)}


def test_clip_without_shrink_is_rtn_and_heavy_tails_get_clipped():
    rng = np.random.default_rng(7)
    W = rng.standard_t(2, size=(32, 64)).astype(np.float32)
    X = rng.normal(size=(100, 64))
    assert np.array_equal(awq_clip(W, X, G3, max_shrink=0.0).w_hat, rq.fake_quantize(W, G3))
    c = awq_clip(W, X, G3)
    assert np.any(c.shrink < 1) and c.loss < 0.9 * c.loss_noclip
    full = lambda Wh: np.mean((X @ (W - Wh).T) ** 2)                  # whole-layer error
    assert full(c.w_hat) < full(rq.fake_quantize(W, G3))


@pytest.mark.parametrize("seed,bits,per_channel", [(0, 3, False), (1, 4, False), (2, 3, True),
                                                   (3, 4, True)])
def test_reference_clip_matches_the_authors_loop(seed, bits, per_channel):
    """rule="reference" against ``authors_clip`` (llm-awq's auto_clip_layer transcribed): the
    same factor for every group and the same quantized weight."""
    rng = np.random.default_rng(seed)
    W = (rng.laplace(size=(12, 48)) + rng.uniform(-0.5, 0.5, (12, 1))).astype(np.float32)
    X = rng.normal(size=(40, 48)) * rng.uniform(0.2, 4, 48)
    gs = 48 if per_channel else 16
    spec = (rq.QuantSpec(bits=bits, symmetric=False, granularity="channel") if per_channel
            else rq.QuantSpec(bits=bits, symmetric=False, granularity="group", group_size=16))
    c = awq_clip(W, X, spec, rule="reference")
    best_i, W_hat = authors_clip(W, X, bits, gs)
    np.testing.assert_array_equal(c.shrink, 1 - best_i / 20)
    np.testing.assert_array_equal(c.w_hat, W_hat.astype(np.float32))
    assert c.rule == "reference" and np.any(best_i > 0)
    assert np.all(c.group_loss <= c.group_loss_noclip)


def test_clip_rules_by_hand():
    """By hand: a group [-1, 4] at beta = 0.5 is [-0.5, 2] when shrunk and [-1, 2] when clamped
    at +-beta max|w| (the authors' rule); a symmetric range [-3, 3] is [-1.5, 1.5] for both, but
    the reference clamps the weight, so its codes never reach the extra negative code -8."""
    lo, hi = clip_range(np.array([-1.0, -3.0]), np.array([4.0, 3.0]), 0.5, "shrink")
    assert lo.tolist() == [-0.5, -1.5] and hi.tolist() == [2.0, 1.5]
    lo, hi = clip_range(np.array([-1.0, -3.0]), np.array([4.0, 3.0]), 0.5, "reference")
    assert lo.tolist() == [-1.0, -1.5] and hi.tolist() == [2.0, 1.5]
    rng = np.random.default_rng(11)
    W = rng.standard_t(3, size=(16, 64)).astype(np.float32)
    X = rng.normal(size=(50, 64))
    S4 = rq.QuantSpec(bits=4, symmetric=True, granularity="group", group_size=16)
    a, b = awq_clip(W, X, S4), awq_clip(W, X, S4, rule="reference")
    assert a.codes.min() == -8 and b.codes.min() == -7
    np.testing.assert_array_equal(b.hi, -b.lo)
    a, b = awq_clip(W, X, G3), awq_clip(W, X, G3, rule="reference")
    assert not np.array_equal(a.w_hat, b.w_hat)
    lo0 = np.minimum.reduceat(W, np.arange(0, 64, 16), axis=1).clip(max=0)
    assert np.all(b.lo >= lo0) and np.any((b.lo == lo0) & (b.shrink < 1))   # one end kept


# ---------------------------------------------------------------------------------------------
# bad input


def test_bad_input():
    rng = np.random.default_rng(0)
    W, X = rng.normal(size=(8, 32)), rng.normal(size=(10, 32))
    Xnan = X.copy()
    Xnan[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        awq_search_scale([W], Xnan, G4)
    with pytest.raises(ValueError, match="X must have shape"):
        awq_search_scale([W], X[:, :16], G4)
    with pytest.raises(ValueError, match="non-empty"):
        awq_search_scale([], X, G4)
    with pytest.raises(ValueError, match="inputs"):
        awq_search_scale([W, W[:, :16]], X, G4)
    with pytest.raises(ValueError, match="n_grid"):
        awq_search_scale([W], X, G4, n_grid=0)
    with pytest.raises(ValueError, match="QuantSpec"):
        awq_search_scale([W], X, "int4")
    with pytest.raises(ValueError, match="channel_map"):
        awq_search_scale([W], X, G4, channel_map=np.arange(16))
    with pytest.raises(ValueError, match="returned shape"):
        calls = []
        awq_search_scale([W], X, G4, forward_fn=lambda ws: np.zeros(len(calls.append(0) or calls)))
    with pytest.raises(ValueError, match="alpha"):
        scale_from_alpha(np.ones(3), 1.5)
    with pytest.raises(ValueError, match="granularity='tensor'"):
        awq_clip(W, X, rq.QuantSpec(bits=4, symmetric=False))
    with pytest.raises(ValueError, match="max_shrink"):
        awq_clip(W, X, G4, max_shrink=1.0)
    with pytest.raises(ValueError, match="'authors'"):
        awq_clip(W, X, G4, rule="authors")
    with pytest.raises(ValueError, match="s must"):
        fold_scales(np.array([1.0, 0.0]), np.ones(2), [np.ones((3, 2))])
    with pytest.raises(ValueError, match="prev"):
        fold_scales(np.ones(3), np.ones(2), [np.ones((3, 3))])
    model = llama_tiny()
    with pytest.raises(ValueError, match="X_in"):
        awq_block(model, 0, np.zeros((4, 32)), G4)
    with pytest.raises(ValueError, match="layers.7"):
        awq_block(model, 7, block_input(model), G4)
    with pytest.raises(ValueError, match="attention_loss"):
        awq_block(model, 0, block_input(model), G4, attention_loss="attn")
    with pytest.raises(ValueError, match="keys"):
        awq_block(model, 0, block_input(model), {"q_proj": G4})
    with pytest.raises(ValueError, match="'clamp'"):
        awq_block(model, 0, block_input(model), G4, clip="clamp")
    with pytest.raises(ValueError, match="LlamaModel"):
        awq_block(dict(model.weights), 0, block_input(model), G4)


# ---------------------------------------------------------------------------------------------
# one block of a tiny Llama (refquant.models.llama.block, checked against naive_block)


def test_naive_block_oracle_matches_llama_block():
    """The oracle block of this file equals the project's block on the same weights."""
    model = llama_tiny()
    x = llama.embed(model, np.random.default_rng(2).integers(0, 300, (2, 12)))
    for i in range(2):
        np.testing.assert_allclose(naive_block(model, i, x), llama.block(model, i, x),
                                   rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_result():
    model = llama_tiny()
    x = block_input(model)
    return model, x, awq_block(model, 0, x, G3, n_grid=10)


def test_block_folding_keeps_block_and_logits(tiny_result):
    model, x, r = tiny_result
    assert set(r.scales) == {"qkv", "o", "gate_up", "down"}
    assert any(sr.alpha > 0 for sr in r.scales.values())
    y_fold = naive_block(replaced(model, r.folded), 0, x)
    np.testing.assert_allclose(y_fold, naive_block(model, 0, x), rtol=1e-4, atol=1e-4)
    # fold every block of the tiny model: the logits do not change
    new = dict(r.folded)
    x1 = naive_block(model, 0, x)
    new.update(awq_block(model, 1, x1, G3, n_grid=4, clip=None).folded)
    tokens = np.random.default_rng(9).integers(0, model.config.vocab_size, (2, 10))
    np.testing.assert_allclose(naive_forward(replaced(model, new), tokens),
                               naive_forward(model, tokens), rtol=1e-4, atol=2e-4)


def test_block_result_consistent_and_beats_rtn(tiny_result):
    model, x, r = tiny_result
    for name, q in r.codes.items():
        assert np.array_equal(r.weights[name + ".weight"], rq.dequantize(q, r.qparams[name], G3))
    assert set(r.clips) == {f"layers.0.{SHORT_NAMES[k]}" for k in ("v_proj", "o_proj", "gate_proj",
                                                                   "up_proj", "down_proj")}
    y = llama.block(replaced(model, r.weights), 0, x)            # the block awq_block runs
    assert np.array_equal(r.y, y)
    np.testing.assert_allclose(r.y, naive_block(replaced(model, r.weights), 0, x), rtol=1e-4,
                               atol=1e-4)
    y_float = llama.block(model, 0, x).astype(np.float64)
    assert r.mse == pytest.approx(np.mean((y - y_float) ** 2), rel=1e-12)
    rtn = {k: naive_fake_quantize(v, 3, 16).astype(np.float32) for k, v in model.weights.items()
           if k.startswith("layers.0.") and k.endswith("proj.weight")}
    y_rtn = naive_block(replaced(model, rtn), 0, x).astype(np.float64)
    y_float = naive_block(model, 0, x).astype(np.float64)
    assert r.mse_rtn == pytest.approx(np.mean((y_rtn - y_float) ** 2), rel=1e-4)
    assert r.mse < 0.8 * r.mse_rtn


def test_block_spec_mapping_keeps_float_layers():
    model = llama_tiny(2)
    x = block_input(model)
    spec = {k: (None if k in ("o_proj", "down_proj") else G4) for k in SHORT_NAMES}
    r = awq_block(model, 0, x, spec, n_grid=4)
    assert set(r.scales) == {"qkv", "gate_up"}
    assert set(r.codes) == {f"layers.0.{SHORT_NAMES[k]}" for k in ("q_proj", "k_proj", "v_proj",
                                                                   "gate_proj", "up_proj")}
    for k in ("o_proj", "down_proj"):
        name = f"layers.0.{SHORT_NAMES[k]}.weight"
        assert np.array_equal(r.weights[name], model.weights[name])


@pytest.mark.parametrize("attention_loss", ["block", "module"])
def test_block_search_losses_match_the_naive_block(attention_loss):
    """Every grid point's loss, recomputed here: the candidates ``Q(W s) / s`` from
    naive_fake_quantize with ``s`` from the search's own ``s_x`` (itself checked against the
    naive block's normalized inputs), and the block output (or, with "module", the attention
    output; the MLP groups always the MLP output) from naive_attention / naive_mlp / naive_block."""
    model = llama_tiny(4)
    x = block_input(model, seed=5)
    n = 4
    r = awq_block(model, 1, x, G3, n_grid=n, clip=None, attention_loss=attention_loss)
    W, eps, p = model.weights, model.config.norm_eps, "layers.1."
    h1 = rmsnorm(x, W[p + "input_layernorm.weight"], eps)
    h2 = rmsnorm(x + naive_attention(model, 1, h1, float_linear(model)),
                 W[p + "post_attention_layernorm.weight"], eps)
    np.testing.assert_allclose(r.scales["qkv"].s_x, np.abs(h1.reshape(-1, 32)).mean(0), rtol=1e-5)
    np.testing.assert_allclose(r.scales["gate_up"].s_x, np.abs(h2.reshape(-1, 32)).mean(0),
                               rtol=1e-5)
    groups = {"qkv": (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                      (lambda m: naive_attention(m, 1, h1, float_linear(m)))
                      if attention_loss == "module" else (lambda m: naive_block(m, 1, x))),
              "gate_up": (("mlp.gate_proj", "mlp.up_proj"),
                          lambda m: naive_mlp(m, 1, h2, float_linear(m)))}
    if attention_loss == "block":
        groups["o"] = (("self_attn.o_proj",), lambda m: naive_block(m, 1, x))
    for g, (lins, f) in groups.items():
        sr = r.scales[g]
        c = gqa_channel_map(4, 2, 8) if g == "o" else np.arange(32)
        Y = f(model).astype(np.float64)
        for j in range(n):
            s = np.maximum(sr.s_x ** (j / n), 1e-4)
            s = (s / np.sqrt(s.max() * s.min())).astype(np.float32)[c]
            cand = {p + lin + ".weight": (naive_fake_quantize(W[p + lin + ".weight"] * s, 3, 16)
                                          / s).astype(np.float32) for lin in lins}
            expect = np.mean((f(replaced(model, cand)) - Y) ** 2)
            assert sr.losses[j] == pytest.approx(expect, rel=1e-4), (g, j)
    if attention_loss == "module":       # o: o_proj's own output on its float input
        assert r.scales["o"].losses[0] > 0


def test_block_clip_rules_are_threaded_to_awq_clip():
    """awq_block's clip: "reference" gives each clipped linear awq_clip(rule="reference") on its
    input in the folded block (recorded here through llama.block); True is "shrink"; False and
    None skip the search (min-max, as for q_proj and k_proj)."""
    model = llama_tiny(6)
    x = block_input(model, seed=7)
    ref = awq_block(model, 0, x, G3, n_grid=4, clip="reference")
    rec = {}

    def recording(name, v):
        rec[name] = v.reshape(-1, v.shape[-1])
        return v @ ref.folded[name + ".weight"].T
    llama.block(replaced(model, ref.folded), 0, x, linear=recording)
    assert set(ref.clips) == {f"layers.0.{SHORT_NAMES[k]}" for k in ("v_proj", "o_proj",
                                                                     "gate_proj", "up_proj",
                                                                     "down_proj")}
    for name, c in ref.clips.items():
        want = awq_clip(ref.folded[name + ".weight"], rec[name], G3, rule="reference")
        assert c.rule == "reference" and np.array_equal(ref.codes[name], want.codes)
    shrink = awq_block(model, 0, x, G3, n_grid=4)
    assert all(c.rule == "shrink" for c in shrink.clips.values())
    assert any(not np.array_equal(shrink.codes[n], ref.codes[n]) for n in ref.clips)
    on = awq_block(model, 0, x, G3, n_grid=4, clip=True)
    off, none = (awq_block(model, 0, x, G3, n_grid=4, clip=v) for v in (False, None))
    assert all(np.array_equal(on.codes[n], shrink.codes[n]) for n in shrink.codes)
    assert off.clips == none.clips == {}
    for name in off.codes:
        w = off.folded[name + ".weight"]
        assert np.array_equal(off.weights[name + ".weight"], rq.fake_quantize(w, G3))
        assert np.array_equal(off.codes[name], none.codes[name])


# ---------------------------------------------------------------------------------------------
# the project's Llama forward pass on more than one block, and the bundled model


def test_awq_block_on_llama_keeps_logits_and_beats_rtn():
    model = llama_tiny()
    tokens = np.random.default_rng(3).integers(0, 300, (3, 16))
    x = llama.embed(model, tokens)
    folded, quantized = {}, {}
    for i in range(2):
        r = awq_block(model, i, x, G3, n_grid=8)
        assert r.mse < r.mse_rtn
        # the reference's attention-output loss measures something else than the block's
        m = awq_block(model, i, x, G3, n_grid=4, attention_loss="module", clip=None)
        for g in ("qkv", "o"):
            assert not np.allclose(m.scales[g].losses, r.scales[g].losses[::2])
        folded.update(r.folded)
        quantized.update(r.weights)
        x = llama.block(model, i, x)
    logits = llama.forward(model, tokens)
    np.testing.assert_allclose(llama.forward(replaced(model, folded), tokens), logits,
                               rtol=1e-4, atol=1e-4)
    assert not np.allclose(llama.forward(replaced(model, quantized), tokens), logits, atol=1e-3)


def test_real_block_of_bundled_model():
    """One block of SmolLM2-135M (GGUF), 2 x 64 calibration tokens: folding keeps the block's
    output, AWQ's output error is below RTN's at W3 g128; RTN's error recomputed here from
    rq.fake_quantize and the model's block."""
    from refquant.pipeline import data
    model = rq.load_model()
    tokens = np.asarray(data.calibration_tokens(model.tokenizer, 128))[:128].reshape(2, 64)
    i = 2
    x = llama.embed(model, tokens)
    for j in range(i):
        x = llama.block(model, j, x)
    spec = rq.QuantSpec(bits=3, symmetric=False, granularity="group", group_size=128)
    r = awq_block(model, i, x, spec, n_grid=5, clip_grid=10)
    y = llama.block(model, i, x)

    def with_w(new):
        return type(model)(model.config, {**{k: model.weights[k] for k in
                                             model.config.weight_shapes() if f"layers.{i}." in k},
                                          **new})
    y_fold = llama.block(with_w(r.folded), i, x)
    np.testing.assert_allclose(y_fold, y, rtol=1e-3, atol=1e-3 * np.abs(y).max())
    names = [f"layers.{i}.{path}.weight" for path in SHORT_NAMES.values()]
    rtn = {n: rq.fake_quantize(model.weights[n], spec) for n in names}
    y_rtn = llama.block(with_w(rtn), i, x)
    assert r.mse_rtn == pytest.approx(np.mean((y_rtn.astype(np.float64) - y) ** 2), rel=1e-5)
    assert np.array_equal(r.y, llama.block(with_w(r.weights), i, x))
    assert r.mse < 0.9 * r.mse_rtn
