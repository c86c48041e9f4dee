"""Stochastic rounding (refquant.schemes.stochastic) on the integer grid and the float grids.

Oracles: the neighbours of a value are computed independently of the module: ``floor`` and
``floor + 1`` for the integers, and for a float format the sorted list of *every* finite value
of the format, decoded by ``ml_dtypes`` (test extra) from all its bit patterns, searched with
``np.searchsorted``. Round-to-nearest references are ``np.rint`` and ``ml_dtypes``' own cast.
The statistical bounds are stated in each test; the seeds are fixed, so the tests are
deterministic.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from refquant.schemes.floats import cast_float
from refquant.schemes.stochastic import (stochastic_cast_float, stochastic_round,
                                         stochastic_round_codes)

ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes (test extra) decodes the formats")

FORMATS = {"e4m3fn": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2,
           "e2m3fn": ml_dtypes.float6_e2m3fn, "e3m2fn": ml_dtypes.float6_e3m2fn,
           "e2m1fn": ml_dtypes.float4_e2m1fn}
NBITS = {"e4m3fn": 8, "e5m2": 8, "e2m3fn": 6, "e3m2fn": 6, "e2m1fn": 4}


def grid_of(fmt: str) -> np.ndarray:
    """Every finite value of ``fmt``, sorted: ml_dtypes decodes all bit patterns (FP6/FP4 sit
    one value per byte in the low bits, so a uint8 view works for every format)."""
    codes = np.arange(2 ** NBITS[fmt], dtype=np.uint8)
    vals = codes.view(FORMATS[fmt]).astype(np.float64)
    return np.unique(vals[np.isfinite(vals)])


def test_integer_grid_never_leaves_the_two_neighbours_and_is_unbiased():
    """10,000 draws for each of 200 values in [-50, 50]: every draw is floor(x) or floor(x)+1
    (oracle: np.floor), and the mean is within 5 standard errors of x. The standard error is the
    exact Bernoulli one, sqrt(f (1 - f) / n) with f the fractional part; a 5-sigma bound fails
    with probability < 1e-6 per value (fixed seed: deterministic)."""
    rng = np.random.default_rng(1)
    x = rng.uniform(-50, 50, size=200)
    n = 10_000
    draws = stochastic_round(np.broadcast_to(x, (n, x.size)), np.random.default_rng(2))
    lo = np.floor(x)
    assert np.all((draws == lo) | (draws == lo + 1))
    f = x - lo
    se = np.sqrt(f * (1 - f) / n)
    assert np.all(np.abs(draws.mean(axis=0) - x) <= 5 * se + 1e-12)
    # round to nearest would miss by up to 1/2: the test can tell the two apart
    assert np.max(np.abs(np.rint(x) - x)) > 10 * np.max(5 * se)


def test_integers_stay_put_at_every_noise_level():
    """Exact integers (and zero, and -0.0) are returned unchanged, whatever the draw."""
    x = np.array([0.0, -0.0, 1.0, -7.0, 2.0**40, -3.0])
    for noise in (0.0, 0.3, 1.0):
        for seed in range(5):
            assert np.array_equal(stochastic_round(x, np.random.default_rng(seed), noise=noise), x)


def test_round_to_nearest_is_the_zero_noise_limit():
    """noise=0 equals np.rint off exact ties (ties go toward zero); a small noise a equals
    np.rint wherever the fractional part is farther than a/2 from 1/2."""
    x = np.random.default_rng(3).uniform(-20, 20, size=5000)
    r0 = stochastic_round(x, np.random.default_rng(0), noise=0.0)
    assert np.array_equal(r0, np.rint(x))
    ties = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5])
    assert stochastic_round(ties, np.random.default_rng(0), noise=0.0).tolist() == \
        [0.0, 1.0, 2.0, -0.0, -1.0, -2.0]
    a = 1e-2
    ra = stochastic_round(x, np.random.default_rng(4), noise=a)
    far = np.abs(np.abs(x) - np.floor(np.abs(x)) - 0.5) > a / 2
    assert far.sum() > 4800
    assert np.array_equal(ra[far], np.rint(x)[far])


def test_sign_symmetry_and_reproducibility():
    """SR(-x) = -SR(x) draw for draw with the same generator state; the same seed gives the
    same result, another seed a different one."""
    x = np.random.default_rng(5).uniform(-5, 5, size=1000)
    a = stochastic_round(x, np.random.default_rng(7))
    b = stochastic_round(-x, np.random.default_rng(7))
    assert np.array_equal(a, -b)
    assert np.array_equal(a, stochastic_round(x, np.random.default_rng(7)))
    assert not np.array_equal(a, stochastic_round(x, np.random.default_rng(8)))


def test_codes_stay_in_range_and_match_the_clipped_grid():
    """stochastic_round_codes: codes within [q_min, q_max]; inside the range each code is one
    of the two codes around x/s + z (oracle: floor), and values past the clip saturate."""
    rng = np.random.default_rng(9)
    x = rng.uniform(-3, 3, size=4000)
    s, z, qmin, qmax = 0.25, 3.0, 0, 15
    q = stochastic_round_codes(x, s, z, qmin, qmax, np.random.default_rng(10))
    assert q.min() >= qmin and q.max() <= qmax
    u = x / s + z
    inside = (u >= qmin) & (u <= qmax)
    assert np.all((q[inside] == np.floor(u[inside])) | (q[inside] == np.floor(u[inside]) + 1))
    assert np.all(q[u > qmax + 1] == qmax) and np.all(q[u < qmin - 1] == qmin)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_float_grid_never_leaves_the_two_neighbours(fmt):
    """Every draw is one of the two grid values around x, found by np.searchsorted on the
    complete ml_dtypes-decoded grid of the format (random values across the whole range,
    including the subnormals)."""
    grid = grid_of(fmt)
    top = grid[-1]
    rng = np.random.default_rng(11)
    mags = np.exp(rng.uniform(math.log(grid[grid > 0][0] / 4), math.log(top), size=3000))
    x = mags * rng.choice([-1.0, 1.0], size=mags.size)
    draws = np.stack([stochastic_cast_float(x, fmt, np.random.default_rng(s)) for s in range(20)])
    i = np.searchsorted(grid, x)                              # grid[i-1] < x <= grid[i]
    hi, lo = grid[i], grid[i - 1]
    on_grid = hi == x
    ok = (draws == hi) | (draws == lo) | (on_grid & (draws == x))
    assert np.all(ok), f"{fmt}: {x[~ok.all(axis=0)][:5]}"


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_float_grid_is_unbiased_and_grid_points_stay_put(fmt):
    """Mean of 20,000 draws within 5 standard errors of x for 50 values in the normal and the
    subnormal range (standard error (hi - lo) sqrt(p (1 - p) / n), p = (x - lo) / (hi - lo),
    neighbours from the ml_dtypes grid); every grid value is returned unchanged."""
    grid = grid_of(fmt)
    rng = np.random.default_rng(12)
    x = rng.uniform(-grid[-1], grid[-1], size=40)
    x = np.concatenate([x, rng.uniform(-1, 1, size=10) * grid[grid > 0][0] * 3])
    n = 20_000
    draws = stochastic_cast_float(np.broadcast_to(x, (n, x.size)), fmt, np.random.default_rng(13))
    i = np.searchsorted(grid, x)
    lo, hi = grid[i - 1], grid[i]
    p = (x - lo) / (hi - lo)
    se = (hi - lo) * np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(draws.astype(np.float64).mean(axis=0) - x) <= 5 * se + 1e-12)
    assert np.array_equal(stochastic_cast_float(grid, fmt, np.random.default_rng(14)),
                          grid.astype(np.float32))


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_float_zero_noise_is_round_to_nearest(fmt):
    """noise=0 equals ml_dtypes' round-to-nearest cast (saturated at max normal, as
    cast_float(saturate=True)) for every value that is not an exact tie between neighbours."""
    grid = grid_of(fmt)
    rng = np.random.default_rng(15)
    x = rng.uniform(-1.2 * grid[-1], 1.2 * grid[-1], size=4000)
    x = np.concatenate([x, rng.uniform(-2, 2, size=1000) * grid[grid > 0][0]])
    got = stochastic_cast_float(x, fmt, np.random.default_rng(0), noise=0.0)
    clipped = np.clip(x, -grid[-1], grid[-1])
    want = clipped.astype(FORMATS[fmt]).astype(np.float32)
    i = np.searchsorted(grid, clipped)
    tie = (i > 0) & (i < grid.size) & \
        (clipped - grid[np.maximum(i - 1, 0)] == grid[np.minimum(i, grid.size - 1)] - clipped)
    assert np.array_equal(got[~tie], want[~tie])
    assert np.array_equal(got[~tie], cast_float(x, fmt)[~tie])


def test_bad_input_names_the_value():
    with pytest.raises(ValueError, match="numpy.random.Generator"):
        stochastic_round([1.5], 0)
    with pytest.raises(ValueError, match=r"noise must be a number in \[0, 1\], got 1.5"):
        stochastic_round([1.5], np.random.default_rng(0), noise=1.5)
    with pytest.raises(ValueError, match="NaN or Inf"):
        stochastic_round([np.nan], np.random.default_rng(0))
    with pytest.raises(ValueError, match="e8m0fnu"):
        stochastic_cast_float([1.5], "e8m0fnu", np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown float format 'e9m9'"):
        stochastic_cast_float([1.5], "e9m9", np.random.default_rng(0))
