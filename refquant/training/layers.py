"""The layers of the NumPy training stack (see :mod:`refquant.training.nn`).

Every layer has ``forward(x)`` (which remembers what its backward pass needs),
``backward(dy) -> dx`` (which also fills the ``grad`` of the layer's parameters) and
``parameters() -> list[Parameter]``. The quantizers of :mod:`refquant.training.qat` follow the same
protocol, so a fake-quantized activation is just another layer and a fake-quantized weight is a
quantizer handed to :class:`Linear`. Every backward pass is checked against central finite
differences in ``tests/test_nn.py``.

Symbols
-------
=====  ==============================================================================
N      batch size (rows of ``x``)
K      input features, M output features, C classes
x      layer input ``[N, K]`` (or ``[..., K]``), y its output, dy = dL/dy, dx = dL/dx
W      weight ``[M, K]`` (the (out_features, in_features) convention), b bias ``[M]``
W_hat  the weight the layer multiplies with: ``W``, or its fake-quantized version
=====  ==============================================================================

References
----------
.. [1] D. Hendrycks, K. Gimpel, "Gaussian Error Linear Units (GELUs)", arXiv:1606.08415, 2016.
.. [2] K. He et al., "Delving Deep into Rectifiers", ICCV 2015, arXiv:1502.01852 (init).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.special import erf


@dataclass
class Parameter:
    """A trainable array and its gradient (``None`` until a backward pass fills it)."""

    value: np.ndarray
    name: str = ""
    grad: np.ndarray | None = field(default=None, repr=False)


def _check_features(x: np.ndarray, k: int, who: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise ValueError(f"{who}: input must be a floating array, got dtype {x.dtype}")
    if x.ndim < 1 or x.shape[-1] != k:
        raise ValueError(f"{who}: input shape {x.shape} does not end in {k} features")
    return x


def _check_grad(dy, expected: tuple, who: str) -> np.ndarray:
    if expected is None:
        raise ValueError(f"{who}.backward called before forward")
    dy = np.asarray(dy)
    if dy.shape != expected:
        raise ValueError(f"{who}.backward: gradient shape {dy.shape} does not match the "
                         f"forward output shape {expected}")
    return dy


class Linear:
    """Fully connected layer ``y = x W_hat^T + b``.

    Parameters
    ----------
    W : ndarray [M, K]
        Initial weight (copied).
    b : ndarray [M], optional
        Initial bias (copied); ``None`` for no bias.
    weight_quant : quantizer, optional
        An object with ``forward(W) -> W_hat``, ``backward(dW_hat) -> dW`` and
        ``parameters()`` (see :mod:`refquant.training.qat`); the layer then computes with ``W_hat``.

    Notes
    -----
    .. math::

        \\frac{\\partial L}{\\partial \\hat W} = dy^T x, \\qquad
        \\frac{\\partial L}{\\partial b} = \\sum_n dy_n, \\qquad
        \\frac{\\partial L}{\\partial x} = dy\\, \\hat W

    Examples
    --------
    >>> lin = Linear(np.array([[1.0, 2.0]]), np.array([0.5]))
    >>> lin.forward(np.array([[3.0, -1.0]])).tolist()            # 3 - 2 + 0.5
    [[1.5]]
    >>> lin.backward(np.array([[1.0]])).tolist(), lin.W.grad.tolist(), lin.b.grad.tolist()
    ([[1.0, 2.0]], [[3.0, -1.0]], [1.0])
    """

    def __init__(self, W, b=None, *, weight_quant=None):
        W = np.array(W, copy=True)
        if W.ndim != 2 or W.dtype.kind != "f":
            raise ValueError(f"W must be a 2-D floating array [out, in], got shape {W.shape} "
                             f"dtype {W.dtype}")
        self.W = Parameter(W, "W")
        self.b = None
        if b is not None:
            b = np.array(b, copy=True, dtype=W.dtype)
            if b.shape != (W.shape[0],):
                raise ValueError(f"b shape {b.shape} does not match W's {W.shape[0]} outputs")
            self.b = Parameter(b, "b")
        self.weight_quant = weight_quant
        self._x = self._W_hat = self._out_shape = None

    @classmethod
    def init(cls, k: int, m: int, rng: np.random.Generator, *, bias=True, dtype=np.float64,
             weight_quant=None) -> "Linear":
        """He-uniform initialisation [1]_: ``W ~ U(-sqrt(6/K), sqrt(6/K))``, ``b = 0``.

        References
        ----------
        .. [1] K. He et al., "Delving Deep into Rectifiers", ICCV 2015, arXiv:1502.01852.
        """
        bound = math.sqrt(6.0 / k)
        W = rng.uniform(-bound, bound, size=(m, k)).astype(dtype)
        return cls(W, np.zeros(m, dtype) if bias else None, weight_quant=weight_quant)

    @property
    def in_features(self) -> int:
        return self.W.value.shape[1]

    @property
    def out_features(self) -> int:
        return self.W.value.shape[0]

    def effective_weight(self) -> np.ndarray:
        """``W_hat``: the weight the forward pass uses (fake-quantized if a quantizer is set)."""
        if self.weight_quant is None:
            return self.W.value
        return self.weight_quant.forward(self.W.value)

    def forward(self, x):
        x = _check_features(x, self.in_features, "Linear")
        W_hat = self.effective_weight()                      # [M, K]
        y = x @ W_hat.T                                      # [..., K] -> [..., M]
        if self.b is not None:
            y = y + self.b.value
        self._x, self._W_hat, self._out_shape = x, W_hat, y.shape
        return y

    def backward(self, dy):
        dy = _check_grad(dy, self._out_shape, "Linear")
        x2 = self._x.reshape(-1, self.in_features)           # [N, K]
        dy2 = dy.reshape(-1, self.out_features)              # [N, M]
        dW_hat = dy2.T @ x2                                  # [M, K]
        self.W.grad = dW_hat if self.weight_quant is None else self.weight_quant.backward(dW_hat)
        if self.b is not None:
            self.b.grad = dy2.sum(axis=0)                    # [M]
        return dy @ self._W_hat                              # [..., M] -> [..., K]

    def parameters(self) -> list[Parameter]:
        ps = [self.W] + ([self.b] if self.b is not None else [])
        if self.weight_quant is not None:
            ps += self.weight_quant.parameters()
        return ps


class ReLU:
    """``y = max(x, 0)``; ``dx = dy * [x > 0]`` (the subgradient 0 at ``x = 0``).

    >>> relu = ReLU()
    >>> relu.forward(np.array([-1.0, 2.0])).tolist(), relu.backward(np.array([5.0, 5.0])).tolist()
    ([0.0, 2.0], [0.0, 5.0])
    """

    def __init__(self):
        self._mask = None

    def forward(self, x):
        x = np.asarray(x)
        self._mask = x > 0
        return np.where(self._mask, x, 0.0).astype(x.dtype)

    def backward(self, dy):
        dy = _check_grad(dy, None if self._mask is None else self._mask.shape, "ReLU")
        return dy * self._mask

    def parameters(self) -> list[Parameter]:
        return []


class GELU:
    """Exact GELU [1]_: ``y = x Phi(x)`` with the standard normal CDF ``Phi``.

    .. math::

        \\Phi(x) = \\tfrac12\\big(1 + \\operatorname{erf}(x/\\sqrt2)\\big), \\qquad
        \\frac{dy}{dx} = \\Phi(x) + x\\,\\varphi(x), \\quad
        \\varphi(x) = e^{-x^2/2} / \\sqrt{2\\pi}

    References
    ----------
    .. [1] D. Hendrycks, K. Gimpel, "Gaussian Error Linear Units (GELUs)", arXiv:1606.08415, 2016.

    Examples
    --------
    >>> np.round(GELU().forward(np.array([0.0, 1.0])), 4).tolist()   # 1 * Phi(1)
    [0.0, 0.8413]
    """

    def __init__(self):
        self._x = None

    def forward(self, x):
        x = np.asarray(x)
        self._x = x
        return (x * 0.5 * (1.0 + erf(x / math.sqrt(2.0)))).astype(x.dtype)

    def backward(self, dy):
        dy = _check_grad(dy, None if self._x is None else self._x.shape, "GELU")
        x = self._x
        Phi = 0.5 * (1.0 + erf(x / math.sqrt(2.0)))
        phi = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
        return (dy * (Phi + x * phi)).astype(dy.dtype)

    def parameters(self) -> list[Parameter]:
        return []


class Sequential:
    """Layers applied in order; ``backward`` runs them in reverse.

    >>> model = Sequential([Linear(np.array([[1.0], [-1.0]])), ReLU()])
    >>> model.forward(np.array([[2.0]])).tolist(), model.backward(np.ones((1, 2))).tolist()
    ([[2.0, 0.0]], [[1.0]])
    """

    def __init__(self, layers):
        self.layers = list(layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    __call__ = forward

    def backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def parameters(self) -> list[Parameter]:
        return [p for layer in self.layers for p in layer.parameters()]


def softmax_cross_entropy(logits, labels) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy and its gradient with respect to the logits.

    Parameters
    ----------
    logits : ndarray [N, C] float
    labels : ndarray [N] int, each in ``[0, C)``

    Returns
    -------
    loss : float
        :math:`L = -\\frac1N \\sum_n \\log p_{n, y_n}`, ``p = softmax(logits)``.
    dlogits : ndarray [N, C]
        :math:`\\partial L / \\partial z = (p - \\mathrm{onehot}(y)) / N`.

    Examples
    --------
    >>> loss, dz = softmax_cross_entropy(np.zeros((1, 2)), np.array([1]))
    >>> round(loss, 6), dz.tolist()                              # log 2
    (0.693147, [[0.5, -0.5]])
    """
    z = np.asarray(logits)
    y = np.asarray(labels)
    if z.ndim != 2 or z.dtype.kind != "f":
        raise ValueError(f"logits must be a 2-D floating array [N, C], got shape {z.shape} "
                         f"dtype {z.dtype}")
    if y.shape != (z.shape[0],) or y.dtype.kind not in "iu":
        raise ValueError(f"labels must be an integer array of shape ({z.shape[0]},), got shape "
                         f"{y.shape} dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= z.shape[1]):
        raise ValueError(f"labels must lie in [0, {z.shape[1]}), found {y.min()}..{y.max()}")
    n = z.shape[0]
    z = z - z.max(axis=1, keepdims=True)                     # stable: max logit is 0
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))  # [N, C]
    loss = -float(log_p[np.arange(n), y].mean())
    dz = np.exp(log_p)
    dz[np.arange(n), y] -= 1.0
    return loss, dz / n


__all__ = ["Parameter", "Linear", "ReLU", "GELU", "Sequential", "softmax_cross_entropy"]
