"""Tests of refquant.calibration.entropy: histograms and the divergence of a clipping window.

Oracles: hand-computed histograms and divergences (arithmetic in the comments), and the
direct O(t) statement ``kl_window`` for the prefix-sum form ``kl_window_prefix``.
(KLObserver's whole search is checked against a scalar oracle in tests/test_calibrate.py.)
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refquant.calibration.entropy import histograms, kl_window, kl_window_prefix, prefix_sums

EPS = 1e-4


def test_histogram_by_hand():
    # [0, 1] in 4 bins of w = 0.25: 0 -> bin 0, 0.5 -> bin 2, 0.99 -> bin 3, 1.0 (= hi) -> bin 3
    counts, w = histograms(np.array([[0.0, 0.5, 1.0, 0.99]]), np.array([0.0]), np.array([1.0]), 4)
    assert counts.tolist() == [[1, 0, 1, 2]] and w.tolist() == [0.25]
    # NaN padding is not counted; an empty range puts everything in bin 0 with w = 1
    counts, w = histograms(np.array([[3.0, np.nan], [0.0, 0.0]]), np.array([3.0, 0.0]),
                           np.array([3.0, 0.0]), 4)
    assert counts.tolist() == [[1, 0, 0, 0], [2, 0, 0, 0]] and w.tolist() == [1.0, 1.0]


COUNTS = np.array([[2, 0, 1, 1]])


def _both(start, t, levels):
    sums = prefix_sums(COUNTS)
    start = np.array([start])
    return (float(kl_window(COUNTS, sums[0], start, t, levels, EPS)[0]),
            float(kl_window_prefix(COUNTS, sums, start, t, levels, EPS)[0]))


def test_kl_window_by_hand_full_window():
    # window = all 4 bins, L = 2 chunks {0, 1} and {2, 3}: P = [2, 0, 1, 1];
    # Q: chunk 0 has count 2 on its one support bin, chunk 1 count 2 over bins 2, 3 -> [2, 0, 1, 1]
    # so Q = P and KL = 0
    direct, fast = _both(0, 4, 2)
    assert direct == 0.0 and abs(fast) < 1e-15


def test_kl_window_by_hand_shifted_window():
    # window = bins 1..3 (start 1, t 3), L = 2: bin 0's count 2 folds into the first bin
    # P = [0 + 2, 1, 1] -> p = [1/2, 1/4, 1/4]
    # chunks floor(k 2 / 3) = [0, 0, 1]: chunk 0 own count 0 + 1 = 1 over 2 support bins -> 1/2 each,
    # chunk 1 own count 1 -> 1; Q = [1/2, 1/2, 1] -> q = [1/4, 1/4, 1/2]
    # KL = 1/2 ln 2 + 1/4 ln 1 + 1/4 ln(1/2) = ln(2) / 4
    direct, fast = _both(1, 3, 2)
    assert math.isclose(direct, math.log(2) / 4, rel_tol=1e-15)
    assert math.isclose(fast, math.log(2) / 4, rel_tol=1e-12)


def test_kl_window_by_hand_eps_bin():
    # window = bins 0..1 (t 2), L = 2: bins 2, 3 fold into the last bin: P = [2, 0 + 2]
    # Q: chunk 0 -> 2, chunk 1 own count 0 but P > 0 there -> eps after normalizing:
    # q = [1, eps] / (1 + eps); p = [1/2, 1/2]
    # KL = 1/2 ln((1 + eps) / 2) + 1/2 ln((1 + eps) / (2 eps))
    expected = 0.5 * math.log((1 + EPS) / 2) + 0.5 * math.log((1 + EPS) / (2 * EPS))
    direct, fast = _both(0, 2, 2)
    assert math.isclose(direct, expected, rel_tol=1e-14)
    assert math.isclose(fast, expected, rel_tol=1e-12)


@given(st.integers(0, 2**32 - 1))
def test_prefix_sum_form_equals_direct_form(seed):
    """The search's O(L) prefix-sum divergence equals the O(t) direct statement of P and Q."""
    rng = np.random.default_rng(seed)
    B = int(rng.integers(4, 60))
    L = int(rng.integers(2, B + 1))
    counts = rng.integers(0, 6, (3, B)) * (rng.random((3, B)) < rng.random())   # many zeros
    counts[:, rng.integers(0, B)] += 1                                         # no empty group
    t = int(rng.integers(L, B + 1))
    start = rng.integers(0, B - t + 1, 3)
    sums = prefix_sums(counts)
    direct = kl_window(counts, sums[0], start, t, L, EPS)
    fast = kl_window_prefix(counts, sums, start, t, L, EPS)
    np.testing.assert_allclose(fast, direct, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("t", [2, 3, 4])
def test_kl_is_nonnegative(t):
    for start in range(0, 4 - t + 1):
        direct, fast = _both(start, t, 2)
        assert direct >= -1e-15 and fast >= -1e-12
