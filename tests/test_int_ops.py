"""The integer-only transformer ops of refquant.integer (issue 18), each against its float
counterpart over its input range, with the worst error in output LSBs in the assertion.

Oracles: ``math.isqrt`` and ``int.bit_length`` (exact); Python ints and ``fractions.Fraction``
for the fixed-point products and roundings; float64 NumPy written here for exp, sigmoid, SiLU,
softmax, RMSNorm, the rotation and attention. The Numba kernels are pinned equal to the NumPy
specifications bit for bit.
"""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refquant.integer import requant
from refquant.integer.fixed_point import quantize_multiplier
from refquant.integer.ops_act import i_sigmoid, i_silu, i_swiglu
from refquant.integer.ops_attention import S_MAX, i_attention
from refquant.integer.ops_exp import A, causal_mask, exp_one, i_exp, i_softmax, seq_len_bound
from refquant.integer.ops_linear import embed_int8, linear_rows, w4_linear_rows
from refquant.integer.ops_norm import D_MAX, P, i_rms_norm, isqrt
from refquant.integer.ops_rope import i_rope, rope_table_fixed
from refquant.integer.requant import (bit_length, dynamic_int8, mul_shift_round,
                                      quantize_multiplier_wide, rescale_rows, residual_add,
                                      split_mantissa, static_int8)

F = 16
RNG = np.random.default_rng(18)


def _M(M0, n):
    """The real multiplier of ``(M0, n)`` as a float64."""
    return np.asarray(M0, np.float64) * 2.0 ** (-(31.0 + np.asarray(n, np.float64)))


# --- isqrt, bit_length: exact --------------------------------------------------------------

def test_isqrt_equals_math_isqrt():
    """Oracle: math.isqrt on random values of every bit length, perfect squares and their
    neighbours, and the ends of the range."""
    vals = [int(v) for v in RNG.integers(0, 2**62, 2000)]
    vals += [int(v) >> int(k) for v, k in zip(RNG.integers(0, 2**62, 2000), RNG.integers(0, 62, 2000))]
    roots = [int(r) for r in RNG.integers(0, 2**31, 500)]
    vals += [r * r + d for r in roots for d in (-1, 0, 1) if 0 <= r * r + d < 2**62]
    vals += [0, 1, 2, 3, 4, 2**62 - 1]
    got = isqrt(np.array(vals, np.int64))
    want = np.array([math.isqrt(v) for v in vals], np.int64)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, f"isqrt({vals[bad[0]]}) = {got[bad[0]]}, math.isqrt says {want[bad[0]]}"


def test_bit_length_equals_int_bit_length():
    """Oracle: Python's int.bit_length."""
    vals = [0, 1, 2**62, 2**63 - 1] + [int(v) >> int(k) for v, k in
                                        zip(RNG.integers(0, 2**63 - 1, 1000), RNG.integers(0, 63, 1000))]
    got = bit_length(np.array(vals, np.int64))
    assert got.tolist() == [v.bit_length() for v in vals]


# --- requantization ------------------------------------------------------------------------

def test_dynamic_int8_against_exact_rounding():
    """Oracle: Fraction(127 x, u) rounded to nearest; the codes differ from it by at most
    1/2 + 2^-9 LSB, i.e. they are the exact rounding except at a near tie, and u is the row max."""
    x = RNG.integers(-2**40, 2**40, (200, 64)) >> RNG.integers(0, 40, (200, 1))
    q, u = dynamic_int8(x)
    assert np.array_equal(u, np.maximum(np.abs(x).max(axis=1), 1))
    worst = 0.0
    for t in range(0, 200, 7):
        for k in range(64):
            exact = Fraction(127 * int(x[t, k]), int(u[t]))
            worst = max(worst, abs(float(int(q[t, k]) - exact)))
    assert worst <= 0.5 + 2**-9, f"worst error {worst} LSB"


def test_static_int8_against_float():
    """Oracle: float64 x M rounded and clamped; worst error <= 1/2 + 2^-31 |x M| LSB."""
    x = RNG.integers(-2**20, 2**20, 5000).astype(np.int32)
    M0, n = quantize_multiplier(2.0**-13 * 1.37)
    q = static_int8(x, M0, n)
    ref = np.clip(x * _M(M0, n), -127, 127)
    err = np.abs(q - ref)
    assert err.max() <= 0.5 + 1e-6, f"worst error {err.max()} LSB"


@given(st.integers(-(2**47) + 1, 2**47 - 1), st.integers(0, 2**31 - 1), st.integers(17, 78))
def test_mul_shift_round_is_exact(p, M0, s):
    """Oracle: Python ints, floor((p M0 + 2^(s-1)) / 2^s)."""
    got = int(mul_shift_round(np.int64(p), np.int64(M0), np.int64(s)))
    assert got == (p * M0 + (1 << (s - 1))) >> s


def test_rescale_rows_against_exact_product():
    """Oracle: Fraction acc u M0 / 2^(31+n) rounded; worst error <= 1/2 + |acc u M| (2^-15 + 2^-31)
    output LSBs (the 15-bit mantissa of u)."""
    acc = RNG.integers(-2**24, 2**24, (64, 40)).astype(np.int32)
    u = RNG.integers(1, 2**37, 64) >> RNG.integers(0, 37, 64)
    u = np.maximum(u, 1)
    M0, n = quantize_multiplier_wide(RNG.uniform(2.0**-40, 2.0**-20, 40) / 2**-10)
    y = rescale_rows(acc, u, M0, n)
    worst = 0.0
    for t in range(64):
        for c in range(0, 40, 3):
            exact = Fraction(int(acc[t, c]) * int(u[t]) * int(M0[c]), 2 ** (31 + int(n[c])))
            if abs(exact) < 2**31:
                bound = 0.5 + abs(float(exact)) * (2**-15 + 2**-31)
                worst = max(worst, abs(float(int(y[t, c]) - exact)) / bound)
    assert worst <= 1.0, f"worst error {worst} of the bound"


def _count_calls(monkeypatch, name):
    from refquant.integer import _numba_ops
    calls = []
    real = getattr(_numba_ops, name)
    monkeypatch.setattr(_numba_ops, name, lambda *a: calls.append(1) or real(*a))
    return calls


def test_rescale_rows_numba_equals_numpy(monkeypatch):
    """The Numba kernel of rescale_rows (which must run) equals the NumPy specification bit
    for bit."""
    pytest.importorskip("numba")
    calls = _count_calls(monkeypatch, "rescale_rows")
    acc = RNG.integers(-2**31, 2**31, (300, 200)).astype(np.int32)
    u = np.maximum(RNG.integers(1, 2**40, 300) >> RNG.integers(0, 40, 300), 1)
    M0, n = quantize_multiplier_wide(RNG.uniform(2.0**-47, 2.0**-30, 200))
    assert np.array_equal(rescale_rows(acc, u, M0, n, backend="numba"),
                          rescale_rows(acc, u, M0, n, backend="numpy"))
    assert calls


def test_split_mantissa_relative_error():
    """Oracle: u itself; a 2^e is within 2^-15 relative and a <= 2^15."""
    u = np.maximum(RNG.integers(1, 2**62, 3000) >> RNG.integers(0, 62, 3000), 1)
    a, e = split_mantissa(u)
    rel = np.abs(a.astype(float) * 2.0**e - u) / u
    assert a.max() <= 2**15 and rel.max() <= 2**-15


def test_residual_add_against_python_ints():
    """Oracle: Python ints, x + floor(y M0 / 2^(31+n) + 1/2) at the common scale."""
    x = RNG.integers(-2**28, 2**28, 300).astype(np.int32)
    y = RNG.integers(-2**28, 2**28, 300).astype(np.int32)
    M0, n = quantize_multiplier(0.3)
    z = residual_add(x, y, M0, n)
    s = 31 + int(n)
    want = [int(a) + ((int(b) * int(M0) + (1 << (s - 1))) >> s) for a, b in zip(x, y)]
    assert z.tolist() == want


# --- exp, softmax, sigmoid, SiLU -----------------------------------------------------------

def test_i_exp_against_exp():
    """Oracle: np.exp in float64 on x in [-20, 0] (every 7th code at F = 16): absolute error
    <= 2.2e-3 (I-BERT's polynomial plus the floors), relative <= 3.2e-3 where exp(x) > 1e-3."""
    q = np.arange(-20 * 2**F, 1, 7)
    got = i_exp(q, F) * (A * 2.0 ** (-2 * F))
    ref = np.exp(q / 2**F)
    err = np.abs(got - ref)
    assert err.max() <= 2.2e-3, f"worst absolute error {err.max()}"
    assert (err / ref)[ref > 1e-3].max() <= 3.2e-3
    assert exp_one(F) == int((2**40 / A)) >> (40 - 2 * F)


def test_i_exp_constants():
    """Oracle: the Q40 literals are round(c 2^40) of I-BERT's a, b, c and ln 2 in float64."""
    from refquant.integer import ops_exp as E
    assert E.LN2_Q40 == round(math.log(2) * 2**40)
    assert E.B_Q40 == round(E.B * 2**40)
    assert E.C_OVER_A_Q40 == round(E.C / E.A * 2**40)
    assert E.INV_A_Q40 == round(2**40 / E.A)


def _softmax(z, valid):
    s = np.where(valid, z, -np.inf)
    s = np.exp(s - s.max(axis=-1, keepdims=True))
    return s / s.sum(axis=-1, keepdims=True)


def test_i_softmax_against_float_softmax_causal():
    """Oracle: float64 softmax of z 2^-F with the causal mask; each code within
    1/2 + 2^-8 + 255 * 2 eps p (1 - p) of 255 p (eps = 3.2e-3, i-exp's relative error: a common
    factor cancels in the normalization, only the spread moves p); masked entries exactly 0."""
    T, S, start = 64, 96, 32
    z = RNG.integers(-14 * 2**F, 14 * 2**F, (8, T, S))
    valid = causal_mask(T, S, start)
    p = i_softmax(z, F, valid)
    ref = 255 * _softmax(z / 2**F, valid)
    err = np.abs(p - ref)
    pf = ref / 255
    ratio = err / (0.5 + 2**-8 + 255 * 2 * 3.2e-3 * pf * (1 - pf))
    assert ratio.max() <= 1.0, f"worst error {err.max()} LSB, {ratio.max()} of the bound"
    assert np.all(p[:, ~valid] == 0)


def test_i_softmax_numba_equals_numpy(monkeypatch):
    """The Numba softmax kernel (which must run) equals the NumPy specification bit for bit
    (causal rows)."""
    pytest.importorskip("numba")
    calls = _count_calls(monkeypatch, "softmax_rows")
    T, S, start = 40, 50, 10
    z = RNG.integers(-30 * 2**F, 30 * 2**F, (20, T, S))
    valid = causal_mask(T, S, start)
    assert np.array_equal(i_softmax(z, F, valid, backend="numba"),
                          i_softmax(z, F, valid, backend="numpy"))
    assert calls


def test_i_silu_and_sigmoid_against_float():
    """Oracle: float64 g sigma(g) on g in [-32, 32] (every 13th code at F = 16): SiLU within
    45 LSBs (7e-4 absolute), the sigmoid within 1.2e-3 absolute."""
    g = np.arange(-32 * 2**F, 32 * 2**F, 13)
    gf = g / 2**F
    sig = 1 / (1 + np.exp(-gf))
    err_sig = np.abs(i_sigmoid(g, F) / 2**20 - sig).max()
    err = np.abs(i_silu(g, F) - gf * sig * 2**F).max()
    assert err_sig <= 1.2e-3, f"sigmoid worst {err_sig}"
    assert err <= 45, f"SiLU worst {err} LSB"


def test_i_swiglu_against_float():
    """Oracle: float64 silu(g) v; error <= 45 |v| 2^-16 + 1 LSB."""
    g = RNG.integers(-8 * 2**F, 8 * 2**F, 4000)
    v = RNG.integers(-8 * 2**F, 8 * 2**F, 4000)
    gf = g / 2**F
    ref = gf / (1 + np.exp(-gf)) * v
    err = np.abs(i_swiglu(g, v, F) - ref) / (45 * np.abs(v) / 2**F + 1)
    assert err.max() <= 1.0


# --- RMSNorm, RoPE -------------------------------------------------------------------------

def test_i_rms_norm_against_float():
    """Oracle: float64 RMSNorm then per-token int8 (round(127 y / max|y|)); codes within 1 LSB
    (0.5 + 2^-9 plus the truncation of x'), the scale u s_g / (127 2^16) within 1e-4 relative of
    max|y| / 127."""
    d = 576
    x = (RNG.standard_normal((300, d)) * np.exp(RNG.uniform(-3, 10, (300, 1))) * 2**10)
    x = np.clip(x, -2**31 + 1, 2**31 - 1).astype(np.int32)
    g = RNG.uniform(-2, 5, d)
    s_g = np.abs(g).max() / 32767
    g_q = np.rint(g / s_g).astype(np.int64)
    E = 42950                                                   # eps = 1e-5 at S_x = 2^-16
    q, u = i_rms_norm(x, g_q, E)
    xf = x.astype(np.float64)
    y = xf * (g_q * s_g) / np.sqrt((xf * xf).mean(axis=1, keepdims=True) + E)
    m = np.abs(y).max(axis=1)
    err = np.abs(q - 127 * y / m[:, None])
    rel = np.abs(u * s_g / 2**P - m) / m
    assert err.max() <= 1.0, f"worst code error {err.max()} LSB"
    assert rel.max() <= 1e-4, f"worst scale error {rel.max()}"


def test_i_rope_against_exact_rotation():
    """Oracle: float64 rotation by the tables' own angles (c, s / 2^30) for |x| < 2^30: the
    integer result is that rational number rounded (worst error 1/2 plus the oracle's float64
    rounding); the tables are within 2^-31 of cos and sin, so against the true angles the error
    is <= 1/2 + |x| 2^-30 LSBs."""
    x = RNG.integers(-2**30, 2**30, (400, 64)).astype(np.int32)
    ang = RNG.uniform(0, 2000, (400, 32))
    c, s = rope_table_fixed(np.cos(ang), np.sin(ang))
    assert np.abs(c / 2**30 - np.cos(ang)).max() <= 2**-31
    y = i_rope(x, c, s)
    cf, sf = c / 2**30, s / 2**30
    x1, x2 = x[:, :32].astype(float), x[:, 32:].astype(float)
    ref = np.concatenate([x1 * cf - x2 * sf, x2 * cf + x1 * sf], axis=1)
    assert np.abs(y - ref).max() <= 0.5 + 1e-4, f"worst error {np.abs(y - ref).max()} LSB"
    x1t, x2t = x1 * np.cos(ang) - x2 * np.sin(ang), x2 * np.cos(ang) + x1 * np.sin(ang)
    err_true = np.abs(y - np.concatenate([x1t, x2t], axis=1)).max()
    assert err_true <= 0.5 + 2**30 * 2**-30 + 1e-4, f"worst error {err_true} LSB"


# --- attention, linears, embedding ---------------------------------------------------------

def test_i_attention_against_float_attention():
    """Oracle: float64 causal attention of the same int8 q (row factors u), k, v with the real
    multipliers; worst error <= 0.7 |v|_max / 255 M_o + 1 output LSBs (the softmax's codes)."""
    B, H_kv, r, T, hd, start = 1, 2, 3, 24, 16, 8
    S = start + T
    q = RNG.integers(-127, 128, (B, H_kv, r, T, hd)).astype(np.int8)
    u = RNG.integers(1, 2**20, (B, H_kv, r, T))
    k = RNG.integers(-127, 128, (B, H_kv, S, hd)).astype(np.int8)
    v = RNG.integers(-127, 128, (B, H_kv, S, hd)).astype(np.int8)
    Ms = quantize_multiplier_wide(np.array([2.0**-20, 3 * 2.0**-21]))
    Mo = quantize_multiplier_wide(np.array([4.0, 2.5]))
    got = i_attention(q, u, k, v, Ms, Mo, start, F, backend="numpy")
    valid = causal_mask(T, S, start)
    for h in range(H_kv):
        acc = q[0, h].astype(float) @ k[0, h].astype(float).T            # [r, T, S]
        z = acc * u[0, h][..., None] * _M(*[m[h] for m in Ms]) / 2**F
        ref = 255 * _softmax(z, valid) @ v[0, h].astype(float) * _M(*[m[h] for m in Mo])
        bound = 0.7 * 127 * _M(*[m[h] for m in Mo]) * S + 1
        err = np.abs(got[0, h] - ref).max()
        assert err <= bound, f"head {h}: worst error {err} LSB (bound {bound})"
    assert np.array_equal(got, i_attention(q, u, k, v, Ms, Mo, start, F, backend="numba"))


def test_linear_rows_and_w4_against_float():
    """Oracle: float64 products with the real multipliers: int8 within 1/2 + 2^-14 relative
    output LSBs; W4 (codes minus zero points, Q15 group ratios) within that plus the ratios'
    rounding and the accumulator's rounding, scaled by u M."""
    T, K, N, gs = 12, 80, 9, 32
    q = RNG.integers(-127, 128, (T, K)).astype(np.int8)
    u = RNG.integers(1, 2**30, T)
    q_wT = RNG.integers(-127, 128, (K, N)).astype(np.int8)
    M0, n = quantize_multiplier_wide(RNG.uniform(2.0**-30, 2.0**-26, N))
    ref = (q.astype(float) @ q_wT.astype(float)) * u[:, None] * _M(M0, n)
    y = linear_rows(q, u, q_wT, M0, n, backend="numpy")
    assert np.all(np.abs(y - ref) <= 0.5 + np.abs(ref) * 2**-14)
    G = -(-K // gs)
    codes = RNG.integers(0, 16, (N, K))
    zeros = RNG.integers(0, 16, (N, G))
    scales = RNG.uniform(0.5, 1.0, (N, G))
    gi = np.arange(K) // gs
    W = scales[:, gi] * (codes - zeros[:, gi])                            # [N, K] float
    s_n = scales.max(axis=1)
    sigma = np.rint(2**15 * scales / s_n[:, None]).astype(np.int64).T
    cT = (codes - zeros[:, gi]).T.astype(np.int8)
    y4 = w4_linear_rows(q, u, cT, sigma, gs, M0, n, backend="numpy")
    ref4 = (q.astype(float) @ W.T / s_n) * u[:, None] * _M(M0, n)
    # sigma's rounding moves each group sum by <= 2^-16 of it, the >> 15 by 1/2 accumulator LSB
    acc_g = np.stack([np.abs(q[:, g * gs:(g + 1) * gs].astype(float) @ cT[g * gs:(g + 1) * gs])
                      for g in range(G)])                                # [G, T, N]
    uM = u[:, None] * _M(M0, n)
    bound = 0.5 + (0.5 + acc_g.sum(axis=0) * 2**-16) * uM + np.abs(ref4) * 2**-14
    assert np.all(np.abs(y4 - ref4) <= bound), f"worst {np.max(np.abs(y4 - ref4) / bound)} of the bound"


def test_embed_int8_against_float():
    """Oracle: float64 E_q[v] s_e,v / S_x rounded: within 1/2 + 2^-31 relative LSB."""
    E_q = RNG.integers(-127, 128, (50, 8)).astype(np.int8)
    s_e = RNG.uniform(1e-3, 1e-1, 50)
    M0, n = quantize_multiplier_wide(s_e / 2**-16)
    tok = RNG.integers(0, 50, (2, 7))
    got = embed_int8(E_q, M0, n, tok)
    ref = E_q[tok] * (s_e[tok] / 2**-16)[..., None]
    assert np.abs(got - ref).max() <= 0.5 + 1e-6


# --- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda f: dynamic_int8(f),
    lambda f: static_int8(f, 2**30, 0),
    lambda f: i_exp(-f, 16),
    lambda f: i_softmax(f, 16),
    lambda f: i_silu(f, 16),
    lambda f: i_rms_norm(f, np.ones(4, np.int64), 0),
    lambda f: i_rope(f, np.zeros((1, 2), np.int32), np.zeros((1, 2), np.int32)),
    lambda f: rescale_rows(f, np.ones(1, np.int64), 2**30, 0),
    lambda f: embed_int8(f.astype(np.float32), np.ones(1), np.ones(1), np.zeros((1, 1), int)),
])
def test_float_arrays_are_refused(call):
    """Every integer op refuses a float array, naming the dtype."""
    with pytest.raises(ValueError, match="int|dtype"):
        call(np.zeros((1, 4), np.float64))


def test_bounds_are_refused_with_the_bound():
    """Accumulator bounds: softmax rows, RMSNorm width, attention length, the dynamic input range,
    multipliers and shifts out of range; each message names the bound."""
    with pytest.raises(ValueError, match=str(seq_len_bound(20))):
        i_softmax(np.zeros((1, seq_len_bound(20) + 1), np.int8), 20)
    with pytest.raises(ValueError, match=f"d <= {D_MAX}"):
        i_rms_norm(np.zeros((1, D_MAX + 1), np.int32), np.ones(D_MAX + 1, np.int64), 0)
    big = S_MAX + 1
    with pytest.raises(ValueError, match=f"at most {S_MAX}"):
        i_attention(np.zeros((1, 1, 1, big, 2), np.int8), np.ones((1, 1, 1, big), np.int64),
                    np.zeros((1, 1, big, 2), np.int8), np.zeros((1, 1, big, 2), np.int8),
                    ([2**30], [0]), ([2**30], [0]), 0, 16)
    with pytest.raises(ValueError, match="2\\^47"):
        dynamic_int8(np.array([[2**47]], np.int64))
    with pytest.raises(ValueError, match="2\\^-47, 2\\^15"):
        quantize_multiplier_wide(2.0**-50)
    with pytest.raises(ValueError, match="frac_bits"):
        i_exp(np.array([0]), 30)
    with pytest.raises(ValueError, match="shift s=5"):
        mul_shift_round(np.int64(1), np.int64(2**30), np.int64(5))
    with pytest.raises(ValueError, match="i_exp needs inputs <= 0"):
        i_exp(np.array([1]), 16)
    with pytest.raises(ValueError, match="131071"):
        linear_rows(np.zeros((1, 131072), np.int8), np.ones(1, np.int64),
                    np.zeros((131072, 1), np.int8), 2**30, 0, backend="numpy")


@pytest.mark.parametrize("shape", [(1, 576), (3, 40), (1, 1)])
def test_rescale_rows_numba_small_equals_numpy(shape, monkeypatch):
    """Below _numba_ops.SERIAL_BELOW elements (a decoded token) the kernel runs on the calling
    thread: it must run and equal the NumPy specification bit for bit."""
    pytest.importorskip("numba")
    from refquant.integer import _numba_ops
    assert shape[0] * shape[1] < _numba_ops.SERIAL_BELOW
    calls = _count_calls(monkeypatch, "rescale_rows")
    R, C = shape
    acc = RNG.integers(-2**31, 2**31, shape).astype(np.int32)
    u = np.maximum(RNG.integers(1, 2**40, R) >> RNG.integers(0, 40, R), 1)
    M0, n = quantize_multiplier_wide(RNG.uniform(2.0**-47, 2.0**-30, C))
    assert np.array_equal(rescale_rows(acc, u, M0, n, backend="numba"),
                          rescale_rows(acc, u, M0, n, backend="numpy"))
    assert calls


@pytest.mark.parametrize("T, S, start", [(1, 7, 6), (3, 5, 2), (1, 1, 0)])
def test_i_softmax_numba_small_equals_numpy(T, S, start, monkeypatch):
    """A decoded token's scores (below _numba_ops.SERIAL_BELOW, on the calling thread): the
    kernel must run and equal the NumPy specification bit for bit."""
    pytest.importorskip("numba")
    calls = _count_calls(monkeypatch, "softmax_rows")
    z = RNG.integers(-30 * 2**F, 30 * 2**F, (4, T, S))
    valid = causal_mask(T, S, start)
    assert np.array_equal(i_softmax(z, F, valid, backend="numba"),
                          i_softmax(z, F, valid, backend="numpy"))
    assert calls
