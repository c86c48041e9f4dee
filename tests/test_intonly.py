"""Integer-only execution (Jacob et al., CVPR 2018, arXiv:1712.05877).

Oracles: exact rational arithmetic (``fractions.Fraction``) for the multiplier decomposition and
the rounding shift; scalar Python-int transcriptions, written here, of gemmlowp's
``SaturatingRoundingDoublingHighMul`` and ``RoundingDivideByPOT``
(``fixedpoint/fixedpoint.h``) and of TFLite's ``MultiplyByQuantizedMultiplier`` in both its
forms (``tensorflow/lite/kernels/internal/common.h``), with C's truncating division and
two's-complement masks; ``refquant.quantize`` / ``refquant.dequantize`` for every rounding onto a
grid; a float64 simulation of the same quantized layer (real multiplier instead of the
fixed-point one) for the layer; the float MLP for the end-to-end chain.
"""

import re
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refquant as rq
from refquant.integer import fixed_point, intonly
from refquant.integer.fixed_point import (rounding_divide_by_pot,
                                          saturating_rounding_doubling_high_mul)
from refquant.integer.intonly import (QuantLinear, act_qparams, dequantize_act, linear_float_sim,
                                      linear_int, mlp_float, multiply_by_quantized_multiplier,
                                      quantize_act, quantize_linear, quantize_mlp,
                                      quantize_multiplier)

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
int32s = st.integers(INT32_MIN, INT32_MAX)


# --- scalar transcriptions of gemmlowp / TFLite (Python ints, C semantics) -------------------

def c_div(a: int, b: int) -> int:
    """C's integer division: truncates toward zero (Python's // floors)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def srdhm_oracle(a: int, b: int) -> int:
    """gemmlowp SaturatingRoundingDoublingHighMul(int32 a, int32 b), line by line."""
    overflow = a == b and a == INT32_MIN
    ab_64 = a * b
    nudge = (1 << 30) if ab_64 >= 0 else (1 - (1 << 30))
    ab_x2_high32 = c_div(ab_64 + nudge, 1 << 31)
    return INT32_MAX if overflow else ab_x2_high32


def rdbpot_oracle(x: int, exponent: int) -> int:
    """gemmlowp RoundingDivideByPOT(int32 x, int exponent), line by line (Python's & and >>
    on negative ints are two's complement, as C's on int32)."""
    assert 0 <= exponent <= 31
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def tflite_double_rounding(x: int, quantized_multiplier: int, shift: int) -> int:
    """TFLite MultiplyByQuantizedMultiplier (default build); TFLite's shift is refquant's -n."""
    left_shift = shift if shift > 0 else 0
    right_shift = 0 if shift > 0 else -shift
    x_shifted = x * (1 << left_shift)
    assert INT32_MIN <= x_shifted <= INT32_MAX        # undefined in C otherwise
    return rdbpot_oracle(srdhm_oracle(x_shifted, quantized_multiplier), right_shift)


def tflite_single_rounding(x: int, quantized_multiplier: int, shift: int) -> int:
    """TFLite MultiplyByQuantizedMultiplier built with TFLITE_SINGLE_ROUNDING."""
    total_shift = 31 - shift
    round_ = 1 << (total_shift - 1)
    return (x * quantized_multiplier + round_) >> total_shift


@given(st.floats(min_value=2.0**-31, max_value=2.0**15, allow_nan=False))
@settings(max_examples=300)
def test_multiplier_decomposition_exact_to_2_pow_minus_31(M):
    M0, n = quantize_multiplier(M)
    assert 2**30 <= int(M0) < 2**31
    approx = Fraction(int(M0), 2 ** (31 + int(n))) if 31 + int(n) >= 0 else \
        Fraction(int(M0) * 2 ** (-(31 + int(n))))
    err = abs(approx - Fraction(M))
    assert err <= Fraction(M) * Fraction(1, 2**31)
    assert err <= Fraction(1, 2 ** (32 + int(n)))            # half a unit of M0


def test_multiplier_hand_cases():
    # 0.5 = 2^30 / 2^31; 0.75 = 3 * 2^29 / 2^31; 1 - 2^-40 rounds up to 1.0 -> carry to 2^30, n=-1
    assert [int(v) for v in quantize_multiplier(0.5)] == [2**30, 0]
    assert [int(v) for v in quantize_multiplier(0.75)] == [3 * 2**29, 0]
    assert [int(v) for v in quantize_multiplier(1 - 2.0**-40)] == [2**30, -1]
    assert [int(v) for v in quantize_multiplier(0.001)] == [round(0.001 * 2**40), 9]


@pytest.mark.parametrize("M", [0.0, -0.1, np.nan, np.inf, 2.0**16, 2.0**-32])
def test_multiplier_out_of_range(M):
    with pytest.raises(ValueError, match="multipliers") as info:
        quantize_multiplier(np.array([0.5, M]))
    assert repr(float(M)) in str(info.value)                 # the message names the bad value


def tflite_quantize_multiplier(M: float) -> tuple[int, int]:
    """TFLite QuantizeMultiplier (common.cc): frexp, std::round (half away from zero), carry;
    returns (quantized_multiplier, shift) with TFLite's shift = -n."""
    import math
    q, shift = math.frexp(M)
    q_fixed = int(Fraction(q) * 2**31 + Fraction(1, 2)) if q > 0 else 0   # round half away
    if q_fixed == 2**31:
        q_fixed //= 2
        shift += 1
    return q_fixed, shift


@pytest.mark.parametrize("M", [0.5, 0.75, 1 - 2.0**-40, 0.001, 3.0, 2.0**15, 2.0**-31,
                               (2**31 + 1) / 2**32, (2**32 - 1) / 2**32, 1 / 3, 12345.678])
def test_multiplier_equals_tflite_quantize_multiplier(M):
    """Including a tie: (2^31 + 1) / 2^32 has mantissa 2^30 + 1/2 units, which std::round
    (and refquant) round up, NumPy's rint would round to even."""
    M0, n = quantize_multiplier(M)
    assert (int(M0), -int(n)) == tflite_quantize_multiplier(M)
    if M == (2**31 + 1) / 2**32:
        assert int(M0) == 2**30 + 1


def test_multiplier_scalar_returns_two_arrays():
    M0, n = quantize_multiplier(0.5)
    assert isinstance(M0, np.ndarray) and isinstance(n, np.ndarray)
    assert M0.dtype == n.dtype == np.int32 and M0.shape == n.shape == ()


@given(st.integers(-(2**31), 2**31 - 1), st.floats(2.0**-31, 2.0**15))
@settings(max_examples=300)
def test_rounding_shift_is_round_to_nearest(acc, M):
    M0, n = quantize_multiplier(M)
    got = int(multiply_by_quantized_multiplier(np.array([acc], np.int32), M0, n)[0])
    exact = Fraction(acc * int(M0), 2 ** (31 + int(n)))
    assert abs(Fraction(got) - exact) <= Fraction(1, 2)
    if abs(Fraction(got) - exact) == Fraction(1, 2):
        assert Fraction(got) > exact                          # ties toward +inf, as documented


def test_rounding_shift_needs_int32():
    with pytest.raises(ValueError, match="int32"):
        multiply_by_quantized_multiplier(np.array([1], np.int64), 2**30, 0)


def _layer(rng, K, N, relu):
    W = rng.standard_normal((N, K)) * 0.2
    b = rng.standard_normal(N) * 0.1
    x = rng.standard_normal((16, K))
    in_q = act_qparams(x.min(), x.max())
    y = x @ W.T + b
    if relu:
        y = np.maximum(y, 0)
    out_q = act_qparams(y.min(), y.max())
    return quantize_linear(W, b, in_q, out_q, relu=relu), quantize_act(x, *in_q), W, b, x


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("K, N", [(1, 1), (7, 3), (64, 33), (300, 17)])
def test_int_layer_within_one_code_of_float_simulation(K, N, relu, backend):
    rng = np.random.default_rng(K * N)
    layer, q_x, *_ = _layer(rng, K, N, relu)
    q_int = linear_int(layer, q_x, backend=backend)
    q_sim = linear_float_sim(layer, q_x)
    assert q_int.dtype == np.uint8
    assert np.abs(q_int.astype(int) - q_sim.astype(int)).max() <= 1
    if relu:
        assert q_int.min() >= layer.out_zero


def test_int_layer_accumulator_by_hand():
    # K=2, one output: W = [[1, -1]] -> S_w = 1/127, q_w = [127, -127]; b = 0
    # S_x = 1/255 (range [0, 1]), Z_x = 0; q_x = [255, 0] -> acc = 127 * 255 = 32385
    # M = S_x S_w / S_y with S_y = 2/255 (range [-1, 1]), Z_y = 128 -> M = 1/254
    # M0 = rint(2^38 / 254) = rint(1082196484.03) rounds *down*, so M_fixed < 1/254 and
    # +-32385 M_fixed = +-127.4999999... -> +-127: q_y = 128 + 127 = 255 and 128 - 127 = 1
    # (with the exact M the ties +-127.5 would give 256 -> 255 and 0.5 -> 1 or 0).
    layer = quantize_linear(np.array([[1.0, -1.0]]), None, (1 / 255, 0), (2 / 255, 128))
    q_x = np.array([[255, 0], [0, 255], [0, 0]], np.uint8)
    assert intonly.accumulate(layer, q_x, backend="numpy").ravel().tolist() == [32385, -32385, 0]
    assert linear_int(layer, q_x, backend="numba").ravel().tolist() == [255, 1, 128]


def test_mlp_runs_end_to_end_in_integers_and_tracks_float():
    rng = np.random.default_rng(7)
    sizes = [20, 64, 48, 10]
    weights = [rng.standard_normal((o, i)) / np.sqrt(i) for i, o in zip(sizes[:-1], sizes[1:])]
    biases = [rng.standard_normal(o) * 0.1 for o in sizes[1:]]
    x_cal = rng.standard_normal((256, 20))
    mlp = quantize_mlp(weights, biases, x_cal)
    assert all(layer.q_w.dtype == np.int8 and layer.q_b.dtype == np.int32 for layer in mlp.layers)
    x = rng.standard_normal((64, 20))
    y_int = mlp.run(x, backend="numba")
    y_np = mlp.run(x, backend="numpy")
    assert np.array_equal(y_int, y_np)                      # integer pipeline: bit-identical
    y = mlp_float(weights, biases, x)
    rel = np.linalg.norm(y_int - y) / np.linalg.norm(y)
    assert rel < 0.05, rel                                   # 8-bit error, three layers
    # and the chain is really quantized: the output sits on the output grid
    S, Z = mlp.out_q
    codes = y_int / S + Z
    assert np.allclose(codes, np.rint(codes), atol=1e-3)


def test_bad_layer_inputs():
    with pytest.raises(ValueError, match="NaN"):
        quantize_linear(np.array([[np.nan]]), None, (1.0, 0), (1.0, 0))
    with pytest.raises(ValueError, match="activation"):
        quantize_linear(np.ones((1, 1)), None, (0.0, 0), (1.0, 0))
    with pytest.raises(ValueError, match="NaN"):
        quantize_act([np.inf], 1.0, 0)


# --- gemmlowp's two-step requantization ------------------------------------------------------

SRDHM_EDGES = [(INT32_MIN, INT32_MIN), (INT32_MIN, INT32_MAX), (INT32_MAX, INT32_MIN),
               (INT32_MAX, INT32_MAX), (INT32_MIN, 1), (INT32_MIN, -1), (-1, -1), (0, INT32_MIN),
               (2**30, 1), (-(2**30), 1), (3, 2**30), (-3, 2**30), (5, 2**30), (-5, 2**30),
               (2**30 + 1, 1), (-(2**30) - 1, 1), (-(2**30) + 1, 1), (12345, -67890)]


def test_srdhm_edge_cases_against_transcription():
    """Saturation of INT32_MIN x INT32_MIN, signs, exact halves (a b = (2k+1) 2^30) and the
    values either side of a half: element by element equal to the scalar transcription."""
    a = np.array([p[0] for p in SRDHM_EDGES], np.int32)
    b = np.array([p[1] for p in SRDHM_EDGES], np.int32)
    got = saturating_rounding_doubling_high_mul(a, b)
    assert got.dtype == np.int32
    assert got.tolist() == [srdhm_oracle(int(x), int(y)) for x, y in SRDHM_EDGES]
    assert got[0] == INT32_MAX                                   # (-1) * (-1) saturates
    # halves: 0.5 -> 1, -0.5 -> 0, 1.5 -> 2, -1.5 -> -1, 2.5 -> 3, -2.5 -> -2 (toward +inf)
    assert got[8:14].tolist() == [1, 0, 2, -1, 3, -2]


@given(int32s, int32s)
@settings(max_examples=300)
def test_srdhm_equals_transcription_and_rounds_ties_up(a, b):
    got = int(saturating_rounding_doubling_high_mul(np.int32(a), np.int32(b)))
    assert got == srdhm_oracle(a, b)
    if not a == b == INT32_MIN:                  # the transcription is floor(ab / 2^31 + 1/2)
        exact = Fraction(a * b, 2**31)
        assert got == (exact + Fraction(1, 2)).__floor__()


@pytest.mark.parametrize("exponent", [0, 1, 2, 5, 30, 31])
def test_rdbpot_edge_cases_against_transcription(exponent):
    """INT32_MIN/MAX, negative values, exact halves and their neighbours for each exponent."""
    half = 1 << exponent >> 1
    xs = {INT32_MIN, INT32_MAX, INT32_MIN + 1, 0, 1, -1, half, -half, 3 * half, -3 * half,
          half + 1, -half - 1, half - 1, -half + 1, 5 * half, -5 * half}
    xs = sorted(x for x in xs if INT32_MIN <= x <= INT32_MAX)
    got = rounding_divide_by_pot(np.array(xs, np.int32), exponent)
    assert got.tolist() == [rdbpot_oracle(x, exponent) for x in xs]


@given(int32s, st.integers(0, 31))
@settings(max_examples=300)
def test_rdbpot_equals_transcription_and_rounds_ties_away(x, exponent):
    got = int(rounding_divide_by_pot(np.int32(x), exponent))
    assert got == rdbpot_oracle(x, exponent)
    exact = Fraction(x, 2**exponent)
    away = (abs(exact) + Fraction(1, 2)).__floor__()
    assert got == (away if x >= 0 else -away)


def test_rdbpot_vector_exponent_broadcasts():
    x = np.array([[7, -7], [6, -6]], np.int32)
    got = rounding_divide_by_pot(x, np.array([1, 2]))
    assert got.tolist() == [[rdbpot_oracle(7, 1), rdbpot_oracle(-7, 2)],
                            [rdbpot_oracle(6, 1), rdbpot_oracle(-6, 2)]]


@given(int32s, st.floats(2.0**-31, 2.0**15))
@settings(max_examples=300)
def test_requantization_both_modes_equal_tflite(acc, M):
    """Each mode equals its TFLite transcription; the two-step form is within 3/4 of the exact
    product, equal to the single rounding when n <= 0 and at most one unit from it otherwise."""
    M0, n = (int(v) for v in quantize_multiplier(M))
    x = np.array([acc], np.int32)
    single = int(multiply_by_quantized_multiplier(x, M0, n)[0])
    assert single == tflite_single_rounding(acc, M0, -n)
    if n < 0 and not INT32_MIN <= acc * 2**-n <= INT32_MAX:
        with pytest.raises(ValueError, match=f"acc={acc} times 2\\^{-n} overflows int32"):
            multiply_by_quantized_multiplier(x, M0, n, rounding="gemmlowp")
        return
    double = int(multiply_by_quantized_multiplier(x, M0, n, rounding="gemmlowp")[0])
    assert double == tflite_double_rounding(acc, M0, -n)
    assert abs(Fraction(double) - Fraction(acc * M0, 2 ** (31 + n))) <= Fraction(3, 4)
    assert abs(double - single) <= (0 if n <= 0 else 1)


def test_requantization_modes_differ_by_hand():
    """M = 1/4 (M0 = 2^30, n = 1). acc = 5: exact 1.25; single -> 1; gemmlowp: SRDHM gives
    round(2.5) = 3, then round(3/2) = 2. acc = -6: exact -1.5; single ties up -> -1; gemmlowp:
    -3, then -1.5 away from zero -> -2."""
    acc = np.array([5, -6, 4], np.int32)
    assert multiply_by_quantized_multiplier(acc, 2**30, 1).tolist() == [1, -1, 1]
    assert multiply_by_quantized_multiplier(acc, 2**30, 1, rounding="gemmlowp").tolist() == [2, -2, 1]


def test_requantization_bad_input_names_the_value():
    acc = np.array([1], np.int32)
    with pytest.raises(ValueError, match="rounding must be one of"):
        multiply_by_quantized_multiplier(acc, 2**30, 0, rounding="double")
    with pytest.raises(ValueError, match="M0 must be an integer array, got dtype float64"):
        multiply_by_quantized_multiplier(acc, 2.0**30, 0)
    with pytest.raises(ValueError, match=r"M0 must lie in \[0, 2147483647\], got -5"):
        multiply_by_quantized_multiplier(acc, np.array([2**30, -5]), 0)
    with pytest.raises(ValueError, match=r"shift n must lie in \[-30, 31\], got 32"):
        multiply_by_quantized_multiplier(acc, 2**30, 32)
    with pytest.raises(ValueError, match="a must be int32, got int64"):
        saturating_rounding_doubling_high_mul(np.int64(1), np.int32(1))
    with pytest.raises(ValueError, match=r"exponent must lie in \[0, 31\], got 32"):
        rounding_divide_by_pot(np.int32(1), 32)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("K, N", [(7, 3), (300, 17)])
def test_int_layer_gemmlowp_matches_tflite_epilogue(K, N, relu):
    """The whole requantization epilogue with rounding="gemmlowp", element by element against
    TFLite's: acc -> MultiplyByQuantizedMultiplier -> + Z_y -> clamp; and within one code of
    the one-step default."""
    rng = np.random.default_rng(10 * K + N)
    layer, q_x, *_ = _layer(rng, K, N, relu)
    acc = intonly.accumulate(layer, q_x, backend="numpy")
    got = linear_int(layer, q_x, backend="numpy", rounding="gemmlowp")
    lo = layer.out_zero if relu else 0
    want = [[min(max(layer.out_zero + tflite_double_rounding(int(acc[i, j]), int(layer.M0[j]),
                                                             -int(layer.shift[j])), lo), 255)
             for j in range(N)] for i in range(acc.shape[0])]
    assert got.tolist() == want
    single = linear_int(layer, q_x, backend="numpy")
    assert np.abs(got.astype(int) - single.astype(int)).max() <= 1


def test_mlp_gemmlowp_rounding_runs_and_tracks_float():
    rng = np.random.default_rng(8)
    sizes = [12, 32, 5]
    weights = [rng.standard_normal((o, i)) / np.sqrt(i) for i, o in zip(sizes[:-1], sizes[1:])]
    biases = [rng.standard_normal(o) * 0.1 for o in sizes[1:]]
    mlp = quantize_mlp(weights, biases, rng.standard_normal((256, 12)))
    x = rng.standard_normal((64, 12))
    y = mlp_float(weights, biases, x)
    S, Z = mlp.out_q
    for rounding in ("gemmlowp", "single"):
        y_q = mlp.run(x, backend="numpy", rounding=rounding)
        assert np.linalg.norm(y_q - y) / np.linalg.norm(y) < 0.05, rounding
        codes = y_q / S + Z
        assert np.allclose(codes, np.rint(codes), atol=1e-3)     # on the output grid


# --- every rounding onto a grid is refquant.quantize's --------------------------------------

U8 = rq.QuantSpec(bits=8, symmetric=False)
W8 = rq.QuantSpec(bits=8, symmetric=True, restricted=True, granularity="channel", axis=0)


@pytest.mark.parametrize("S, Z", [(0.25, 4), (2.0**-7, 0), (float(np.float32(0.0173)), 200)])
def test_act_codes_equal_refquant_quantize(S, Z):
    """quantize_act / dequantize_act against rq.quantize / rq.dequantize (float32 scales, so
    that QParams stores the same value); exact halves included."""
    rng = np.random.default_rng(11)
    x = np.concatenate([rng.standard_normal(500) * 100 * S, (np.arange(-40, 40) + 0.5) * S])
    qp = rq.QParams(S, Z)
    q = quantize_act(x, S, Z)
    assert q.dtype == np.uint8
    assert np.array_equal(q, rq.quantize(x, qp, U8))
    assert np.array_equal(dequantize_act(q, S, Z), rq.dequantize(q, qp, U8))


def test_act_qparams_equal_qparams_from_range():
    """Ranges whose width is 255 2^-k (a float32 scale): the same scale and zero point as
    rq.qparams_from_range, a tie (-lo / S = 20.5 -> 20) and both ends of the code range."""
    for lo, hi in [(-1.0, 254.0), (-0.75, 63.0), (-5.125, 58.625), (0.0, 127.5), (-127.5, 0.0)]:
        S, Z = act_qparams(lo, hi)
        qp = rq.qparams_from_range(lo, hi, U8)
        assert (S, Z) == (float(qp.scale), int(qp.zero_point)), (lo, hi)
    assert act_qparams(-5.125, 58.625) == (0.25, 20)


def test_weight_and_bias_codes_equal_refquant_quantize():
    """Rows whose max |W| is 127 2^-k give float32 scales 2^-k: q_w equals rq.quantize per
    channel (restricted int8); q_b equals Python's round (half to even) of b / (S_x S_w)."""
    rng = np.random.default_rng(12)
    W = rng.standard_normal((6, 40))
    W = np.round(W * 8) / 8                                    # many exact halves of a step
    W[:, 0] = 127 * 2.0 ** -np.arange(6)                       # row maxima 127 2^-k
    W[:, 1:] = np.clip(W[:, 1:], -W[:, :1], W[:, :1])
    b = rng.standard_normal(6)
    layer = quantize_linear(W, b, (0.5, 3), (0.25, 7))
    assert np.array_equal(layer.w_scale, 2.0 ** -np.arange(6))
    qp = rq.QParams(layer.w_scale, np.zeros(6, np.int32))
    assert np.array_equal(layer.q_w, rq.quantize(W, qp, W8))
    assert layer.q_b.tolist() == [round(float(b[j]) / (0.5 * layer.w_scale[j])) for j in range(6)]


def test_float_sim_equals_refquant_quantize_of_the_real_product():
    rng = np.random.default_rng(13)
    layer, q_x, *_ = _layer(rng, 9, 4, relu=False)
    acc = intonly.accumulate(layer, q_x, backend="numpy").astype(np.float64)
    want = rq.quantize(layer.multiplier * acc, rq.QParams(1.0, layer.out_zero), U8)
    assert np.array_equal(linear_float_sim(layer, q_x), want)


# --- validation: the message names the offending input --------------------------------------

@pytest.mark.parametrize("scale", [0.0, -1.0, np.nan, np.inf, "0.5", True])
def test_act_helpers_reject_bad_scale(scale):
    for fn in (lambda: quantize_act([1.0], scale, 0),
               lambda: dequantize_act(np.zeros(1, np.uint8), scale, 0)):
        with pytest.raises(ValueError, match=f"scale must be a finite number > 0, got "
                                             f"{re.escape(repr(scale))}"):
            fn()


@pytest.mark.parametrize("zero", [300, -1, 256, 1.5, True])
def test_act_helpers_reject_bad_zero_point(zero):
    for fn in (lambda: quantize_act([1.0], 0.1, zero),
               lambda: dequantize_act(np.zeros(1, np.uint8), 0.1, zero)):
        with pytest.raises(ValueError, match=f"zero point must be an integer in \\[0, 255\\], "
                                             f"got {re.escape(repr(zero))}"):
            fn()


def test_dequantize_act_needs_uint8():
    with pytest.raises(ValueError, match="must be uint8, got int32"):
        dequantize_act(np.zeros(2, np.int32), 0.1, 0)


def test_act_qparams_overflow_names_the_input():
    with pytest.raises(ValueError, match=r"\[-1e\+308, 1e\+308\] is too wide"):
        act_qparams(-1e308, 1e308)
    with pytest.raises(ValueError, match=r"got \[nan, 1.0\]"):
        act_qparams(np.nan, 1.0)
    with pytest.raises(ValueError, match=r"lo <= hi, got \[2.0, 1.0\]"):
        act_qparams(2.0, 1.0)


def test_quantize_linear_names_the_offending_scale_and_bias():
    W = np.ones((2, 3))
    with pytest.raises(ValueError, match=r"activation in_q scale .* got 0.0"):
        quantize_linear(W, None, (0.0, 0), (1.0, 0))
    with pytest.raises(ValueError, match=r"activation out_q zero point .* got 300"):
        quantize_linear(W, None, (1.0, 0), (1.0, 300))
    with pytest.raises(ValueError, match=r"S_x=1e-30, S_w\[0\]=0.007874015748031496, S_y=1.0"):
        quantize_linear(W, None, (1e-30, 0), (1.0, 0))          # M = 7.9e-33 < 2^-31
    with pytest.raises(ValueError, match=r"bias b\[1\]=1e\+20 does not fit in int32"):
        quantize_linear(W, np.array([0.0, 1e20]), (0.01, 0), (0.01, 0))


def test_quant_linear_checks_its_fields():
    layer = quantize_linear(np.ones((2, 3)), None, (0.1, 0), (0.1, 0))
    fields = dict(vars(layer))
    for name, bad, msg in [("q_w", layer.q_w.astype(np.int16), "q_w must be a 2-D int8"),
                           ("q_b", layer.q_b.astype(np.int64), "q_b must be int32"),
                           ("M0", layer.M0[:1], r"M0 must be int32 of shape \(2,\)"),
                           ("w_scale", np.array([0.1, np.nan]), "w_scale must be finite and > 0, got nan"),
                           ("shift", np.array([0, 40], np.int32), r"shift must be in \[-30, 31\], got 40"),
                           ("out_zero", 256, "output zero point .* got 256")]:
        with pytest.raises(ValueError, match=msg):
            QuantLinear(**{**fields, name: bad})


def test_int_layer_needs_uint8_input():
    layer = quantize_linear(np.ones((2, 3)), None, (0.1, 0), (0.1, 0))
    with pytest.raises(ValueError, match="uint8"):
        linear_int(layer, np.zeros((1, 3), np.int8))


def test_quantize_mlp_names_bad_calibration_data():
    W, b = [np.ones((2, 2)), np.full((1, 2), 1e300)], [np.zeros(2), np.zeros(1)]
    with pytest.raises(ValueError, match="x_calib contains NaN or Inf"):
        quantize_mlp(W, b, np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="overflows .* at layer 1"):
        quantize_mlp(W, b, np.full((3, 2), 1e10))
