"""Property and table tests of refquant.schemes.uniform (affine quantization at every granularity).

Oracles
-------
* ``_oracle_*`` below: a scalar re-statement of the formulas in plain Python, one value at a
  time, with the rounding done by the ``decimal`` module (ROUND_HALF_EVEN, and ROUND_HALF_UP =
  ties away from zero). It shares only IEEE float64 division ``x / s`` and the float32 storage
  of the scale with the code under test (both stated in refquant.schemes.uniform's docstring).
* A hand-calculated table (``TABLE``) with the arithmetic in comments; the oracle is checked
  against it too.
* Algebraic properties (error bound, idempotence, oddness, granularity identities) that need
  no oracle.
"""

import doctest
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import refquant.schemes.uniform as uniform
from refquant import QParams, QuantSpec
from refquant.calibration.observers import calibrate
from refquant.schemes.spec import expand, grouped, param_shape
from refquant.calibration.fake import fake_quantize
from refquant.schemes.uniform import clip_range, dequantize, qparams_from_range, quantize

ROUNDINGS = ("half_even", "half_away")
_DEC_MODE = {"half_even": ROUND_HALF_EVEN, "half_away": ROUND_HALF_UP}


# ------------------------------------------------------------------------ scalar oracle


def _oracle_round(v: float, rounding: str) -> int:
    return int(Decimal(v).quantize(Decimal(1), rounding=_DEC_MODE[rounding]))


def _oracle_range(bits, symmetric, restricted=False):
    if symmetric:
        top = 2 ** (bits - 1) - 1
        return (-top if restricted else -top - 1), top
    return 0, 2**bits - 1


def _oracle_qparams(lo: float, hi: float, bits, symmetric, restricted, rounding):
    """(scale, zero point) for the range [lo, hi], one group, written out as in the docs."""
    qmin, qmax = _oracle_range(bits, symmetric, restricted)
    tiny = float(np.finfo(np.float32).tiny)
    if symmetric:
        amax = max(abs(lo), abs(hi))
        s = 1.0 if amax == 0 else float(np.float32(max(amax / qmax, tiny)))
        return s, 0
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    s = 1.0 if hi == lo else float(np.float32(max((hi - lo) / (qmax - qmin), tiny)))
    z = qmin - _oracle_round(lo / s, rounding)
    return s, min(max(z, qmin), qmax)


def _oracle_quantize(x: float, s: float, z: int, bits, symmetric, restricted, rounding):
    """(code, dequantized value) of one scalar."""
    qmin, qmax = _oracle_range(bits, symmetric, restricted)
    q = min(max(_oracle_round(x / s, rounding) + z, qmin), qmax)
    return q, s * (q - z)


# ------------------------------------------------------------------------ hand table

# Each row: spec, QParams (scale, zero point), x, expected code, expected x_hat.
TABLE = [
    # 4-bit symmetric, s = 1: codes [-8, 7]
    (dict(bits=4), (1.0, 0), 0.5, 0, 0.0),             # 0.5 -> tie -> even 0
    (dict(bits=4, rounding="half_away"), (1.0, 0), 0.5, 1, 1.0),   # tie -> away 1
    (dict(bits=4), (1.0, 0), 1.5, 2, 2.0),             # 1.5 -> 2 in both modes
    (dict(bits=4, rounding="half_away"), (1.0, 0), 1.5, 2, 2.0),
    (dict(bits=4), (1.0, 0), 2.5, 2, 2.0),             # 2.5 -> even 2
    (dict(bits=4, rounding="half_away"), (1.0, 0), 2.5, 3, 3.0),   # 2.5 -> away 3
    (dict(bits=4), (1.0, 0), -0.5, 0, 0.0),            # -0.5 -> even 0
    (dict(bits=4, rounding="half_away"), (1.0, 0), -0.5, -1, -1.0),
    (dict(bits=4), (1.0, 0), -2.5, -2, -2.0),          # -2.5 -> even -2
    (dict(bits=4, rounding="half_away"), (1.0, 0), -2.5, -3, -3.0),
    (dict(bits=4), (1.0, 0), 7.5, 7, 7.0),             # 7.5 -> 8 -> clamp 7
    (dict(bits=4), (1.0, 0), -8.5, -8, -8.0),          # -8.5 -> even -8, in range
    (dict(bits=4, rounding="half_away"), (1.0, 0), -8.5, -8, -8.0),  # -9 -> clamp -8
    # 8-bit restricted, s = 0.25: codes [-127, 127]
    (dict(bits=8, restricted=True), (0.25, 0), -31.875, -127, -31.75),  # /0.25 = -127.5 -> -128 -> clamp -127
    (dict(bits=8, restricted=True), (0.25, 0), 0.125, 0, 0.0),          # 0.5 -> even 0
    (dict(bits=8, restricted=True, rounding="half_away"), (0.25, 0), 0.125, 1, 0.25),
    # 4-bit asymmetric, s = 0.5, z = 3: codes [0, 15], x_hat = 0.5 (q - 3)
    (dict(bits=4, symmetric=False), (0.5, 3), 0.25, 3, 0.0),    # 0.5 -> even 0 -> q = 3
    (dict(bits=4, symmetric=False, rounding="half_away"), (0.5, 3), 0.25, 4, 0.5),  # -> 1 -> q = 4
    (dict(bits=4, symmetric=False), (0.5, 3), -1.25, 1, -1.0),  # -2.5 -> even -2 -> q = 1
    (dict(bits=4, symmetric=False, rounding="half_away"), (0.5, 3), -1.25, 0, -1.5),  # -3 -> q = 0
    (dict(bits=4, symmetric=False), (0.5, 3), -2.0, 0, -1.5),   # -4 + 3 = -1 -> clamp 0 -> 0.5 * -3
    (dict(bits=4, symmetric=False), (0.5, 3), 6.25, 15, 6.0),   # 12.5 -> 12 -> 15 -> 0.5 * 12
    (dict(bits=4, symmetric=False, rounding="half_away"), (0.5, 3), 6.25, 15, 6.0),  # 13 + 3 = 16 -> 15
    (dict(bits=4, symmetric=False), (0.5, 3), 0.0, 3, 0.0),     # zero is the code z
]


@pytest.mark.parametrize("spec_kw,qp,x,code,x_hat", TABLE)
def test_hand_table(spec_kw, qp, x, code, x_hat):
    spec = QuantSpec(**spec_kw)
    qparams = QParams(qp[0], qp[1])
    q = quantize(np.array([x]), qparams, spec)
    assert q.dtype == spec.code_dtype and int(q[0]) == code
    assert dequantize(q, qparams, spec, dtype=np.float64)[0] == x_hat
    # the scalar oracle reproduces the hand value as well
    assert _oracle_quantize(x, qp[0], qp[1], spec.bits, spec.symmetric, spec.restricted,
                            spec.rounding) == (code, x_hat)


# Parameters from a range, by hand.
RANGE_TABLE = [
    # 2-bit asymmetric [-0.25, 1.25]: s = 1.5 / 3 = 0.5; lo / s = -0.5 is a tie:
    #   half_even: round(-0.5) = 0  -> z = 0 - 0 = 0
    #   half_away: round(-0.5) = -1 -> z = 0 + 1 = 1
    (dict(bits=2, symmetric=False), -0.25, 1.25, 0.5, 0),
    (dict(bits=2, symmetric=False, rounding="half_away"), -0.25, 1.25, 0.5, 1),
    # 8-bit asymmetric [-1, 3]: s = float32(4 / 255) = 0.01568627543747425;
    #   -1 / s = -63.7499998... -> -64 -> z = 64
    (dict(bits=8, symmetric=False), -1.0, 3.0, 0.01568627543747425, 64),
    # asymmetric range of positive values is widened to [0, 2]: s = 2 / 15 (float32), z = 0
    (dict(bits=4, symmetric=False), 0.5, 2.0, float(np.float32(2 / 15)), 0),
    # negative values: [-3, 0], s = 3 / 15 = 0.2 (float32), -3 / s = -15 -> z = 15
    (dict(bits=4, symmetric=False), -3.0, -1.0, float(np.float32(0.2)), 15),
    # 4-bit symmetric [-1, 0.5]: s = 1 / 7 (float32), z = 0
    (dict(bits=4), -1.0, 0.5, float(np.float32(1 / 7)), 0),
    # all-zero range: the zero-range convention s = 1, z = 0 (sym) / the code of 0 (asym)
    (dict(bits=8), 0.0, 0.0, 1.0, 0),
    (dict(bits=8, symmetric=False), 0.0, 0.0, 1.0, 0),
]


@pytest.mark.parametrize("spec_kw,lo,hi,s,z", RANGE_TABLE)
def test_range_table(spec_kw, lo, hi, s, z):
    spec = QuantSpec(**spec_kw)
    qp = qparams_from_range(lo, hi, spec)
    assert float(qp.scale) == s and int(qp.zero_point) == z
    assert _oracle_qparams(lo, hi, spec.bits, spec.symmetric, spec.restricted, spec.rounding) == (s, z)


def test_range_table_round_trip_of_a_tie():
    # 2-bit asymmetric [-0.25, 1.25] (s = 0.5): x = 1.25 -> 2.5 is a tie
    #   half_even (z = 0): round(2.5) = 2 -> q = 2 -> x_hat = 0.5 * 2 = 1.0
    #   half_away (z = 1): round(2.5) = 3 -> q = 4 -> clamp 3 -> x_hat = 0.5 * (3 - 1) = 1.0
    #   x = -0.25: half_even -> q = 0 -> 0.0;  half_away -> round(-0.5) = -1 -> q = 0 -> -0.5
    x = np.array([-0.25, 1.25])
    assert fake_quantize(x, QuantSpec(bits=2, symmetric=False)).tolist() == [0.0, 1.0]
    assert fake_quantize(x, QuantSpec(bits=2, symmetric=False, rounding="half_away")).tolist() == [-0.5, 1.0]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int32, np.uint8])
def test_fake_quantize_output_dtype(dtype):
    """Floating input keeps its dtype; integer input comes back as float32 (dequantize's
    default). Values: dequantize(quantize(x)) in that dtype."""
    x = np.array([0, 1, 2, 7, 9]).astype(dtype)
    spec = QuantSpec(bits=3, symmetric=False)
    qp = calibrate(x.astype(np.float64), spec)
    y = fake_quantize(x, spec)
    want = np.float32 if np.dtype(dtype).kind in "iu" else dtype
    assert y.dtype == want
    assert np.array_equal(y, dequantize(quantize(x.astype(np.float64), qp, spec), qp, spec,
                                        dtype=want))


# ------------------------------------------------------------------------ strategies

_values = st.one_of(
    st.floats(-1000, 1000, allow_nan=False, width=64),
    st.integers(-40, 40).map(lambda k: k / 2),           # many exact ties
    st.just(0.0),
)


@st.composite
def spec_strategy(draw, shape, bits=st.sampled_from([2, 3, 4, 5, 8, 16]),
                  granularities=("tensor", "channel", "group"), symmetric=st.booleans()):
    granularity = draw(st.sampled_from(granularities))
    symmetric = draw(symmetric)
    kw = dict(bits=draw(bits), symmetric=symmetric, granularity=granularity,
              rounding=draw(st.sampled_from(ROUNDINGS)),
              restricted=symmetric and draw(st.booleans()))
    if granularity == "channel":
        kw["axis"] = draw(st.integers(-len(shape), len(shape) - 1))
    if granularity == "group":
        kw["group_size"] = draw(st.integers(1, shape[-1] + 2))
    return QuantSpec(**kw)


@st.composite
def cases(draw, dtype=np.float64, min_dims=1, **spec_kw):
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=min_dims, max_size=3)))
    spec = draw(spec_strategy(shape, **spec_kw))
    x = draw(arrays(np.float64, shape, elements=_values))
    x = x * 10.0 ** draw(st.integers(-6, 6))             # vary the magnitude
    return x.astype(dtype), spec


@st.composite
def cases_with_qparams(draw, **spec_kw):
    """Data with arbitrary (not calibrated) parameters, so that values fall outside the range."""
    x, spec = draw(cases(**spec_kw))
    pshape = param_shape(x.shape, spec)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = 2.0 ** rng.uniform(-8, 6, size=pshape)
    if spec.symmetric:
        zero = np.zeros(pshape, np.int32)
    else:
        zero = rng.integers(spec.qmin, spec.qmax + 1, size=pshape)
    return x, spec, QParams(scale, zero)


def _broadcast(p, shape, spec):
    return np.broadcast_to(expand(p, shape, spec), shape).astype(np.float64)


def _check_error_bound(x, qp, spec):
    """codes in range; |x - x_hat| <= s/2 inside the clip range; outside, x_hat is the nearest
    end of the range, so |x - x_hat| = dist(x, range) <= |x| - clip + s/2."""
    q = quantize(x, qp, spec)
    assert q.dtype == spec.code_dtype and q.shape == x.shape
    assert q.min() >= spec.qmin and q.max() <= spec.qmax
    x_hat = dequantize(q, qp, spec, dtype=np.float64)
    s = _broadcast(qp.scale, x.shape, spec)
    lo, hi = (_broadcast(c, x.shape, spec) for c in clip_range(qp, spec))
    err = np.abs(x - x_hat)
    # float64 rounding of x / s and of s (q - z): a few ulp of the values involved
    tol = 1e-13 * (np.abs(x) + s * (np.abs(q.astype(np.float64)) + spec.qmax + 1))
    inside = (lo <= x) & (x <= hi)
    assert np.all(err[inside] <= s[inside] / 2 + tol[inside])
    above, below = x > hi, x < lo
    assert np.all(x_hat[above] == hi[above]) and np.all(x_hat[below] == lo[below])
    assert np.all(err[above] <= np.abs(x[above]) - np.abs(hi[above]) + s[above] / 2 + tol[above])
    assert np.all(err[below] <= np.abs(x[below]) - np.abs(lo[below]) + s[below] / 2 + tol[below])
    return q, x_hat


# ------------------------------------------------------------------------ properties


@given(cases())
def test_error_bound_calibrated(case):
    x, spec = case
    qp = calibrate(x, spec)
    assert qp.scale.shape == param_shape(x.shape, spec)
    _check_error_bound(x, qp, spec)


@given(cases_with_qparams())
def test_error_bound_any_qparams(case):
    x, spec, qp = case
    _check_error_bound(x, qp, spec)


@given(cases(dtype=np.float32))
def test_error_bound_float32(case):
    x, spec = case
    qp = calibrate(x, spec)
    x_hat = fake_quantize(x, spec)
    assert x_hat.dtype == np.float32
    s = _broadcast(qp.scale, x.shape, spec)
    lo, hi = (_broadcast(c, x.shape, spec) for c in clip_range(qp, spec))
    x64 = x.astype(np.float64)
    dist = np.maximum(lo - x64, 0) + np.maximum(x64 - hi, 0)
    # the float32 output adds half an ulp of x_hat: <= 2^-24 |x_hat|
    tol = 2.0**-24 * np.abs(x_hat.astype(np.float64)) + 1e-12 * (np.abs(x64) + s)
    assert np.all(np.abs(x64 - x_hat) <= dist + s / 2 + tol)


@pytest.mark.parametrize("symmetric,restricted", [(True, False), (True, True), (False, False)])
@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("bits", [3, 4, 8])
def test_short_last_group_k576(symmetric, restricted, rounding, bits):
    # SmolLM2's hidden size: 576 = 4 * 128 + 64, so the fifth group has 64 members
    rng = np.random.default_rng(bits)
    w = rng.standard_normal((6, 576)) * np.exp(rng.uniform(-3, 3, size=(6, 1)))
    w[:, 512:] *= 10.0                                   # the short group has its own scale
    spec = QuantSpec(bits=bits, symmetric=symmetric, restricted=restricted,
                     granularity="group", group_size=128, rounding=rounding)
    qp = calibrate(w, spec)
    assert qp.scale.shape == (6, 5)
    _check_error_bound(w, qp, spec)
    # the short group's parameters come from its 64 members only (naive slice oracle)
    for r in range(6):
        tail = w[r, 512:]
        s, z = _oracle_qparams(float(tail.min()), float(tail.max()), bits, symmetric, restricted, rounding)
        assert (float(qp.scale[r, 4]), int(qp.zero_point[r, 4])) == (s, z)


@settings(max_examples=60)
@given(cases())
def test_matches_scalar_oracle(case):
    """Every granularity equals the scalar oracle applied group by group (naive loops)."""
    x, spec = case
    qp = calibrate(x, spec)
    q = quantize(x, qp, spec)
    x_hat = dequantize(q, qp, spec, dtype=np.float64)
    # group membership by a naive loop over indices
    if spec.granularity == "tensor":
        keys = {idx: () for idx in np.ndindex(*x.shape)}
    elif spec.granularity == "channel":
        ax = spec.axis % x.ndim
        keys = {idx: (idx[ax],) for idx in np.ndindex(*x.shape)}
    else:
        keys = {idx: idx[:-1] + (idx[-1] // spec.group_size,) for idx in np.ndindex(*x.shape)}
    members = {}
    for idx, key in keys.items():
        members.setdefault(key, []).append(idx)
    for key, idxs in members.items():
        vals = [float(x[i]) for i in idxs]
        s, z = _oracle_qparams(min(vals), max(vals), spec.bits, spec.symmetric, spec.restricted,
                               spec.rounding)
        assert (float(qp.scale[key]), int(qp.zero_point[key])) == (s, z)
        for i in idxs:
            assert (int(q[i]), float(x_hat[i])) == _oracle_quantize(
                float(x[i]), s, z, spec.bits, spec.symmetric, spec.restricted, spec.rounding)


@given(cases_with_qparams())
def test_idempotent_fixed_qparams(case):
    x, spec, qp = case
    for dtype in (np.float64, np.float32):
        y = fake_quantize(x.astype(dtype), spec, qparams=qp)
        assert np.array_equal(fake_quantize(y, spec, qparams=qp), y)


@given(st.one_of(cases(symmetric=st.just(True)), cases(dtype=np.float32, symmetric=st.just(True))))
def test_idempotent_recalibrated_symmetric(case):
    """fake_quantize(fake_quantize(x)) == fake_quantize(x), calibrating again each time.

    Holds for symmetric specs on float64 data: y = s q is exact in float64, max|y| = s q_max
    (the largest |code| is q_max), and s q_max / q_max gives back exactly s. On float32 data
    y = fl32(s q) is rounded, so s' = fl32(fl32(s q_max) / q_max) == s is not proved here, only
    checked by these examples. (Asymmetric specs: see
    test_asymmetric_recalibration_is_not_always_idempotent.)"""
    x, spec = case
    y = fake_quantize(x, spec)
    assert np.array_equal(fake_quantize(y, spec), y)


def test_asymmetric_recalibration_is_not_always_idempotent():
    """Recalibrating an asymmetric quantizer on its own output can change the grid.

    x = [-10.5, 244.5] / 8, 8-bit asymmetric, half-even: s = (255 / 8) / 255 = 1/8 exactly,
    lo / s = -10.5 -> round_half_even = -10 -> z = 10; x_max / s = 244.5 -> 244 -> q = 254.
    So y = [-10, 244] / 8 spans only 254 steps, and calibrating on y gives s' = 31.75 / 255 != s.
    With half-away rounding z = 11 and q(x_max) = 245 + 11 -> clamp 255: all 255 steps are used
    and the second pass returns y unchanged.
    """
    x = np.array([-10.5, 244.5]) / 8
    spec = QuantSpec(bits=8, symmetric=False)
    y = fake_quantize(x, spec)
    assert y.tolist() == [-1.25, 30.5]
    assert float(calibrate(y, spec).scale) == float(np.float32(31.75 / 255))
    assert not np.array_equal(fake_quantize(y, spec), y)
    spec_away = QuantSpec(bits=8, symmetric=False, rounding="half_away")
    y = fake_quantize(x, spec_away)
    assert y.tolist() == [-1.375, 30.5]
    assert np.array_equal(fake_quantize(y, spec_away), y)


@given(cases(symmetric=st.just(True)))
def test_symmetric_odd_calibrated(case):
    x, spec = case
    assert np.array_equal(fake_quantize(-x, spec), -fake_quantize(x, spec))


@given(cases_with_qparams(symmetric=st.just(True)))
def test_symmetric_odd_fixed_qparams(case):
    """q(-x) = -q(x) for restricted codes always. For the full signed range it fails exactly
    where |x| / s >= 2^(b-1) - 1/2: there -x rounds to -2^(b-1) (a code) but x to 2^(b-1),
    which is clamped to 2^(b-1) - 1 (ties at 2^(b-1) - 1/2 round to the even 2^(b-1) and away
    from zero alike)."""
    x, spec, qp = case
    q_pos = quantize(x, qp, spec).astype(np.int64)
    q_neg = quantize(-x, qp, spec).astype(np.int64)
    broken = q_neg != -q_pos
    if spec.restricted:
        assert not broken.any()
    else:
        s = _broadcast(qp.scale, x.shape, spec)
        predicted = np.abs(x) / s >= 2 ** (spec.bits - 1) - 0.5
        assert np.array_equal(broken, predicted)
        # one of x, -x gives the extra negative code, the other is clamped to q_max
        assert np.all(np.minimum(q_pos, q_neg)[broken] == spec.qmin)
        assert np.all(np.maximum(q_pos, q_neg)[broken] == spec.qmax)


@st.composite
def matrices(draw):
    n, k = draw(st.integers(1, 6)), draw(st.integers(1, 12))
    x = draw(arrays(np.float64, (n, k), elements=_values))
    spec_kw = dict(bits=draw(st.sampled_from([2, 4, 8])), symmetric=draw(st.booleans()),
                   rounding=draw(st.sampled_from(ROUNDINGS)))
    spec_kw["restricted"] = spec_kw["symmetric"] and draw(st.booleans())
    return x, spec_kw


@given(matrices(), st.integers(0, 3))
def test_group_of_row_length_equals_per_channel(case, extra):
    x, kw = case
    k = x.shape[1]
    g_spec = QuantSpec(granularity="group", group_size=k + extra, **kw)   # one group per row
    c_spec = QuantSpec(granularity="channel", axis=0, **kw)
    qg, qc = calibrate(x, g_spec), calibrate(x, c_spec)
    assert qg.scale.shape == (x.shape[0], 1)
    assert np.array_equal(qg.scale[:, 0], qc.scale) and np.array_equal(qg.zero_point[:, 0], qc.zero_point)
    assert np.array_equal(quantize(x, qg, g_spec), quantize(x, qc, c_spec))
    assert np.array_equal(fake_quantize(x, g_spec), fake_quantize(x, c_spec))


@given(st.data())
def test_single_channel_equals_per_tensor(data):
    ndim = data.draw(st.integers(1, 3))
    shape = list(data.draw(st.lists(st.integers(1, 5), min_size=ndim, max_size=ndim)))
    axis = data.draw(st.integers(-ndim, ndim - 1))
    shape[axis] = 1
    x = data.draw(arrays(np.float64, tuple(shape), elements=_values))
    kw = dict(bits=data.draw(st.sampled_from([2, 4, 8, 16])), symmetric=data.draw(st.booleans()),
              rounding=data.draw(st.sampled_from(ROUNDINGS)))
    qc = calibrate(x, QuantSpec(granularity="channel", axis=axis, **kw))
    qt = calibrate(x, QuantSpec(granularity="tensor", **kw))
    assert qc.scale.shape == (1,) and qc.scale[0] == qt.scale and qc.zero_point[0] == qt.zero_point
    assert np.array_equal(fake_quantize(x, QuantSpec(granularity="channel", axis=axis, **kw)),
                          fake_quantize(x, QuantSpec(**kw)))


@given(cases(), st.data())
def test_constant_and_zero_rows(case, data):
    """Constant and all-zero groups quantize without NaN, and 0 always dequantizes to exactly 0
    (symmetric: code 0; asymmetric: the range is widened to contain 0 and z is its code)."""
    x, spec = case
    x = x.copy()
    flat = x.reshape(-1)
    n_zero = data.draw(st.integers(0, flat.size))
    flat[:n_zero] = 0.0
    if data.draw(st.booleans()):
        x[...] = data.draw(st.sampled_from([0.0, 3.0, -0.75, 1e-30, 1e30]))
    qp = calibrate(x, spec)
    assert np.all(np.isfinite(qp.scale)) and np.all(qp.scale > 0)
    y = fake_quantize(x, spec)
    assert np.all(np.isfinite(y))
    assert np.all(y[x == 0] == 0.0)
    _check_error_bound(x, qp, spec)


@pytest.mark.parametrize("spec", [QuantSpec(bits=8), QuantSpec(bits=4, symmetric=False),
                                  QuantSpec(bits=4, granularity="channel", axis=1),
                                  QuantSpec(bits=3, symmetric=False, granularity="group", group_size=4)])
def test_all_zero_convention(spec):
    x = np.zeros((3, 10))
    qp = calibrate(x, spec)
    assert np.all(qp.scale == 1.0) and np.all(qp.zero_point == 0)
    assert np.array_equal(fake_quantize(x, spec), x)


# ------------------------------------------------------------------------ bad input


def test_bad_input_names_the_value():
    spec = QuantSpec(bits=4)
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantize(np.array([1.0, np.nan]), QParams(1.0), spec)
    with pytest.raises(ValueError, match=r"inf"):
        fake_quantize(np.array([np.inf]), spec)
    with pytest.raises(ValueError, match=r"empty array \(shape \(0,\)\)"):
        fake_quantize(np.zeros(0), spec)
    with pytest.raises(ValueError, match=r"parameter shape \(3,\) does not match \(2,\)"):
        quantize(np.ones((2, 4)), QParams(np.ones(3)), QuantSpec(granularity="channel"))
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        fake_quantize(np.ones((2, 4)), QuantSpec(granularity="channel", axis=2))
    with pytest.raises(ValueError, match="float64"):
        dequantize(np.array([1.0]), QParams(1.0), spec)
    with pytest.raises(ValueError, match=r"\[-8, 7\].*9"):
        dequantize(np.array([9]), QParams(1.0), spec)
    with pytest.raises(ValueError, match="QuantSpec, got dict"):
        quantize(np.ones(2), QParams(1.0), {"bits": 4})
    with pytest.raises(ValueError, match="QParams, got float"):
        quantize(np.ones(2), 1.0, spec)
    with pytest.raises(ValueError, match="zero_point == 0, got 2"):
        quantize(np.ones(2), QParams(1.0, 2), spec)
    with pytest.raises(ValueError, match="'median'"):
        fake_quantize(np.ones(2), spec, method="median")
    with pytest.raises(ValueError, match=r"lo=1\.0, hi=-1\.0"):
        qparams_from_range(1.0, -1.0, spec)


def test_quantize_empty_with_given_qparams():
    q = quantize(np.zeros((0, 3)), QParams(np.ones(0)), QuantSpec(granularity="channel"))
    assert q.shape == (0, 3)


def test_does_not_mutate_input():
    x = np.linspace(-1, 1, 12).reshape(3, 4)
    before = x.copy()
    for method in ("minmax", "percentile", "mse"):
        fake_quantize(x, QuantSpec(bits=4, granularity="group", group_size=3), method=method)
    assert np.array_equal(x, before)


def test_grouped_view_matches_grouped_quantization():
    # the NaN padding of the short group never leaks into codes
    x = np.linspace(-3, 5, 2 * 10).reshape(2, 10)
    spec = QuantSpec(bits=4, symmetric=False, granularity="group", group_size=4)
    q = quantize(x, calibrate(x, spec), spec)
    assert q.shape == x.shape and not np.isnan(grouped(x, spec)[:, :2]).any()


def test_doctests():
    result = doctest.testmod(uniform, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
