"""Calibration observers: from data to a clipping range and quantization parameters.

Each observer sees data in batches (``update(x)``, any number of times), reports the clipping
range it chose (``clip_range()``, two arrays of the spec's parameter shape, see
:func:`refquant.schemes.spec.param_shape`) and turns it into :class:`~refquant.schemes.spec.QParams`
(``qparams()``, via :func:`refquant.schemes.uniform.qparams_from_range`). :func:`calibrate` is the
one-batch shortcut. Every observer works per tensor, per channel (any axis) and per group.

Methods (:data:`OBSERVERS`)
---------------------------
==============  ==========================================================================
``minmax``      ``[min x, max x]`` of each parameter group
``percentile``  ``[P_{100-p}(x), P_p(x)]``; symmetric specs: ``a = P_p(|x|)``
``mse``         the range shrunk by ``alpha*``, ``alpha* = argmin_alpha ||x - Q_alpha(x)||^2``
                over the grid ``alpha = k / n`` (``k = 1..n``)
``kl``          TensorRT's entropy calibration: the threshold minimizing ``KL(P || Q)``
==============  ==========================================================================

Symbols
-------
x          data of one parameter group (all batches seen), NaN-padded members ignored
a          symmetric threshold: the clipping range is ``[-a, a]``, ``0 <= a <= max |x|``
lo, hi     asymmetric clipping range
alpha      shrink factor in (0, 1] of the min-max range (``mse``)
P, Q       reference and quantized histograms over the candidate window (``kl``)

Clipping-range convention
-------------------------
No observer widens the min-max range. For symmetric specs ``clip_range()`` returns
``(-a, a)`` with ``a <= max |x|``. For asymmetric specs ``minmax`` and ``percentile`` return a
range inside ``[min x, max x]``; ``mse`` and ``kl`` shrink the range the asymmetric quantizer
covers anyway, ``[min(min x, 0), max(max x, 0)]`` (:func:`~refquant.schemes.uniform.qparams_from_range`
widens every range to contain 0), toward 0, so their range lies inside that one. For data of
both signs the two coincide with ``[min x, max x]``.

Memory
------
``minmax`` streams (two arrays of the parameter shape). ``percentile``, ``mse`` and ``kl``
keep a copy of every batch (memory = the size of all data seen, in its dtype), so that their
result is exact and does not depend on how the data was split into batches or in which order:
an exact percentile, the true quantization error of each candidate, and one histogram over
the final range. Calibrate them on data that fits in memory.
"""

from __future__ import annotations

import numbers

import numpy as np

from refquant.calibration.entropy import histograms, kl_window_prefix, prefix_sums
from refquant.schemes.numerics import as_float_array, check_positive_int
from refquant.schemes.spec import QParams, QuantSpec, grouped, param_shape
from refquant.schemes.uniform import _dequantize_codes, _round_codes, qparams_from_range


class Observer:
    """Base class: keeps the spec and checks that every batch has the same parameter shape.

    Subclasses implement ``update(x) -> self`` and ``clip_range() -> (lo, hi)``.
    """

    def __init__(self, spec: QuantSpec):
        if not isinstance(spec, QuantSpec):
            raise ValueError(f"spec must be a QuantSpec, got {type(spec).__name__}")
        self.spec = spec
        self._pshape = None

    def _groups(self, x) -> np.ndarray:
        x = as_float_array(x)
        ps = param_shape(x.shape, self.spec)
        if self._pshape is not None and ps != self._pshape:
            raise ValueError(f"batch gives parameter shape {ps}, earlier batches gave "
                             f"{self._pshape}")
        grouped_x = grouped(x, self.spec)
        self._pshape = ps
        return grouped_x

    def _require_data(self):
        if self._pshape is None:
            raise ValueError(f"{type(self).__name__}.qparams() called before any update()")

    def clip_range(self) -> tuple[np.ndarray, np.ndarray]:
        """The chosen clipping range ``(lo, hi)``, float64 arrays of the parameter shape."""
        raise NotImplementedError

    def qparams(self) -> QParams:
        """Scale and zero point for the chosen clipping range."""
        lo, hi = self.clip_range()
        return qparams_from_range(lo, hi, self.spec)


class MinMaxObserver(Observer):
    """Clipping range ``[min(x), max(x)]`` per parameter group, over all batches seen.

    Symmetric specs use ``a = max(|min x|, |max x|)``.

    Examples
    --------
    >>> from refquant import QuantSpec
    >>> obs = MinMaxObserver(QuantSpec(bits=8, symmetric=False))
    >>> obs = obs.update([0.5, 2.0]).update([-1.0, 0.0])
    >>> [float(v) for v in obs.clip_range()]
    [-1.0, 2.0]
    """

    def __init__(self, spec: QuantSpec):
        super().__init__(spec)
        self.lo = self.hi = None

    def update(self, x) -> "MinMaxObserver":
        g = self._groups(x)
        lo, hi = np.nanmin(g, axis=-1), np.nanmax(g, axis=-1)
        self.lo = lo if self.lo is None else np.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else np.maximum(self.hi, hi)
        return self

    def clip_range(self):
        self._require_data()
        lo, hi = np.asarray(self.lo, np.float64), np.asarray(self.hi, np.float64)
        if self.spec.symmetric:
            a = np.maximum(np.abs(lo), np.abs(hi))
            return -a, a
        return lo, hi


class _KeepData(Observer):
    """Observer that keeps every batch (grouped, ``param_shape + (m,)``, NaN-padded)."""

    def __init__(self, spec: QuantSpec):
        super().__init__(spec)
        self._batches = []
        self._range = None

    def update(self, x):
        self._batches.append(np.array(self._groups(x), copy=True))
        self._range = None
        return self

    def _data(self) -> np.ndarray:
        """All data seen, ``param_shape + (m_total,)``, in the (promoted) dtype of the batches."""
        self._require_data()
        if len(self._batches) > 1:
            self._batches = [np.concatenate(self._batches, axis=-1)]
        return self._batches[0]

    def clip_range(self):
        if self._range is None:
            self._range = self._choose(self._data())
        return self._range

    def _choose(self, g):
        raise NotImplementedError


def _covered_range(g64: np.ndarray, spec: QuantSpec):
    """The range a min-max quantizer covers: ``[-max|x|, max|x|]`` (symmetric) or
    ``[min(min x, 0), max(max x, 0)]`` (asymmetric); ``g64`` is ``[..., m]`` NaN-padded."""
    if spec.symmetric:
        a = np.nanmax(np.abs(g64), axis=-1)
        return -a, a
    return np.minimum(np.nanmin(g64, axis=-1), 0.0), np.maximum(np.nanmax(g64, axis=-1), 0.0)


class PercentileObserver(_KeepData):
    """Clip at the ``percentile``-th percentile of each parameter group.

    Asymmetric specs: ``[lo, hi] = [P_{100-p}(x), P_p(x)]``. Symmetric specs: ``a = P_p(|x|)``.
    Percentiles are NumPy's (linear interpolation between order statistics), so the range
    always lies inside ``[min x, max x]`` (``[-max|x|, max|x|]`` for symmetric specs), and
    ``percentile=100`` is exactly min-max.

    Parameters
    ----------
    spec : QuantSpec
    percentile : float
        ``p`` in ``[50, 100]``; default 99.99.

    Examples
    --------
    >>> import numpy as np
    >>> from refquant import QuantSpec
    >>> x = np.arange(101.0)                     # 0, 1, ..., 100
    >>> obs = PercentileObserver(QuantSpec(bits=8, symmetric=False), percentile=99.0).update(x)
    >>> [float(v) for v in obs.clip_range()]
    [1.0, 99.0]
    """

    def __init__(self, spec: QuantSpec, percentile: float = 99.99):
        super().__init__(spec)
        if (isinstance(percentile, bool) or not isinstance(percentile, numbers.Real)
                or not 50.0 <= float(percentile) <= 100.0):
            raise ValueError(f"percentile must be a number in [50, 100], got {percentile!r}")
        self.percentile = float(percentile)

    def _choose(self, g):
        g64 = g.astype(np.float64)                                   # [*P, m]
        p = self.percentile
        if self.spec.symmetric:
            a = np.nanpercentile(np.abs(g64), p, axis=-1)            # [*P]
            return -a, a
        return (np.nanpercentile(g64, 100.0 - p, axis=-1),
                np.nanpercentile(g64, p, axis=-1))


def _fake_quantize_groups(g: np.ndarray, qp: QParams, spec: QuantSpec) -> np.ndarray:
    """``dequantize(quantize(g))`` of grouped data ``[*P, m]`` with parameters of shape ``[*P]``.

    The rounding core of :func:`refquant.quantize` / :func:`refquant.dequantize`
    (:func:`refquant.schemes.uniform._round_codes`, ``_dequantize_codes``) on the grouped view,
    so the error of a candidate equals the error of :func:`refquant.fake_quantize` with it bit
    for bit (tested); NaN padding stays NaN.
    """
    s = qp.scale.astype(np.float64)[..., None]                       # [*P, 1]
    z = qp.zero_point.astype(np.float64)[..., None]
    q = _round_codes(g.astype(np.float64), s, z, spec.qmin, spec.qmax, spec.rounding)
    return _dequantize_codes(q, s, z).astype(g.dtype)                 # [*P, m]


class MSEObserver(_KeepData):
    """MSE-optimal clipping by grid search over shrink factors of the min-max range.

    .. math::

        \\alpha^* = \\arg\\min_{\\alpha \\in \\{1/n, 2/n, \\dots, 1\\}}
        \\sum_i \\big(x_i - Q_{\\alpha}(x_i)\\big)^2, \\qquad
        [lo, hi] = \\alpha^* \\, [\\min(x, 0), \\max(x, 0)]

    (symmetric specs: ``a = alpha* max|x|``), separately for every parameter group and
    vectorized over the groups. ``Q_alpha`` is the spec's quantizer with the parameters
    :func:`~refquant.schemes.uniform.qparams_from_range` gives for the shrunk range; the error is
    computed on the output in the dtype of the data, exactly as
    :func:`refquant.fake_quantize` returns it. ``alpha = 1`` is the min-max quantizer,
    and ties keep the larger ``alpha``, so the error is never above min-max's.

    Parameters
    ----------
    spec : QuantSpec
    grid : int
        ``n``, the number of candidates; default 100.

    Attributes (after ``clip_range()`` or ``qparams()``)
    ----------------------------------------------------
    alpha : ndarray of the parameter shape
        The chosen shrink factor of each group.
    mse : ndarray of the parameter shape
        Its mean squared quantization error.

    References
    ----------
    .. [1] M. Nagel et al., "A White Paper on Neural Network Quantization",
           arXiv:2106.08295, 2021 (section 3.2, MSE-based range setting).

    Examples
    --------
    >>> import numpy as np
    >>> from refquant import QuantSpec
    >>> x = np.append(np.linspace(-1.0, 1.0, 21), 4.0)          # one outlier
    >>> obs = MSEObserver(QuantSpec(bits=3), grid=8).update(x)
    >>> [float(v) for v in obs.clip_range()], float(obs.alpha)   # 3/4 of max|x|
    ([-3.0, 3.0], 0.75)
    """

    def __init__(self, spec: QuantSpec, grid: int = 100):
        super().__init__(spec)
        self.grid = check_positive_int(grid, "grid")
        self.alpha = self.mse = None

    def _choose(self, g):
        x = g.astype(np.float64)                                      # [*P, m]
        lo, hi = _covered_range(x, self.spec)                         # [*P]
        best_err = np.full(lo.shape, np.inf)
        best_alpha = np.ones(lo.shape)
        for k in range(self.grid, 0, -1):                             # alpha = 1 first
            alpha = k / self.grid
            qp = qparams_from_range(alpha * lo, alpha * hi, self.spec)
            x_hat = _fake_quantize_groups(g, qp, self.spec).astype(np.float64)
            err = np.nanmean((x - x_hat) ** 2, axis=-1)               # [*P]
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_alpha = np.where(better, alpha, best_alpha)
        self.alpha, self.mse = best_alpha, best_err
        return best_alpha * lo, best_alpha * hi


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

    Attributes (after ``clip_range()`` or ``qparams()``)
    ----------------------------------------------------
    kl : ndarray of the parameter shape
        The smallest divergence of each group.
    n_bins : ndarray of the parameter shape
        The chosen window width ``t`` in bins.

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


OBSERVERS = {"minmax": MinMaxObserver, "percentile": PercentileObserver, "mse": MSEObserver,
             "kl": KLObserver}


def calibrate(x, spec: QuantSpec, method: str = "minmax", **kw) -> QParams:
    """Quantization parameters for ``x`` under ``spec`` by the named calibration ``method``.

    Parameters
    ----------
    x : array_like of float
    spec : QuantSpec
    method : str
        One of :data:`OBSERVERS`: ``"minmax"``, ``"percentile"``, ``"mse"``, ``"kl"``.
    **kw
        Passed to the observer's constructor (e.g. ``percentile=99.9``, ``grid=50``,
        ``bins=1024``).

    Returns
    -------
    QParams of shape ``param_shape(x.shape, spec)``.

    Examples
    --------
    >>> from refquant import QuantSpec
    >>> qp = calibrate([-1.0, 0.25, 0.5], QuantSpec(bits=8), method="minmax")
    >>> float(qp.scale) == float(np.float32(1.0 / 127))
    True
    """
    if not isinstance(method, str) or method not in OBSERVERS:
        raise ValueError(f"unknown calibration method {method!r}; choose from {sorted(OBSERVERS)}")
    return OBSERVERS[method](spec, **kw).update(x).qparams()
