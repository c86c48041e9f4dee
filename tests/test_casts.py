"""FP16 / BF16 casts (refquant/casts.py) against independent oracles and their error bounds.

Oracles used here, none of which shares code with the library:
- bf16: an exact scalar oracle below (struct for the bits, Python integers and Fractions for the
  two neighbouring bf16 values and the distances to them), and torch.bfloat16 where installed;
- fp16: NumPy's own float32 -> float16 conversion (C code in NumPy), and torch.float16;
- ties: every midpoint between two consecutive 16-bit floats is built from the bit patterns, and
  the expected winner is the neighbour whose bit pattern is even (IEEE ties-to-even).
"""

import doctest
import struct
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refquant as rq
from refquant.schemes import casts
from refquant.schemes.casts import bf16_bits, fp16_bits, from_bf16_bits, from_fp16_bits

# ---------------------------------------------------------------------------------------------
# Independent scalar bf16 oracle (exact arithmetic, no bit tricks beyond reading the fields)


def _f32_bits(v: float) -> int:
    return struct.unpack(">I", struct.pack(">f", v))[0]


def _bf16_value(b16: int) -> Fraction:
    """Exact value of a finite bf16 bit pattern from its sign, exponent and mantissa fields."""
    sign = -1 if b16 >> 15 else 1
    e, m = (b16 >> 7) & 0xFF, b16 & 0x7F
    if e == 0:
        return sign * Fraction(m, 2**7) * Fraction(1, 2**126)
    return sign * (1 + Fraction(m, 2**7)) * Fraction(2) ** (e - 127)


def oracle_bf16_bits(v: float) -> int:
    """Nearest bf16 to the float32 value ``v`` (ties to the even pattern), or -1 on overflow."""
    b32 = _f32_bits(v)
    exact = Fraction(struct.unpack(">f", struct.pack(">I", b32))[0])
    lo = b32 >> 16                      # truncation toward zero: same sign, |value| <= |v|
    hi = lo + 1                         # next bf16 away from zero
    d_lo = abs(exact - _bf16_value(lo))
    if (hi & 0x7F80) == 0x7F80:         # the next pattern is Inf: beyond it is overflow
        d_hi = Fraction(2) ** 128 - abs(exact)     # IEEE overflow: round as if 2^128 existed
    else:
        d_hi = abs(exact - _bf16_value(hi))
    if d_lo < d_hi or (d_lo == d_hi and lo % 2 == 0):
        return lo
    return -1 if (hi & 0x7F80) == 0x7F80 else hi


# ---------------------------------------------------------------------------------------------
# Strategies

finite_f32_bits = st.integers(0, 2**32 - 1).filter(lambda b: (b >> 23) & 0xFF != 0xFF)


def _f32_from_bits(bits):
    return np.array(bits, np.uint32).view(np.float32)


def normal_f32(lo, hi):
    """float32 arrays with lo <= |x| <= hi (both signs)."""
    mag = st.floats(lo, hi, width=32)
    return hnp.arrays(np.float32, st.integers(1, 40),
                      elements=st.tuples(mag, st.booleans()).map(lambda t: -t[0] if t[1] else t[0]))


# ---------------------------------------------------------------------------------------------
# BF16


@settings(max_examples=200)
@given(st.lists(finite_f32_bits, min_size=1, max_size=20))
def test_bf16_matches_exact_scalar_oracle(bit_list):
    x = _f32_from_bits(bit_list)
    expected = [oracle_bf16_bits(float(v)) for v in x]
    if -1 in expected:
        with pytest.raises(ValueError, match="beyond the largest finite bf16"):
            bf16_bits(x)
    else:
        assert bf16_bits(x).tolist() == expected


def test_bf16_oracle_on_hand_picked_patterns():
    # (float32 bits, bf16 bits): hand-worked from the layout, low half = 0x8000 is a tie.
    table = [
        (0x3F800000, 0x3F80),  # 1.0 exact
        (0x3F808000, 0x3F80),  # tie, kept bit 0 is even -> down
        (0x3F818000, 0x3F82),  # tie, kept bit 1 is odd -> up to even
        (0x3F808001, 0x3F81),  # just above the tie -> up
        (0x3F807FFF, 0x3F80),  # just below the tie -> down
        (0xBF818000, 0xBF82),  # negative tie: magnitude to even
        (0x3FFF8000, 0x4000),  # tie that carries into the exponent: 1.9921875+ -> 2.0
        (0x00008000, 0x0000),  # subnormal tie -> even (zero)
        (0x00018000, 0x0002),  # subnormal tie, odd -> up
        (0x00000001, 0x0000),  # smallest float32 subnormal -> +0
        (0x80000001, 0x8000),  # ... keeps its sign: -0
        (0x007F8000, 0x0080),  # largest-subnormal tie rounds up to the smallest normal
        (0x7F7F7FFF, 0x7F7F),  # just below the overflow threshold -> max finite bf16
    ]
    for b32, b16 in table:
        v = float(_f32_from_bits(b32))
        assert oracle_bf16_bits(v) == b16, hex(b32)          # the oracle agrees with the hand table
        assert int(bf16_bits(np.float32(v))) == b16, hex(b32)


def test_bf16_every_midpoint_ties_to_even():
    # All 2^15 - 256 finite non-negative bf16 patterns; the midpoint between b and b + 1 needs 9
    # significant bits, so it is a float32 value: it must round to whichever of b, b + 1 is even.
    b = np.arange(0x7F7F, dtype=np.uint32)                     # b + 1 still finite
    mid_bits = (b << 16) | 0x8000                              # the float32 halfway between
    expected = np.where(b % 2 == 0, b, b + 1).astype(np.uint16)
    for sign in (0, 0x80000000):
        got = bf16_bits((mid_bits | sign).astype(np.uint32).view(np.float32))
        assert np.array_equal(got, expected | np.uint16(sign >> 16))


def test_bf16_matches_torch_on_all_boundary_patterns():
    torch = pytest.importorskip("torch", reason="torch.bfloat16 is a second bf16 oracle")
    hi = np.arange(2**16, dtype=np.uint32)
    hi = hi[(hi & 0x7F80) != 0x7F80]                          # finite exponent fields
    lows = np.array([0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF], np.uint32)
    bits = (hi[:, None] << 16 | lows[None, :]).ravel()
    bits = bits[(bits & 0x7FFFFFFF) < 0x7F7F8000]             # exclude the overflow cases
    x = bits.view(np.float32)
    ref = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    got = bf16_bits(x)
    bad = np.flatnonzero(got != ref)
    assert bad.size == 0, f"{bad.size} mismatches, first float32 bits {hex(int(bits[bad[0]]))}"


@given(normal_f32(2.0**-126, float(np.float32(3.0e38))))
def test_bf16_relative_error_bound_for_normal_numbers(x):
    x_hat = rq.cast_bf16(x).astype(np.float64)
    err = np.abs(x.astype(np.float64) - x_hat)                # exact in float64
    assert np.all(err <= 2.0**-8 * np.abs(x.astype(np.float64)))
    assert np.all(np.sign(x_hat) == np.sign(x))


@given(hnp.arrays(np.float32, st.integers(1, 30),
                  elements=st.floats(-(2.0**-126), 2.0**-126, width=32)))
def test_bf16_subnormal_absolute_bound(x):
    err = np.abs(x.astype(np.float64) - rq.cast_bf16(x).astype(np.float64))
    assert np.all(err <= 2.0**-134)


@given(st.lists(st.integers(0, 2**16 - 1).filter(lambda b: b & 0x7F80 != 0x7F80), min_size=1, max_size=50))
def test_bf16_representable_values_unchanged(patterns):
    b = np.array(patterns, np.uint16)
    v = from_bf16_bits(b)
    assert np.array_equal(bf16_bits(v), b)
    assert np.array_equal(rq.cast_bf16(v).view(np.uint32), v.view(np.uint32))  # incl. -0.0


# ---------------------------------------------------------------------------------------------
# FP16


def test_fp16_matches_numpy_on_random_and_boundary_patterns():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, size=400_000, dtype=np.uint64).astype(np.uint32)
    # boundary low bits for the fp16 normal range (13 dropped bits) at every float32 exponent
    hi = np.arange(2**19, dtype=np.uint32) << 13
    lows = np.array([0x0FFF, 0x1000, 0x1001], np.uint32)
    bits = np.concatenate([bits, (hi[:, None] | lows[None, :]).ravel()])
    x = bits.view(np.float32)
    x = x[np.isfinite(x) & (np.abs(x) < 65520)]
    ref = x.astype(np.float16)                                 # NumPy's C conversion (RNE)
    got = rq.cast_fp16(x)
    bad = np.flatnonzero(got.view(np.uint32) != ref.astype(np.float32).view(np.uint32))
    assert bad.size == 0, f"{bad.size} mismatches, first x = {x[bad[0]]!r}"
    assert np.array_equal(fp16_bits(x), ref.view(np.uint16))


def test_fp16_matches_torch():
    torch = pytest.importorskip("torch", reason="torch.float16 is a second fp16 oracle")
    x = np.random.default_rng(1).standard_normal(100_000).astype(np.float32) * np.float32(300)
    x = np.concatenate([x, x * np.float32(1e-6)])             # subnormals too
    ref = torch.from_numpy(x).to(torch.float16).float().numpy()
    assert np.array_equal(rq.cast_fp16(x), ref)


def test_fp16_every_midpoint_ties_to_even():
    # All finite non-negative fp16 patterns b with b + 1 finite; the midpoint needs 12 bits,
    # so it is a float32 value. Expected: the neighbour with the even pattern.
    b = np.arange(0x7BFF, dtype=np.uint16)
    lo = b.view(np.float16).astype(np.float64)
    hi = (b + np.uint16(1)).view(np.float16).astype(np.float64)
    mid = ((lo + hi) / 2).astype(np.float32)
    assert np.array_equal(mid.astype(np.float64), (lo + hi) / 2)   # the midpoint is exact
    expected = np.where(b % 2 == 0, b, b + np.uint16(1)).astype(np.uint16)
    assert np.array_equal(fp16_bits(mid), expected)
    assert np.array_equal(fp16_bits(-mid), expected | np.uint16(0x8000))


def test_fp16_hand_table():
    # Hand-worked: spacing 2 in [2048, 4096); 2^-24 is the subnormal step.
    cases = [(2049.0, 2048.0), (2051.0, 2052.0), (2050.0, 2050.0), (65504.0, 65504.0),
             (65519.0, 65504.0), (2.0**-24, 2.0**-24), (2.0**-25, 0.0), (3 * 2.0**-26, 2.0**-24),
             (1.5 * 2.0**-24, 2 * 2.0**-24), (2.5 * 2.0**-24, 2 * 2.0**-24), (-0.0, -0.0),
             (1.0 + 2.0**-11, 1.0), (1.0 + 3 * 2.0**-11, 1.0 + 2.0**-9)]
    for x, want in cases:
        got = float(rq.cast_fp16(np.float32(x)))
        assert got == want and np.signbit(got) == np.signbit(want), (x, got, want)


@given(normal_f32(2.0**-14, 65504.0))
def test_fp16_relative_error_bound_for_normal_numbers(x):
    x64 = x.astype(np.float64)
    err = np.abs(x64 - rq.cast_fp16(x).astype(np.float64))
    assert np.all(err <= 2.0**-11 * np.abs(x64))


@given(hnp.arrays(np.float32, st.integers(1, 30), elements=st.floats(-(2.0**-14), 2.0**-14, width=32)))
def test_fp16_subnormal_absolute_bound(x):
    err = np.abs(x.astype(np.float64) - rq.cast_fp16(x).astype(np.float64))
    assert np.all(err <= 2.0**-25)


@given(st.lists(st.integers(0, 2**16 - 1).filter(lambda b: b & 0x7C00 != 0x7C00), min_size=1, max_size=50))
def test_fp16_representable_values_unchanged(patterns):
    b = np.array(patterns, np.uint16)
    v = from_fp16_bits(b)
    assert np.array_equal(v, b.view(np.float16).astype(np.float32))
    assert np.array_equal(fp16_bits(v), b)


# ---------------------------------------------------------------------------------------------
# Shapes, dtypes, bad input


def test_shape_dtype_and_no_mutation():
    x = np.linspace(-3, 3, 24, dtype=np.float64).reshape(2, 3, 4)
    before = x.copy()
    for f in (rq.cast_bf16, rq.cast_fp16):
        y = f(x)
        assert y.shape == x.shape and y.dtype == np.float32
    assert np.array_equal(x, before)
    assert rq.cast_bf16(np.arange(5)).tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]   # integer input


@pytest.mark.parametrize("f", [rq.cast_bf16, rq.cast_fp16, bf16_bits, fp16_bits])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_rejected(f, bad):
    with pytest.raises(ValueError, match="NaN or Inf"):
        f(np.array([1.0, bad], np.float32))


def test_overflow_raises_naming_the_value():
    with pytest.raises(ValueError, match="65520.0"):
        rq.cast_fp16([1.0, 65520.0])
    assert float(rq.cast_fp16(65519.996)) == 65504.0
    big = float(_f32_from_bits(0x7F7F8000))                   # halfway to 2^128: ties to Inf
    with pytest.raises(ValueError, match="largest finite bf16"):
        rq.cast_bf16(np.float32(big))
    assert int(bf16_bits(_f32_from_bits(0x7F7F7FFF))) == 0x7F7F
    with pytest.raises(ValueError, match="float32 range"):
        rq.cast_bf16(np.array([1e39]))


def test_bit_decoders_reject_specials_and_wrong_dtype():
    with pytest.raises(ValueError, match="0x7f80"):
        from_bf16_bits(np.array([0x3F80, 0x7F80], np.uint16))
    with pytest.raises(ValueError, match="0xfc01"):
        from_fp16_bits(np.array([0xFC01], np.uint16))
    with pytest.raises(ValueError, match="uint16"):
        from_bf16_bits(np.array([1], np.int32))


def test_module_docstring_examples():
    assert doctest.testmod(casts).failed == 0
