"""Entropy (KL-divergence) calibration, after TensorRT's INT8 entropy calibrator.

Symbols: ``P``, ``Q`` the reference and quantized histograms over a candidate window of ``t``
bins, ``L`` the number of quantization levels, ``B`` the histogram's bins. The search itself is
in :mod:`refquant.calibration.entropy`; this module is the observer around it
(``calibrate(x, spec, method="kl")``).
"""

from __future__ import annotations

import numbers

import numpy as np

from refquant.calibration.base import _covered_range, _KeepData
from refquant.calibration.entropy import histograms, kl_window_prefix, prefix_sums
from refquant.schemes.float_quant import FloatSpec
from refquant.schemes.numerics import check_positive_int
from refquant.schemes.spec import QuantSpec


class KLObserver(_KeepData):
    """Entropy (KL-divergence) calibration, as in TensorRT's INT8 entropy calibrator [1]_.

    Per parameter group, a histogram of ``B = bins`` equal bins is taken of ``|x|`` over
    ``[0, max|x|]`` (symmetric specs) or of ``x`` over ``[min(x, 0), max(x, 0)]``
    (asymmetric). For every candidate window of ``t = L .. B`` bins (``L`` = the number of
    quantization levels: ``q_max + 1`` magnitudes for symmetric specs, ``2^b`` codes for
    asymmetric ones):

    1. the reference distribution ``P`` is the window's counts with the counts outside it (the
       clipped outliers) folded into its first and last bin;
    2. the quantized distribution ``Q`` merges the window's own counts into ``L`` chunks and
       expands each chunk back evenly over its bins where ``P`` is nonzero;
    3. both are normalized and the divergence
       :math:`D_{KL}(P \\| Q) = \\sum_i P_i \\log(P_i / Q_i)` is computed.

    The window with the smallest divergence wins (the widest on ties). Where ``P > 0`` but
    ``Q = 0`` (a bin holding only folded-in outliers, in a chunk without counts of its own),
    ``Q`` gets the small probability ``eps`` (then is normalized again) instead of making the
    divergence infinite, as common implementations of the method smooth it; without this, a
    single outlier far above the bulk of the data could never be clipped, because the narrowest
    window (``L`` bins) would still end beyond the bulk.

    Symmetric specs: the windows are ``[0, t)``, every ``t`` from ``L`` to ``B`` (TensorRT's
    candidates, visited from the widest), threshold ``a = t w``. Asymmetric specs (TensorRT's
    calibrator is symmetric only; this extension is a choice of this implementation): the window
    shrinks from ``B`` bins to ``L`` one bin per step, each step dropping whichever end bin
    holds fewer counts (on a tie, the end farther from 0), never the bin that holds 0; so each
    window on the path clips as little data as a one-bin-at-a-time trim can, and the divergence
    of every window on the path is computed and the smallest wins.

    Everything is a deterministic function of the histogram, which is built once over all the
    data seen: the threshold is the same for any batching or order of the data.

    Parameters
    ----------
    spec : QuantSpec
    bins : int
        Histogram bins ``B`` (default 2048, TensorRT's); at least ``L``.
    eps : float
        Probability given to bins where ``P > 0`` but ``Q = 0`` (default 1e-4), in (0, 1).

    Attributes
    ----------
    kl : ndarray of the parameter shape
        The smallest divergence of each group; set by ``clip_range()`` or ``qparams()``.
    n_bins : ndarray of the parameter shape
        The chosen window width ``t`` in bins; set by ``clip_range()`` or ``qparams()``.

    Notes
    -----
    The loop runs over the ``B - L + 1`` candidate widths, vectorized over parameter groups.
    :func:`refquant.calibration.entropy.kl_window` states the divergence of one window directly (``O(t)``
    per group); the search uses :func:`~refquant.calibration.entropy.kl_window_prefix`, the same value
    from prefix sums in
    ``O(L)`` per group, so the whole search costs ``O(groups * B * L)``.

    The narrowest window has ``L`` bins, i.e. ``L / B`` of the range (1/16 for 8-bit
    symmetric codes, 1/8 for 8-bit asymmetric codes at ``B = 2048``): no threshold below that
    can be chosen, however far the largest outlier lies; raise ``bins`` where that matters.

    Groups whose range is empty (all zero) get the range ``[0, 0]`` (see the zero-range
    convention in :mod:`refquant.schemes.spec`).

    References
    ----------
    .. [1] S. Migacz, "8-bit Inference with TensorRT", GPU Technology Conference (GTC), 2017.

    Examples
    --------
    >>> import numpy as np
    >>> from refquant import QuantSpec
    >>> x = np.append(np.linspace(-1.0, 1.0, 1001), 40.0)       # one far outlier
    >>> obs = KLObserver(QuantSpec(bits=4), bins=256).update(x)  # L = 8 levels, bins of 40/256
    >>> [float(v) for v in obs.clip_range()], int(obs.n_bins)    # the narrowest window: 8 bins
    ([-1.25, 1.25], 8)
    """

    def __init__(self, spec: QuantSpec, bins: int = 2048, eps: float = 1e-4):
        super().__init__(spec)
        self.bins = check_positive_int(bins, "bins")
        if (isinstance(eps, bool) or not isinstance(eps, numbers.Real)
                or not 0.0 < float(eps) < 1.0):
            raise ValueError(f"eps must be a number in (0, 1), got {eps!r}")
        self.eps = float(eps)
        if isinstance(spec, FloatSpec):
            raise ValueError("kl calibration needs an integer grid (a QuantSpec); use minmax, "
                             "percentile or mse with a FloatSpec")
        self.levels = spec.qmax + 1 if spec.symmetric else spec.qmax - spec.qmin + 1
        if self.bins < self.levels:
            raise ValueError(f"bins={bins} is fewer than the {self.levels} quantization levels of "
                             f"{spec.bits}-bit codes")
        self.kl = self.n_bins = None

    def _choose(self, g):
        x = g.astype(np.float64)                                      # [*P, m]
        lo, hi = _covered_range(x, self.spec)                         # [*P]
        v = np.abs(x) if self.spec.symmetric else x
        lo_h = np.zeros_like(lo) if self.spec.symmetric else lo
        counts, w = histograms(v, lo_h, hi, self.bins)               # [*P, B], [*P]
        B = self.bins
        sums = prefix_sums(counts)                                   # 3 x [*P, B+1]
        L = self.levels
        best_kl = np.full(lo.shape, np.inf)
        best_t = np.full(lo.shape, B)
        best_start = np.zeros(lo.shape, np.int64)

        def kl_of(start, t):
            return kl_window_prefix(counts, sums, start, t, L, self.eps)

        def keep_if_better(kl, t, start):
            nonlocal best_kl, best_t, best_start
            better = kl < best_kl
            best_kl = np.where(better, kl, best_kl)
            best_t = np.where(better, t, best_t)
            best_start = np.where(better, start, best_start)

        start = np.zeros(lo.shape, np.int64)                          # [*P] first bin of the window
        if self.spec.symmetric:
            for t in range(B, L - 1, -1):                             # windows [0, t), widest first
                keep_if_better(kl_of(start, t), t, start)
        else:
            z = (0.0 - lo) / w                                        # [*P] position of 0 in bins
            zero_bin = np.clip(np.floor(z), 0, B - 1).astype(np.int64)
            keep_if_better(kl_of(start, B), B, start)
            for t in range(B - 1, L - 1, -1):       # [start, start + t + 1) loses one end bin
                can_left = start + 1 <= zero_bin
                can_right = start + t > zero_bin
                n_left = np.take_along_axis(counts, start[..., None], axis=-1)[..., 0]
                n_right = np.take_along_axis(counts, (start + t)[..., None], axis=-1)[..., 0]
                left_farther = (z - start) > (start + t + 1 - z)
                drop_left = can_left & ((n_left < n_right) | ((n_left == n_right) & left_farther)
                                        | ~can_right)
                start = np.where(drop_left, start + 1, start)
                keep_if_better(kl_of(start, t), t, start)
        self.kl, self.n_bins = best_kl, best_t
        empty = hi == lo
        new_lo = np.maximum(lo_h + best_start * w, lo_h)
        new_hi = np.minimum(lo_h + (best_start + best_t) * w, hi)
        new_lo, new_hi = np.where(empty, 0.0, new_lo), np.where(empty, 0.0, new_hi)
        if self.spec.symmetric:
            return -new_hi, new_hi
        return new_lo, new_hi


__all__ = ["KLObserver"]
