"""Non-uniform quantization: a codebook of levels instead of an evenly spaced grid.

Every quantizer here is the same rule, nearest level from a sorted table, with a different table:

.. math::

    q = \\arg\\min_i |x / s - c_i|, \\qquad \\hat x = s\\, c_q

- :func:`codebook_quantize` / :func:`codebook_dequantize`: any strictly increasing table ``c``;
- log-scale (power-of-two) quantization, :class:`LogSpec`: the magnitudes
  :math:`\\{0\\} \\cup \\{2^{-k}\\}_{k=0}^{L-1}` with a separate sign [1]_;
- NF4, :data:`NF4_LEVELS`: the 16 NormalFloat levels of QLoRA [2]_, with absmax scales per
  block of ``block_size`` elements (:func:`nf4_quantize`);
- Lloyd-Max, :func:`fit_lloyd_max`: a table fitted to the data by minimising the mean squared
  error (1-D k-means) [3]_ [4]_.

Symbols
-------
=  ===================================================================================
x  real input, any shape (weights are (out_features, in_features))
s  scale > 0 (float32): a scalar, or one per parameter group / block
c  levels, 1-D, strictly increasing (float64 internally)
q  integer code: an index into ``c`` (codebooks), or a signed level number (log-scale)
L  number of power-of-two magnitude levels of a :class:`LogSpec`
=  ===================================================================================

The nearest-level rule (exact midpoints, ties to the lower level) and the codebook and NF4
quantizers live in :mod:`refquant.schemes.codebook`; they are re-exported here.

Log-scale codes and error bound
-------------------------------
``q`` in ``[-L, L]``: ``q = 0`` is exactly 0 and ``q != 0`` is
:math:`\\hat x = \\operatorname{sign}(q)\\, s\\, 2^{|q| - L}` (so ``|q| = L`` is ``s`` and ``|q| = 1``
is :math:`s 2^{-(L-1)}`; codes are ordered like their values). The magnitude is rounded to the
nearest level in the *linear* domain (the codebook rule on :math:`|x|/s`, ties toward zero), the
sign is kept, so :math:`q(-x) = -q(x)`. Between :math:`2^{-(k+1)}` and :math:`2^{-k}` the decision
threshold is the midpoint :math:`\\tfrac34 2^{-k}`, where the relative error peaks at
:math:`\\tfrac{1/4}{3/4}`:

.. math::

    |x - \\hat x| \\le \\tfrac13 |x| \\quad \\text{for } s\\,2^{-(L-1)} \\le |x| \\le s, \\qquad
    |x - \\hat x| \\le s\\,2^{-L} \\quad \\text{for } |x| < s\\,2^{-(L-1)}

(rounding in the log domain instead would allow :math:`\\sqrt2 - 1 \\approx 0.414`). Values with
:math:`|x| > s` clip to :math:`\\pm s`. Exact zero stays exactly zero.

Zero-range convention
---------------------
Absmax scales (log-scale, NF4) of an all-zero group or block are 1, so it quantizes to the
code of exactly 0 and dequantizes to exactly 0, without NaN. Scales are never below the
smallest normal float32.

References
----------
.. [1] D. Miyashita, E. H. Lee, B. Murmann, "Convolutional Neural Networks using Logarithmic
       Data Representation", arXiv:1603.01025, 2016.
.. [2] T. Dettmers, A. Pagnoni, A. Holtzman, L. Zettlemoyer, "QLoRA: Efficient Finetuning of
       Quantized LLMs", NeurIPS 2023, arXiv:2305.14314.
.. [3] S. P. Lloyd, "Least Squares Quantization in PCM", IEEE Trans. Inf. Theory 28(2), 1982.
.. [4] J. Max, "Quantizing for Minimum Distortion", IRE Trans. Inf. Theory 6(1), 1960.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from refquant.schemes.codebook import (_C_MAX, NF4_LEVELS, _absmax, _check_scale,
                                      _nearest_index, _separable, _twice_thresholds,
                                      codebook_dequantize, codebook_quantize, nf4_dequantize,
                                      nf4_quantize)
from refquant.schemes.numerics import as_float_array, check_positive_int, normalize_axis
from refquant.schemes.spec import check_granularity, expand, param_shape

MAX_LOG_LEVELS = 127          # codes [-L, L] fit in int8

# ---------------------------------------------------------------------------------------------
# Log-scale (power-of-two) quantization


@dataclass(frozen=True)
class LogSpec:
    """Log-scale quantization: a sign and ``levels`` power-of-two magnitudes plus an exact zero.

    Parameters
    ----------
    levels : int
        ``L`` in 1..127: magnitudes :math:`s 2^{-k}`, ``k = 0 .. L-1``. Codes are ``[-L, L]``,
        which take ``bits = ceil(log2(2L + 1))`` bits (``L = 7``: 4 bits, ``L = 3``: 3 bits).
    granularity, axis, group_size
        One scale per tensor, per channel along ``axis``, or per group of ``group_size`` along
        the last axis, exactly as in :class:`refquant.QuantSpec`.
    """

    levels: int = 7
    granularity: str = "tensor"
    axis: int = 0
    group_size: int | None = None

    def __post_init__(self):
        if (isinstance(self.levels, bool) or not isinstance(self.levels, (int, np.integer))
                or not 1 <= self.levels <= MAX_LOG_LEVELS):
            raise ValueError(f"levels must be an integer in 1..{MAX_LOG_LEVELS}, got {self.levels!r}")
        check_granularity(self.granularity, self.axis, self.group_size)

    @property
    def bits(self) -> int:
        """Bits per code: ``ceil(log2(2L + 1))``."""
        return math.ceil(math.log2(2 * self.levels + 1))

    @property
    def magnitudes(self) -> np.ndarray:
        """The table of ``|q| / s``: ``[0, 2^-(L-1), ..., 2^-1, 1]`` (index = ``|q|``)."""
        L = self.levels
        return np.concatenate([[0.0], np.ldexp(1.0, np.arange(1, L + 1) - L)])


def _check_log(spec, x_shape, scale, name="scale"):
    if not isinstance(spec, LogSpec):
        raise ValueError(f"spec must be a LogSpec, got {type(spec).__name__}")
    if spec.granularity == "channel" and len(x_shape):
        normalize_axis(spec.axis, len(x_shape))
    s = _check_scale(scale, np.asarray(scale).shape, name)
    return expand(s, x_shape, spec)


def log_calibrate(x, spec: LogSpec) -> np.ndarray:
    """Absmax scale per parameter group (float32, of ``param_shape(x.shape, spec)``): the largest
    magnitude maps to the top level :math:`2^0`. All-zero groups get 1."""
    x = as_float_array(x)
    if not isinstance(spec, LogSpec):
        raise ValueError(f"spec must be a LogSpec, got {type(spec).__name__}")
    param_shape(x.shape, spec)                                 # validates the axis
    return _absmax(x, spec)


def log_quantize(x, spec: LogSpec, scale=None) -> np.ndarray:
    """Signed log-scale codes ``q`` in ``[-L, L]`` (int8), nearest level in the linear domain.

    .. math:: |q| = \\arg\\min_{j \\in 0..L} \\big|\\,|x|/s - m_j\\big|, \\quad
              m_0 = 0,\\; m_j = 2^{j - L}; \\qquad q = \\operatorname{sign}(x)\\,|q|

    Parameters
    ----------
    x : array_like of float, any shape
    spec : LogSpec
    scale : array_like of float, ``param_shape(x.shape, spec)``, optional
        ``s > 0``; default :func:`log_calibrate` ``(x, spec)`` (call it yourself to keep the
        scale for :func:`log_dequantize`).

    Returns
    -------
    numpy.ndarray of int8, the shape of ``x``

    Examples
    --------
    >>> log_quantize([1.0, -0.5, 0.3, 0.374, 0.376, 0.0, -0.001], LogSpec(levels=3), scale=1.0)
    array([ 3, -2,  1,  1,  2,  0,  0], dtype=int8)
    """
    x = as_float_array(x)
    if scale is None:
        scale = log_calibrate(x, spec)
    s = _check_log(spec, x.shape, scale)
    t = np.abs(x.astype(np.float64)) / s                      # [...] magnitude in scale units
    j = _nearest_index(t, spec.magnitudes)                    # [...] in 0..L, ties toward zero
    return (np.sign(x) * j).astype(np.int8)


def log_dequantize(codes, scale, spec: LogSpec, dtype=np.float32) -> np.ndarray:
    """Values :math:`\\hat x = \\operatorname{sign}(q)\\, s\\, 2^{|q| - L}` (0 for ``q = 0``).

    >>> log_dequantize(np.array([3, -2, 1, 0], np.int8), 1.0, LogSpec(levels=3))
    array([ 1.  , -0.5 ,  0.25,  0.  ], dtype=float32)
    """
    q = np.asarray(codes)
    if q.dtype.kind not in "iu":
        raise ValueError(f"codes must be an integer array, got dtype {q.dtype}")
    s = _check_log(spec, q.shape, scale)
    L = spec.levels
    if q.size and (q.min() < -L or q.max() > L):
        raise ValueError(f"codes outside [{-L}, {L}]: found {q.min()}..{q.max()}")
    q = q.astype(np.int64)
    x_hat = np.sign(q) * s * spec.magnitudes[np.abs(q)]
    return x_hat.astype(dtype)


def log_fake_quantize(x, spec: LogSpec, scale=None) -> np.ndarray:
    """``log_dequantize(log_quantize(x, spec, s), s, spec)`` with ``s`` from :func:`log_calibrate`
    unless given; returned in ``x``'s floating dtype (float64 for integer input)."""
    x = as_float_array(x)
    s = log_calibrate(x, spec) if scale is None else scale
    return log_dequantize(log_quantize(x, spec, s), s, spec, dtype=x.dtype)


# ---------------------------------------------------------------------------------------------
# Lloyd-Max


@dataclass(frozen=True)
class LloydMaxResult:
    """A fitted codebook: ``levels`` (float64, strictly increasing), ``mse`` after each accepted
    iteration (``mse[0]`` is the initial table's), ``level_history`` ``[len(mse), n]`` the table
    at each of those points, ``n_iter`` the iterations accepted and ``converged`` whether a
    fixed point was reached before ``iters`` ran out."""

    levels: np.ndarray
    mse: np.ndarray
    level_history: np.ndarray
    n_iter: int
    converged: bool


def _cells(x_sorted: np.ndarray, c: np.ndarray):
    """Boundaries of each level's cell in the sorted data (nearest level, ties to the lower):
    the number of data values at or below each exact midpoint, as in :func:`_nearest_index`."""
    S, E = _twice_thresholds(c)
    v = 2.0 * x_sorted
    edges = np.where(E >= 0, np.searchsorted(v, S, side="right"),   # 2x <= S_j + E_j
                     np.searchsorted(v, S, side="left"))
    return np.concatenate([[0], edges, [x_sorted.size]])           # [n + 1]


def _mse(x_sorted, c, bounds) -> float:
    counts = np.diff(bounds)
    return float(np.mean((x_sorted - np.repeat(c, counts)) ** 2))


def fit_lloyd_max(x, n_levels: int, iters: int = 100, seed: int = 0, init: str = "quantile") -> LloydMaxResult:
    """A codebook of ``n_levels`` levels minimising the mean squared error on ``x`` (Lloyd-Max).

    Alternates the two optimality conditions of Lloyd [1]_ and Max [2]_ (1-D k-means):

    .. math::

        \\text{cells } C_i = \\{x : q(x) = i\\} \\text{ (nearest level)}, \\qquad
        c_i \\leftarrow \\frac{1}{|C_i|} \\sum_{x \\in C_i} x

    Each step cannot increase the MSE. A level whose cell is empty keeps its value. The loop
    stops at a fixed point (the MSE no longer decreases, e.g. by float64 rounding) or after
    ``iters`` iterations; only steps that decrease the MSE are accepted, so ``mse`` is strictly
    decreasing.

    Parameters
    ----------
    x : array_like of float, any shape (flattened), finite, non-empty
    n_levels : int
        Number of levels ``n >= 1``. If ``x`` has at most ``n`` distinct values, the table is
        those values (fewer than ``n`` levels, zero error).
    iters : int
        Maximum number of iterations (>= 0).
    seed : int
        Seed of ``numpy.random.default_rng`` for ``init="random"``.
    init : {"quantile", "random"}
        Initial table: the ``(i + 1/2) / n`` quantiles of ``x`` (if two coincide, evenly spaced
        entries of the sorted distinct values), or ``n`` distinct values of ``x`` drawn at random.

    Returns
    -------
    LloydMaxResult

    References
    ----------
    .. [1] S. P. Lloyd, "Least Squares Quantization in PCM", IEEE Trans. Inf. Theory 28(2), 1982.
    .. [2] J. Max, "Quantizing for Minimum Distortion", IRE Trans. Inf. Theory 6(1), 1960.

    Examples
    --------
    >>> res = fit_lloyd_max([0.0, 1.0, 2.0, 10.0, 11.0, 12.0], 2)
    >>> res.levels.tolist(), res.converged
    ([1.0, 11.0], True)
    """
    x = as_float_array(x).astype(np.float64).ravel()
    if x.size == 0:
        raise ValueError("cannot fit a codebook to an empty array")
    if np.any(np.abs(x) > _C_MAX):
        raise ValueError(f"x has a value beyond 2**1022 in magnitude: {float(x[np.abs(x) > _C_MAX][0])!r}")
    n = check_positive_int(n_levels, "n_levels")
    if isinstance(iters, bool) or not isinstance(iters, (int, np.integer)) or iters < 0:
        raise ValueError(f"iters must be a non-negative integer, got {iters!r}")
    if init not in ("quantile", "random"):
        raise ValueError(f"init must be 'quantile' or 'random', got {init!r}")
    x_sorted = np.sort(x)
    distinct = np.unique(x_sorted)
    if distinct.size <= n:
        mse = np.zeros(1)
        return LloydMaxResult(distinct, mse, distinct[None, :], 0, True)

    if init == "random":
        c = np.sort(np.random.default_rng(seed).choice(distinct, size=n, replace=False))
    else:
        c = np.quantile(x_sorted, (np.arange(n) + 0.5) / n)
        if not _separable(c):
            c = distinct[((np.arange(n) + 0.5) * distinct.size / n).astype(np.int64)]
    if not _separable(c):
        raise ValueError("the initial levels are too close together (within two float64 steps) "
                         "to order their decision thresholds; use fewer levels")
    bounds = _cells(x_sorted, c)
    history, mses = [c], [_mse(x_sorted, c, bounds)]
    converged = False
    for _ in range(int(iters)):
        counts = np.diff(bounds)                                   # [n] cell sizes
        full = counts > 0
        starts = bounds[:-1][full]                                 # empty cells hold no data, so
        sums = np.add.reduceat(x_sorted, starts)                   # segments = the full cells
        c_new = c.copy()
        c_new[full] = sums / counts[full]                          # centroid of each cell
        lo = x_sorted[bounds[:-1][full]]                           # the centroid lies in its cell;
        hi = x_sorted[bounds[1:][full] - 1]                        # clip away float rounding
        c_new[full] = np.clip(c_new[full], lo, hi)
        if not _separable(c_new):                                  # only by float rounding
            converged = True
            break
        bounds_new = _cells(x_sorted, c_new)
        mse_new = _mse(x_sorted, c_new, bounds_new)
        if not mse_new < mses[-1]:
            converged = True
            break
        c, bounds = c_new, bounds_new
        history.append(c)
        mses.append(mse_new)
    return LloydMaxResult(c, np.array(mses), np.array(history), len(mses) - 1, converged)


__all__ = ["LogSpec", "log_calibrate", "log_quantize", "log_dequantize", "log_fake_quantize",
           "codebook_quantize", "codebook_dequantize", "NF4_LEVELS", "nf4_quantize",
           "nf4_dequantize", "fit_lloyd_max", "LloydMaxResult"]
