"""Tests of refquant.calibration.observers: the four observers per tensor, channel and group.

Oracles
-------
* per-group data ranges and percentiles from plain Python loops over index -> group
  (``i // group_size``, ``idx[axis]``), with NumPy's percentile on each group's own values;
* MSE: a brute-force loop over the grid, one group at a time, through the public
  ``fake_quantize`` (not the observer's vectorized search); the search's grouped
  quantize-dequantize pinned equal to ``quantize`` / ``dequantize`` bit for bit;
* KL: a scalar re-implementation of the entropy calibration from its description (lists and
  loops: histogram, P with folded outliers, Q merged and expanded, KL), for symmetric windows
  and for the greedy asymmetric search.
"""

import doctest
import importlib
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from refquant import QuantSpec
from refquant import QParams
from refquant.calibration.observers import (OBSERVERS, KLObserver, MinMaxObserver, MSEObserver,
                                PercentileObserver, _fake_quantize_groups, calibrate)
from refquant.schemes.spec import grouped, param_shape
from refquant.calibration.fake import fake_quantize
from refquant.schemes.uniform import clip_range, dequantize, qparams_from_range, quantize

ROUNDINGS = ("half_even", "half_away")
_values = st.one_of(st.floats(-100, 100, allow_nan=False, width=64),
                    st.integers(-20, 20).map(lambda k: k / 4), st.just(0.0))


def _group_members(shape, spec):
    """{parameter index: [array indices]} by a naive loop (the granularity's definition)."""
    members = {}
    for idx in np.ndindex(*shape):
        if spec.granularity == "tensor":
            key = ()
        elif spec.granularity == "channel":
            key = (idx[spec.axis % len(shape)],)
        else:
            key = idx[:-1] + (idx[-1] // spec.group_size,)
        members.setdefault(key, []).append(idx)
    return members


@st.composite
def cases(draw, methods=("minmax", "percentile", "mse", "kl")):
    method = draw(st.sampled_from(methods))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
    granularity = draw(st.sampled_from(["tensor", "channel", "group"]))
    symmetric = draw(st.booleans())
    bits = draw(st.sampled_from([2, 3, 4] if method == "kl" else [2, 3, 4, 8]))
    kw = dict(bits=bits, symmetric=symmetric, granularity=granularity,
              rounding=draw(st.sampled_from(ROUNDINGS)), restricted=symmetric and draw(st.booleans()))
    if granularity == "channel":
        kw["axis"] = draw(st.integers(-len(shape), len(shape) - 1))
    if granularity == "group":
        kw["group_size"] = draw(st.integers(1, shape[-1] + 1))
    x = draw(arrays(np.float64, shape, elements=_values)) * 10.0 ** draw(st.integers(-3, 3))
    opts = {"kl": {"bins": 32}, "mse": {"grid": 20}, "percentile": {"percentile": draw(
        st.sampled_from([50.0, 90.0, 99.0, 100.0]))}}.get(method, {})
    return x, QuantSpec(**kw), method, opts


def test_registry():
    assert set(OBSERVERS) == {"minmax", "percentile", "mse", "kl"}
    assert OBSERVERS["minmax"] is MinMaxObserver and OBSERVERS["kl"] is KLObserver
    assert OBSERVERS["percentile"] is PercentileObserver and OBSERVERS["mse"] is MSEObserver


@settings(max_examples=100)
@given(cases())
def test_clip_range_inside_the_data_range(case):
    x, spec, method, opts = case
    obs = OBSERVERS[method](spec, **opts).update(x)
    lo, hi = obs.clip_range()
    assert lo.shape == hi.shape == param_shape(x.shape, spec)
    qp = obs.qparams()
    q_lo, q_hi = clip_range(qp, spec)
    for key, idxs in _group_members(x.shape, spec).items():
        vals = [float(x[i]) for i in idxs]
        vmin, vmax = min(vals), max(vals)
        amax = max(abs(vmin), abs(vmax))
        if spec.symmetric:
            assert lo[key] == -hi[key] and 0 <= hi[key] <= amax
            # the quantizer's positive end s * q_max is a up to the float32 rounding of s
            # (unless the zero-range convention s = 1 or the floor s >= float32 tiny applies)
            if hi[key] / spec.qmax >= np.finfo(np.float32).tiny:
                assert q_hi[key] <= amax * (1 + 2.0**-23)
        elif method in ("minmax", "percentile"):
            assert vmin <= lo[key] <= hi[key] <= vmax
        else:   # mse, kl shrink [min(x, 0), max(x, 0)] toward 0
            assert min(vmin, 0.0) <= lo[key] <= 0.0 <= hi[key] <= max(vmax, 0.0)
        if method == "minmax":
            assert (lo[key], hi[key]) == ((-amax, amax) if spec.symmetric else (vmin, vmax))
    # 0 is always representable: exactly zero in, exactly zero out
    y = fake_quantize(x, spec, qparams=qp)
    assert np.all(np.isfinite(y)) and np.all(y[x == 0] == 0)


@settings(max_examples=100)
@given(cases(methods=("mse",)))
def test_mse_error_never_above_minmax(case):
    x, spec, _, opts = case
    obs = MSEObserver(spec, **opts).update(x)
    y_mse = fake_quantize(x, spec, qparams=obs.qparams())
    y_mm = fake_quantize(x, spec, method="minmax")
    for idxs in _group_members(x.shape, spec).values():
        rows = tuple(np.array(idxs).T)
        e_mse = math.fsum((x[rows] - y_mse[rows]) ** 2)
        e_mm = math.fsum((x[rows] - y_mm[rows]) ** 2)
        # both sums are of exact float64 squares; fsum is correctly rounded, so only the
        # observer's own (pairwise) summation can differ, by a few ulp
        assert e_mse <= e_mm * (1 + 1e-12)
    assert np.all((obs.alpha > 0) & (obs.alpha <= 1))
    total_mse, total_mm = np.sum((x - y_mse) ** 2), np.sum((x - y_mm) ** 2)
    assert total_mse <= total_mm * (1 + 1e-12)


@settings(max_examples=100)
@given(cases(methods=("minmax",)), st.sampled_from([np.float64, np.float32]))
def test_search_quantizer_equals_quantize_dequantize(case, dtype):
    """The MSE search's grouped quantize-dequantize (NaN-padded short groups included) is
    dequantize(quantize(x)) bit for bit, in the dtype of the data, with clipping scales."""
    x, spec, _, _ = case
    x = x.astype(dtype)
    qp = calibrate(x, spec)
    qp = QParams(qp.scale * np.float32(0.6), qp.zero_point)
    want = dequantize(quantize(x, qp, spec), qp, spec, dtype=dtype)
    got = _fake_quantize_groups(grouped(x, spec), qp, spec)
    assert got.dtype == dtype
    assert np.array_equal(got, grouped(want, spec), equal_nan=True)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity,kw", [("tensor", {}), ("channel", {"axis": -1}),
                                            ("group", {"group_size": 5})])
def test_mse_equals_brute_force_per_group(symmetric, granularity, kw):
    rng = np.random.default_rng(7)
    x = rng.standard_t(3, size=(3, 12)).astype(np.float32)             # heavy tails: clipping pays
    spec = QuantSpec(bits=3, symmetric=symmetric, granularity=granularity, **kw)
    grid = 25
    obs = MSEObserver(spec, grid=grid).update(x)
    lo, hi = obs.clip_range()
    for key, idxs in _group_members(x.shape, spec).items():
        v = np.array([x[i] for i in idxs])
        t_spec = QuantSpec(bits=3, symmetric=symmetric)
        v_min, v_max, v_amax = float(v.min()), float(v.max()), float(np.abs(v).max())   # exact
        d_lo, d_hi = (-v_amax, v_amax) if symmetric else (min(v_min, 0.0), max(v_max, 0.0))
        errs = []
        for k in range(1, grid + 1):
            qp = qparams_from_range(k / grid * d_lo, k / grid * d_hi, t_spec)
            errs.append(np.mean((v.astype(np.float64) - fake_quantize(v, t_spec, qparams=qp)) ** 2))
        best = min(errs)
        k_best = max(k for k in range(1, grid + 1) if errs[k - 1] == best)   # ties: larger alpha
        assert obs.alpha[key] == k_best / grid
        assert math.isclose(obs.mse[key], best, rel_tol=1e-12)
        assert (lo[key], hi[key]) == (k_best / grid * d_lo, k_best / grid * d_hi)
    assert np.any(obs.alpha < 1)                                        # the search did clip somewhere


@settings(max_examples=60)
@given(cases(methods=("percentile",)))
def test_percentile_matches_numpy_per_group(case):
    x, spec, _, opts = case
    lo, hi = PercentileObserver(spec, **opts).update(x).clip_range()
    p = opts["percentile"]
    for key, idxs in _group_members(x.shape, spec).items():
        v = np.array([x[i] for i in idxs])
        if spec.symmetric:
            assert hi[key] == np.percentile(np.abs(v), p) and lo[key] == -hi[key]
        else:
            assert (lo[key], hi[key]) == (np.percentile(v, 100 - p), np.percentile(v, p))


def test_percentile_100_is_minmax():
    x = np.random.default_rng(1).standard_normal((4, 9))
    for spec in (QuantSpec(bits=4, granularity="channel"), QuantSpec(bits=4, symmetric=False),
                 QuantSpec(bits=4, granularity="group", group_size=4)):
        a, b = calibrate(x, spec, "percentile", percentile=100), calibrate(x, spec, "minmax")
        assert np.array_equal(a.scale, b.scale) and np.array_equal(a.zero_point, b.zero_point)


# ------------------------------------------------------------------------- KL oracle


EPS = 1e-4      # KLObserver's default smoothing probability


def _kl_oracle_window(hist, start, t, levels):
    """KL(P || Q) for the window [start, start + t) of ``hist`` (a list of counts)."""
    window = hist[start:start + t]
    P = list(window)
    P[0] += sum(hist[:start])
    P[-1] += sum(hist[start + t:])
    Q = [0.0] * t
    for j in range(levels):
        chunk = [k for k in range(t) if k * levels // t == j]
        count = sum(window[k] for k in chunk)
        nonzero = [k for k in chunk if P[k] > 0]
        for k in nonzero:
            Q[k] = count / len(nonzero)
    sp, sq = sum(P), sum(Q)
    p = [v / sp for v in P]
    q = [v / sq if sq > 0 else 0.0 for v in Q]
    q = [EPS if P[k] > 0 and q[k] == 0 else q[k] for k in range(t)]     # smoothing
    q = [v / sum(q) for v in q]
    return sum(p[k] * math.log(p[k] / q[k]) for k in range(t) if P[k] > 0)


def _kl_oracle(values, bins, levels, symmetric):
    """(window start, width, kl) chosen for one group."""
    if symmetric:
        lo, hi = 0.0, max(abs(v) for v in values)
        values = [abs(v) for v in values]
    else:
        lo, hi = min(min(values), 0.0), max(max(values), 0.0)
    w = (hi - lo) / bins
    hist = [0] * bins
    for v in values:
        hist[min(max(math.floor((v - lo) / w), 0), bins - 1)] += 1
    if symmetric:
        best = (0, bins, math.inf)
        for t in range(bins, levels - 1, -1):
            kl = _kl_oracle_window(hist, 0, t, levels)
            if kl < best[2]:
                best = (0, t, kl)
        return best
    z = -lo / w
    zero_bin = min(max(math.floor(z), 0), bins - 1)
    start = 0
    best = (0, bins, _kl_oracle_window(hist, 0, bins, levels))
    for t in range(bins - 1, levels - 1, -1):
        # the window [start, start + t + 1) drops its emptier end bin, never the bin of 0
        can_left, can_right = start + 1 <= zero_bin, start + t > zero_bin
        n_left, n_right = hist[start], hist[start + t]
        left_farther = (z - start) > (start + t + 1 - z)
        if can_left and (not can_right or n_left < n_right or (n_left == n_right and left_farther)):
            start += 1
        kl = _kl_oracle_window(hist, start, t, levels)
        if kl < best[2]:
            best = (start, t, kl)
    return best


@settings(max_examples=40)
@given(st.lists(st.one_of(st.floats(-50, 50, allow_nan=False), st.integers(-8, 8).map(float)),
                min_size=1, max_size=60),
       st.sampled_from([2, 3]), st.sampled_from([16, 24, 40]))
def test_kl_symmetric_matches_scalar_oracle(values, bits, bins):
    spec = QuantSpec(bits=bits)
    obs = KLObserver(spec, bins=bins).update(np.array(values))
    _, hi = obs.clip_range()
    if max(abs(v) for v in values) == 0:
        assert hi == 0
        return
    start, t, kl = _kl_oracle(values, bins, spec.qmax + 1, symmetric=True)
    assert math.isclose(float(obs.kl), kl, rel_tol=1e-9, abs_tol=1e-12)
    # the chosen width is the oracle's, or one with the same divergence up to rounding
    assert int(obs.n_bins) == t or math.isclose(
        _kl_oracle_window(_oracle_hist_sym(values, bins), 0, int(obs.n_bins), spec.qmax + 1), kl,
        rel_tol=1e-9, abs_tol=1e-12)
    amax = max(abs(v) for v in values)
    assert math.isclose(float(hi), min(int(obs.n_bins) * amax / bins, amax), rel_tol=1e-15)


def _oracle_hist_sym(values, bins):
    amax = max(abs(v) for v in values)
    hist = [0] * bins
    for v in values:
        hist[min(math.floor(abs(v) / (amax / bins)), bins - 1)] += 1
    return hist


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("bits", [2, 3])
def test_kl_asymmetric_matches_scalar_oracle(seed, bits):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.standard_normal(300) + rng.uniform(-1, 1), rng.uniform(-30, 30, 2)])
    bins = 48
    spec = QuantSpec(bits=bits, symmetric=False)
    obs = KLObserver(spec, bins=bins).update(x)
    lo, hi = obs.clip_range()
    start, t, kl = _kl_oracle(list(x), bins, 2**bits, symmetric=False)
    assert int(obs.n_bins) == t and math.isclose(float(obs.kl), kl, rel_tol=1e-9)
    d_lo, d_hi = min(x.min(), 0), max(x.max(), 0)
    w = (d_hi - d_lo) / bins
    assert math.isclose(float(lo), max(d_lo + start * w, d_lo), rel_tol=1e-12, abs_tol=1e-12)
    assert math.isclose(float(hi), min(d_lo + (start + t) * w, d_hi), rel_tol=1e-12, abs_tol=1e-12)


@pytest.mark.parametrize("spec", [QuantSpec(bits=6), QuantSpec(bits=6, symmetric=False),
                                  QuantSpec(bits=4, granularity="channel", axis=0),
                                  QuantSpec(bits=4, symmetric=False, granularity="group", group_size=96)])
def test_kl_threshold_reproducible(spec):
    """The threshold is a function of the data alone: not of a second run, of the batching,
    or of the order of the batches or of the values within a group."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 300)) * np.array([[1], [2], [3], [4]])
    x2 = rng.standard_t(4, size=(4, 300))

    def kl_range(*batches):
        obs = KLObserver(spec, bins=256)
        for b in batches:
            obs.update(b)
        return obs.clip_range()

    reference = kl_range(x, x2)
    others = [kl_range(x.copy(), x2.copy()), kl_range(x2, x)]
    if spec.granularity != "group":    # groups run along the last axis: keep its positions
        perm = rng.permutation(300)
        others += [kl_range(np.concatenate([x, x2], axis=1)),
                   kl_range(x2[:, perm], x[:, :77], x[:, 77:])]
    for lo, hi in others:
        assert np.array_equal(lo, reference[0]) and np.array_equal(hi, reference[1])


def test_kl_clips_an_outlier():
    # Gaussian bulk (|x| < 4) plus one value at 100: entropy calibration clips it
    rng = np.random.default_rng(0)
    x = np.append(rng.standard_normal(5000), 100.0)
    obs = KLObserver(QuantSpec(bits=8)).update(x)
    # 128 levels at 2048 bins: the narrowest window is 128 bins = 100 * 128 / 2048 = 6.25
    assert float(obs.clip_range()[1]) == 6.25 and int(obs.n_bins) == 128
    lo, hi = KLObserver(QuantSpec(bits=4, symmetric=False)).update(x).clip_range()
    assert 1.0 < float(hi) < 10.0 and float(lo) < -1.0


def test_bits16_kl_needs_more_bins():
    with pytest.raises(ValueError, match="bins=2048 is fewer than the 32768 quantization levels"):
        KLObserver(QuantSpec(bits=16))


# ------------------------------------------------------------------------- batching


@pytest.mark.parametrize("method,opts", [("minmax", {}), ("percentile", {"percentile": 99.0}),
                                         ("mse", {"grid": 30}), ("kl", {"bins": 256})])
@pytest.mark.parametrize("spec", [QuantSpec(bits=4), QuantSpec(bits=4, symmetric=False, granularity="channel"),
                                  QuantSpec(bits=3, granularity="channel", axis=0)])
def test_batches_equal_one_batch(method, opts, spec):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 40)) * rng.uniform(0.5, 3, (6, 1))
    whole = OBSERVERS[method](spec, **opts).update(x)
    parts = OBSERVERS[method](spec, **opts)
    for cols in (slice(0, 7), slice(7, 31), slice(31, 40)):      # channels on axis 0 stay whole
        parts.update(x[:, cols])
    a, b = whole.qparams(), parts.qparams()
    assert np.array_equal(a.scale, b.scale) and np.array_equal(a.zero_point, b.zero_point)


def test_observer_copies_the_batch():
    x = np.linspace(-1, 1, 50)
    obs = PercentileObserver(QuantSpec(bits=8), percentile=100).update(x)
    x[:] = 0.0                                         # the caller reuses its buffer
    assert float(obs.clip_range()[1]) == 1.0


@pytest.mark.parametrize("method", sorted(OBSERVERS))
@pytest.mark.parametrize("value", [0.0, 2.5, -0.125])
def test_constant_data(method, value):
    spec_kw = dict(bits=4, granularity="channel", axis=1)
    for symmetric in (True, False):
        spec = QuantSpec(symmetric=symmetric, **spec_kw)
        x = np.full((5, 3), value)
        qp = calibrate(x, spec, method, **({"bins": 256} if method == "kl" else {}))
        y = fake_quantize(x, spec, qparams=qp)
        assert np.all(np.isfinite(qp.scale)) and np.all(np.isfinite(y))
        if value == 0.0:
            assert np.all(qp.scale == 1) and np.all(y == 0)
        else:                                          # a constant is a range end: hit to s/2
            assert np.all(np.abs(y - x) <= qp.scale / 2 + 1e-12)


# ------------------------------------------------------------------------- bad input


def test_bad_input_names_the_value():
    spec = QuantSpec(bits=8)
    with pytest.raises(ValueError, match="'entropy'"):
        calibrate(np.ones(3), spec, method="entropy")
    with pytest.raises(ValueError, match="None"):
        calibrate(np.ones(3), spec, method=None)
    for p in (49.9, 100.5, -1, np.nan, True, "99"):
        with pytest.raises(ValueError, match="got " + re.escape(repr(p))):
            PercentileObserver(spec, percentile=p)
    for g in (0, -1, 2.5, None):
        with pytest.raises(ValueError, match="grid must be a positive integer, got " + re.escape(repr(g))):
            MSEObserver(spec, grid=g)
    for b in (0, 2.5, True):
        with pytest.raises(ValueError, match="bins must be a positive integer, got " + repr(b)):
            KLObserver(spec, bins=b)
    for e in (0.0, 1.0, -1e-3, np.nan, "1e-4", True):
        with pytest.raises(ValueError, match="eps must be a number in \\(0, 1\\), got " + re.escape(repr(e))):
            KLObserver(spec, eps=e)
    with pytest.raises(ValueError, match="bins=100 is fewer than the 128"):
        KLObserver(spec, bins=100)
    with pytest.raises(ValueError, match="bins=200 is fewer than the 256"):
        KLObserver(QuantSpec(bits=8, symmetric=False), bins=200)
    for cls in OBSERVERS.values():
        with pytest.raises(ValueError, match=r"qparams\(\) called before any update"):
            cls(spec).qparams()
        with pytest.raises(ValueError, match="NaN or Inf"):
            cls(spec).update(np.array([1.0, np.nan]))
        with pytest.raises(ValueError, match=r"empty array \(shape \(0,\)\)"):
            cls(spec).update(np.zeros(0))
        with pytest.raises(ValueError, match=r"parameter shape \(3,\), earlier batches gave \(2,\)"):
            cls(QuantSpec(granularity="channel")).update(np.ones((2, 4))).update(np.ones((3, 4)))
        with pytest.raises(ValueError, match="QuantSpec, got dict"):
            cls({"bits": 8})


def test_unknown_keyword_is_an_error():
    with pytest.raises(TypeError, match="percentile"):
        calibrate(np.ones(3), QuantSpec(), "minmax", percentile=99)


def test_doctests():
    # (``import refquant.calibration.observers as m`` would give the function: see refquant/__init__.py)
    module = importlib.import_module("refquant.calibration.observers")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
