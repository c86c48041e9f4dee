"""Quantization-aware fine-tuning of one Llama SwiGLU MLP on its own input activations.

The MLP of a Llama block is

.. math::

    Y = \\big(\\operatorname{silu}(X W_g^\\top) \\odot (X W_u^\\top)\\big) W_d^\\top,
    \\qquad \\operatorname{silu}(a) = a\\,\\sigma(a)

(Shazeer, "GLU Variants Improve Transformer", arXiv:2002.05202). :func:`qat_swiglu_mlp` keeps
latent float weights, fake-quantizes all three in the forward pass, and minimizes the mean
squared error between the quantized MLP's output and the float MLP's output ``Y`` on
calibration activations ``X``. Weight gradients pass the rounding by the clipped
straight-through estimator; with ``learn_step`` the step sizes are learned as in LSQ (Esser et
al., ICLR 2020, arXiv:1902.08153), see :mod:`refquant.training.qat`. The backward pass of the MLP is
written by hand (:func:`swiglu_mlp_backward`) and checked against finite differences in tests.

Symbols
-------
========  ======  ===========================================================================
N, d, F   int     tokens (rows of X); model width (576 for SmolLM2-135M); FFN width (1536)
X         [N, d]  MLP input (the block's residual stream after ``post_attention_layernorm``)
W_g, W_u  [F, d]  gate and up projections
W_d       [d, F]  down projection
A, B      [N, F]  pre-activations ``X W_g^T`` and ``X W_u^T``
Z         [N, F]  ``silu(A) * B``, the input of the down projection
Y         [N, d]  MLP output; ``Y_hat`` that of the fake-quantized MLP
L         scalar  ``||Y_hat - Y||_F^2 / (N d)``, the training objective
========  ======  ===========================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from refquant.training.nn import Adam, Parameter
from refquant.training.qat import LSQ, FakeQuant
from refquant.schemes.spec import QParams, QuantSpec

NAMES = ("gate", "up", "down")


def _sigmoid(a):
    return 0.5 * (1.0 + np.tanh(0.5 * a))                  # stable for large |a|


def swiglu_mlp(X, W_g, W_u, W_d) -> np.ndarray:
    """``Y = (silu(X W_g^T) * (X W_u^T)) W_d^T``: [N, d] -> [N, d].

    >>> I = np.eye(2)
    >>> np.round(swiglu_mlp(np.array([[1.0, -1.0]]), I, I, I), 4).tolist()   # sigma(1), sigma(-1)
    [[0.7311, 0.2689]]
    """
    A = X @ W_g.T                                            # [N, d] -> [N, F]
    B = X @ W_u.T                                            # [N, d] -> [N, F]
    return (A * _sigmoid(A) * B) @ W_d.T                     # [N, F] -> [N, d]


def swiglu_mlp_backward(dY, X, W_g, W_u, W_d):
    """Gradients of a loss with ``dL/dY = dY`` (the forward is recomputed).

    .. math::

        dZ = dY\\,W_d, \\quad dW_d = dY^\\top Z, \\quad
        dA = dZ \\odot B \\odot \\sigma(A)\\big(1 + A(1 - \\sigma(A))\\big), \\quad
        dB = dZ \\odot \\operatorname{silu}(A),

        dW_g = dA^\\top X, \\quad dW_u = dB^\\top X, \\quad dX = dA\\,W_g + dB\\,W_u

    Returns
    -------
    dX [N, d], dW_g [F, d], dW_u [F, d], dW_d [d, F]

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X, W_g, W_u, W_d = (rng.standard_normal(s) for s in ((3, 2), (4, 2), (4, 2), (2, 4)))
    >>> dY = rng.standard_normal((3, 2))
    >>> dX = swiglu_mlp_backward(dY, X, W_g, W_u, W_d)[0]
    >>> h = 1e-6
    >>> fd = (np.sum(dY * swiglu_mlp(X + [[h, 0], [0, 0], [0, 0]], W_g, W_u, W_d))
    ...       - np.sum(dY * swiglu_mlp(X - [[h, 0], [0, 0], [0, 0]], W_g, W_u, W_d))) / (2 * h)
    >>> bool(abs(fd - dX[0, 0]) < 1e-6)
    True
    """
    A = X @ W_g.T                                            # [N, F]
    B = X @ W_u.T                                            # [N, F]
    sig = _sigmoid(A)
    silu = A * sig
    Z = silu * B                                             # [N, F]
    dZ = dY @ W_d                                            # [N, d] -> [N, F]
    dW_d = dY.T @ Z                                          # [d, F]
    dA = dZ * B * sig * (1.0 + A * (1.0 - sig))              # silu'(A) = sig (1 + A (1 - sig))
    dB = dZ * silu
    dW_g = dA.T @ X                                          # [F, d]
    dW_u = dB.T @ X                                          # [F, d]
    dX = dA @ W_g + dB @ W_u                                 # [N, d]
    return dX, dW_g, dW_u, dW_d


@dataclass
class MLPQATResult:
    """Result of :func:`qat_swiglu_mlp`.

    Attributes
    ----------
    w_hat : dict
        name -> fake-quantized float32 weight (``"gate"``, ``"up"``, ``"down"``).
    qparams : dict
        name -> final :class:`~refquant.QParams`.
    losses : ndarray [steps]
        The training objective of every step (on its mini-batch, before the update).
    """

    w_hat: dict
    qparams: dict
    losses: np.ndarray


def _check_mlp(X, Y, weights):
    for name in NAMES:
        if name not in weights:
            raise ValueError(f"weights must hold 'gate', 'up' and 'down'; missing {name!r}")
    X, Y = np.asarray(X), np.asarray(Y)
    F, d = np.shape(weights["gate"])
    if np.shape(weights["up"]) != (F, d) or np.shape(weights["down"]) != (d, F):
        raise ValueError(f"weight shapes gate {np.shape(weights['gate'])}, up "
                         f"{np.shape(weights['up'])}, down {np.shape(weights['down'])} do not "
                         f"form a SwiGLU MLP ([F, d], [F, d], [d, F])")
    if X.ndim != 2 or X.shape[1] != d or Y.shape != X.shape:
        raise ValueError(f"X must be [N, {d}] and Y the same shape; got X {X.shape}, Y {Y.shape}")
    for name, a in (("X", X), ("Y", Y)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} contains NaN or Inf")


def qat_swiglu_mlp(X, Y, weights: dict, qparams: dict, spec: QuantSpec, *, steps: int = 200,
                   batch_size: int = 256, lr: float = 1e-5, lr_step: float = 1e-5,
                   learn_step: bool = True, seed: int = 0) -> MLPQATResult:
    """Fine-tune a SwiGLU MLP's weights through fake quantization to reproduce ``Y``.

    Parameters
    ----------
    X : ndarray [N, d]
        Calibration inputs of the MLP.
    Y : ndarray [N, d]
        Target outputs (the float MLP on ``X``).
    weights : dict ``{"gate": [F, d], "up": [F, d], "down": [d, F]}``
        Initial latent weights (copied; e.g. the float weights, or GPTQ's result).
    qparams : dict of QParams, same keys
        Initial quantization parameters (e.g. MSE calibration); the zero points stay fixed.
    spec : QuantSpec
        Weight quantization (any granularity; ``(out, in)`` layout).
    steps, batch_size : int
        Adam steps on mini-batches of tokens (drawn without replacement, reshuffled per epoch).
    lr, lr_step : float
        Adam learning rates of the latent weights and of the step sizes.
    learn_step : bool
        Learn the step sizes (LSQ); ``False`` keeps them fixed (plain STE fine-tuning).
    seed : int

    Returns
    -------
    MLPQATResult

    Raises
    ------
    ValueError
        Shapes that do not form an MLP, NaN input, a non-positive learning rate, or a loss that
        becomes NaN/Inf (the message names the step).

    Examples
    --------
    A random MLP (d = 8, F = 16) at 3 bits per channel, from MSE-calibrated round-to-nearest:

    >>> import refquant as rq
    >>> rng = np.random.default_rng(0)
    >>> W = {"gate": 0.3 * rng.standard_normal((16, 8)), "up": 0.3 * rng.standard_normal((16, 8)),
    ...      "down": 0.3 * rng.standard_normal((8, 16))}
    >>> X = rng.standard_normal((256, 8))
    >>> Y = swiglu_mlp(X, W["gate"], W["up"], W["down"])
    >>> spec = rq.QuantSpec(bits=3, granularity="channel")
    >>> qp = {n: rq.calibrate(W[n], spec, method="mse") for n in W}
    >>> rtn = {n: rq.fake_quantize(W[n], spec, qparams=qp[n]) for n in W}
    >>> res = qat_swiglu_mlp(X, Y, W, qp, spec, steps=200, lr=1e-4)
    >>> def err(w):
    ...     return relative_error(swiglu_mlp(X, w["gate"], w["up"], w["down"]), Y)
    >>> len(res.losses), bool(err(res.w_hat) < err(rtn))
    (200, True)
    """
    _check_mlp(X, Y, weights)
    for name, v in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    X = np.asarray(X, np.float32)
    Y = np.asarray(Y, np.float32)
    W_params, quant = {}, {}
    for name in NAMES:
        if not isinstance(qparams.get(name), QParams):
            raise ValueError(f"qparams[{name!r}] must be a QParams")
        W_params[name] = Parameter(np.array(weights[name], np.float32), name)   # latent weight
        quant[name] = (LSQ(spec, qparams[name], dtype=np.float32) if learn_step
                       else FakeQuant(spec, qparams[name]))
    opt_w = Adam(list(W_params.values()), lr=lr)
    opt_s = Adam([quant[n].step for n in NAMES], lr=lr_step) if learn_step else None
    rng = np.random.default_rng(seed)
    N, d = X.shape
    order, pos, losses = rng.permutation(N), 0, []
    for step in range(steps):
        if pos + batch_size > N:
            order, pos = rng.permutation(N), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        try:
            W_hat = {n: quant[n].forward(W_params[n].value) for n in NAMES}
        except ValueError as e:      # NaN/Inf weights or a step size that left (0, inf)
            raise ValueError(f"fine-tuning stopped at step {step}: {e}") from e
        R = swiglu_mlp(X[idx], W_hat["gate"], W_hat["up"], W_hat["down"]) - Y[idx]   # [n, d]
        loss = float(np.mean(R.astype(np.float64) ** 2))
        if not math.isfinite(loss):
            raise ValueError(f"loss is {loss} at step {step}; fine-tuning stopped (learning "
                             f"rate too large?)")
        losses.append(loss)
        dY = (2.0 / R.size) * R
        _, dW_g, dW_u, dW_d = swiglu_mlp_backward(dY, X[idx], W_hat["gate"], W_hat["up"],
                                                  W_hat["down"])
        for n, dW_hat in zip(NAMES, (dW_g, dW_u, dW_d)):
            W_params[n].grad = quant[n].backward(dW_hat)
        opt_w.step()
        if opt_s is not None:
            opt_s.step()
    final_qp = {n: (quant[n].qparams() if learn_step else quant[n].qparams) for n in NAMES}
    w_hat = {n: quant[n].forward(W_params[n].value).astype(np.float32) for n in NAMES}
    return MLPQATResult(w_hat, final_qp, np.asarray(losses))


def relative_error(Y_hat, Y) -> float:
    """``||Y_hat - Y||_F^2 / ||Y||_F^2`` (float64).

    >>> relative_error(np.array([1.0, 2.0]), np.array([1.0, 1.0]))
    0.5
    """
    Y_hat, Y = np.asarray(Y_hat, np.float64), np.asarray(Y, np.float64)
    return float(np.sum((Y_hat - Y) ** 2) / np.sum(Y ** 2))


__all__ = ["swiglu_mlp", "swiglu_mlp_backward", "qat_swiglu_mlp", "MLPQATResult",
           "relative_error"]
