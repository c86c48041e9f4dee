"""Tests of refquant.algorithms.gptq_mx (GPTQ-MXFP4/MXFP8/MXFP6 and GPTQ-NVFP4).

Oracles: the algorithm identity "GPTQ with an identity Hessian is round-to-nearest on the same
grid" against refquant.schemes.mx's round-to-nearest (itself tested against a scalar loop with
ml_dtypes casts and a torchao transcription in tests/test_mx.py); the proxy loss of GPTQ
against that of round-to-nearest on correlated inputs.
"""

import numpy as np
import pytest

from refquant.algorithms.gptq_mx import gptq_mx, gptq_nvfp4
from refquant.schemes import mx
from refquant.testing import stress_tensor

FLOAT_MX = ("mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4")


def proxy_loss(W, W_hat, H):
    D = (W - W_hat).astype(np.float64)
    return float(np.einsum("ij,jk,ik->", D, H, D))


@pytest.mark.parametrize("fmt", FLOAT_MX)
@pytest.mark.parametrize("rule", mx.SCALE_RULES)
def test_identity_hessian_equals_rtn_mx(fmt, rule):
    """Oracle: mx_quantize (round-to-nearest at the same block scales)."""
    W = stress_tensor("heavy_tail", (16, 128), seed=1)
    res = gptq_mx(W, np.eye(128), fmt, scale_rule=rule, dtype=np.float64)
    rtn = mx.mx_quantize(W, fmt, scale_rule=rule)
    assert np.array_equal(res.quantized.scales, rtn.scales)
    assert np.array_equal(res.quantized.codes, rtn.codes)
    assert np.array_equal(mx.mx_dequantize(res.quantized), mx.mx_dequantize(rtn))
    assert np.array_equal(res.gptq.w_hat, mx.mx_dequantize(rtn))


def test_identity_hessian_equals_rtn_nvfp4():
    """Oracle: nvfp4_quantize (round-to-nearest at the same two-level scales)."""
    W = stress_tensor("outlier_channels", (16, 128), seed=2)
    res = gptq_nvfp4(W, np.eye(128), dtype=np.float64)
    rtn = mx.nvfp4_quantize(W)
    assert res.quantized.tensor_scale == rtn.tensor_scale
    assert np.array_equal(res.quantized.scales, rtn.scales)
    assert np.array_equal(res.quantized.codes, rtn.codes)
    assert np.array_equal(mx.nvfp4_dequantize(res.quantized), res.gptq.w_hat)


@pytest.mark.parametrize("which", ["mxfp4", "nvfp4"])
def test_gptq_beats_rtn_on_correlated_inputs(which):
    """GPTQ's proxy loss tr((W - W_hat) H (W - W_hat)^T) is below RTN's at the same scales
    (correlated inputs; fixed seed)."""
    rng = np.random.default_rng(0)
    d_col = 128
    A = rng.standard_normal((d_col, d_col)) * 0.3 + np.eye(d_col)
    Xin = A @ rng.standard_normal((d_col, 1024))
    H = 2 * Xin @ Xin.T / Xin.shape[1]
    W = rng.standard_normal((32, d_col)).astype(np.float32)
    if which == "mxfp4":
        res = gptq_mx(W, H, "mxfp4", act_order=True)
        rtn = mx.mx_dequantize(mx.mx_quantize(W, "mxfp4"))
        got = mx.mx_dequantize(res.quantized)
    else:
        res = gptq_nvfp4(W, H, act_order=True)
        rtn = mx.nvfp4_dequantize(mx.nvfp4_quantize(W))
        got = mx.nvfp4_dequantize(res.quantized)
    assert np.array_equal(got, res.gptq.w_hat)
    assert proxy_loss(W, got, H) < 0.9 * proxy_loss(W, rtn, H)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="mxint8 is an integer grid"):
        gptq_mx(np.zeros((2, 32)), np.eye(32), "mxint8")
    with pytest.raises(ValueError, match="unknown MX format 'mxfp2'"):
        gptq_mx(np.zeros((2, 32)), np.eye(32), "mxfp2")
    with pytest.raises(ValueError, match="2-D weight matrix"):
        gptq_nvfp4(np.zeros(32), np.eye(32))
    with pytest.raises(ValueError, match="block_size 32 does not divide the length 48"):
        gptq_mx(np.zeros((2, 48)), np.eye(48))
