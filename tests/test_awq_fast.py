"""Tests of refquant.algorithms.awq._fast and the speed-only paths of AWQ's searches: each is
pinned equal, bit for bit, to the plain computation it replaces.

Oracles: the plain library path itself (``refquant.quantize`` / ``refquant.dequantize`` /
``refquant.fake_quantize`` / ``scaled_fake_quantize``, and the block's own forward pass
``refquant.models.llama.block`` with candidate weights), which tests/test_awq.py checks against
the loop oracles written there; ``np.array_equal`` throughout.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_awq import block_input, llama_tiny

import refquant as rq
from refquant.algorithms.awq import awq_search_scale, scaled_fake_quantize
from refquant.algorithms.awq import clip as clip_mod
from refquant.algorithms.awq import scale as scale_mod
from refquant.algorithms.awq._fast import (_fake_quantize, _minmax_qparams, _quantize_dequantize,
                                           _scaled_fake_quantize)
from refquant.models import llama
from refquant.pipeline import _awq_forward as fwd
from refquant.pipeline import awq_block as awq_block_mod
from refquant.pipeline.awq_block import GROUPS, awq_block, gqa_channel_map
from refquant.pipeline.blocks import SHORT_NAMES


def _spec(bits, symmetric, per_channel, rounding="half_even", group_size=16):
    if per_channel:
        return rq.QuantSpec(bits=bits, symmetric=symmetric, granularity="channel", axis=0,
                            rounding=rounding)
    return rq.QuantSpec(bits=bits, symmetric=symmetric, granularity="group",
                        group_size=group_size, rounding=rounding)


@settings(max_examples=40)
@given(seed=st.integers(0, 2**16), bits=st.sampled_from([2, 3, 4, 8]), symmetric=st.booleans(),
       per_channel=st.booleans(), rounding=st.sampled_from(["half_even", "half_away"]),
       k=st.sampled_from([16, 40, 48]))
def test_fast_scaled_fake_quantize_is_the_plain_one(seed, bits, symmetric, per_channel,
                                                    rounding, k):
    """``_scaled_fake_quantize`` = ``scaled_fake_quantize`` and ``_fake_quantize`` =
    ``rq.fake_quantize``, and ``_minmax_qparams`` = ``rq.calibrate`` (min-max), bit for bit:
    groups of 16 with a short last group (k = 40), per-channel, both roundings, a constant row,
    a zero row and a row of one sign."""
    rng = np.random.default_rng(seed)
    W = rng.laplace(size=(9, k)).astype(np.float32)
    W[1] = 0.0
    W[2] = 0.75
    W[3] = np.abs(W[3])
    s_in = np.exp(rng.normal(0, 1.5, k)).astype(np.float32)
    spec = _spec(bits, symmetric, per_channel, rounding)
    Ws = W * s_in
    qp, qp_ref = _minmax_qparams(Ws, spec), rq.calibrate(Ws, spec, method="minmax")
    assert np.array_equal(qp.scale, qp_ref.scale)
    assert np.array_equal(qp.zero_point, qp_ref.zero_point)
    fast = _scaled_fake_quantize(W, s_in, spec)
    assert fast.dtype == np.float32 and np.array_equal(fast, scaled_fake_quantize(W, s_in, spec))
    assert np.array_equal(_fake_quantize(W, spec), rq.fake_quantize(W, spec))


def test_fast_paths_fall_back_for_other_granularities():
    """Per-tensor specs (no kernel) take the plain path and give its result."""
    rng = np.random.default_rng(1)
    W = rng.normal(size=(6, 20)).astype(np.float32)
    s_in = np.exp(rng.normal(size=20)).astype(np.float32)
    spec = rq.QuantSpec(bits=4, symmetric=False)
    assert np.array_equal(_scaled_fake_quantize(W, s_in, spec), scaled_fake_quantize(W, s_in, spec))
    assert np.array_equal(_fake_quantize(W, spec), rq.fake_quantize(W, spec))


@pytest.mark.parametrize("rounding", ["half_even", "half_away"])
@pytest.mark.parametrize("symmetric,per_channel", [(False, False), (True, False), (False, True)])
def test_fast_quantize_dequantize_is_the_plain_one(rounding, symmetric, per_channel):
    """``_quantize_dequantize`` = ``dequantize(quantize(.))`` on weights full of exact rounding
    ties (multiples of s/2 with s a power of two), values beyond both ends of the range, a
    divisor, and the clamp of the authors' clipping rule; and the clipping search's candidate
    ``clip._dequantized_in_range`` = ``dequantize`` of ``clip._quantize_in_range`` for both
    rules at several factors."""
    rng = np.random.default_rng(2)
    spec = _spec(3, symmetric, per_channel, rounding)
    R, K = 7, 40
    G = 1 if per_channel else 3
    W = (rng.integers(-40, 41, (R, K)) * 0.125).astype(np.float32)     # ties at s = 0.25
    scale = np.full((R, G), 0.25, np.float32)
    zero = np.zeros((R, G), np.int32) if symmetric else rng.integers(0, 8, (R, G)).astype(np.int32)
    if per_channel:
        scale, zero = scale[:, 0], zero[:, 0]
    qp = rq.QParams(scale, zero)
    plain = rq.dequantize(rq.quantize(W, qp, spec), qp, spec)
    assert np.array_equal(_quantize_dequantize(W, qp, spec), plain)
    d = np.exp(rng.normal(size=K)).astype(np.float32)
    assert np.array_equal(_quantize_dequantize(W, qp, spec, d=d), plain / d)
    lo = rng.uniform(-4, -1, (R, G))
    hi = rng.uniform(1, 4, (R, G))
    cols = np.arange(K) // (K if per_channel else 16)
    clamped = np.clip(W, lo[:, cols], hi[:, cols])
    assert np.array_equal(_quantize_dequantize(W, qp, spec, lo=lo, hi=hi),
                          rq.dequantize(rq.quantize(clamped, qp, spec), qp, spec))
    gs = K if per_channel else 16
    W = rng.laplace(size=(R, K)).astype(np.float32)
    starts = np.arange(0, K, gs)
    lo0 = np.minimum(np.minimum.reduceat(W, starts, axis=1).astype(np.float64), 0.0)
    hi0 = np.maximum(np.maximum.reduceat(W, starts, axis=1).astype(np.float64), 0.0)
    if symmetric:
        hi0 = np.maximum(-lo0, hi0)
        lo0 = -hi0
    for rule in clip_mod.CLIP_RULES:
        for beta in (1.0, 0.85, 0.55):
            lo, hi = clip_mod.clip_range(lo0, hi0, beta, rule)
            clamp = rule == "reference"
            qp, q = clip_mod._quantize_in_range(W, lo, hi, spec, gs, clamp)
            assert np.array_equal(clip_mod._dequantized_in_range(W, lo, hi, spec, gs, clamp),
                                  rq.dequantize(q, qp, spec)), (rule, beta)


def test_block_after_attention_is_the_block():
    """``block_after_attention`` from the recorded o_proj input equals the whole block with an
    o_proj candidate (``block_out``), bit for bit."""
    model = llama_tiny(3)
    x = block_input(model, seed=4)
    W, _ = awq_block_mod._block_weights(model, 1)
    _, X, _ = fwd.record_inputs(model, 1, x, W)
    cand = {**W, "o_proj": rq.fake_quantize(W["o_proj"], _spec(3, False, False))}
    got = fwd.block_after_attention(model, 1, x, X["o_proj"], cand)
    assert np.array_equal(got, fwd.block_out(model, 1, x, cand))


def _plain_block_search(model, i, x, spec, n_grid):
    """The four scale searches of awq_block as they read before the speed-ups: every reference
    output recomputed by ``forward_fn(W_list)``, every candidate a whole ``llama.block`` (q/k/v,
    o) or ``llama.mlp`` (gate/up) run, every weight ``scaled_fake_quantize``d."""
    p = f"layers.{i}."
    names = {k: p + path + ".weight" for k, path in SHORT_NAMES.items()}
    W = {k: np.asarray(model.weights[n], np.float32) for k, n in names.items()}
    rec, float_linear = {}, llama.default_linear(model)

    def recording(name, v):
        rec[name.rsplit(".", 1)[1]] = v
        return float_linear(name, v)
    llama.block(model, i, x, linear=recording)

    def with_cand(ks, ws):
        return dataclasses.replace(model, weights={**model.weights,
                                                   **{names[k]: w for k, w in zip(ks, ws)}})

    def block_fn(ks):
        return lambda ws: llama.block(with_cand(ks, ws), i, x)

    def mlp_fn(ws):
        m = with_cand(GROUPS["gate_up"], ws)
        return llama.mlp(m, i, rec["gate_proj"], linear=llama.default_linear(m))

    cfg = model.config
    c_vo = gqa_channel_map(cfg.n_heads, cfg.n_kv_heads, cfg.head_dim)
    fns = {"qkv": block_fn(GROUPS["qkv"]), "o": block_fn(GROUPS["o"]), "gate_up": mlp_fn,
           "down": None}
    out = {}
    for g, ks in GROUPS.items():
        xg = rec[ks[0]].reshape(-1, rec[ks[0]].shape[-1])
        out[g] = awq_search_scale([W[k] for k in ks], xg, spec, fns[g], n_grid,
                                  channel_map=c_vo if g == "o" else None)
    return out


@pytest.mark.parametrize("which", ["tiny", "bundled"])
def test_block_search_is_the_plain_search(which, monkeypatch):
    """awq_block's searches (reference outputs from the recorded float block, the o search from
    the recorded o_proj input, the one-pass candidates) give the same losses, bit for bit, and
    so the same decisions as the plain searches of ``_plain_block_search``, on the tiny model
    and on block 1 of the bundled SmolLM2 (2 x 32 tokens, W4 g128)."""
    if which == "tiny":
        model, i, spec = llama_tiny(5), 1, _spec(3, False, False)
        x = block_input(model, seed=6)
    else:
        from refquant.pipeline import data
        model, i, spec = rq.load_model(), 1, _spec(4, False, False, group_size=128)
        tokens = np.asarray(data.calibration_tokens(model.tokenizer, 64))[:64].reshape(2, 32)
        x = llama.block(model, 0, llama.embed(model, tokens))
    fast = awq_block(model, i, x, spec, n_grid=4, clip=None).scales
    monkeypatch.setattr(scale_mod, "_scaled_fake_quantize",
                        lambda W, s_in, sp: scaled_fake_quantize(W, s_in, sp))
    plain = _plain_block_search(model, i, x, spec, 4)
    for g in GROUPS:
        assert np.array_equal(fast[g].losses, plain[g].losses), g
        assert fast[g].alpha == plain[g].alpha and np.array_equal(fast[g].s, plain[g].s)


def test_reference_output_argument():
    """``awq_search_scale(..., Y=forward_fn(W_list))`` gives the search without ``Y``; a
    non-finite ``Y`` is refused."""
    rng = np.random.default_rng(8)
    X = (rng.normal(size=(40, 32)) * rng.uniform(0.2, 5, 32)).astype(np.float32)
    W = rng.normal(size=(16, 32)).astype(np.float32)
    spec = _spec(3, False, False)
    a = awq_search_scale([W], X, spec, n_grid=6)
    b = awq_search_scale([W], X, spec, n_grid=6, Y=X @ W.T)
    assert np.array_equal(a.losses, b.losses)
    with pytest.raises(ValueError, match="reference output Y"):
        awq_search_scale([W], X, spec, n_grid=6, Y=np.full((40, 16), np.nan))
