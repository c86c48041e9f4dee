"""Stochastic rounding: round to one of the two neighbouring grid points, up with the
probability that makes the result unbiased.

On a grid with spacing :math:`\\Delta` around ``x``, with neighbours
:math:`\\lfloor x \\rfloor_\\Delta \\le x < \\lfloor x \\rfloor_\\Delta + \\Delta` (Gupta et al. [1]_, eq. 2):

.. math::

    \\operatorname{SR}(x) = \\begin{cases}
        \\lfloor x \\rfloor_\\Delta + \\Delta & \\text{with probability }
            p = (x - \\lfloor x \\rfloor_\\Delta) / \\Delta \\\\
        \\lfloor x \\rfloor_\\Delta & \\text{with probability } 1 - p
    \\end{cases}
    \\qquad\\Rightarrow\\qquad \\mathbb{E}[\\operatorname{SR}(x)] = x

Round-to-nearest throws away the sub-step part of every value the same way each time, so a sum
of many small updates (a gradient much smaller than the step) can stay at zero forever;
stochastic rounding keeps it in expectation. Hubara et al. [2]_ and DoReFa-Net [3]_ quantize
gradients this way (DoReFa adds uniform noise of one step before rounding, which is the same
distribution).

One primitive, two grids
------------------------
:func:`stochastic_round` rounds to the integers (the grid of spacing 1). Each grid reduces to it:

- the **integer grid** of :func:`refquant.quantize`: the codes are
  :math:`\\operatorname{clamp}(\\operatorname{SR}(x / s) + z, q_{min}, q_{max})`
  (:func:`stochastic_round_codes`, the stochastic sibling of the rounding core
  ``refquant.schemes.uniform._round_codes``);
- the **float grids** of :mod:`refquant.schemes.floats`: inside one binade the grid is uniform
  with spacing :math:`\\Delta(x)` (:func:`refquant.schemes.floats.grid_step`), so
  :math:`\\hat x = \\Delta \\operatorname{SR}(x / \\Delta)` (:func:`stochastic_cast_float`); both
  neighbours lie on the format's grid (the upper one may be the first point of the next binade).

How the draw is made
--------------------
Rounding acts on the magnitude, so the distribution is symmetric in the sign
(:math:`\\operatorname{SR}(-x) \\sim -\\operatorname{SR}(x)`):

.. math::

    \\operatorname{SR}(x) = \\operatorname{sign}(x)\\,\\big(\\lfloor |x| \\rfloor +
        [\\,f > t\\,]\\big), \\quad f = |x| - \\lfloor |x| \\rfloor, \\quad
        t = \\tfrac12 + a\\,(u - \\tfrac12), \\quad u \\sim U[0, 1)

with one ``u = rng.random()`` per element (in C order) and the noise amplitude ``a``
(``noise``). At ``a = 1``, :math:`t = u` and :math:`P(\\text{up}) = P(u < f) = f`: stochastic
rounding. At ``a = 0``, :math:`t = \\tfrac12`: round to nearest, ties toward zero (the zero-noise
limit; it differs from ``np.rint`` only at exact ties, where both neighbours are nearest).
Between them, every value farther than ``a/2`` from a tie rounds to nearest. An integer
(:math:`f = 0`) never moves, whatever ``u``, because :math:`t \\ge 0`.

Resolution: ``rng.random()`` draws multiples of :math:`2^{-53}`, so the probability of rounding
up is ``f`` rounded down to a multiple of :math:`2^{-53}` (relative bias below :math:`2^{-53}/f`
of the sub-step part). All arithmetic is float64 and exact (a floor, a comparison, a
multiplication by a power of two on the float grids).

References
----------
.. [1] S. Gupta, A. Agrawal, K. Gopalakrishnan, P. Narayanan, "Deep Learning with Limited
       Numerical Precision", ICML 2015, arXiv:1502.02551.
.. [2] I. Hubara, M. Courbariaux, D. Soudry, R. El-Yaniv, Y. Bengio, "Quantized Neural
       Networks: Training Neural Networks with Low Precision Weights and Activations", JMLR
       2018, arXiv:1609.07061.
.. [3] S. Zhou, Y. Wu, Z. Ni, X. Zhou, H. Wen, Y. Zou, "DoReFa-Net: Training Low Bitwidth
       Convolutional Neural Networks with Low Bitwidth Gradients", arXiv:1606.06160, 2016.
"""

from __future__ import annotations

import math

import numpy as np

from refquant.schemes.floats import float_format, grid_step
from refquant.schemes.numerics import as_float_array


def _check_rng(rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
                         f"got {type(rng).__name__}")
    return rng


def _check_noise(noise) -> float:
    if isinstance(noise, bool) or not isinstance(noise, (int, float, np.integer, np.floating)) \
            or not (math.isfinite(noise) and 0.0 <= noise <= 1.0):
        raise ValueError(f"noise must be a number in [0, 1], got {noise!r}")
    return float(noise)


def stochastic_round(x, rng: np.random.Generator, *, noise: float = 1.0) -> np.ndarray:
    """Round each element of ``x`` to ``floor(x)`` or ``floor(x) + 1``, unbiased.

    .. math:: \\operatorname{SR}(x) = \\operatorname{sign}(x)\\,\\big(\\lfloor |x| \\rfloor
              + [\\,f > \\tfrac12 + a (u - \\tfrac12)\\,]\\big), \\quad u \\sim U[0, 1)

    Parameters
    ----------
    x : array_like of float, any shape
        Finite (NaN/Inf raise ``ValueError``).
    rng : numpy.random.Generator
        Source of the uniform draws, one per element in C order: the same generator state
        gives the same result.
    noise : float in [0, 1]
        Amplitude ``a`` of the threshold noise: 1 is stochastic rounding (unbiased), 0 round to
        nearest with ties toward zero (see the module docstring).

    Returns
    -------
    numpy.ndarray of float64, the shape of ``x``
        Integers; each is one of the two integers nearest ``x`` (``x`` itself if an integer).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> r = stochastic_round(np.full(100_000, 2.25), rng)
    >>> sorted(set(r.tolist())), round(float(r.mean()), 2)        # up one time in four
    ([2.0, 3.0], 2.25)
    >>> stochastic_round([2.25, -2.75, 3.0], rng, noise=0.0).tolist()   # round to nearest
    [2.0, -3.0, 3.0]
    """
    x = as_float_array(x).astype(np.float64)
    rng = _check_rng(rng)
    a = _check_noise(noise)
    u = rng.random(x.shape)                                  # [x.shape] in [0, 1)
    mag = np.abs(x)
    whole = np.floor(mag)
    t = 0.5 + a * (u - 0.5)                                  # threshold in [0, 1)
    return np.sign(x) * (whole + (mag - whole > t))


def stochastic_round_codes(x, s, z, qmin: int, qmax: int, rng: np.random.Generator, *,
                           noise: float = 1.0) -> np.ndarray:
    """Integer codes with stochastic rounding: ``clamp(SR(x / s) + z, q_min, q_max)`` (float64).

    The sibling of the rounding core ``refquant.schemes.uniform._round_codes`` with its
    ``round`` replaced by :func:`stochastic_round`; ``x``, ``s`` and ``z`` broadcast as there
    (``s > 0``, ``z`` integer-valued). Inside the clipping range each code is one of the two
    codes next to ``x / s + z`` and :math:`\\mathbb{E}[s(q - z)] = x`; outside it the clamp
    makes it biased toward the range, as round to nearest is.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q = stochastic_round_codes(np.full(10_000, 0.3), 0.25, 0.0, -8, 7, rng)
    >>> sorted(set(q.tolist())), round(float(0.25 * q.mean()), 2)    # codes 1 and 2
    ([1.0, 2.0], 0.3)
    """
    x = as_float_array(x).astype(np.float64)
    v = x / np.asarray(s, np.float64)
    return np.clip(stochastic_round(v, rng, noise=noise) + z, qmin, qmax)


def stochastic_cast_float(x, fmt, rng: np.random.Generator, *,
                          noise: float = 1.0) -> np.ndarray:
    """Round ``x`` to the grid of a signed float format (FP8, FP6, FP4) stochastically,
    saturating at ``+-max_normal``.

    .. math:: \\hat x = \\operatorname{clamp}\\big(\\Delta(x)\\,\\operatorname{SR}(x / \\Delta(x)),
              \\; -x_{max},\\; x_{max}\\big)

    with the grid spacing :math:`\\Delta(x)` of :func:`refquant.schemes.floats.grid_step`. With
    ``noise=0`` this is :func:`refquant.schemes.floats.cast_float` (``saturate=True``) except
    at exact ties, which go toward zero here and to the even code there.

    Parameters
    ----------
    x : array_like of float, any shape
        Finite.
    fmt : str or FloatFormat
        A signed format of :data:`refquant.schemes.floats.FLOAT_FORMATS` (``"e4m3fn"``,
        ``"e5m2"``, ``"e2m3fn"``, ``"e3m2fn"``, ``"e2m1fn"``); the scale format ``"e8m0fnu"``
        is not offered (``ValueError``).
    rng : numpy.random.Generator
    noise : float in [0, 1]
        As in :func:`stochastic_round`.

    Returns
    -------
    numpy.ndarray of float32, the shape of ``x``
        Values of the format's grid (exact in float32), as ``cast_float`` returns them.
        Unbiased for ``|x| <= max_normal``; a value between ``max_normal`` and the next point of
        the (virtual) grid above it is clamped when it rounds up, so it is biased toward
        ``max_normal`` there.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> r = stochastic_cast_float(np.full(100_000, 0.3), "e4m3fn", rng)   # 0.28125 or 0.3125
    >>> sorted(set(r.tolist())), round(float(r.mean()), 3)
    ([0.28125, 0.3125], 0.3)
    """
    f = float_format(fmt)
    if not f.signed:
        raise ValueError(f"stochastic rounding to the scale format {f.name!r} is not offered; "
                         f"use a signed element format")
    x = as_float_array(x).astype(np.float64)
    step = grid_step(x, f)                                   # [x.shape], powers of two
    r = step * stochastic_round(x / step, rng, noise=noise)  # exact: power-of-two scaling
    return np.clip(r, -f.max_normal, f.max_normal).astype(np.float32)


__all__ = ["stochastic_round", "stochastic_round_codes", "stochastic_cast_float"]
