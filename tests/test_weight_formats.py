"""Whole-model RTN in the float and microscaled formats, and the FP8 W8A8 linear
(refquant.pipeline.weight_formats).

Oracles: scalar loops over rows, tiles and blocks in this file that take every scale from its
definition (amax / max, OCP MX's 2^(floor(log2 amax) - emax), NVFP4's two-level float32 rule)
and cast every element with ``ml_dtypes`` (test extra); the tiny random Llama of
``tests/helpers_model.py``; bits per weight by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers_model import tiny_model

import refquant as rq
from refquant.models.llama import LINEAR_NAMES
from refquant.pipeline.blocks import with_weights
from refquant.pipeline.weight_formats import (WEIGHT_FORMATS, fp8_linear, rtn_layer, rtn_weight,
                                              rtn_weights, w8a8_model, weight_format)

ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes (test extra) casts the elements")
E4M3, E2M1, E2M3 = ml_dtypes.float8_e4m3fn, ml_dtypes.float4_e2m1fn, ml_dtypes.float6_e2m3fn


def cast(x, dt, top):
    """ml_dtypes' round-to-nearest-even cast of x clipped to +-top (ml_dtypes does not saturate)."""
    return np.clip(np.asarray(x, np.float64), -top, top).astype(dt).astype(np.float64)


def weight(shape, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal(shape) * 0.05
    W[rng.random(shape) < 0.01] *= 20                        # a few outliers, as real weights
    return W.astype(np.float32)


def test_fp8_per_channel_is_amax_over_448_per_row():
    W = weight((48, 96))
    want = np.empty_like(W, np.float64)
    for r in range(W.shape[0]):
        s = np.float64(np.float32(np.abs(W[r]).max() / 448.0))
        want[r] = s * cast(W[r] / s, E4M3, 448)
    assert np.array_equal(rtn_weight(W, "fp8"), want.astype(np.float32))


def test_fp8_128_blocks_have_one_scale_per_tile_and_shorter_edges():
    W = weight((200, 300), seed=1)
    want = np.empty_like(W, np.float64)
    for r0 in range(0, 200, 128):
        for c0 in range(0, 300, 128):
            t = W[r0:r0 + 128, c0:c0 + 128]
            s = np.float64(np.float32(np.abs(t).max() / 448.0))
            want[r0:r0 + 128, c0:c0 + 128] = s * cast(t / s, E4M3, 448)
    assert np.array_equal(rtn_weight(W, "fp8_b128"), want.astype(np.float32))


@pytest.mark.parametrize("name,dt,top,emax", [("mxfp4", E2M1, 6.0, 2), ("mxfp6", E2M3, 7.5, 2)])
def test_mx_blocks_follow_the_ocp_scale_rule(name, dt, top, emax):
    """Blocks of 32 along the input dimension, X = 2^(floor(log2 amax) - emax) (OCP MX v1.0,
    section 6.3), elements cast with saturation."""
    W = weight((8, 128), seed=2)
    want = np.empty_like(W, np.float64)
    for r in range(W.shape[0]):
        for c0 in range(0, W.shape[1], 32):
            b = W[r, c0:c0 + 32].astype(np.float64)
            X = 2.0 ** (math.floor(math.log2(np.abs(b).max())) - emax)
            want[r, c0:c0 + 32] = X * cast(b / X, dt, top)
    assert np.array_equal(rtn_weight(W, name), want.astype(np.float32))


def test_nvfp4_two_level_scales():
    """s_t = amax / (448 * 6), block scale u = E4M3(amax_b / 6 / s_t) clipped to [2^-6, 448],
    elements E2M1(x / (s_t u)) clipped to +-6; every step rounded to float32."""
    W = weight((4, 64), seed=3)
    f32 = np.float32
    s_t = f32(f32(np.abs(W).max()) / f32(448.0 * 6.0))
    want = np.empty_like(W)
    for r in range(W.shape[0]):
        for c0 in range(0, W.shape[1], 16):
            b = W[r, c0:c0 + 16]
            u = f32(cast(np.clip(f32(f32(np.abs(b).max()) / f32(6.0)) / s_t, 2.0**-6, 448),
                         E4M3, 448))
            d = f32(s_t * u)
            P = cast((b / d).astype(np.float32), E2M1, 6.0).astype(np.float32)
            want[r, c0:c0 + 16] = P * d
    assert np.array_equal(rtn_weight(W, "nvfp4"), want)


def test_rtn_weights_cover_every_block_linear_only():
    model = tiny_model(0)
    new = rtn_weights(model, "mxfp4")
    assert sorted(new) == sorted(f"layers.{i}.{lin}.weight" for i in range(2)
                                 for lin in LINEAR_NAMES)
    assert len(rtn_weights(model, "fp8", n_blocks=1)) == len(LINEAR_NAMES)
    for n, W in new.items():
        assert W.dtype == np.float32 and not np.array_equal(W, model.weights[n])


def test_fp8_linear_quantizes_each_token_of_the_input():
    """y = x_hat W^T with x_hat[t] = s_t E4M3(x[t] / s_t), s_t = amax(x[t]) / 448."""
    model = tiny_model(1)
    view, linear = w8a8_model(model)
    name = "layers.0.mlp.down_proj"
    x = np.random.default_rng(4).standard_normal((2, 5, 64)).astype(np.float32)
    s = (np.abs(x).max(axis=-1, keepdims=True) / 448.0).astype(np.float32).astype(np.float64)
    x_hat = (s * cast(x / s, E4M3, 448)).astype(np.float32)
    W = view.weights[name + ".weight"]
    assert np.array_equal(W, rtn_weight(model.weights[name + ".weight"], "fp8"))
    want = (x_hat.reshape(-1, 64) @ W.T).reshape(2, 5, -1)
    assert np.array_equal(linear(name, x), want)


def test_w8a8_perplexity_differs_from_weight_only_and_is_finite():
    model = tiny_model(2)
    tokens = np.random.default_rng(5).integers(0, 300, size=64)
    wo = rq.perplexity(with_weights(model, rtn_weights(model, "fp8")), tokens, seq_len=32).ppl
    view, linear = w8a8_model(model)
    aa = rq.perplexity(view, tokens, seq_len=32, linear=linear).ppl
    assert math.isfinite(aa) and aa != wo
    assert abs(aa / wo - 1) < 0.05                          # FP8 activations: a small change


def test_bad_names():
    with pytest.raises(ValueError, match="unknown weight format 'fp7'"):
        weight_format("fp7")
    with pytest.raises(ValueError, match="'mxfp4' is weight-only"):
        w8a8_model(tiny_model(0), "mxfp4")
    with pytest.raises(ValueError, match=r"n_blocks must be an integer in \[1, 2\], got 3"):
        rtn_weights(tiny_model(0), "fp8", n_blocks=3)
    assert set(WEIGHT_FORMATS) >= {"fp8", "fp8_b128", "mxfp6", "mxfp4", "nvfp4", "fp8_w8a8"}
    assert callable(fp8_linear(tiny_model(0)))


def test_pipeline_rtn_in_a_format_equals_the_direct_rtn():
    """quantize_model with LayerSetting(fmt=...) gives rtn_weights' weights exactly, and its
    codes and scales decode to them (oracle: ml_dtypes' E2M1 values times the block scales)."""
    from refquant.pipeline.blockwise import quantize_model
    from refquant.pipeline.recipes import LayerSetting

    model = tiny_model(3)
    calib = np.random.default_rng(6).integers(0, 300, size=(2, 16))
    for fmt in ("fp8", "mxfp4", "nvfp4"):
        res = quantize_model(model, calib, LayerSetting("rtn", fmt=fmt))
        direct = rtn_weights(model, fmt)
        assert all(np.array_equal(res.weights[n], direct[n]) for n in direct)
    ly = res.layers["layers.0.mlp.up_proj"]                  # nvfp4
    vals = ly.codes.view(E2M1).astype(np.float64)
    X = np.repeat(ly.qparams.scale.astype(np.float64), 16, axis=1)
    assert np.array_equal((vals * X).astype(np.float32), res.weights["layers.0.mlp.up_proj.weight"])


def test_pipeline_gptq_on_microscaled_grids():
    """GPTQ-MXFP4 / GPTQ-NVFP4 through quantize_model: the weights stay on the static RTN block
    scales' grids (codes times the RTN scales give them back) and differ from RTN."""
    from refquant.pipeline.blockwise import quantize_model
    from refquant.pipeline.recipes import LayerSetting

    model = tiny_model(4)
    calib = np.random.default_rng(7).integers(0, 300, size=(4, 16))
    for fmt, k in (("mxfp4", 32), ("nvfp4", 16)):
        res = quantize_model(model, calib, LayerSetting("gptq", fmt=fmt, act_order=True))
        rtn = rtn_weights(model, fmt)
        changed = 0
        for n, ly in res.layers.items():
            _, qp, _, _ = rtn_layer(model.weights[n + ".weight"], fmt)
            assert np.array_equal(ly.qparams.scale, qp.scale)          # static scales
            vals = ly.codes.view(E2M1).astype(np.float64)
            w = (vals * np.repeat(qp.scale.astype(np.float64), k, axis=1)).astype(np.float32)
            assert np.array_equal(w, res.weights[n + ".weight"])
            changed += not np.array_equal(w, rtn[n + ".weight"])
        assert changed > 0


def test_layer_setting_formats():
    from refquant.pipeline.recipes import LayerSetting

    assert LayerSetting("rtn", fmt="fp8_b128").label() == "rtn FP8 E4M3 128x128 blocks"
    with pytest.raises(ValueError, match="fmt='fp8_b128' with method 'gptq'"):
        LayerSetting("gptq", fmt="fp8_b128")
    with pytest.raises(ValueError, match="fmt='mxfp4' with method 'awq'"):
        LayerSetting("awq", fmt="mxfp4")


def test_bits_per_weight_by_hand():
    """A 576 x 576 linear: codes plus stored scales (and zero points), counted by hand."""
    from refquant.pipeline.weight_formats import layer_size_bits

    n = 576 * 576
    want = {"fp8": 8 + 32 / 576, "fp8_b128": 8 + 32 * 25 / n, "mxfp6": 6.25, "mxfp4": 4.25,
            "nvfp4": 4.5 + 32 / n, "int8": 8 + (16 + 8) / 576, "int4g128": 4 + 5 * (16 + 4) / 576,
            "fp8_w8a8": 8 + 32 / 576}
    for fmt, bpw in want.items():
        assert layer_size_bits(fmt, (576, 576)) / n == pytest.approx(bpw, rel=1e-12), fmt


def test_demo_accepts_the_format_names():
    """refquant demo's --settings names are the pipeline's RTN formats (oracle: recipes), and
    its settings map each method to the right LayerSetting (None where a method does not
    take the format); W8A8 settings evaluate through the per-token linear."""
    from refquant.commands.demo import FORMAT_SETTINGS, _setting
    from refquant.pipeline.recipes import FLOAT_FORMATS_RTN
    from refquant.pipeline.weight_formats import activation_linear

    assert FORMAT_SETTINGS == FLOAT_FORMATS_RTN
    assert _setting("rtn", None, None, "fp8_b128").fmt == "fp8_b128"
    assert _setting("gptq", None, None, "nvfp4").act_order
    assert _setting("gptq", None, None, "fp8") is None and _setting("awq", None, None, "mxfp4") is None
    model = tiny_model(0)
    assert activation_linear(model, {"a": _setting("rtn", None, None, "mxfp4")}) is None
    lin = activation_linear(model, {"a": _setting("rtn", None, None, "fp8_w8a8")})
    x = np.ones((1, 2, 32), np.float32)
    assert lin("layers.0.self_attn.q_proj", x).shape == (1, 2, 32)


def test_demo_rows_for_the_formats():
    """run_experiments on the tiny Llama: a W8A8 row equals the perplexity through
    w8a8_model's linear, a GPTQ-MXFP4 row names its format, bits/w as size_report counts."""
    from refquant.commands.demo import _setting, run_experiments

    model = tiny_model(5)
    calib = np.random.default_rng(8).integers(0, 300, size=(2, 16))
    ev = np.random.default_rng(9).integers(0, 300, size=64)
    runs = [("rtn", _setting("rtn", None, None, "fp8_w8a8")),
            ("gptq", _setting("gptq", None, None, "mxfp4"))]
    rows = run_experiments(model, calib, ev, runs, seq_len=32)
    view, linear = w8a8_model(model)
    assert rows[1]["ppl"] == rq.perplexity(view, ev, seq_len=32, linear=linear).ppl
    assert rows[1]["method"] == "rtn fp8_w8a8" and rows[1]["bits"] is None
    assert rows[2]["method"] == "gptq mxfp4" and rows[2]["bits_per_weight"] == 4.25
