"""Scaled quantization with float elements (refquant/schemes/float_quant.py): FloatSpec through
rq.calibrate / rq.quantize / rq.dequantize / rq.fake_quantize at every granularity.

Oracles: ``ml_dtypes`` for the element rounding (``s * ml_dtypes(clip(x / s))``, computed here
without refquant's casts); the float analogues of the integer schemes' Hypothesis properties
(error bounds from the format's table: ``2^-(m+1)`` relative in the normal range, half the
subnormal step below it; saturation, idempotence, oddness, monotonicity); granularity identities
(a block of one row is a group, a whole-matrix block is the tensor, a token is a row group).
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refquant as rq
from refquant.schemes.float_quant import FloatSpec, round_to_float_grid

ml_dtypes = pytest.importorskip("ml_dtypes")

ELEMENTS = ["e4m3fn", "e5m2", "e2m3fn", "e3m2fn", "e2m1fn"]
ML = {"e4m3fn": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2,
      "e2m3fn": ml_dtypes.float6_e2m3fn, "e3m2fn": ml_dtypes.float6_e3m2fn,
      "e2m1fn": ml_dtypes.float4_e2m1fn}

finite = st.floats(-1e4, 1e4, width=32, allow_subnormal=True)
matrices = hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12),
                      elements=finite)


@st.composite
def specs(draw, shape=None):
    fmt = draw(st.sampled_from(ELEMENTS))
    gran = draw(st.sampled_from(["tensor", "channel", "group", "block", "token"]))
    rounding = draw(st.sampled_from(["half_even", "half_away"]))
    kw = {}
    if gran == "group":
        kw["group_size"] = draw(st.integers(1, 8))
    elif gran == "block":
        kw["block_shape"] = (draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    return FloatSpec(fmt, granularity=gran, rounding=rounding, **kw)


def expanded_scale(x, qp, spec):
    from refquant.schemes.spec import expand
    return np.broadcast_to(expand(qp.scale, x.shape, spec).astype(np.float64), x.shape)


@given(matrices, specs())
def test_error_bounds(x, spec):
    """|x - x_hat| <= 2^-(m+1) |x| where |x| / s is in the normal range, <= s min_subnormal / 2
    below it (min-max scales: |x| / s <= x_max); codes are uint8 and decode."""
    qp = rq.calibrate(x, spec)
    q = rq.quantize(x, qp, spec)
    assert q.dtype == np.uint8 and q.shape == x.shape
    x_hat = rq.dequantize(q, qp, spec, dtype=np.float64)
    s = expanded_scale(x, qp, spec)
    f = spec.format
    x64 = x.astype(np.float64)
    err = np.abs(x64 - x_hat)
    normal = np.abs(x64) / s >= f.min_normal
    slack = 1 + 2.0**-40                                        # the one float64 division x / s
    assert np.all(err[normal] <= 2.0 ** -(f.mbits + 1) * np.abs(x64[normal]) * slack)
    assert np.all(err[~normal] <= s[~normal] * f.min_subnormal / 2 * slack)


@given(matrices, specs())
def test_fake_quantize_equals_ml_dtypes_oracle(x, spec):
    """fake_quantize = s * ml_dtypes(clip(x / s, +-x_max)) with the calibrated scales."""
    qp = rq.calibrate(x, spec)
    s = expanded_scale(x, qp, spec)
    m = spec.format.max_normal
    if spec.rounding != "half_even":
        return                                                  # ml_dtypes rounds half to even
    want = s * np.clip(x.astype(np.float64) / s, -m, m).astype(ML[spec.fmt]).astype(np.float64)
    got = rq.fake_quantize(x.astype(np.float64), spec)
    np.testing.assert_array_equal(got, want)


@given(matrices, specs(), st.floats(1e-3, 1e3))
def test_saturation_at_the_clip(x, spec, scale):
    """With a given scale, everything beyond s x_max lands exactly on +-s x_max."""
    qp = rq.calibrate(np.zeros_like(x), spec)                   # right shape, scale 1
    qp = rq.QParams(np.full(qp.scale.shape, scale, np.float32))
    x_hat = rq.fake_quantize(x.astype(np.float64), spec, qparams=qp)     # float64 out: exact
    lo, hi = rq.clip_range(qp, spec)
    s = expanded_scale(x, qp, spec)
    m = spec.format.max_normal
    assert np.all(np.abs(x_hat) <= s * m)
    big = np.abs(x.astype(np.float64)) >= s * m
    np.testing.assert_array_equal(np.abs(x_hat[big]), (s * m)[big])
    assert np.all(hi == float(np.float32(scale)) * m) and np.all(lo == -hi)


@given(matrices, specs())
def test_idempotent(x, spec):
    """Quantizing the dequantized values again changes nothing: with the same parameters and
    after recalibrating (the largest element comes back as exactly s x_max)."""
    qp = rq.calibrate(x, spec)
    x_hat = rq.fake_quantize(x, spec, qparams=qp)
    np.testing.assert_array_equal(rq.fake_quantize(x_hat, spec, qparams=qp), x_hat)
    np.testing.assert_array_equal(rq.fake_quantize(x_hat, spec), x_hat)


@given(matrices, specs())
def test_sign_symmetric(x, spec):
    """q(-x) = -q(x) (both tie rules are odd; the scale depends on |x| only)."""
    np.testing.assert_array_equal(rq.fake_quantize(-x, spec), -rq.fake_quantize(x, spec))


@given(hnp.arrays(np.float32, st.integers(1, 64), elements=finite),
       st.sampled_from(ELEMENTS), st.floats(1e-3, 1e2))
def test_monotone(x, fmt, scale):
    """With one scale, x <= y implies q(x) <= q(y)."""
    spec = FloatSpec(fmt)
    xs = np.sort(x)
    x_hat = rq.fake_quantize(xs, spec, qparams=rq.QParams(scale))
    assert np.all(np.diff(x_hat) >= 0)


@given(matrices, st.sampled_from(ELEMENTS))
def test_granularity_identities(x, fmt):
    """A block of one row is a group, a whole-matrix block is the tensor, a token is a row
    group and (2-D) a channel; zero rows give no NaN."""
    R, C = x.shape
    g = max(1, C // 2)
    fq = rq.fake_quantize
    np.testing.assert_array_equal(fq(x, FloatSpec(fmt, "block", block_shape=(1, g))),
                                  fq(x, FloatSpec(fmt, "group", group_size=g)))
    np.testing.assert_array_equal(fq(x, FloatSpec(fmt, "block", block_shape=(R, C))),
                                  fq(x, FloatSpec(fmt)))
    tok = fq(x, FloatSpec(fmt, "token"))
    np.testing.assert_array_equal(tok, fq(x, FloatSpec(fmt, "group", group_size=C)))
    np.testing.assert_array_equal(tok, fq(x, FloatSpec(fmt, "channel")))
    z = x.copy()
    z[0] = 0
    assert np.all(np.isfinite(fq(z, FloatSpec(fmt, "block", block_shape=(1, g)))))
    assert np.all(fq(z, FloatSpec(fmt, "token"))[0] == 0)


def test_deepseek_blocks_and_tokens():
    """128 x 128 weight blocks on the bundled model's shapes (576 = 4.5 blocks: the edge block is
    shorter, as in DeepSeek-V3's checkpoints) and 1 x 128 activation tiles: scale shapes and the
    scale of one block = its max|w| / 448 (hand calculation)."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((576, 1536)).astype(np.float32)
    spec = FloatSpec("e4m3fn", "block", block_shape=(128, 128))
    qp = rq.calibrate(w, spec)
    assert qp.scale.shape == (5, 12)
    assert qp.scale[4, 11] == np.float32(np.abs(w[512:, 1408:]).max() / 448.0)
    a = rng.standard_normal((3, 7, 1536)).astype(np.float32)
    tok = FloatSpec("e4m3fn", "token", group_size=128)
    qa = rq.calibrate(a, tok)
    assert qa.scale.shape == (3, 7, 12)
    assert qa.scale[1, 2, 5] == np.float32(np.abs(a[1, 2, 640:768]).max() / 448.0)
    assert rq.calibrate(a, FloatSpec("e4m3fn", "token")).scale.shape == (3, 7, 1)


def test_calibration_methods():
    """percentile and mse work with float elements (mse never worse than min-max); kl refuses."""
    rng = np.random.default_rng(4)
    x = np.append(rng.standard_normal(2000), 40.0)
    spec = FloatSpec("e2m1fn")
    err = {m: float(np.mean((x - rq.fake_quantize(x, spec, method=m)) ** 2))
           for m in ("minmax", "mse")}
    assert err["mse"] < err["minmax"]
    assert float(rq.calibrate(x, spec, method="percentile", percentile=99.0).scale) < 40.0 / 6
    with pytest.raises(ValueError, match="kl calibration needs an integer grid"):
        rq.calibrate(x, spec, method="kl")


def test_round_to_float_grid_is_quantize():
    """The hook equals rq.quantize / rq.dequantize with the same scales."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((16, 64))
    spec = FloatSpec("e2m1fn", "group", group_size=16)
    qp = rq.calibrate(w, spec)
    s = np.repeat(qp.scale.astype(np.float64), 16, axis=1)
    codes, w_hat = round_to_float_grid(w, s, "e2m1fn")
    np.testing.assert_array_equal(codes, rq.quantize(w, qp, spec))
    np.testing.assert_array_equal(w_hat, rq.dequantize(codes, qp, spec, dtype=np.float64))


def test_size_report():
    """Bits per weight: codes of spec.bits plus one scale per parameter group (hand count)."""
    r = rq.size_report((4096, 4096), FloatSpec("e4m3fn", "channel"))
    assert r.total_bytes == 4096 * 4096 + 4096 * 4 and r.bits_per_weight == 8 + 32 / 4096
    r = rq.size_report((576, 1536), FloatSpec("e4m3fn", "block", block_shape=(128, 128)))
    assert r.scale_bytes == 5 * 12 * 4 and r.code_bytes == 576 * 1536
    r = rq.size_report((576, 1536), FloatSpec("e2m1fn", "group", group_size=32), scale_bits=8)
    assert r.bits_per_weight == 4.25
    assert rq.size_report((64, 60), FloatSpec("e3m2fn")).code_bytes == 64 * 45   # 6-bit packed


def test_bad_input():
    """Unknown or scale-only formats, bad granularities and block shapes, tiles that do not
    divide the row, NaN input, nonzero zero points and overflow without saturation."""
    with pytest.raises(ValueError, match="'e4m3fnuz'"):
        FloatSpec("e4m3fnuz")
    with pytest.raises(ValueError, match="'e8m0fnu' is a scale format"):
        FloatSpec("e8m0fnu")
    with pytest.raises(ValueError, match="'row'"):
        FloatSpec("e4m3fn", "row")
    with pytest.raises(ValueError, match=r"block_shape must be a tuple.*128"):
        FloatSpec("e4m3fn", "block", block_shape=128)
    with pytest.raises(ValueError, match="block_shape entry must be a positive integer, got 0"):
        FloatSpec("e4m3fn", "block", block_shape=(128, 0))
    with pytest.raises(ValueError, match="block_shape=.*only meaningful"):
        FloatSpec("e4m3fn", "group", group_size=4, block_shape=(2, 2))
    with pytest.raises(ValueError, match="group_size"):
        FloatSpec("e4m3fn", "group")
    with pytest.raises(ValueError, match="group_size=128 do not divide the row length 576"):
        rq.calibrate(np.ones((2, 576)), FloatSpec("e4m3fn", "token", group_size=128))
    with pytest.raises(ValueError, match="at least two axes"):
        rq.calibrate(np.ones(8), FloatSpec("e4m3fn", "block", block_shape=(2, 2)))
    with pytest.raises(ValueError, match="NaN or Inf"):
        rq.fake_quantize(np.array([1.0, np.nan]), FloatSpec("e5m2"))
    with pytest.raises(ValueError, match="zero_point == 0"):
        rq.quantize([1.0], rq.QParams(1.0, 3), FloatSpec("e5m2"))
    with pytest.raises(ValueError, match="500.0, which overflows e4m3fn"):
        rq.quantize([1.0, 500.0], rq.QParams(1.0), FloatSpec("e4m3fn", saturate=False))
    assert rq.quantize([1e6], rq.QParams(1.0), FloatSpec("e2m1fn", saturate=False)).tolist() == [7]
    with pytest.raises(ValueError, match="code 16 is out of range"):
        rq.dequantize(np.array([16], np.uint8), rq.QParams(1.0), FloatSpec("e2m1fn"))
