"""Non-uniform quantizers (refquant/nonuniform.py): codebooks, NF4, log-scale, Lloyd-Max.

Oracles: brute-force argmin over the table (np.argmin picks the first, i.e. lower, level on a
tie, which is the documented rule), scalar Python loops for absmax blocks and per-group scales,
scipy.stats.norm.ppf for the NF4 construction of QLoRA, and J. Max's 1960 table of optimal
Gaussian quantizers for Lloyd-Max.
"""

import doctest
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refquant as rq
from refquant.schemes import codebook, nonuniform
from refquant.schemes.nonuniform import (LogSpec, codebook_dequantize, codebook_quantize, fit_lloyd_max,
                                 log_calibrate, log_dequantize, log_fake_quantize, log_quantize,
                                 nf4_dequantize, nf4_quantize)

f32 = st.floats(-1e4, 1e4, width=32)


def brute_nearest(u, c):
    """Index of the nearest level, the first (lower) one on a tie, by exact rational distances.

    (Float64 distances are not enough: for the table [0, 2^-149] and u = 1, both distances
    round to 1.0 and argmin would report a tie that does not exist; Hypothesis found this.)
    """
    u = np.asarray(u, np.float64)
    cf = [Fraction(float(v)) for v in np.asarray(c, np.float64)]
    out = np.empty(u.shape, np.int64)
    for i, v in np.ndenumerate(u):
        fv = Fraction(float(v))
        d = [abs(fv - ci) for ci in cf]
        out[i] = d.index(min(d))
    return out


# ---------------------------------------------------------------------------------------------
# Codebooks


@st.composite
def table_and_data(draw):
    c = draw(hnp.arrays(np.float32, st.integers(1, 20), elements=f32, unique=True))
    c = np.sort(c)
    mids = ((c[:-1].astype(np.float64) + c[1:]) / 2).astype(np.float32) if c.size > 1 else c
    elem = st.one_of(f32, st.sampled_from(list(c)), st.sampled_from(list(mids)))
    x = draw(hnp.arrays(np.float32, st.integers(1, 40), elements=elem))
    k = draw(st.integers(-3, 3))
    return c, x, 2.0**k


@given(table_and_data())
def test_codebook_is_nearest_level_with_ties_to_lower(args):
    c, x, s = args            # power-of-two scale: x / s is exact in float64, so ties stay ties
    q = codebook_quantize(x, c, s)
    assert q.dtype == np.uint8 and q.shape == x.shape
    # The oracle divides in float64 as the quantizer does: in float32, a subnormal x / 2 rounds
    # (x = -2^-149, s = 2 lands on the tie between -2^-149 and 0; Hypothesis found it).
    assert np.array_equal(q, brute_nearest(x.astype(np.float64) / s, c))
    exact = s * c.astype(np.float64)[q]
    x_hat = codebook_dequantize(q, c, s)
    assert np.array_equal(x_hat, exact.astype(np.float32))
    # Idempotence: a dequantized value that is exactly s * level maps back to that level. Where
    # s * level is below float32's subnormal grid (c = -2^-149, s = 1/2), the float32 output
    # cannot hold it and rounds to another level's value: there the property does not apply.
    representable = x_hat.astype(np.float64) == exact
    assert np.array_equal(codebook_quantize(x_hat, c, s)[representable], q[representable])


def test_codebook_hand_table():
    c = [-1.0, 0.0, 0.5, 2.0]                # midpoints -0.5, 0.25, 1.25
    x = [-5.0, -0.5, -0.49, 0.25, 0.26, 1.25, 1.2500001, 9.0]
    assert codebook_quantize(x, c).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    # per-row scale broadcast: row 1 is twice as large
    q = codebook_quantize([[0.5, 2.0], [1.0, 4.0]], c, scale=[[1.0], [2.0]])
    assert q.tolist() == [[2, 3], [2, 3]]


def test_codebook_thresholds_are_exact_midpoints():
    # Found by Hypothesis: the float64 sum -2 + -2^-52 rounds to -2, which made x = -1 look like
    # a tie (-> lower level 0) although -2^-52 is nearer; and 2^-149 is nearer to 1.0 than 0 is.
    assert codebook_quantize([-1.0], [-2.0, -(2.0**-52)]).tolist() == [1]
    assert codebook_quantize([-1.0 - 2.0**-52], [-2.0, -(2.0**-52)]).tolist() == [0]
    assert codebook_quantize([1.0], [0.0, 2.0**-149]).tolist() == [1]
    assert codebook_quantize([2.0**-150, 2.0**-151], [0.0, 2.0**-149]).tolist() == [0, 0]  # tie, below
    with pytest.raises(ValueError, match="too close"):
        codebook_quantize([0.0], [1.0 + 2.0**-52, 1.0 + 2.0**-51, 1.0 + 3 * 2.0**-52])


def test_codebook_large_table_uses_uint16():
    c = np.arange(300, dtype=np.float64)
    q = codebook_quantize([0.4, 299.0, 150.5], c)
    assert q.dtype == np.uint16 and q.tolist() == [0, 299, 150]


@pytest.mark.parametrize("levels, match", [
    ([0.0, 2.0, 1.0], "entry 1 = 2.0 is followed by 1.0"),
    ([0.0, 1.0, 1.0], "strictly increasing"),
    ([0.0, np.nan], "NaN or Inf"),
    ([0.0, np.inf], "NaN or Inf"),
    ([], "non-empty"),
    ([[0.0, 1.0]], "1-D"),
])
def test_codebook_bad_tables(levels, match):
    with pytest.raises(ValueError, match=match):
        codebook_quantize([0.0], levels)
    with pytest.raises(ValueError, match=match):
        codebook_dequantize(np.array([0], np.uint8), levels)


def test_codebook_bad_input():
    c = [0.0, 1.0]
    with pytest.raises(ValueError, match="NaN or Inf"):
        codebook_quantize([0.0, np.nan], c)
    for s in (0.0, -1.0, np.nan):
        with pytest.raises(ValueError, match="finite and positive"):
            codebook_quantize([0.0], c, s)
    with pytest.raises(ValueError, match="does not broadcast"):
        codebook_quantize([0.0, 1.0], c, [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="does not broadcast"):
        codebook_quantize([0.0, 1.0], c, [[1.0], [1.0]])   # would enlarge the output
    with pytest.raises(ValueError, match=r"found 0\.\.2"):
        codebook_dequantize(np.array([0, 2]), c)
    with pytest.raises(ValueError, match="integer"):
        codebook_dequantize(np.array([0.0]), c)


# ---------------------------------------------------------------------------------------------
# NF4


def nf4_from_normal_quantiles():
    """QLoRA's NF4 construction (Dettmers et al. 2023, arXiv:2305.14314, sec. 3 and the
    bitsandbytes table): 8 positive and 7 negative normal quantiles between the outer
    probability 1 - delta and 1/2, plus an exact zero, normalised to [-1, 1], with
    delta = (1/(2*15) + 1/(2*16)) / 2 the average of the outer quantile probabilities for
    15 and 16 quantization bins."""
    from scipy.stats import norm

    delta = (1 / (2 * 15) + 1 / (2 * 16)) / 2
    pos = norm.ppf(np.linspace(1 - delta, 0.5, 9)[:-1])     # 8 values, 1/2 excluded
    neg = -norm.ppf(np.linspace(1 - delta, 0.5, 8)[:-1])    # 7 values
    v = np.sort(np.concatenate([neg, [0.0], pos]))
    return v / np.abs(v).max()


def test_nf4_levels_match_normal_quantile_construction():
    pytest.importorskip("scipy")
    v = nf4_from_normal_quantiles()
    L = rq.NF4_LEVELS
    assert L.shape == (16,) and L.dtype == np.float32 and not L.flags.writeable
    # the published table rounds delta to 0.9677083 and stores float32: agreement to ~2e-7
    assert np.max(np.abs(v - L.astype(np.float64))) < 2.5e-7
    assert L[7] == 0.0 and L[0] == -1.0 and L[-1] == 1.0
    assert np.all(np.diff(L) > 0)


def nf4_scalar_oracle(x, block):
    """Per row and block, absmax then nearest NF4 level by a Python loop."""
    codes = np.zeros(x.shape, np.int64)
    absmax = np.zeros(x.shape[:-1] + (-(-x.shape[-1] // block),), np.float64)
    levels = [float(v) for v in rq.NF4_LEVELS]
    for idx in np.ndindex(x.shape[:-1]):
        row = x[idx]
        for b, start in enumerate(range(0, row.size, block)):
            m = max(abs(float(v)) for v in row[start:start + block])
            # documented convention: an all-zero block gets 1, and no scale is below the
            # smallest normal float32 (a block of subnormals quantizes against 2^-126)
            m = 1.0 if m == 0 else max(m, 2.0**-126)
            absmax[idx + (b,)] = m
            for i in range(start, min(start + block, row.size)):
                u = float(row[i]) / m
                d = [abs(u - lv) for lv in levels]
                codes[idx + (i,)] = d.index(min(d))        # first minimum: the lower level
    return codes, absmax


@settings(max_examples=40)
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 70)), elements=f32),
       st.sampled_from([1, 7, 16, 64]))
@example(np.array([[1e-45, 3e-39]], np.float32), 1)           # subnormal blocks (found by Hypothesis)
def test_nf4_blockwise_matches_scalar_oracle(x, block):
    codes, absmax = nf4_quantize(x, block_size=block)
    want_codes, want_absmax = nf4_scalar_oracle(x, block)
    assert np.array_equal(absmax, want_absmax.astype(np.float32))
    assert np.array_equal(codes, want_codes)
    x_hat = nf4_dequantize(codes, absmax, block_size=block)
    assert np.all(np.isfinite(x_hat))
    # error bound: half the widest gap between neighbouring NF4 levels, times the block's absmax
    half_gap = np.max(np.diff(rq.NF4_LEVELS.astype(np.float64))) / 2
    s = np.repeat(want_absmax, block, axis=-1)[..., : x.shape[-1]]
    assert np.all(np.abs(x - x_hat.astype(np.float64)) <= half_gap * s * (1 + 1e-6))


def test_nf4_short_last_block_zero_block_and_extremes():
    x = np.zeros((2, 100), np.float32)
    x[0, :64] = np.linspace(-3, 2, 64)
    x[0, 64:] = np.linspace(0, 0.5, 36)
    codes, absmax = nf4_quantize(x, block_size=64)
    assert absmax.shape == (2, 2)
    assert absmax.tolist() == [[3.0, 0.5], [1.0, 1.0]]                 # zero blocks get scale 1
    assert codes[0, 0] == 0 and codes[0, 99] == 15                      # -absmax and +absmax
    assert np.all(codes[1] == 7)                                        # exact zero level
    x_hat = nf4_dequantize(codes, absmax, block_size=64)
    assert x_hat[0, 0] == -3.0 and x_hat[0, 99] == 0.5 and np.all(x_hat[1] == 0)
    with pytest.raises(ValueError, match="block_size"):
        nf4_quantize(x, block_size=0)
    with pytest.raises(ValueError, match="absmax"):
        nf4_dequantize(codes, -absmax, block_size=64)


# ---------------------------------------------------------------------------------------------
# Log-scale


def naive_absmax(x, spec):
    """Per-element scale by loops (the oracle for log_calibrate)."""
    s = np.empty(x.shape, np.float64)
    if spec.granularity == "tensor":
        s[...] = np.max(np.abs(x)) or 1.0
    elif spec.granularity == "channel":
        for i in range(x.shape[0]):
            s[i] = np.max(np.abs(x[i])) or 1.0
    else:
        for r in range(x.shape[0]):
            for g in range(0, x.shape[1], spec.group_size):
                s[r, g:g + spec.group_size] = np.max(np.abs(x[r, g:g + spec.group_size])) or 1.0
    return s


log_specs = st.one_of(
    st.builds(LogSpec, levels=st.integers(1, 16)),
    st.builds(LogSpec, levels=st.integers(1, 16), granularity=st.just("channel")),
    st.builds(LogSpec, levels=st.integers(1, 16), granularity=st.just("group"),
              group_size=st.integers(1, 9)),
)
# magnitudes spanning ~2^-40 .. 2^13, zeros included
log_elems = st.one_of(st.just(0.0), st.floats(2.0**-40, 1e4, width=32),
                      st.floats(-1e4, -(2.0**-40), width=32))
log_data = hnp.arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 20)), elements=log_elems)


@given(log_data, log_specs)
def test_log_error_bounds_range_sign_zero(x, spec):
    L = spec.levels
    s_param = log_calibrate(x, spec)
    s = naive_absmax(x, spec)
    from refquant.schemes.spec import expand
    assert np.array_equal(expand(s_param, x.shape, spec).astype(np.float64) * np.ones(x.shape), s)
    q = log_quantize(x, spec, s_param)
    assert q.dtype == np.int8 and np.all(np.abs(q.astype(int)) <= L)
    x_hat = log_dequantize(q, s_param, spec).astype(np.float64)
    x64 = x.astype(np.float64)
    err = np.abs(x64 - x_hat)
    inside = np.abs(x64) >= s * 2.0 ** -(L - 1)                  # and |x| <= s by absmax
    assert np.all(3 * err[inside] <= np.abs(x64[inside]))        # 3*err is exact in float64
    assert np.all(err[~inside] <= s[~inside] * 2.0**-L)
    assert np.all(x_hat[x == 0] == 0) and np.all(q[x == 0] == 0)
    assert np.all(np.sign(x_hat) * np.sign(x64) >= 0)            # never flips sign
    assert np.array_equal(log_quantize(-x, spec, s_param), -q)  # odd symmetry
    # nearest level among {0, +-s 2^-k}: brute force over the signed value set
    mags = np.concatenate([[0.0], 2.0 ** -np.arange(L - 1, -1, -1)])      # ascending
    j = brute_nearest(np.abs(x64) / s, mags)
    assert np.array_equal(np.abs(q.astype(int)), j)
    # idempotence, with the same scale and with re-calibration (absmax survives exactly)
    assert np.array_equal(log_fake_quantize(x_hat.astype(np.float32), spec, s_param), x_hat)
    once = log_fake_quantize(x, spec)
    assert np.array_equal(log_fake_quantize(once, spec), once)


def test_log_clipping_with_given_scale():
    spec = LogSpec(levels=4)
    x = np.array([3.0, -10.0, 1.0], np.float32)
    q = log_quantize(x, spec, scale=2.0)
    assert q.tolist() == [4, -4, 3]                       # 3 and -10 clip to +-s = +-2
    assert log_dequantize(q, 2.0, spec).tolist() == [2.0, -2.0, 1.0]


@given(hnp.arrays(np.float32, st.integers(1, 30), elements=log_elems),
       st.integers(1, 12), st.floats(2.0**-10, 2.0**10, width=32))
def test_log_given_scale_clips_and_bounds(x, L, s):
    spec = LogSpec(levels=L)
    x_hat = log_fake_quantize(x, spec, scale=s).astype(np.float64)
    x64, s = x.astype(np.float64), float(s)
    above = np.abs(x64) > s
    assert np.array_equal(x_hat[above], np.sign(x64[above]) * s)          # clipped to +-s
    inside = ~above & (np.abs(x64) >= s * 2.0 ** -(L - 1))
    err = np.abs(x64 - x_hat)
    # x / s is rounded to float64 (s is arbitrary here): allow that one rounding, 2^-50 relative
    assert np.all(err[inside] <= np.abs(x64[inside]) / 3 * (1 + 2.0**-50))
    small = ~above & ~inside
    assert np.all(err[small] <= s * 2.0**-L * (1 + 2.0**-50))


def test_log_hand_table_linear_domain_rounding():
    spec = LogSpec(levels=3)                              # levels 0, 1/4, 1/2, 1 (times s=1)
    x = [1.0, 0.76, 0.75, 0.74, 0.375, 0.3749, 0.125, 0.1249, -0.74, 0.0]
    # 0.75 is the midpoint of 1/2 and 1 (tie -> toward zero); 0.74 -> 1/2 in the linear domain
    # (nearest in the log domain it would be 1, since log2(0.74) = -0.43); 1/8 = midpoint of 0, 1/4
    assert log_quantize(x, spec, 1.0).tolist() == [3, 3, 2, 2, 1, 1, 0, 0, -2, 0]
    assert log_dequantize(np.array([3, 2, 1, 0, -1]), 1.0, spec).tolist() == [1.0, 0.5, 0.25, 0.0, -0.25]
    assert spec.bits == 3 and LogSpec(levels=7).bits == 4 and LogSpec(levels=8).bits == 5


def test_log_constant_and_zero_tensors():
    spec = LogSpec(levels=5, granularity="channel")
    x = np.array([[0.0, 0.0], [-2.5, -2.5]])
    assert log_calibrate(x, spec).tolist() == [1.0, 2.5]
    assert log_fake_quantize(x, spec).tolist() == x.tolist()


@pytest.mark.parametrize("kw, match", [
    (dict(levels=0), "levels"), (dict(levels=128), "levels"), (dict(levels=True), "levels"),
    (dict(levels=2.0), "levels"), (dict(granularity="row"), "granularity"),
    (dict(granularity="group"), "group_size"), (dict(group_size=4), "group_size"),
    (dict(granularity="group", group_size=0), "group_size"), (dict(axis=1.0), "axis"),
])
def test_logspec_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        LogSpec(**kw)


def test_log_bad_input():
    spec = LogSpec(levels=3)
    with pytest.raises(ValueError, match="NaN or Inf"):
        log_quantize([1.0, np.inf], spec)
    with pytest.raises(ValueError, match="finite and positive"):
        log_quantize([1.0], spec, scale=0.0)
    with pytest.raises(ValueError, match="parameter shape"):
        log_quantize(np.ones((2, 3)), LogSpec(granularity="channel"), scale=np.ones(3))
    with pytest.raises(ValueError, match="empty"):
        log_quantize(np.zeros((0, 3)), spec)
    with pytest.raises(ValueError, match=r"codes outside \[-3, 3\]"):
        log_dequantize(np.array([4]), 1.0, spec)
    with pytest.raises(ValueError, match="out of range"):
        log_calibrate(np.ones((2, 2)), LogSpec(granularity="channel", axis=2))
    with pytest.raises(ValueError, match="LogSpec"):
        log_quantize([1.0], rq.QuantSpec())


# ---------------------------------------------------------------------------------------------
# Lloyd-Max


def brute_mse(x, c):
    return float(np.mean((x - np.asarray(c)[brute_nearest(x, c)]) ** 2))


# J. Max, "Quantizing for Minimum Distortion", IRE Trans. Inf. Theory 6(1), 1960, Table I:
# optimal output levels (positive half) and mean squared error for a unit normal source.
MAX_1960 = {2: ([0.7980], 0.3634), 4: ([0.4528, 1.510], 0.1175),
            8: ([0.2451, 0.7560, 1.344, 2.152], 0.03454)}


@pytest.mark.parametrize("n", sorted(MAX_1960))
def test_lloyd_max_recovers_max_1960_gaussian_table(n):
    x = np.random.default_rng(0).standard_normal(200_000)
    res = fit_lloyd_max(x, n, iters=400)
    pos, mse = MAX_1960[n]
    assert res.converged and res.levels.shape == (n,)
    assert np.allclose(res.levels[n // 2:], pos, atol=0.02)      # sampling error ~0.01
    assert np.allclose(-res.levels[: n // 2][::-1], pos, atol=0.02)
    assert abs(res.mse[-1] - mse) < 0.02 * mse


@settings(max_examples=40)
@given(hnp.arrays(np.float64, st.integers(2, 150), elements=st.floats(-100, 100)),
       st.integers(1, 8), st.sampled_from(["quantile", "random"]))
def test_lloyd_max_mse_non_increasing_and_fixed_point(x, n, init):
    res = fit_lloyd_max(x, n, iters=60, seed=3, init=init)
    c = res.levels
    assert np.all(np.diff(c) > 0) and c.size <= n
    assert res.level_history.shape == (res.mse.size, c.size)
    # each iterate's MSE recomputed by brute force: equal to the report and non-increasing
    brute = [brute_mse(x, ci) for ci in res.level_history]
    assert np.allclose(brute, res.mse, rtol=1e-9, atol=1e-12)
    assert all(b <= a for a, b in zip(res.mse, res.mse[1:]))
    assert np.array_equal(res.level_history[-1], c)
    if res.converged and np.unique(x).size > n:
        # Lloyd's centroid condition: every non-empty cell's mean is its level
        idx = brute_nearest(x, c)
        for i in np.unique(idx):
            assert np.isclose(x[idx == i].mean(), c[i], rtol=1e-9, atol=1e-9)
    # deterministic
    res2 = fit_lloyd_max(x, n, iters=60, seed=3, init=init)
    assert np.array_equal(res2.levels, c) and np.array_equal(res2.mse, res.mse)
    # the fitted table works as a codebook
    q = codebook_quantize(x, c)
    assert np.array_equal(q, brute_nearest(x, c))


def test_lloyd_max_few_distinct_values_and_duplicates():
    x = np.array([1.0, 1.0, 2.0, 5.0, 5.0])
    res = fit_lloyd_max(x, 4)
    assert res.levels.tolist() == [1.0, 2.0, 5.0] and res.mse.tolist() == [0.0]
    # many repeated values: the quantile initialisation would repeat a level
    y = np.concatenate([np.zeros(90), np.arange(1.0, 11.0)])
    res = fit_lloyd_max(y, 4)
    assert np.all(np.diff(res.levels) > 0) and res.mse[-1] <= res.mse[0]


@pytest.mark.parametrize("kw, match", [
    (dict(x=[], n_levels=2), "empty"), (dict(x=[1.0, np.nan], n_levels=2), "NaN"),
    (dict(x=[1.0], n_levels=0), "n_levels"), (dict(x=[1.0], n_levels=2, iters=-1), "iters"),
    (dict(x=[1.0], n_levels=2, init="kmeans++"), "init"),
])
def test_lloyd_max_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        fit_lloyd_max(**kw)


def test_module_docstring_examples():
    assert doctest.testmod(nonuniform).failed == 0
    assert doctest.testmod(codebook).failed == 0
    assert nonuniform.codebook_quantize is codebook.codebook_quantize   # re-exported
