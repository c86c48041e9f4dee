"""Tests of refquant.formats.ggml.gptq_grid (GPTQ onto the GGML block grids) and GPTQ's grid hook.

Oracles:
1. ggml's own C quantizer and decoder (``ggml_quantize_chunk`` / ``dequantize_row_*`` of the
   ``libggml-python`` wheel through ctypes, ``tests/ggml_oracle.py``): with a diagonal Hessian
   GPTQ moves no error, so its bytes must be ggml's, byte for byte; with a real Hessian its
   bytes decoded by ggml's C must be its ``w_hat``, and the plain bytes from ggml's C decoded by
   ggml's C give the baseline output error;
2. :func:`refquant.gptq` with a fixed per-channel spec (for the grid hook itself).
"""

import gguf
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import ggml_oracle
from refquant.algorithms.gptq import gptq
from refquant.formats import ggml
from refquant.formats.ggml._gptq_grids import GRID_TYPES
from refquant.schemes.spec import QParams, QuantSpec
from refquant.schemes.uniform import _dequantize_codes, _round_codes
from refquant.testing import STRESS_KINDS, assert_ggml_equal, stress_tensor

FORMATS = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
           "IQ4_NL", "IQ4_XS")
needs_ggml, imatrices = ggml_oracle.needs_ggml, ggml_oracle.imatrices




def diagonal_hessians(K, seed):
    """H = I (no act_order) and a diagonal H with distinct entries (act_order then permutes
    the columns; a diagonal H still moves no error between them)."""
    d = np.random.default_rng(seed).uniform(0.5, 2.0, K)
    return [(np.eye(K), False), (np.diag(d), True)]


def correlated_inputs(K, n=1024, seed=0):
    """Calibration inputs X [K, n] with correlated neighbouring features and uneven scales."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((K, n))
    X = Z + 0.7 * np.roll(Z, 1, axis=0) + 0.4 * np.roll(Z, 2, axis=0)
    return (X * rng.uniform(0.3, 3.0, (K, 1))).astype(np.float32)


def test_supported_types():
    assert sorted(GRID_TYPES) == sorted(FORMATS)


# --- H diagonal: the plain block quantizer, ggml's C bytes ---------------------------------------

@needs_ggml
@pytest.mark.parametrize("fmt", FORMATS)
def test_identity_hessian_is_ggml_bytes(fmt):
    """Oracle: ggml's C (ggml_quantize_chunk) on random rows, without an imatrix, with a positive
    one and one with zeros, with H = I and with a diagonal H under act_order."""
    x = np.random.default_rng(3).standard_normal((5, 512)).astype(np.float32)
    for im in imatrices(512, seed=1):
        expected = ggml_oracle.quantize(x, fmt, im)
        for H, act_order in diagonal_hessians(512, seed=2):
            res = ggml.gptq_ggml(x, H, fmt, imatrix=im, act_order=act_order)
            assert_ggml_equal(res.data, expected, fmt, x=x,
                              err_msg=f"imatrix {im is not None}, act_order {act_order}")
            if act_order:
                assert not np.array_equal(res.perm, np.arange(512))


@needs_ggml
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", STRESS_KINDS)
def test_identity_hessian_is_ggml_bytes_stress(fmt, kind):
    """Oracle: ggml's C on refquant.testing's stress tensors (zeros, subnormals, constant rows,
    outliers ...), without and with an importance matrix, H = I and a diagonal H under
    act_order."""
    x = stress_tensor(kind, (3, 256), seed=7)
    for im in imatrices(256, seed=5)[:2]:
        expected = ggml_oracle.quantize(x, fmt, im)
        for H, act_order in diagonal_hessians(256, seed=6):
            res = ggml.gptq_ggml(x, H, fmt, imatrix=im, act_order=act_order)
            assert_ggml_equal(res.data, expected, fmt, x=x,
                              err_msg=f"imatrix {im is not None}, act_order {act_order}")


@needs_ggml
@settings(max_examples=20)
@given(fmt=st.sampled_from(FORMATS), seed=st.integers(0, 2**31), scale_exp=st.integers(-40, 16),
       with_imatrix=st.booleans())
def test_identity_hessian_is_ggml_bytes_property(fmt, seed, scale_exp, with_imatrix):
    """Oracle: ggml's C on normal values scaled by 2^-40 ... 2^16 (float16 scales from
    subnormal to large), H = I."""
    x = (stress_tensor("normal", (2, 256), seed) * np.float32(2.0**scale_exp)).astype(np.float32)
    im = imatrices(256, seed)[2] if with_imatrix else None
    res = ggml.gptq_ggml(x, np.eye(256), fmt, imatrix=im)
    assert_ggml_equal(res.data, ggml_oracle.quantize(x, fmt, im), fmt, x=x)


@pytest.fixture(scope="module")
def smollm2_down():
    """Rows 0:64 of SmolLM2-135M's blk.0.ffn_down.weight (1536 columns), decoded by gguf."""
    from refquant.models.resources import bundled_model_path
    reader = gguf.GGUFReader(str(bundled_model_path()))
    t = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")
    return gguf.quants.dequantize(t.data, t.tensor_type)[:64].astype(np.float32)


@needs_ggml
@pytest.mark.parametrize("fmt", FORMATS)
def test_identity_hessian_is_ggml_bytes_real_tensor(fmt, smollm2_down):
    """Oracle: ggml's C on a real SmolLM2 weight slice (64 x 1536): H = I without an importance
    matrix, a diagonal H under act_order with one."""
    w = smollm2_down
    (H_eye, _), (H_diag, _) = diagonal_hessians(w.shape[1], seed=8)
    for im, H, act_order in [(None, H_eye, False), (imatrices(w.shape[1], seed=4)[1], H_diag, True)]:
        res = ggml.gptq_ggml(w, H, fmt, imatrix=im, act_order=act_order)
        assert_ggml_equal(res.data, ggml_oracle.quantize(w, fmt, im), fmt, x=w,
                          err_msg=f"imatrix {im is not None}, act_order {act_order}")


# --- a real Hessian: lower output error, bytes that ggml decodes to w_hat ------------------------

@pytest.fixture(scope="module")
def calibration():
    K = 512
    X = correlated_inputs(K)
    H = 2.0 * (X.astype(np.float64) @ X.T.astype(np.float64)) / X.shape[1]
    W = np.random.default_rng(11).standard_normal((8, K)).astype(np.float32)
    return W, X, H


@needs_ggml
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("with_imatrix", [False, True])
@pytest.mark.parametrize("act_order", [False, True])
def test_real_hessian_lowers_output_error(fmt, with_imatrix, act_order, calibration):
    """Oracles: ggml's C dequantize of GPTQ's bytes is its w_hat exactly (what llama.cpp
    computes); ||(W - w_hat) X||_F is below that of ggml's C plain bytes decoded by ggml's C."""
    W, X, H = calibration
    K = W.shape[1]
    im = np.mean(X.astype(np.float64) ** 2, axis=1).astype(np.float32) if with_imatrix else None
    res = ggml.gptq_ggml(W, H, fmt, imatrix=im, act_order=act_order)
    assert res.data.shape == ggml_oracle.quantize(W, fmt, im).shape
    np.testing.assert_array_equal(ggml_oracle.dequantize(res.data, fmt, K).reshape(W.shape),
                                  res.w_hat)
    np.testing.assert_array_equal(res.w_hat, res.gptq.w_hat)
    plain = ggml_oracle.dequantize(ggml_oracle.quantize(W, fmt, im), fmt, K).reshape(W.shape)
    err = np.linalg.norm((W - res.w_hat).astype(np.float64) @ X)
    err_plain = np.linalg.norm((W - plain).astype(np.float64) @ X)
    assert err < 0.97 * err_plain, f"{fmt}: GPTQ {err:.4g} vs plain {err_plain:.4g}"
    # the loss GPTQ reports is its objective at the damped Hessian (refquant.gptq's identity)
    lam = res.gptq.damp * np.mean(np.diag(H))
    E = (W - res.w_hat).astype(np.float64)
    expected_loss = 0.5 * np.trace(E @ (H + lam * np.eye(K)) @ E.T)
    assert res.loss == pytest.approx(expected_loss, rel=1e-3)


def test_inputs_are_not_modified(calibration):
    W, X, H = calibration
    W0, H0 = W.copy(), H.copy()
    ggml.gptq_ggml(W, H, "Q4_K", imatrix=np.ones(W.shape[1], np.float32), act_order=True)
    np.testing.assert_array_equal(W, W0)
    np.testing.assert_array_equal(H, H0)


# --- GPTQ's grid hook ----------------------------------------------------------------------------

class _ChannelGrid:
    """A uniform 4-bit grid with per-row scale and zero point fixed before the pass: the hook's
    contract, rounding with refquant's one core."""

    code_dtype = np.uint8

    def __init__(self, s, z):
        self.s, self.z = s, z

    def round(self, w, c):
        q = _round_codes(w.astype(np.float64), self.s, self.z, 0, 15, "half_even")
        return q.astype(np.uint8), _dequantize_codes(q, self.s, self.z)


def test_grid_hook_equals_fixed_channel_spec():
    """Oracle: refquant.gptq with the same per-channel parameters given as ``qparams``."""
    rng = np.random.default_rng(0)
    W = rng.standard_normal((6, 48))
    X = correlated_inputs(48, n=256, seed=1).astype(np.float64)
    H = 2 * X @ X.T / X.shape[1]
    spec = QuantSpec(bits=4, symmetric=False, granularity="channel")
    s = (W.max(axis=1) - W.min(axis=1)) / 15
    z = np.round(-W.min(axis=1) / s)
    qp = QParams(s.astype(np.float32), z.astype(np.int32))
    for act_order in (False, True):
        ref = gptq(W, H, spec, qparams=qp, act_order=act_order)
        grid = _ChannelGrid(qp.scale.astype(np.float64), qp.zero_point.astype(np.float64))
        res = gptq(W, H, grid=grid, act_order=act_order)
        np.testing.assert_array_equal(res.codes, ref.codes)
        np.testing.assert_array_equal(res.w_hat, ref.w_hat)
        assert res.loss == ref.loss and res.qparams is None


def test_grid_hook_bad_input():
    W, H = np.ones((2, 8)), np.eye(8)
    with pytest.raises(ValueError, match="either spec or grid"):
        gptq(W, H, QuantSpec(bits=4), grid=_ChannelGrid(np.ones(2), np.zeros(2)))
    with pytest.raises(ValueError, match="round"):
        gptq(W, H, grid=object())


# --- bad input -----------------------------------------------------------------------------------

def test_bad_input_raises():
    W = np.ones((2, 256), np.float32)
    for fmt in ("TQ1_0", "MXFP4", "Q8_K", "F16"):
        with pytest.raises(ValueError, match=repr(fmt)):
            ggml.gptq_ggml(W, np.eye(256), fmt)
    with pytest.raises(ValueError, match=r"H must have shape \(256, 256\).*\(255, 255\)"):
        ggml.gptq_ggml(W, np.eye(255), "Q4_K")
    bad = W.copy()
    bad[1, 7] = np.nan
    with pytest.raises(ValueError, match=r"\(1, 7\).*nan"):
        ggml.gptq_ggml(bad, np.eye(256), "Q4_0")
    with pytest.raises(ValueError, match="length 576 is not a positive multiple of 256"):
        ggml.gptq_ggml(np.ones((2, 576), np.float32), np.eye(576), "Q4_K")
    with pytest.raises(ValueError, match="length 40 is not a positive multiple of 32"):
        ggml.gptq_ggml(np.ones((2, 40), np.float32), np.eye(40), "Q8_0")
    with pytest.raises(ValueError, match=r"2-D.*\(256,\)"):
        ggml.gptq_ggml(W[0], np.eye(256), "Q4_0")
    with pytest.raises(ValueError, match=r"imatrix.*\(128,\)"):
        ggml.gptq_ggml(W, np.eye(256), "Q4_K", imatrix=np.ones(128, np.float32))
