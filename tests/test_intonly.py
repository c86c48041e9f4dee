"""Integer-only execution (Jacob et al., CVPR 2018, arXiv:1712.05877).

Oracles: exact rational arithmetic (``fractions.Fraction``) for the multiplier decomposition and
the rounding shift; a float64 simulation of the same quantized layer (real multiplier instead of
the fixed-point one) for the layer; the float MLP for the end-to-end chain.
"""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refquant.integer import intonly
from refquant.integer.intonly import (act_qparams, linear_float_sim, linear_int, mlp_float,
                              multiply_by_quantized_multiplier, quantize_act, quantize_linear,
                              quantize_mlp, quantize_multiplier)


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
    with pytest.raises(ValueError, match="multipliers"):
        quantize_multiplier(M)


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
