"""Tests of refquant.schemes.numerics: integer ranges, rounding modes, input checks.

Oracles: integer ranges are written out by hand below; rounding is checked against Python's
``decimal`` module (ROUND_HALF_EVEN / ROUND_HALF_UP, which rounds ties away from zero), an
exact implementation independent of NumPy.
"""

import doctest
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Context, Decimal

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import refquant.schemes.numerics as numerics
from refquant.schemes.numerics import (as_float_array, check_bits, check_positive_int, code_dtype,
                               int_range, normalize_axis, round_half_away, round_half_even,
                               round_to_int)

# Hand-written table: signed full range is [-2^(b-1), 2^(b-1)-1], restricted drops -2^(b-1),
# unsigned is [0, 2^b - 1].  E.g. b = 3: 2^2 = 4 -> [-4, 3], [-3, 3], [0, 7].
RANGES = {
    2: ((-2, 1), (-1, 1), (0, 3)),
    3: ((-4, 3), (-3, 3), (0, 7)),
    4: ((-8, 7), (-7, 7), (0, 15)),
    5: ((-16, 15), (-15, 15), (0, 31)),
    6: ((-32, 31), (-31, 31), (0, 63)),
    7: ((-64, 63), (-63, 63), (0, 127)),
    8: ((-128, 127), (-127, 127), (0, 255)),
    16: ((-32768, 32767), (-32767, 32767), (0, 65535)),
}


@pytest.mark.parametrize("bits", sorted(RANGES))
def test_int_range_table(bits):
    full, restricted, unsigned = RANGES[bits]
    assert int_range(bits, signed=True) == full
    assert int_range(bits, signed=True, restricted=True) == restricted
    assert int_range(bits, signed=False) == unsigned


@pytest.mark.parametrize("bits", sorted(RANGES))
@pytest.mark.parametrize("signed", [True, False])
def test_code_dtype_holds_the_range(bits, signed):
    lo, hi = int_range(bits, signed)
    dt = code_dtype(bits, signed)
    assert np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max
    assert dt.itemsize == (1 if bits <= 8 else 2)
    assert (dt.kind == "i") == signed


@pytest.mark.parametrize("bad", [1, 9, 17, 0, -4, 32, True, False, 4.0, "4", None, np.float32(8)])
def test_check_bits_rejects(bad):
    with pytest.raises(ValueError, match=repr(bad).replace("(", r"\(").replace(")", r"\)")):
        check_bits(bad)


def test_check_bits_accepts_numpy_ints():
    assert check_bits(np.int64(4)) == 4 and isinstance(check_bits(np.uint8(8)), int)


def test_restricted_unsigned_rejected():
    with pytest.raises(ValueError, match="restricted"):
        int_range(8, signed=False, restricted=True)


def _decimal_round(x: float, mode) -> float:
    """Exact rounding of the float ``x`` (Decimal(x) is the exact binary value; 400 digits
    hold every integer part a float64 can have)."""
    return float(Decimal(x).quantize(Decimal(1), rounding=mode, context=Context(prec=400)))


# Hand table: ties and near-ties.  0.49999999999999994 = 0.5 - 2**-54 must round to 0 in
# both modes (the naive floor(x + 0.5) gives 1: 0.5 - 2**-54 + 0.5 rounds up to 1.0).
TIES = [
    # x,                    half_even, half_away
    (0.5, 0.0, 1.0),
    (1.5, 2.0, 2.0),
    (2.5, 2.0, 3.0),
    (-0.5, -0.0, -1.0),
    (-1.5, -2.0, -2.0),
    (-2.5, -2.0, -3.0),
    (3.5, 4.0, 4.0),
    (0.49999999999999994, 0.0, 0.0),
    (-0.49999999999999994, -0.0, -0.0),
    (1.4999999999999998, 1.0, 1.0),
    (2.0**52 + 1, 2.0**52 + 1, 2.0**52 + 1),
    (2.0**53, 2.0**53, 2.0**53),
    (0.0, 0.0, 0.0),
]


@pytest.mark.parametrize("x,even,away", TIES)
def test_rounding_tie_table(x, even, away):
    assert round_half_even(np.array([x]))[0] == even
    assert round_half_away(np.array([x]))[0] == away
    assert round_to_int(np.array([x]), "half_even")[0] == even
    assert round_to_int(np.array([x]), "half_away")[0] == away
    # the oracle agrees with the hand table (guards the oracle itself)
    assert _decimal_round(x, ROUND_HALF_EVEN) == even
    assert _decimal_round(x, ROUND_HALF_UP) == away


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
halves = st.integers(-10**6, 10**6).map(lambda k: k + 0.5)


@given(st.one_of(finite, halves))
@example(0.49999999999999994)
@example(-0.49999999999999994)
@example(4503599627370497.0)
def test_rounding_matches_decimal(x):
    a = np.array([x])
    assert round_half_even(a)[0] == _decimal_round(x, ROUND_HALF_EVEN)
    assert round_half_away(a)[0] == _decimal_round(x, ROUND_HALF_UP)


@given(st.floats(-1e6, 1e6, width=32))
def test_rounding_float32_matches_decimal(x):
    a = np.array([x], np.float32)
    assert round_half_away(a)[0] == _decimal_round(float(a[0]), ROUND_HALF_UP)
    assert round_half_even(a)[0] == _decimal_round(float(a[0]), ROUND_HALF_EVEN)


def test_round_to_int_unknown_mode():
    with pytest.raises(ValueError, match="'nearest'"):
        round_to_int(np.array([0.5]), "nearest")


@pytest.mark.parametrize("bad", [[np.nan], [1.0, np.inf], [-np.inf]])
def test_as_float_array_rejects_nonfinite(bad):
    with pytest.raises(ValueError, match="NaN or Inf"):
        as_float_array(np.array(bad))


def test_as_float_array_names_the_bad_value():
    with pytest.raises(ValueError, match=r"index \(1, 0\).*nan"):
        as_float_array(np.array([[0.0, 1.0], [np.nan, 2.0]]), "w")


def test_as_float_array_types():
    assert as_float_array([1, 2]).dtype == np.float64
    assert as_float_array(np.zeros(2, np.float32)).dtype == np.float32
    with pytest.raises(ValueError, match="complex"):
        as_float_array(np.array([1j]))
    with pytest.raises(ValueError, match="<U1"):
        as_float_array(np.array(["a"]))


@pytest.mark.parametrize("bad", [0, -1, 2.5, None, True, "3", 4.0])
def test_check_positive_int_rejects(bad):
    with pytest.raises(ValueError, match=r"group_size must be a positive integer, got " + repr(bad)
                       .replace("(", r"\(").replace(".", r"\.")):
        check_positive_int(bad, "group_size")


def test_normalize_axis():
    assert normalize_axis(-1, 3) == 2 and normalize_axis(np.int32(1), 2) == 1
    for bad in (3, -4):
        with pytest.raises(ValueError, match=f"axis {bad} is out of range"):
            normalize_axis(bad, 3)
    for bad in (1.0, True, None):
        with pytest.raises(ValueError, match=repr(bad)):
            normalize_axis(bad, 3)


def test_doctests():
    result = doctest.testmod(numerics, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
