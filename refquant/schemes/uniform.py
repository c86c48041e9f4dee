"""Uniform affine quantization at any granularity.

.. math::

    q = \\operatorname{clamp}\\big(\\operatorname{round}(x / s) + z,\\; q_{min},\\; q_{max}\\big),
    \\qquad \\hat x = s\\,(q - z)

Symbols
-------
========  ==============================================================================
x         real input, any shape (weights are (out_features, in_features))
s         scale, float32 > 0, one per parameter group (see :mod:`refquant.schemes.spec`)
z         integer zero point (0 for symmetric specs)
q         integer code in [q_min, q_max]
x_hat     dequantized value
[lo, hi]  calibrated clipping range of one parameter group
========  ==============================================================================

Parameters from a range (:func:`qparams_from_range`)
----------------------------------------------------
===========  =======================================================================================
symmetric:   ``s = max(|lo|, |hi|) / (2^(b-1) - 1)``, ``z = 0`` (also for the full signed range:
             the extra negative code -2^(b-1) is reachable but not used to set the scale).
asymmetric:  the range is widened to contain 0 (so 0 is exactly representable, as padding and
             ReLU outputs need), ``s = (hi - lo) / (2^b - 1)``, ``z = clamp(round(-lo / s), 0, 2^b - 1)``.
===========  =======================================================================================

Arithmetic is carried out in float64; scales are stored as float32 (as checkpoint formats do).

References
----------
.. [1] B. Jacob et al., "Quantization and Training of Neural Networks for Efficient
       Integer-Arithmetic-Only Inference", CVPR 2018, arXiv:1712.05877.
.. [2] M. Nagel et al., "A White Paper on Neural Network Quantization", arXiv:2106.08295, 2021.
"""

from __future__ import annotations

import numpy as np

from refquant.schemes import float_quant
from refquant.schemes.numerics import as_float_array, round_to_int
from refquant.schemes.spec import QParams, QuantSpec, expand, param_shape

_TINY = np.float64(np.finfo(np.float32).tiny)


def qparams_from_range(lo, hi, spec: QuantSpec) -> QParams:
    """Scale and zero point that map the clipping range ``[lo, hi]`` onto the spec's codes.

    Parameters
    ----------
    lo, hi : array_like of float, the parameter shape
        Lower and upper clipping bound of each parameter group, ``lo <= hi``.
    spec : QuantSpec

    Returns
    -------
    QParams
        See the module docstring for the formulas and the zero-range convention.

    Examples
    --------
    >>> from refquant import QuantSpec
    >>> qp = qparams_from_range(-1.0, 3.0, QuantSpec(bits=8, symmetric=False))
    >>> float(qp.scale), int(qp.zero_point)
    (0.01568627543747425, 64)

    A :class:`~refquant.schemes.float_quant.FloatSpec` gets ``s = max(|lo|, |hi|) / x_max``
    (:func:`~refquant.schemes.float_quant.float_qparams_from_range`).
    """
    if isinstance(spec, float_quant.FloatSpec):
        return float_quant.float_qparams_from_range(lo, hi, spec)
    lo = as_float_array(lo, "lo").astype(np.float64)
    hi = as_float_array(hi, "hi").astype(np.float64)
    if lo.shape != hi.shape:
        raise ValueError(f"lo shape {lo.shape} and hi shape {hi.shape} differ")
    if np.any(lo > hi):
        raise ValueError(f"clipping range has lo > hi (first: lo={float(lo[lo > hi].ravel()[0])!r}, "
                         f"hi={float(hi[lo > hi].ravel()[0])!r})")
    if spec.symmetric:
        amax = np.maximum(np.abs(lo), np.abs(hi))
        s = amax / spec.qmax
        s = np.where(amax == 0, 1.0, np.maximum(s, _TINY)).astype(np.float32)
        return QParams(s, np.zeros(s.shape, np.int32))
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    width = hi - lo
    s = np.where(width == 0, 1.0, np.maximum(width / (spec.qmax - spec.qmin), _TINY)).astype(np.float32)
    z = spec.qmin - round_to_int(lo / s.astype(np.float64), spec.rounding)
    z = np.clip(z, spec.qmin, spec.qmax).astype(np.int32)
    return QParams(s, z)


def _qparams_from_range_gptq_reference(lo, hi, spec: QuantSpec) -> QParams:
    """:func:`qparams_from_range` with the arithmetic of the GPTQ reference implementations.

    ``Quantizer.find_params`` of IST-DASLab's ``quant.py``, AutoGPTQ and GPTQModel, run in
    float64. Asymmetric specs, every step in float64: ``lo = min(lo, 0)``, ``hi = max(hi, 0)``;
    a zero range ``lo == hi == 0`` becomes ``[-1, 1]``; ``s = (hi - lo) / (q_max - q_min)``;
    ``z = q_min + round(-lo / s)`` from this *unrounded* ``s`` (``spec.rounding``; the
    reference's ``torch.round`` is half-to-even). Only then is ``s`` stored as float32, so the
    scale equals :func:`qparams_from_range`'s (except at a zero range, where that gives 1) and
    the zero point differs from its (``-lo`` over the float32 scale) only where ``-lo / s`` is
    within float32 rounding of a tie: at an exactly
    symmetric range ``lo == -hi`` float64 gives ``-lo / s == (q_max - q_min) / 2`` for about
    three rows in four (7.5, rounded to 8, at 4 bits), the float32 scale 7.4999... (7).
    Symmetric specs: :func:`qparams_from_range` unchanged (the reference's ``sym=True`` grid,
    unsigned codes around ``2^(b-1)``, is a different grid).
    """
    if spec.symmetric:
        return qparams_from_range(lo, hi, spec)
    lo = np.minimum(as_float_array(lo, "lo").astype(np.float64), 0.0)
    hi = np.maximum(as_float_array(hi, "hi").astype(np.float64), 0.0)
    zero_range = (lo == 0) & (hi == 0)
    lo, hi = np.where(zero_range, -1.0, lo), np.where(zero_range, 1.0, hi)
    s = (hi - lo) / (spec.qmax - spec.qmin)
    z = np.clip(spec.qmin + round_to_int(-lo / s, spec.rounding), spec.qmin, spec.qmax)
    return QParams(np.maximum(s, _TINY).astype(np.float32), z.astype(np.int32))


def _round_codes(x, s, z, qmin: int, qmax: int, rounding: str) -> np.ndarray:
    """The one rounding core: ``clamp(round(x / s) + z, q_min, q_max)`` as float64.

    ``x``, ``s`` and ``z`` are float64 arrays that broadcast (the caller has expanded the
    parameters and checked them). Every quantizer in refquant that rounds onto a uniform grid
    calls this (GPTQ's column step, the MSE/KL searches, QAT, the integer linears), so that they
    agree with :func:`quantize` bit for bit; tests pin each caller equal to it.
    """
    return np.clip(round_to_int(x / s, rounding) + z, qmin, qmax)


def _dequantize_codes(q, s, z) -> np.ndarray:
    """``s (q - z)`` in float64: the inverse map of :func:`_round_codes`."""
    return s * (q - z)


def _checked(x, qp: QParams, spec: QuantSpec):
    if not isinstance(spec, QuantSpec):
        raise ValueError(f"spec must be a QuantSpec, got {type(spec).__name__}")
    if not isinstance(qp, QParams):
        raise ValueError(f"qparams must be a QParams, got {type(qp).__name__}")
    qp.check(spec)
    s = expand(qp.scale, x.shape, spec).astype(np.float64)
    z = expand(qp.zero_point, x.shape, spec).astype(np.float64)
    return s, z


def quantize(x, qp: QParams, spec: QuantSpec) -> np.ndarray:
    """Integer codes ``q = clamp(round(x / s) + z, q_min, q_max)``.

    Parameters
    ----------
    x : array_like of float, any shape
        Must be finite.
    qp : QParams
        Parameters of shape ``param_shape(x.shape, spec)``.
    spec : QuantSpec

    Returns
    -------
    numpy.ndarray of ``spec.code_dtype``, the shape of ``x``

    Examples
    --------
    >>> from refquant import QuantSpec, QParams
    >>> quantize([0.5, 1.5, 2.5, -0.5, 9.0], QParams(1.0), QuantSpec(bits=4))
    array([0, 2, 2, 0, 7], dtype=int8)

    A :class:`~refquant.schemes.float_quant.FloatSpec` gives the uint8 element codes
    ``fp(x / s)`` instead (:func:`~refquant.schemes.float_quant.float_quantize`).
    """
    if isinstance(spec, float_quant.FloatSpec):
        return float_quant.float_quantize(x, qp, spec)
    x = as_float_array(x)
    s, z = _checked(x, qp, spec)
    q = _round_codes(x.astype(np.float64), s, z, spec.qmin, spec.qmax, spec.rounding)
    return q.astype(spec.code_dtype)


def dequantize(q, qp: QParams, spec: QuantSpec, dtype=np.float32) -> np.ndarray:
    """Real values ``x_hat = s (q - z)`` (computed in float64, returned as ``dtype``); for a
    :class:`~refquant.schemes.float_quant.FloatSpec`, ``s * v(q)`` of the element codes."""
    if isinstance(spec, float_quant.FloatSpec):
        return float_quant.float_dequantize(q, qp, spec, dtype=dtype)
    q = np.asarray(q)
    if q.dtype.kind not in "iu":
        raise ValueError(f"codes must be an integer array, got dtype {q.dtype}")
    if q.size and (q.min() < spec.qmin or q.max() > spec.qmax):
        raise ValueError(f"codes outside [{spec.qmin}, {spec.qmax}]: found {q.min()}..{q.max()}")
    s, z = _checked(q, qp, spec)
    return _dequantize_codes(q.astype(np.float64), s, z).astype(dtype)


def clip_range(qp: QParams, spec: QuantSpec) -> tuple[np.ndarray, np.ndarray]:
    """The representable range ``[s (q_min - z), s (q_max - z)]`` of each parameter group
    (``[-s x_max, s x_max]`` for a :class:`~refquant.schemes.float_quant.FloatSpec`)."""
    if isinstance(spec, float_quant.FloatSpec):
        return float_quant.float_clip_range(qp, spec)
    s = qp.scale.astype(np.float64)
    z = qp.zero_point.astype(np.float64)
    return s * (spec.qmin - z), s * (spec.qmax - z)


__all__ = ["qparams_from_range", "quantize", "dequantize", "clip_range",
           "param_shape"]
