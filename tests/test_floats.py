"""FP8/FP6/FP4/E8M0 element casts (refquant/schemes/floats.py) against ml_dtypes.

Oracles, none of which shares code with the library:
- ``ml_dtypes`` (C++ casts behind NumPy dtypes): its cast does not saturate, so it is compared
  with ``saturate=False`` directly and with ``saturate=True`` after clipping the input to
  +-max normal; its ``finfo`` gives the table's numbers; decoding every code with ``.view``;
- for ``rounding="half_away"`` (which ml_dtypes lacks): a brute-force nearest-value search over
  every finite value ml_dtypes decodes, ties to the larger magnitude, written below.
"""

import numpy as np
import pytest

import refquant as rq
from refquant.schemes.floats import (FLOAT_FORMATS, cast_float, float_bits, float_format,
                                     from_float_bits, grid_step)

ml_dtypes = pytest.importorskip("ml_dtypes")

ML = {"e4m3fn": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2,
      "e2m3fn": ml_dtypes.float6_e2m3fn, "e3m2fn": ml_dtypes.float6_e3m2fn,
      "e2m1fn": ml_dtypes.float4_e2m1fn, "e8m0fnu": ml_dtypes.float8_e8m0fnu}
NAMES = list(FLOAT_FORMATS)


def ml_codes(x, name, saturate):
    """ml_dtypes' codes of ``x``; for ``saturate=True`` of ``x`` clipped to +-max normal."""
    x = np.asarray(x, np.float64)
    if saturate:
        m = FLOAT_FORMATS[name].max_normal
        x = np.clip(x, -m, m)
    with np.errstate(all="ignore"):
        return x.astype(ML[name]).view(np.uint8)


def admissible(x, name):
    """The inputs a format accepts: finite, and positive for the unsigned E8M0."""
    x = np.asarray(x)
    keep = np.isfinite(x)
    if not FLOAT_FORMATS[name].signed:
        keep &= x > 0
    return x[keep]


def assert_codes_equal(x, got, want):
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, (f"{bad.size} mismatches, first x={x.ravel()[bad[0]]!r}: "
                           f"got {hex(got.ravel()[bad[0]])}, ml_dtypes {hex(want.ravel()[bad[0]])}")


def grid_values(name):
    """Every finite value of the format (float64, ascending, without -0), from ml_dtypes."""
    n = FLOAT_FORMATS[name].nbits
    v = np.arange(2**n, dtype=np.uint8).view(ML[name]).astype(np.float64)
    return np.unique(v[np.isfinite(v)])


# ---------------------------------------------------------------------------------------------
# The table


@pytest.mark.parametrize("name", NAMES)
def test_table_matches_ml_dtypes_finfo(name):
    """max/min normal, min subnormal and the bit counts equal ml_dtypes.finfo."""
    f, fi = FLOAT_FORMATS[name], ml_dtypes.finfo(ML[name])
    assert f.max_normal == float(fi.max)
    assert f.min_normal == float(fi.smallest_normal)
    assert f.min_subnormal == float(fi.smallest_subnormal)
    assert f.mbits == fi.nmant and f.nbits == fi.bits
    assert f.max_normal == grid_values(name).max()


def test_the_fnuz_max_240_is_not_e4m3fn():
    """The 'max 240' of some docs is ml_dtypes' float8_e4m3fnuz; OCP e4m3fn's max is 448."""
    assert float(ml_dtypes.finfo(ml_dtypes.float8_e4m3fnuz).max) == 240.0
    assert FLOAT_FORMATS["e4m3fn"].max_normal == 448.0


# ---------------------------------------------------------------------------------------------
# Bit-exact with ml_dtypes


def all_float16():
    x = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    return x[np.isfinite(x)]                    # NaN/Inf are refused by the NaN policy


@pytest.mark.parametrize("saturate", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_every_float16_bit_pattern(name, saturate):
    """All 63,488 finite float16 values (every one for the signed formats, the positive ones
    for E8M0) give ml_dtypes' codes."""
    x = admissible(all_float16(), name)
    assert_codes_equal(x, float_bits(x, name, saturate=saturate), ml_codes(x, name, saturate))


@pytest.mark.parametrize("saturate", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_random_float32_and_float64(name, saturate):
    """Random float32 bit patterns (every binade, subnormals included) and random float64
    values over the formats' ranges give ml_dtypes' codes."""
    rng = np.random.default_rng(15)
    x32 = admissible(rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
                     .view(np.float32), name)
    assert_codes_equal(x32, float_bits(x32, name, saturate=saturate), ml_codes(x32, name, saturate))
    f = FLOAT_FORMATS[name]
    mag = np.exp2(rng.uniform(np.log2(f.min_subnormal) - 3, np.log2(f.max_normal) + 2, 100_000))
    x64 = admissible(mag * rng.choice([-1.0, 1.0], mag.size), name)
    assert_codes_equal(x64, float_bits(x64, name, saturate=saturate), ml_codes(x64, name, saturate))


def edge_inputs(name):
    """Grid values, exact midpoints between neighbours (ties) and the float32 values next to
    them, values just below/above max normal and the overflow threshold, half of the smallest
    subnormal and the float32 numbers around it, and float32 subnormals."""
    f = FLOAT_FORMATS[name]
    g = grid_values(name)
    g = np.concatenate([g, [2 * f.max_normal]])            # the virtual next grid point
    mids = (g[:-1] + g[1:]) / 2                             # exact in float64
    pts = np.concatenate([g[:-1], mids, [f.min_subnormal / 2, f.min_subnormal / 4,
                                         f.max_normal * 1.0001, 1e30, 2.0**-149, 2.0**-130]])
    pts32 = pts.astype(np.float32)
    near = np.concatenate([pts32, np.nextafter(pts32, np.float32(np.inf)),
                           np.nextafter(pts32, np.float32(0))])
    return admissible(np.concatenate([near, -near]), name)


@pytest.mark.parametrize("saturate", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_edge_float32_inputs(name, saturate):
    """Ties between neighbours, values next to them, around max and the smallest subnormal."""
    x = edge_inputs(name)
    assert_codes_equal(x, float_bits(x, name, saturate=saturate), ml_codes(x, name, saturate))


@pytest.mark.parametrize("name", NAMES)
def test_decode_every_code(name):
    """Every finite code decodes to ml_dtypes' value (bit for bit, -0 included); the NaN/Inf
    codes raise ValueError."""
    f = FLOAT_FORMATS[name]
    codes = np.arange(2**f.nbits, dtype=np.uint8)
    want = codes.view(ML[name]).astype(np.float32)
    finite = np.isfinite(want)
    got = from_float_bits(codes[finite], name)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), want[finite].view(np.uint32))
    for c in codes[~finite]:
        with pytest.raises(ValueError, match=hex(c)):
            from_float_bits(np.array([c], np.uint8), name)
    assert (~finite).sum() == {"e4m3fn": 2, "e5m2": 8, "e8m0fnu": 1}.get(name, 0)


@pytest.mark.parametrize("name", NAMES)
def test_cast_float_round_trip(name):
    """cast_float is the composition; grid values are fixed points (codes round-trip)."""
    x = edge_inputs(name)
    np.testing.assert_array_equal(cast_float(x, name), from_float_bits(float_bits(x, name), name))
    f = FLOAT_FORMATS[name]
    codes = np.arange(2**f.nbits, dtype=np.uint8)
    finite = np.isfinite(codes.view(ML[name]).astype(np.float32))
    np.testing.assert_array_equal(float_bits(from_float_bits(codes[finite], name), name),
                                  codes[finite])


# ---------------------------------------------------------------------------------------------
# half_away: brute-force oracle


def oracle_half_away(x, name):
    """Nearest finite magnitude by exhaustive search, ties to the larger one, with x's sign."""
    g = grid_values(name)
    g = g[g >= 0]                                   # the magnitudes
    out = []
    for v in np.asarray(x, np.float64):
        d = np.abs(g - abs(v))
        out.append(np.copysign(g[d == d.min()].max(), v))
    return np.array(out)


@pytest.mark.parametrize("name", NAMES)
def test_half_away_against_exhaustive_search(name):
    """rounding='half_away' picks the nearest value, ties to the larger magnitude (saturating)."""
    x = edge_inputs(name)
    x = x[np.abs(x.astype(np.float64)) < 4 * FLOAT_FORMATS[name].max_normal]
    got = cast_float(x, name, rounding="half_away").astype(np.float64)
    want = oracle_half_away(x, name)
    np.testing.assert_array_equal(np.abs(got), np.abs(want))
    assert np.all(np.signbit(got) == np.signbit(x))


# ---------------------------------------------------------------------------------------------
# Specials, overflow and the traps


def test_overflow_codes_without_saturation():
    """saturate=False: E4M3FN -> NaN 0x7F/0xFF, E5M2 -> +-Inf 0x7C/0xFC, FP6/FP4 clamp, E8M0
    NaN; saturate=True clamps every format to +-max. 464 is a tie and goes to the even 448."""
    big = [1e6, -1e6]
    assert float_bits(big, "e4m3fn", saturate=False).tolist() == [0x7F, 0xFF]
    assert float_bits([464.0, 464.0001], "e4m3fn", saturate=False).tolist() == [0x7E, 0x7F]
    assert float_bits(big, "e5m2", saturate=False).tolist() == [0x7C, 0xFC]
    assert float_bits(big, "e2m1fn", saturate=False).tolist() == [0x7, 0xF]
    assert float_bits(big, "e2m3fn", saturate=False).tolist() == [0x1F, 0x3F]
    assert float_bits([2.0**128], "e8m0fnu", saturate=False).tolist() == [0xFF]
    for name in NAMES:
        f = FLOAT_FORMATS[name]
        v = [4 * f.max_normal] if not f.signed else [4 * f.max_normal, -4 * f.max_normal]
        assert cast_float(v, name).tolist() == [f.max_normal, -f.max_normal][:len(v)]


def test_cast_float_without_saturation_refuses_overflow():
    """cast_float(saturate=False) raises naming the value instead of returning NaN/Inf."""
    with pytest.raises(ValueError, match="500.0.*e4m3fn"):
        cast_float([1.0, 500.0], "e4m3fn", saturate=False)
    with pytest.raises(ValueError, match="e5m2"):
        cast_float([62000.0], "e5m2", saturate=False)
    assert cast_float([1e9], "e2m1fn", saturate=False).tolist() == [6.0]


def test_e8m0_has_no_zero_and_rounds_ties_up():
    """E8M0: values below 2^-127 become 2^-127, ties 1.5 * 2^e go up in every binade
    (significands 1 and 2: 2 is the even one), zero and negative input raise."""
    assert float_bits([2.0**-140, 0.75 * 2.0**-127], "e8m0fnu").tolist() == [0, 0]
    e = np.arange(-126, 126)
    assert np.array_equal(float_bits(1.5 * 2.0**e, "e8m0fnu"), (e + 128).astype(np.uint8))
    for bad in (0.0, -1.0, -0.0):
        with pytest.raises(ValueError, match="no zero and no sign"):
            float_bits([1.0, bad], "e8m0fnu")


def test_sign_of_zero_is_kept():
    """Values that round to zero keep their sign (-0 code), as ml_dtypes does."""
    assert float_bits([-1e-9, 1e-9, -0.0], "e4m3fn").tolist() == [0x80, 0x00, 0x80]
    assert float_bits([-0.2], "e2m1fn").tolist() == [0x8]


def test_grid_step():
    """The spacing: subnormal step below min normal (and at 0), 2^(e - m) above; x and its two
    neighbours floor/ceil(x / step) * step lie in one binade."""
    assert grid_step([0.0, 2.0**-8, 1.0, 300.0], "e4m3fn").tolist() == [2.0**-9, 2.0**-9,
                                                                        0.125, 32.0]
    assert grid_step([5.0], "e2m1fn").tolist() == [2.0]
    x = edge_inputs("e5m2")
    step = grid_step(x, "e5m2")
    lo = np.floor(np.abs(x) / step) * step
    g = set(grid_values("e5m2").tolist()) | {2 * 57344.0, 65536.0}
    assert all(v in g or v > 57344 for v in lo.tolist())


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_input_raise(bad):
    with pytest.raises(ValueError, match="NaN or Inf"):
        float_bits([1.0, bad], "e4m3fn")


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="'e4m3fnuz'"):
        float_bits([1.0], "e4m3fnuz")
    with pytest.raises(ValueError, match="'fp8'"):
        from_float_bits([1], "fp8")
    with pytest.raises(ValueError, match="'stochastic'"):
        float_bits([1.0], "e5m2", rounding="stochastic")
    with pytest.raises(ValueError, match="saturate"):
        float_bits([1.0], "e5m2", saturate="yes")
    with pytest.raises(ValueError, match="code 16 is out of range for e2m1fn"):
        from_float_bits([3, 16], "e2m1fn")
    with pytest.raises(ValueError, match="code 64 is out of range for e3m2fn"):
        from_float_bits(np.array([64], np.uint8), "e3m2fn")
    with pytest.raises(ValueError, match="code -1"):
        from_float_bits([-1], "e4m3fn")
    with pytest.raises(ValueError, match="integer array"):
        from_float_bits([1.0], "e4m3fn")
    with pytest.raises(ValueError, match="dtype"):
        float_bits(["a"], "e4m3fn")


def test_public_api():
    """The casts and the table are part of rq's lazy public API."""
    assert rq.float_bits is float_bits and rq.from_float_bits is from_float_bits
    assert rq.cast_float is cast_float and rq.FLOAT_FORMATS is FLOAT_FORMATS
    assert float_format(FLOAT_FORMATS["e5m2"]) is FLOAT_FORMATS["e5m2"]
