"""Optimizers and the training loop of the NumPy training stack (see :mod:`refquant.training.nn`).

Symbols: ``eta`` learning rate; ``mu`` momentum; ``beta1``, ``beta2``, ``eps`` Adam's constants.

References
----------
.. [1] B. T. Polyak, "Some methods of speeding up the convergence of iteration methods",
       USSR Comp. Math. and Math. Physics 4(5), 1964 (heavy-ball momentum).
.. [2] D. P. Kingma, J. Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015,
       arXiv:1412.6980.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from refquant.training.layers import softmax_cross_entropy


def _check_lr(lr) -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float, np.floating, np.integer)) \
            or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"learning rate must be a finite positive number, got {lr!r}")
    return float(lr)


def _check_unit(value, name: str) -> float:
    if not isinstance(value, (int, float, np.floating, np.integer)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {value!r}")
    return float(value)


class SGD:
    """Stochastic gradient descent with heavy-ball momentum [1]_ (PyTorch's form).

    .. math::

        v \\leftarrow \\mu v + g, \\qquad \\theta \\leftarrow \\theta - \\eta v

    ``step()`` updates each ``Parameter.value`` in place (the arrays belong to the model).

    References
    ----------
    .. [1] B. T. Polyak, "Some methods of speeding up the convergence of iteration methods",
           USSR Comp. Math. and Math. Physics 4(5), 1964 (heavy-ball momentum).

    Examples
    --------
    >>> from refquant.training.nn import Parameter
    >>> p = Parameter(np.array([1.0]))
    >>> p.grad = np.array([0.5])
    >>> SGD([p], lr=0.1).step()
    >>> p.value.tolist()
    [0.95]
    """

    def __init__(self, params, lr: float, momentum: float = 0.0):
        self.params = list(params)
        self.lr = _check_lr(lr)
        self.momentum = _check_unit(momentum, "momentum")
        self._v = [np.zeros_like(p.value) for p in self.params]

    def step(self):
        for p, v in zip(self.params, self._v):
            if p.grad is None:
                continue
            v *= self.momentum
            v += p.grad
            p.value -= self.lr * v


class Adam:
    """Adam [1]_ with bias correction.

    .. math::

        m \\leftarrow \\beta_1 m + (1 - \\beta_1) g, \\quad
        v \\leftarrow \\beta_2 v + (1 - \\beta_2) g^2, \\quad
        \\theta \\leftarrow \\theta - \\eta\\, \\frac{m / (1 - \\beta_1^t)}
        {\\sqrt{v / (1 - \\beta_2^t)} + \\epsilon}

    References
    ----------
    .. [1] D. P. Kingma, J. Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015,
           arXiv:1412.6980.

    Examples
    --------
    The first step moves each parameter by about ``lr`` against the sign of its gradient:

    >>> from refquant.training.nn import Parameter
    >>> p = Parameter(np.array([1.0]))
    >>> p.grad = np.array([0.5])
    >>> Adam([p], lr=0.1).step()
    >>> np.round(p.value, 6).tolist()
    [0.9]
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        self.lr = _check_lr(lr)
        self.beta1 = _check_unit(betas[0], "beta1")
        self.beta2 = _check_unit(betas[1], "beta2")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps!r}")
        self.eps = float(eps)
        self.t = 0
        self._m = [np.zeros_like(p.value) for p in self.params]
        self._v = [np.zeros_like(p.value) for p in self.params]

    def step(self):
        self.t += 1
        c1, c2 = 1.0 - self.beta1 ** self.t, 1.0 - self.beta2 ** self.t
        for p, m, v in zip(self.params, self._m, self._v):
            if p.grad is None:
                continue
            m *= self.beta1
            m += (1.0 - self.beta1) * p.grad
            v *= self.beta2
            v += (1.0 - self.beta2) * p.grad * p.grad
            p.value -= self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps)


@dataclass
class FitResult:
    """What :func:`fit` did: the mean training loss of every step, and the number of steps."""

    losses: np.ndarray
    steps: int


def fit(model, X, y, optimizer, *, epochs: int, batch_size: int, seed: int = 0,
        loss=softmax_cross_entropy) -> FitResult:
    """Mini-batch training: shuffle, forward, loss, backward, optimizer step.

    Parameters
    ----------
    model : Sequential (or any layer)
    X : ndarray [N, K] float
    y : ndarray [N] int
    optimizer : SGD or Adam over ``model.parameters()``
    epochs, batch_size : int
    seed : int
        Seed of the shuffling order (``np.random.default_rng(seed)``).
    loss : callable ``(output, y) -> (loss, doutput)``

    Raises
    ------
    ValueError
        On mismatched shapes, or when the loss is NaN or infinite, or a layer rejects its input
        during training (a quantizer seeing NaN weights); the message names the step (0-based,
        counted over all epochs) and the epoch.

    Examples
    --------
    >>> from refquant.training.nn import Linear, Sequential
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((64, 2))
    >>> y = (X[:, 0] > 0).astype(int)
    >>> model = Sequential([Linear.init(2, 2, rng)])
    >>> res = fit(model, X, y, SGD(model.parameters(), lr=0.5), epochs=20, batch_size=16)
    >>> res.steps, bool(res.losses[-1] < res.losses[0]), accuracy(model, X, y) > 0.9
    (80, True, True)
    """
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"X must be [N, K] and y [N]; got X {X.shape}, y {y.shape}")
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    rng = np.random.default_rng(seed)
    losses, step = [], 0
    for epoch in range(epochs):
        order = rng.permutation(X.shape[0])
        for start in range(0, X.shape[0], batch_size):
            idx = order[start:start + batch_size]
            try:
                out = model.forward(X[idx])
                value, dout = loss(out, y[idx])
            except ValueError as e:      # e.g. a quantizer handed NaN weights after divergence
                raise ValueError(f"training stopped at step {step} (epoch {epoch}): {e}") from e
            if not math.isfinite(value):
                raise ValueError(f"loss is {value} at step {step} (epoch {epoch}); training "
                                 f"stopped (learning rate too large, or NaN in the data?)")
            model.backward(dout)
            optimizer.step()
            losses.append(value)
            step += 1
    return FitResult(np.asarray(losses), step)


def accuracy(model, X, y, batch_size: int = 4096) -> float:
    """Fraction of rows of ``X`` whose arg-max output equals the label.

    >>> from refquant.training.nn import Linear, Sequential
    >>> accuracy(Sequential([Linear(np.array([[1.0], [-1.0]]))]), np.array([[1.0], [-2.0]]),
    ...          np.array([0, 0]))
    0.5
    """
    X, y = np.asarray(X), np.asarray(y)
    pred = np.concatenate([model.forward(X[i:i + batch_size]).argmax(axis=1)
                           for i in range(0, X.shape[0], batch_size)])
    return float((pred == y).mean())


__all__ = ["SGD", "Adam", "fit", "FitResult", "accuracy"]
