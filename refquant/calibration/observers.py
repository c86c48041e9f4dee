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
======  =============================================================================
x       data of one parameter group (all batches seen), NaN-padded members ignored
a       symmetric threshold: the clipping range is ``[-a, a]``, ``0 <= a <= max |x|``
lo, hi  asymmetric clipping range
alpha   shrink factor in (0, 1] of the min-max range (``mse``)
P, Q    reference and quantized histograms over the candidate window (``kl``)
======  =============================================================================

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

from refquant.calibration.base import MinMaxObserver, Observer, _covered_range, _KeepData
from refquant.calibration.kl import KLObserver
from refquant.schemes.numerics import check_positive_int
from refquant.schemes.spec import QParams, QuantSpec
from refquant.schemes.float_quant import FloatSpec, round_to_float_grid
from refquant.schemes.uniform import _dequantize_codes, _round_codes, qparams_from_range


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
    if isinstance(spec, FloatSpec):                                  # float elements: s v(fp(g / s))
        pad = np.isnan(g)
        _, g_hat = round_to_float_grid(np.where(pad, 0.0, g), s, spec.fmt, saturate=spec.saturate,
                                       rounding=spec.rounding)
        return np.where(pad, np.nan, g_hat).astype(g.dtype)
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

    Attributes
    ----------
    alpha : ndarray of the parameter shape
        The chosen shrink factor of each group; set by ``clip_range()`` or ``qparams()``.
    mse : ndarray of the parameter shape
        Its mean squared quantization error; set by ``clip_range()`` or ``qparams()``.

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


__all__ = ["Observer", "MinMaxObserver", "PercentileObserver", "MSEObserver", "KLObserver",
           "OBSERVERS", "calibrate"]
