"""Fixed-point requantization: a real multiplier as an int32 mantissa and a shift, after Jacob et
al. [1]_ (eq. 5-6), and the two ways integer engines apply it to an int32 accumulator.

.. math::

    M = M_0\\, 2^{-(31 + n)}, \\qquad M_0 \\in [2^{30}, 2^{31}), \\qquad
    \\operatorname{requant}(acc) \\approx acc \\cdot M

Roundings (``rounding=``)
-------------------------
``"single"`` (the default): one rounding of the exact int64 product,

.. math::

    \\operatorname{requant}(acc) = \\big\\lfloor (acc\\, M_0 + 2^{30+n}) / 2^{31+n} \\big\\rfloor

(round to nearest, ties toward :math:`+\\infty`). This is TFLite's
``MultiplyByQuantizedMultiplier`` built with ``TFLITE_SINGLE_ROUNDING`` (and ruy's).

``"gemmlowp"``: gemmlowp's two steps [2]_, TFLite's default ``MultiplyByQuantizedMultiplier``:

.. math::

    y = \\operatorname{SRDHM}(acc \\cdot 2^{\\ell}, M_0), \\qquad
    \\operatorname{requant}(acc) = \\operatorname{RDBPOT}(y, r), \\qquad
    \\ell = \\max(-n, 0),\\; r = \\max(n, 0)

* :func:`saturating_rounding_doubling_high_mul` (SRDHM, ARM's ``VQRDMULH``):
  :math:`\\lfloor a b / 2^{31} + 1/2 \\rfloor` (ties toward :math:`+\\infty`), except
  that :math:`(-2^{31})(-2^{31})` saturates to :math:`2^{31} - 1`;
* :func:`rounding_divide_by_pot` (RDBPOT): :math:`x / 2^{r}` rounded to nearest, ties away
  from zero.

The two agree bit for bit when ``n <= 0`` (a left shift, then one rounding). For ``n > 0`` the
second rounding adds up to ``2^-(r+1)`` to the first one's half unit, so the two-step result is
within ``3/4`` of the exact product (not ``1/2``) and at most one unit from the single rounding:
``acc = 5``, ``M = 1/4`` gives ``SRDHM = round(2.5) = 3``, then ``round(1.5) = 2``, where
``5/4`` rounds to 1 (tested).

Symbols
-------
====  ====================================================================================
acc   int32 accumulator, any shape
M     real multiplier ``S_x S_w / S_y`` (float64), broadcast against ``acc``
M0    int32 mantissa, ``[2^30, 2^31)`` from :func:`quantize_multiplier` (any ``[0, 2^31)``
      is accepted, as TFLite does)
n     int32 shift, ``M = M0 2^-(31+n)``; TFLite's ``shift`` is ``-n``. Accepted range
      ``[-30, 31]`` (TFLite's); :func:`quantize_multiplier` gives ``[-16, 30]``
l, r  the left and right shifts of the two-step form
====  ====================================================================================

References
----------
.. [1] B. Jacob et al., "Quantization and Training of Neural Networks for Efficient
       Integer-Arithmetic-Only Inference", CVPR 2018, arXiv:1712.05877.
.. [2] Google, gemmlowp, ``fixedpoint/fixedpoint.h``: ``SaturatingRoundingDoublingHighMul``
       and ``RoundingDivideByPOT``; TensorFlow Lite,
       ``tensorflow/lite/kernels/internal/common.h``: ``MultiplyByQuantizedMultiplier``.
"""

from __future__ import annotations

import numpy as np

from refquant.schemes.numerics import round_half_away

M_MIN, M_MAX = 2.0**-31, 2.0**15        # real multipliers quantize_multiplier accepts
SHIFT_MIN, SHIFT_MAX = -30, 31          # shifts n accepted (TFLite's -31 < shift <= 30, negated)
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
ROUNDINGS = ("single", "gemmlowp")


def quantize_multiplier(M) -> tuple[np.ndarray, np.ndarray]:
    """Decompose real multipliers ``M`` into ``(M0, n)`` with ``M ~= M0 2^-(31 + n)``.

    ``M0`` is an int32 in ``[2^30, 2^31)`` (the normalized mantissa, eq. 6 of [1]_) and ``n`` an
    int32 shift (negative for ``M >= 1``). ``M0`` is rounded to nearest, ties away from zero
    (``std::round``, as TFLite's ``QuantizeMultiplier``; a tie needs ``M`` with exactly 32
    significant bits), so the relative error is at most ``2^-31``:

    .. math::  |M_0 2^{-(31+n)} - M| \\le 2^{-(31+n)} / 2 \\le 2^{-31} M .

    Parameters
    ----------
    M : array_like of float
        Finite, in ``[2^-31, 2^15]``; else ``ValueError`` naming the first offending value.

    Returns
    -------
    M0, n : numpy.ndarray of int32, the shape of ``M`` (0-d arrays for a scalar)

    References
    ----------
    .. [1] B. Jacob et al., "Quantization and Training of Neural Networks for Efficient
           Integer-Arithmetic-Only Inference", CVPR 2018, arXiv:1712.05877.

    Examples
    --------
    >>> M0, n = quantize_multiplier(0.5)              # 0.5 = 2^30 / 2^31
    >>> int(M0), int(n)
    (1073741824, 0)
    >>> [int(v) for v in quantize_multiplier(3.0)]    # 3 = (3 2^29) 2^-(31 - 2)
    [1610612736, -2]
    """
    M = np.asarray(M, np.float64)
    bad = ~(np.isfinite(M) & (M >= M_MIN) & (M <= M_MAX))
    if np.any(bad):
        raise ValueError(f"multipliers must be finite and in [2^-31, 2^15], got "
                         f"{float(M[bad].ravel()[0])!r}")
    mant, exp = np.frexp(M)                  # M = mant 2^exp, mant in [0.5, 1)
    M0 = round_half_away(mant * 2.0**31).astype(np.int64)   # exact product; TFLite's std::round
    carry = M0 == 2**31                      # mant rounded up to 1.0
    M0 = np.where(carry, 2**30, M0)
    n = -(exp + carry)                       # M = (M0 / 2^31) 2^-n
    return np.asarray(M0, np.int32), np.asarray(n, np.int32)


def _int_array(v, name: str, lo: int, hi: int) -> np.ndarray:
    """``v`` as an int64 array after checking it is integer-typed and inside ``[lo, hi]``."""
    a = np.asarray(v)
    if a.dtype.kind not in "iu":
        raise ValueError(f"{name} must be an integer array, got dtype {a.dtype}")
    a = a.astype(np.int64)
    out = (a < lo) | (a > hi)
    if np.any(out):
        raise ValueError(f"{name} must lie in [{lo}, {hi}], got {int(a[out].ravel()[0])}")
    return a


def _int32(v, name: str) -> np.ndarray:
    a = np.asarray(v)
    if a.dtype != np.int32:
        raise ValueError(f"{name} must be int32, got {a.dtype}")
    return a


def saturating_rounding_doubling_high_mul(a, b) -> np.ndarray:
    """gemmlowp's ``SaturatingRoundingDoublingHighMul``: the high word of ``2 a b``, rounded.

    .. math::

        \\operatorname{SRDHM}(a, b) = \\begin{cases} 2^{31} - 1 & a = b = -2^{31} \\\\
        \\lfloor a b / 2^{31} + 1/2 \\rfloor & \\text{otherwise} \\end{cases}

    gemmlowp adds the nudge ``2^30`` (``ab >= 0``) or ``1 - 2^30`` (``ab < 0``) to the exact
    int64 product and divides by ``2^31`` truncating toward zero, which rounds to nearest with
    ties toward :math:`+\\infty` (``-0.5 -> 0``, ``0.5 -> 1``). Vectorized in int64.

    Parameters
    ----------
    a, b : array_like of int32, broadcastable

    Returns
    -------
    numpy.ndarray of int32, the broadcast shape

    Examples
    --------
    >>> a = np.array([-2**31, 2**30, -2**30, 3], np.int32)
    >>> b = np.array([-2**31, 2**30, 1, 2**30], np.int32)
    >>> saturating_rounding_doubling_high_mul(a, b).tolist()    # saturate, 2^29, -0.5 -> 0, 1.5 -> 2
    [2147483647, 536870912, 0, 2]
    """
    a64 = _int32(a, "a").astype(np.int64)
    b64 = _int32(b, "b").astype(np.int64)
    ab = a64 * b64                                           # exact: |ab| <= 2^62
    t = ab + np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    high = np.where(t >= 0, t >> 31, -((-t) >> 31))          # C division: truncate toward 0
    overflow = (a64 == INT32_MIN) & (b64 == INT32_MIN)
    return np.where(overflow, INT32_MAX, high).astype(np.int32)


def rounding_divide_by_pot(x, exponent) -> np.ndarray:
    """gemmlowp's ``RoundingDivideByPOT``: ``x / 2^exponent`` rounded to nearest, ties away
    from zero (a rounding arithmetic right shift).

    .. math::

        \\operatorname{RDBPOT}(x, r) = \\lfloor x / 2^r \\rfloor
        + [\\, x \\bmod 2^r > \\lfloor (2^r - 1) / 2 \\rfloor + [x < 0] \\,]

    Parameters
    ----------
    x : array_like of int32
    exponent : int or array_like of int, in ``[0, 31]``, broadcastable against ``x``

    Returns
    -------
    numpy.ndarray of int32, the broadcast shape

    Examples
    --------
    >>> rounding_divide_by_pot(np.array([5, -5, 6, -6, 7], np.int32), 1).tolist()
    [3, -3, 3, -3, 4]
    """
    x64 = _int32(x, "x").astype(np.int64)
    r = _int_array(exponent, "exponent", 0, 31)
    mask = (np.int64(1) << r) - 1
    remainder = x64 & mask                                   # low r bits (two's complement)
    threshold = (mask >> 1) + (x64 < 0)
    return ((x64 >> r) + (remainder > threshold)).astype(np.int32)


def multiply_by_quantized_multiplier(acc, M0, n, rounding: str = "single") -> np.ndarray:
    """``acc * M0 / 2^(31 + n)`` rounded to an integer, in integer arithmetic only.

    Parameters
    ----------
    acc : array_like of int32
    M0 : int or array_like of int, in ``[0, 2^31)``, broadcastable against ``acc``
    n : int or array_like of int, in ``[-30, 31]``, broadcastable against ``acc``
    rounding : {"single", "gemmlowp"}
        See the module docstring. ``"single"``: one rounding of the exact int64 product, ties
        toward :math:`+\\infty`. ``"gemmlowp"``: TFLite's default two-step form; its left shift
        ``acc 2^-n`` (``n < 0``) must fit in int32 (TFLite leaves an overflow undefined), else
        ``ValueError`` naming the accumulator.

    Returns
    -------
    numpy.ndarray of int64, the broadcast shape

    Examples
    --------
    >>> M0, n = quantize_multiplier(0.25)                    # 2^30 2^-(31 + 1)
    >>> acc = np.array([5, 6, -6, -10], np.int32)            # 1.25, 1.5, -1.5, -2.5
    >>> multiply_by_quantized_multiplier(acc, M0, n).tolist()
    [1, 2, -1, -2]
    >>> multiply_by_quantized_multiplier(acc, M0, n, rounding="gemmlowp").tolist()
    [2, 2, -2, -3]
    """
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    acc = _int32(acc, "acc")
    M0 = _int_array(M0, "M0", 0, INT32_MAX)
    n = _int_array(n, "shift n", SHIFT_MIN, SHIFT_MAX)
    if rounding == "single":
        s = 31 + n                                           # total shift, >= 1
        prod = acc.astype(np.int64) * M0                     # exact: < 2^62
        return (prod + (np.int64(1) << (s - 1))) >> s
    left, right = np.maximum(-n, 0), np.maximum(n, 0)
    x = acc.astype(np.int64) << left
    over = (x < INT32_MIN) | (x > INT32_MAX)
    if np.any(over):
        i = np.argwhere(over)[0]
        raise ValueError(f"acc={int(np.broadcast_to(acc, over.shape)[tuple(i)])} times "
                         f"2^{int(np.broadcast_to(left, over.shape)[tuple(i)])} overflows int32 "
                         f"in the gemmlowp requantization")
    y = saturating_rounding_doubling_high_mul(x.astype(np.int32), M0.astype(np.int32))
    return rounding_divide_by_pot(y, right).astype(np.int64)


__all__ = ["M_MIN", "M_MAX", "SHIFT_MIN", "SHIFT_MAX", "ROUNDINGS", "quantize_multiplier",
           "saturating_rounding_doubling_high_mul", "rounding_divide_by_pot",
           "multiply_by_quantized_multiplier"]
