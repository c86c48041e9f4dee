"""AWQ with a quantizer given as functions (:class:`refquant.algorithms.awq.WeightQuantizer`).

Oracles: the QuantSpec path of the same searches (a WeightQuantizer wrapping the spec's own
min-max fake quantizer must give the same floats), a search loop written here (every clipping
factor tried on the whole weight, each group's partial-output error computed from the tokens
directly, the first best factor kept), and ggml's quantizer called directly
(:func:`refquant.formats.ggml.quantize` with the importance vector divided by ``s^2``) for what
AWQ's block stores.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers_model import tiny_model

import refquant as rq
from refquant.algorithms.awq import (WeightQuantizer, awq_clip, awq_search_scale, clip_range,
                                     scaled_fake_quantize)
from refquant.formats import ggml
from refquant.pipeline.awq_block import awq_block
from refquant.pipeline.blocks import SHORT_NAMES
from refquant.pipeline.gguf_methods import ggml_quantizer

SPEC = rq.QuantSpec(bits=3, symmetric=False, granularity="group", group_size=16)


def spec_quantizer(spec):
    """The spec's min-max fake quantizer as a WeightQuantizer (ignores ``s``)."""
    return WeightQuantizer(lambda W, s: rq.fake_quantize(W, spec), lambda W: W,
                           spec.group_size, "spec")


def _data(seed=0, n=128, k=64, out=24):
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((n, k)) * np.where(np.arange(k) < 4, 15.0, 1.0)).astype(np.float32)
    W = rng.standard_normal((out, k)).astype(np.float32)
    W[:, 7] *= 6.0                                                # heavy column: clipping helps
    return W, X


def test_scale_search_with_a_wrapped_spec_is_the_spec_search():
    """The same losses, alpha and scale as the QuantSpec path (its one-pass kernel is pinned to
    fake_quantize(W s) / s, which is what the wrapper computes)."""
    W, X = _data()
    a = awq_search_scale([W, 0.5 * W], X, SPEC, n_grid=8)
    b = awq_search_scale([W, 0.5 * W], X, spec_quantizer(SPEC), n_grid=8)
    assert np.array_equal(a.losses, b.losses) and a.alpha == b.alpha
    assert np.array_equal(a.s, b.s)
    s = np.linspace(0.5, 2.0, W.shape[1]).astype(np.float32)
    assert np.array_equal(scaled_fake_quantize(W, s, SPEC),
                          scaled_fake_quantize(W, s, spec_quantizer(SPEC)))


def test_quantizer_is_told_the_column_scale():
    """Q(W diag(s), s): the scale search hands the quantizer the scale of the columns."""
    W, X = _data(1)
    seen = []

    def quantize(Ws, s):
        seen.append(np.asarray(s).copy())
        return rq.fake_quantize(Ws, SPEC)

    awq_search_scale([W], X, WeightQuantizer(quantize, lambda W: W, 16), n_grid=3)
    assert len(seen) == 3 and np.all(seen[0] == 1.0) and not np.all(seen[2] == 1.0)
    folded = WeightQuantizer(quantize, lambda W: W, 16).folded(np.full(64, 2.0, np.float32))
    folded(W)
    assert np.all(seen[-1] == 2.0)


def authors_loop(W, X, Q, gs, rule, n_grid, max_shrink):
    """Every factor beta on the whole weight: Q(clamp(W, range)); each group's error
    mean_t (sum_{j in g} X_tj d_rj)^2 from the tokens; the first best beta per group."""
    starts = np.arange(0, W.shape[1], gs)
    lo0 = np.minimum(np.minimum.reduceat(W, starts, axis=1), 0).astype(np.float64)
    hi0 = np.maximum(np.maximum.reduceat(W, starts, axis=1), 0).astype(np.float64)
    cols = np.arange(W.shape[1]) // gs
    best = best_beta = None
    for i in range(int(np.ceil(max_shrink * n_grid - 1e-12))):
        beta = 1.0 - i / n_grid
        lo, hi = clip_range(lo0, hi0, beta, rule)
        D = W.astype(np.float64) - Q(np.clip(W, lo[:, cols], hi[:, cols]).astype(np.float32))
        err = np.stack([np.mean((X[:, a:a + gs].astype(np.float64) @ D[:, a:a + gs].T) ** 2, 0)
                        for a in starts], axis=1)                        # [out, G]
        if best is None:
            best, best_beta = err, np.ones_like(err)
        else:
            better = err < best * (1 - 1e-9)                   # float noise between two sums
            best, best_beta = np.where(better, err, best), np.where(better, beta, best_beta)
    return best_beta


@pytest.mark.parametrize("rule", ["shrink", "reference"])
def test_clip_with_ggml_quantizer_matches_the_loop(rule):
    """Q4_0 (blocks of 32) as the quantizer: the chosen factors are the loop's, the result is
    Q(clamp(W, lo, hi)) with its bytes, no group is worse than unclipped."""
    W, X = _data(2)
    Q = ggml_quantizer("Q4_0")
    r = awq_clip(W, X, Q, n_grid=10, max_shrink=0.5, rule=rule)
    assert np.array_equal(r.shrink, authors_loop(W, X, Q, 32, rule, 10, 0.5))
    assert r.qparams is None and np.any(r.shrink < 1)
    cols = np.arange(W.shape[1]) // 32
    clamped = np.clip(W, r.lo[:, cols], r.hi[:, cols]).astype(np.float32)
    assert np.array_equal(r.codes, ggml.quantize(clamped, "Q4_0"))
    assert np.array_equal(r.w_hat, ggml.dequantize(r.codes, "Q4_0"))
    assert np.all(r.group_loss <= r.group_loss_noclip)
    none = awq_clip(W, X, Q, max_shrink=0.0)                      # beta = 1 only: plain Q
    assert np.array_equal(none.codes, ggml.quantize(W, "Q4_0"))


def test_block_with_wrapped_spec_is_the_spec_block():
    """awq_block without clipping: a WeightQuantizer wrapping the spec gives the same scales
    and weights as the spec itself."""
    model = tiny_model(0, salient=3, d_model=32, n_heads=4, n_kv_heads=2, d_ff=48)
    x = model.weights["embed_tokens.weight"][np.random.default_rng(1).integers(0, 300, (2, 12))]
    a = awq_block(model, 0, x, SPEC, n_grid=5, clip=None)
    b = awq_block(model, 0, x, spec_quantizer(SPEC), n_grid=5, clip=None)
    for g in a.scales:
        assert np.array_equal(a.scales[g].s, b.scales[g].s)
    for k in a.weights:
        assert np.array_equal(a.weights[k], b.weights[k]), k
    assert a.mse == b.mse and a.mse_rtn == b.mse_rtn


def test_block_stores_ggml_bytes_with_scaled_importance():
    """Each linear of the block is ggml's Q5_0 of its folded weight W diag(s) (clamped to the
    clipping range where clipped) with the importance w / s^2; folded = W * s exactly."""
    model = tiny_model(3, salient=3, d_model=32, n_heads=4, n_kv_heads=2, d_ff=64)
    x = model.weights["embed_tokens.weight"][np.random.default_rng(4).integers(0, 300, (2, 16))]
    rng = np.random.default_rng(5)
    imp = {k: rng.uniform(0.1, 3.0, model.weights[f"layers.0.{p}.weight"].shape[1])
           .astype(np.float32) for k, p in SHORT_NAMES.items()}
    res = awq_block(model, 0, x, {k: ggml_quantizer("Q5_0", imp[k]) for k in SHORT_NAMES},
                    n_grid=4, clip_grid=5)
    assert set(res.scales) == {"qkv", "o", "gate_up", "down"}
    for k, p in SHORT_NAMES.items():
        n = f"layers.0.{p}"
        s = res.column_scales[n]
        W = model.weights[n + ".weight"]
        if k not in ("v_proj", "up_proj"):                       # rows unchanged by a fold
            assert np.array_equal(res.folded[n + ".weight"], W * s)
        Wf = res.folded[n + ".weight"]
        if n in res.clips:
            c = res.clips[n]
            cols = np.arange(Wf.shape[1]) // 32
            Wf = np.clip(Wf, c.lo[:, cols], c.hi[:, cols]).astype(np.float32)
        w = (imp[k].astype(np.float64) / s.astype(np.float64) ** 2).astype(np.float32)
        assert np.array_equal(res.codes[n], ggml.quantize(Wf, "Q5_0", imatrix=w)), n
        assert np.array_equal(res.weights[n + ".weight"], ggml.dequantize(res.codes[n], "Q5_0"))
        assert res.qparams[n] is None
    assert res.mse < res.mse_rtn


def test_bad_quantizer():
    with pytest.raises(ValueError, match="group_size"):
        WeightQuantizer(lambda W, s: W, lambda W: W, 0)
    with pytest.raises(ValueError, match="callable"):
        WeightQuantizer("Q4_0", lambda W: W, 32)
    W, X = _data()
    bad = WeightQuantizer(lambda W, s: W, lambda W: W[:, :-1], 16, "cut")
    with pytest.raises(ValueError, match="'cut' returned shape"):
        awq_search_scale([W], X, bad, n_grid=2)
