"""Quantized gradients in the backward pass: int8/int4 per tensor and FP8 (E5M2, E4M3) or FP4
elements with a per-tensor scale, by stochastic rounding or round to nearest.

The forward pass is untouched (float). In the backward pass a gradient ``g`` (a tensor of any
shape) is replaced by its quantized value

.. math::

    \\hat g = s\\, Q(g / s), \\qquad
    s = \\begin{cases} \\max|g| / q_{max} & \\text{integer grid, } q_{max} = 2^{b-1} - 1 \\\\
                        \\max|g| / x_{max} & \\text{float grid, } x_{max} = \\text{max normal}
        \\end{cases}

with one scale for the whole tensor (stored as float32, as :class:`~refquant.QParams` stores
it), and ``Q`` either round to nearest (half to even, ``rounding="nearest"``) or stochastic
rounding (``rounding="stochastic"``, :mod:`refquant.schemes.stochastic`). Stochastic rounding
makes :math:`\\mathbb{E}[\\hat g] = g`: the sub-step part of small gradients survives on average
instead of being rounded away the same way at every step [1]_ [3]_.

Two places to quantize
----------------------
- :class:`GradQuant`, a layer that is the identity forward and quantizes the gradient that
  flows *backward through it*. Placed after a :class:`~refquant.training.nn.Linear` it
  quantizes :math:`dy = \\partial L / \\partial y` of that layer, the error signal from which
  both :math:`dW = dy^\\top x` and :math:`dx = dy\\,W` are computed: DoReFa-Net's gradient
  quantization [2]_ and the E5M2 gradients of FP8 training [4]_.
- :class:`QuantizedGradients`, a wrapper of an optimizer that quantizes every parameter
  gradient (``Parameter.grad``) before the update, as QNNs' quantized parameter gradients [1]_.

What differs from the papers
----------------------------
DoReFa-Net takes the maximum per sample (over every axis but the batch axis) and rounds on a
grid of :math:`2^k` levels spanning :math:`[-\\max, \\max]`, which has no exact zero; here the
scale is per tensor and the grid is the symmetric integer grid of :class:`~refquant.QuantSpec`
(:math:`2^b - 1` levels reached, zero exact). FP8 training recipes [4]_ keep a history of
``amax`` (delayed scaling) and scale by a power of two; here the scale is the current tensor's
``amax / x_max`` (just-in-time scaling), not rounded to a power of two.

Symbols
-------
=========  =========================================================================
g          a gradient, any shape (``dy`` of a layer, or ``Parameter.grad``)
s          per-tensor scale, float32 > 0 (1 for an all-zero ``g``, which stays zero)
b, q_max   bits of the integer grid and its largest code ``2^(b-1) - 1``
x_max      largest finite value of a float element format (57344 for E5M2, 448 for E4M3)
g_hat      the quantized gradient, dtype and shape of ``g``
=========  =========================================================================

References
----------
.. [1] I. Hubara, M. Courbariaux, D. Soudry, R. El-Yaniv, Y. Bengio, "Quantized Neural
       Networks: Training Neural Networks with Low Precision Weights and Activations", JMLR
       2018, arXiv:1609.07061.
.. [2] S. Zhou, Y. Wu, Z. Ni, X. Zhou, H. Wen, Y. Zou, "DoReFa-Net: Training Low Bitwidth
       Convolutional Neural Networks with Low Bitwidth Gradients", arXiv:1606.06160, 2016.
.. [3] S. Gupta, A. Agrawal, K. Gopalakrishnan, P. Narayanan, "Deep Learning with Limited
       Numerical Precision", ICML 2015, arXiv:1502.02551.
.. [4] P. Micikevicius et al., "FP8 Formats for Deep Learning", arXiv:2209.05433, 2022.
"""

from __future__ import annotations

import numpy as np

from refquant.schemes.float_quant import FloatSpec, float_qparams_from_range, round_to_float_grid
from refquant.schemes.floats import FLOAT_FORMATS
from refquant.schemes.spec import QuantSpec
from refquant.schemes.stochastic import (stochastic_cast_float, stochastic_round_codes)
from refquant.schemes.uniform import _dequantize_codes, _round_codes, qparams_from_range
from refquant.training.layers import Parameter

#: Integer gradient grids by name: symmetric, per tensor.
INT_GRAD_FORMATS = {"int8": 8, "int4": 4}
#: Every gradient format: the integer grids and the signed float element formats.
GRAD_FORMATS = tuple(INT_GRAD_FORMATS) + tuple(n for n, f in FLOAT_FORMATS.items() if f.signed)
GRAD_ROUNDINGS = ("stochastic", "nearest")


def _check_format(fmt) -> str:
    if fmt not in GRAD_FORMATS:
        raise ValueError(f"gradient format must be one of {GRAD_FORMATS}, got {fmt!r}")
    return fmt


def _check_rounding(rounding, rng):
    if rounding not in GRAD_ROUNDINGS:
        raise ValueError(f"rounding must be one of {GRAD_ROUNDINGS}, got {rounding!r}")
    if rounding == "stochastic" and not isinstance(rng, np.random.Generator):
        raise ValueError(f"stochastic rounding needs rng=np.random.default_rng(seed), got "
                         f"{type(rng).__name__}")


def gradient_scale(g, fmt: str) -> np.float32:
    """The per-tensor scale ``s`` of :func:`quantize_gradient` (float32; 1 for an all-zero ``g``).

    :func:`refquant.qparams_from_range` of ``[-max|g|, max|g|]`` for the integer grids (the
    symmetric scale rule, ``max|g| / q_max``) and its float sibling
    :func:`refquant.schemes.float_quant.float_qparams_from_range` (``max|g| / x_max``) for the
    float grids, per tensor, float32.

    >>> float(gradient_scale(np.array([0.5, -1.27]), "int8"))    # 1.27 / 127 in float32
    0.009999999776482582
    >>> float(gradient_scale(np.array([0.0, -57344.0]), "e5m2"))
    1.0
    """
    amax = float(np.max(np.abs(g))) if np.size(g) else 0.0
    if fmt in INT_GRAD_FORMATS:
        spec = QuantSpec(bits=INT_GRAD_FORMATS[fmt], symmetric=True)
        return np.float32(qparams_from_range(-amax, amax, spec).scale)
    return np.float32(float_qparams_from_range(-amax, amax, FloatSpec(fmt)).scale)


def quantize_gradient(g, fmt: str, *, rounding: str = "stochastic",
                      rng: np.random.Generator | None = None) -> np.ndarray:
    """The quantized gradient :math:`\\hat g = s\\, Q(g / s)` with a per-tensor scale.

    Parameters
    ----------
    g : ndarray of float, any shape
        Finite (a NaN gradient raises ``ValueError``).
    fmt : str
        One of :data:`GRAD_FORMATS`: ``"int8"``, ``"int4"`` (symmetric integer grids) or a
        signed float element format (``"e5m2"``, ``"e4m3fn"``, ``"e3m2fn"``, ``"e2m3fn"``,
        ``"e2m1fn"``).
    rounding : {"stochastic", "nearest"}
        Stochastic rounding (unbiased, :mod:`refquant.schemes.stochastic`) or round to nearest
        (half to even, the rounding of :func:`refquant.quantize` and
        :func:`refquant.schemes.float_quant.round_to_float_grid`).
    rng : numpy.random.Generator
        Required for ``"stochastic"``: one uniform draw per element of ``g``.

    Returns
    -------
    numpy.ndarray, the dtype and shape of ``g``

    Examples
    --------
    >>> g = np.array([0.875, 0.3, -0.01])
    >>> quantize_gradient(g, "int4", rounding="nearest").tolist()   # s = 0.875 / 7 = 1/8
    [0.875, 0.25, 0.0]
    >>> rng = np.random.default_rng(0)
    >>> draws = np.stack([quantize_gradient(g, "int4", rng=rng) for _ in range(20_000)])
    >>> bool(np.abs(draws.mean(axis=0) - g).max() < 0.002)       # unbiased (nearest: 0.05 off)
    True
    """
    _check_format(fmt)
    _check_rounding(rounding, rng)
    g = np.asarray(g)
    if g.dtype.kind != "f":
        raise ValueError(f"gradient must be a floating array, got dtype {g.dtype}")
    if not np.all(np.isfinite(g)):
        raise ValueError(f"gradient contains NaN or Inf ({int(np.sum(~np.isfinite(g)))} "
                         f"of {g.size} elements)")
    s = np.float64(gradient_scale(g, fmt))
    v = g.astype(np.float64)
    if fmt in INT_GRAD_FORMATS:
        spec = QuantSpec(bits=INT_GRAD_FORMATS[fmt], symmetric=True)
        if rounding == "nearest":
            q = _round_codes(v, s, 0.0, spec.qmin, spec.qmax, "half_even")
        else:
            q = stochastic_round_codes(v, s, 0.0, spec.qmin, spec.qmax, rng)
        return _dequantize_codes(q, s, 0.0).astype(g.dtype)
    if rounding == "nearest":                                # the float rounding core, saturating
        return round_to_float_grid(v, s, fmt)[1].astype(g.dtype)
    return (s * stochastic_cast_float(v / s, fmt, rng).astype(np.float64)).astype(g.dtype)


class GradQuant:
    """A layer that is the identity forward and quantizes the gradient flowing back through it.

    Parameters
    ----------
    fmt : str
        See :func:`quantize_gradient`.
    rounding : {"stochastic", "nearest"}
    rng : numpy.random.Generator, optional
        Required for ``"stochastic"``; the layer draws from it at every backward pass, so a
        model built with ``np.random.default_rng(seed)`` trains to the same weights bit for bit.

    Examples
    --------
    >>> gq = GradQuant("int4", "nearest")
    >>> gq.forward(np.array([[2.0, 3.0]])).tolist()              # identity
    [[2.0, 3.0]]
    >>> gq.backward(np.array([[0.875, 0.3]])).tolist()           # s = 1/8: codes 7, 2
    [[0.875, 0.25]]
    """

    def __init__(self, fmt: str, rounding: str = "stochastic", rng=None):
        self.fmt = _check_format(fmt)
        _check_rounding(rounding, rng)
        self.rounding = rounding
        self.rng = rng
        self._shape = None

    def forward(self, x):
        x = np.asarray(x)
        self._shape = x.shape
        return x

    def backward(self, dy):
        if self._shape is None:
            raise ValueError("GradQuant.backward called before forward")
        dy = np.asarray(dy)
        if dy.shape != self._shape:
            raise ValueError(f"GradQuant.backward: gradient shape {dy.shape} does not match "
                             f"the forward output shape {self._shape}")
        return quantize_gradient(dy, self.fmt, rounding=self.rounding, rng=self.rng)

    def parameters(self) -> list[Parameter]:
        return []


class QuantizedGradients:
    """An optimizer whose ``step()`` first quantizes every ``Parameter.grad`` (per tensor).

    Parameters
    ----------
    optimizer : SGD or Adam (anything with ``params`` and ``step()``)
    fmt, rounding, rng
        As in :func:`quantize_gradient`; parameters are quantized in the optimizer's order.

    Examples
    --------
    >>> from refquant.training.nn import SGD
    >>> p = Parameter(np.array([1.0, 1.0]))
    >>> p.grad = np.array([0.875, 0.3])
    >>> QuantizedGradients(SGD([p], lr=1.0), "int4", "nearest").step()
    >>> p.value.tolist()                                         # gradient (0.875, 0.25)
    [0.125, 0.75]
    """

    def __init__(self, optimizer, fmt: str, rounding: str = "stochastic", rng=None):
        self.optimizer = optimizer
        self.fmt = _check_format(fmt)
        _check_rounding(rounding, rng)
        self.rounding = rounding
        self.rng = rng

    def step(self):
        for p in self.optimizer.params:
            if p.grad is not None:
                p.grad = quantize_gradient(p.grad, self.fmt, rounding=self.rounding,
                                           rng=self.rng)
        self.optimizer.step()


__all__ = ["GRAD_FORMATS", "GRAD_ROUNDINGS", "INT_GRAD_FORMATS", "gradient_scale",
           "quantize_gradient", "GradQuant", "QuantizedGradients"]
