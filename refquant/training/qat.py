"""Quantization-aware training: fake quantization with straight-through gradients, and LSQ.

The forward pass of :class:`FakeQuant` is :func:`refquant.fake_quantize` (the codes and values
of :func:`refquant.quantize` then :func:`refquant.dequantize`, any granularity, symmetric or
asymmetric), so a model trained with it runs with exactly the numbers it will be deployed with.
:class:`LSQ` takes its codes from the same rounding core with the step rounded to float32 (as
:class:`~refquant.QParams` stores it) but multiplies them by the step at its training precision
(``dtype``), so that the step gradient is exact: with a float32 step its values are the deployed
ones bit for bit; with a float64 step (the default, for gradient checks) they differ from them
by at most :math:`2^{-24} s\\,|q - z|` per element (tested). Rounding has zero derivative almost
everywhere; the straight-through estimator (STE, [1]_ [2]_) replaces it by the identity in the
backward pass.

Symbols
-------
========  ===============================================================================
v         the tensor being quantized (a weight ``[out, in]`` or an activation ``[N, K]``)
s, z      scale (step size) and integer zero point, one per parameter group
q         integer code ``clamp(round(v / s) + z, q_min, q_max)``
v_hat     ``s (q - z)``, the fake-quantized value
Q_N, Q_P  codes below / above the zero point: ``Q_N = z - q_min``, ``Q_P = q_max - z``
          (LSQ's notation; for a symmetric spec ``Q_P = 2^(b-1) - 1``)
g         LSQ's gradient scale ``1 / sqrt(N Q_P)``, N the elements sharing one step size
========  ===============================================================================

Straight-through estimators
---------------------------
``"clipped"`` (default): ``dv = dv_hat`` where ``q_min <= v / s + z <= q_max`` (inside the
clipping range) and 0 outside, the derivative of ``clamp`` with rounding treated as identity.
``"identity"``: ``dv = dv_hat`` everywhere (Bengio et al.'s plain STE).

LSQ step-size gradient
----------------------
Esser et al. [3]_, eq. 3, generalised to a fixed zero point:

.. math::

    \\frac{\\partial \\hat v}{\\partial s} =
    \\begin{cases} -Q_N & v/s \\le -Q_N \\\\
                   \\lfloor v/s \\rceil - v/s & -Q_N < v/s < Q_P \\\\
                   Q_P & v/s \\ge Q_P \\end{cases}
    \\qquad
    \\frac{\\partial L}{\\partial s} = g \\sum_{i \\in \\text{group}}
    \\frac{\\partial L}{\\partial \\hat v_i} \\frac{\\partial \\hat v_i}{\\partial s}

(here ``v/s`` is measured from the zero point: ``v/s + z`` against ``[q_min, q_max]``). The
zero point stays fixed at its initial value (LSQ+ [4]_ learns it too; not done here).

References
----------
.. [1] Y. Bengio, N. Leonard, A. Courville, "Estimating or Propagating Gradients Through
       Stochastic Neurons for Conditional Computation", arXiv:1308.3432, 2013.
.. [2] B. Jacob et al., "Quantization and Training of Neural Networks for Efficient
       Integer-Arithmetic-Only Inference", CVPR 2018, arXiv:1712.05877.
.. [3] S. K. Esser et al., "Learned Step Size Quantization", ICLR 2020, arXiv:1902.08153.
.. [4] Y. Bhalgat et al., "LSQ+: Improving low-bit quantization through learnable offsets
       and better initialization", CVPR Workshops 2020, arXiv:2004.09576.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from refquant.calibration.fake import fake_quantize
from refquant.calibration.observers import calibrate
from refquant.schemes.spec import QParams, QuantSpec, expand, grouped, param_shape
from refquant.schemes.uniform import _dequantize_codes, quantize
from refquant.training.nn import Parameter

STE_MODES = ("clipped", "identity")


def _check_spec(spec) -> QuantSpec:
    if not isinstance(spec, QuantSpec):
        raise ValueError(f"spec must be a QuantSpec, got {type(spec).__name__}")
    return spec


def _check_ste(ste: str) -> str:
    if ste not in STE_MODES:
        raise ValueError(f"ste must be one of {STE_MODES}, got {ste!r}")
    return ste


def _floating(v, who: str) -> np.ndarray:
    v = np.asarray(v)
    if v.dtype.kind != "f":
        raise ValueError(f"{who} needs a floating array, got dtype {v.dtype}")
    return v


def fake_quant(v, qp: QParams, spec: QuantSpec) -> np.ndarray:
    """Deprecated alias: ``refquant.fake_quantize(v, spec, qparams=qp)`` (refquant 0.3 drops it).

    Warns with a :class:`DeprecationWarning`; as before, ``v`` must be floating (its dtype is
    kept) and ``qp`` a :class:`~refquant.QParams`.
    """
    warnings.warn("fake_quant is deprecated; use refquant.fake_quantize(v, spec, qparams=qp)",
                  DeprecationWarning, stacklevel=2)
    v = _floating(v, "fake_quant")
    if not isinstance(qp, QParams):
        raise ValueError(f"qparams must be a QParams, got {type(qp).__name__}")
    return fake_quantize(v, spec, qparams=qp)


def ste_mask(v, qp: QParams, spec: QuantSpec, ste: str = "clipped") -> np.ndarray:
    """Where the straight-through estimator passes the gradient: a bool array shaped like ``v``.

    ``"clipped"``: ``q_min <= v / s + z <= q_max``; ``"identity"``: everywhere.

    >>> from refquant import QParams, QuantSpec
    >>> ste_mask(np.array([0.2, -0.8, 1.3, 2.9]), QParams(0.5), QuantSpec(bits=3)).tolist()
    [True, True, True, False]
    """
    v = np.asarray(v)
    if _check_ste(ste) == "identity":
        return np.ones(v.shape, bool)
    s = expand(qp.scale, v.shape, spec).astype(np.float64)
    z = expand(qp.zero_point, v.shape, spec).astype(np.float64)
    u = v.astype(np.float64) / s + z                         # position on the code axis
    return (u >= spec.qmin) & (u <= spec.qmax)


def lsq_grad_scale(n: int, spec: QuantSpec) -> float:
    """LSQ's gradient scale ``g = 1 / sqrt(N Q_P)`` with ``Q_P = q_max`` of the spec [1]_.

    ``n`` is the number of elements that share one step size (all weights of a layer for a
    per-tensor scale, one row for a per-channel scale, the features of one sample for an
    activation).

    References
    ----------
    .. [1] S. K. Esser et al., "Learned Step Size Quantization", ICLR 2020, arXiv:1902.08153.

    Examples
    --------
    >>> from refquant import QuantSpec
    >>> round(lsq_grad_scale(64, QuantSpec(bits=4)), 6)          # 1 / sqrt(64 * 7)
    0.047246
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n!r}")
    return 1.0 / math.sqrt(n * max(spec.qmax, 1))


def lsq_forward(v, s, z, spec: QuantSpec, *, return_codes: bool = False):
    """LSQ forward: ``v_hat = s (q - z)`` with the codes ``q`` of :func:`refquant.quantize`.

    Parameters
    ----------
    v : ndarray, float
    s : ndarray of ``param_shape(v.shape, spec)``, float, > 0
        The learned step size, kept at the training precision (float64 in the gradient checks):
        the codes come from :func:`refquant.quantize` (with ``s`` rounded to float32, as stored
        in :class:`~refquant.QParams`), the product ``s (q - z)`` uses ``s`` itself, so
        :math:`\\partial \\hat v / \\partial s` is exact where rounding does not change. With a
        float32 ``s`` the result is :func:`refquant.dequantize`'s bit for bit; with a float64
        ``s`` it differs by at most ``2^-24 s |q - z|``.
    z : ndarray of the same shape, int
    return_codes : bool
        Also return the codes ``q`` (to hand to :func:`lsq_backward`).

    Returns
    -------
    v_hat : ndarray, the dtype and shape of ``v`` (and ``q`` with ``return_codes``)

    Examples
    --------
    >>> from refquant import QuantSpec
    >>> v_hat, q = lsq_forward(np.array([0.2, -0.8, 1.3, 2.9]), np.float64(0.5), np.int32(0),
    ...                        QuantSpec(bits=3), return_codes=True)
    >>> v_hat.tolist(), q.tolist()                               # codes clipped at q_max = 3
    ([0.0, -1.0, 1.5, 1.5], [0, -2, 3, 3])
    """
    v = np.asarray(v)
    q = quantize(v, QParams(s, z), spec)                     # codes with the float32 step
    s_x = expand(np.asarray(s, np.float64), v.shape, spec)   # the step at training precision
    z_x = expand(np.asarray(z), v.shape, spec).astype(np.float64)
    v_hat = _dequantize_codes(q.astype(np.float64), s_x, z_x).astype(v.dtype)
    return (v_hat, q) if return_codes else v_hat


def lsq_backward(dv_hat, v, s, z, spec: QuantSpec, g: float,
                 q=None) -> tuple[np.ndarray, np.ndarray]:
    """LSQ backward: the clipped STE for ``v`` and the step-size gradient of [1]_ (eq. 3).

    Parameters
    ----------
    dv_hat : ndarray shaped like ``v``
        ``dL / dv_hat``.
    v, s, z, spec
        As passed to :func:`lsq_forward`.
    g : float
        Gradient scale (see :func:`lsq_grad_scale`; 1.0 for the raw gradient).
    q : ndarray, optional
        The codes of the forward pass (recomputed with :func:`refquant.quantize` if omitted).

    Returns
    -------
    dv : ndarray shaped like ``v``
    ds : ndarray of ``param_shape(v.shape, spec)``, float64

    References
    ----------
    .. [1] S. K. Esser et al., "Learned Step Size Quantization", ICLR 2020, arXiv:1902.08153.

    Examples
    --------
    ``v / s = 0.4, -1.6, 2.6, 5.8`` with ``Q_P = 3``: ``ds = -0.4 - 0.4 + 0.4 + 3``.

    >>> from refquant import QuantSpec
    >>> dv, ds = lsq_backward(np.ones(4), np.array([0.2, -0.8, 1.3, 2.9]), np.float64(0.5),
    ...                       np.int32(0), QuantSpec(bits=3), g=1.0)
    >>> dv.tolist(), round(float(ds), 12)
    ([1.0, 1.0, 1.0, 0.0], 2.6)
    """
    v = np.asarray(v)
    dv_hat = np.asarray(dv_hat)
    if dv_hat.shape != v.shape:
        raise ValueError(f"gradient shape {dv_hat.shape} does not match input shape {v.shape}")
    s_x = expand(np.asarray(s, np.float64), v.shape, spec)
    z_x = expand(np.asarray(z), v.shape, spec).astype(np.float64)
    u = v.astype(np.float64) / s_x                           # v / s, measured from the zero point
    lo, hi = spec.qmin - z_x, spec.qmax - z_x                # -Q_N, Q_P (broadcast)
    inside = (u > lo) & (u < hi)
    if q is None:
        q = quantize(v, QParams(s, z), spec)
    q = q - z_x                                              # the rounded u, clamped
    dvhat_ds = np.where(inside, q - u, np.where(u <= lo, lo, hi))
    dv = np.where((u >= lo) & (u <= hi), dv_hat, 0.0).astype(dv_hat.dtype)
    per_elem = (dv_hat.astype(np.float64) * dvhat_ds)
    if spec.granularity == "tensor":
        ds = np.asarray(per_elem.sum())
    else:
        ds = np.nansum(grouped(per_elem, spec), axis=-1)     # [param_shape]
    return dv, g * ds


class FakeQuant:
    """Fake quantizer with fixed or re-calibrated parameters and a straight-through backward.

    A layer (``forward``/``backward``/``parameters``) and a weight quantizer for
    :class:`refquant.training.nn.Linear`. It has no trainable parameters.

    Parameters
    ----------
    spec : QuantSpec
    qparams : QParams, optional
        Fixed parameters. If ``None``, every forward pass calibrates on its input with
        ``method`` (the dynamic "observer" scheme of [1]_; the scale gets no gradient).
    method : str
        Calibration method for ``qparams=None``.
    ste : {"clipped", "identity"}

    References
    ----------
    .. [1] B. Jacob et al., "Quantization and Training of Neural Networks for Efficient
           Integer-Arithmetic-Only Inference", CVPR 2018, arXiv:1712.05877.

    Examples
    --------
    >>> from refquant import QParams, QuantSpec
    >>> fq = FakeQuant(QuantSpec(bits=3), QParams(0.5))
    >>> fq.forward(np.array([0.2, -0.8, 1.3, 2.9])).tolist()     # refquant.fake_quantize
    [0.0, -1.0, 1.5, 1.5]
    >>> fq.backward(np.ones(4)).tolist()                         # clipped STE
    [1.0, 1.0, 1.0, 0.0]
    """

    def __init__(self, spec: QuantSpec, qparams: QParams | None = None, *, method: str = "minmax",
                 ste: str = "clipped"):
        self.spec = _check_spec(spec)
        if qparams is not None and not isinstance(qparams, QParams):
            raise ValueError(f"qparams must be a QParams or None, got {type(qparams).__name__}")
        self.qparams = qparams
        self.method = method
        self.ste = _check_ste(ste)
        self._mask = None

    def current_qparams(self, v) -> QParams:
        return self.qparams if self.qparams is not None else calibrate(v, self.spec, self.method)

    def forward(self, v):
        v = _floating(v, "FakeQuant")
        qp = self.current_qparams(v)
        self._mask = ste_mask(v, qp, self.spec, self.ste)
        return fake_quantize(v, self.spec, qparams=qp)

    def backward(self, dv_hat):
        if self._mask is None:
            raise ValueError("FakeQuant.backward called before forward")
        dv_hat = np.asarray(dv_hat)
        if dv_hat.shape != self._mask.shape:
            raise ValueError(f"gradient shape {dv_hat.shape} does not match the forward input "
                             f"shape {self._mask.shape}")
        return dv_hat * self._mask

    def parameters(self) -> list[Parameter]:
        return []


class LSQ:
    """Learned step size quantizer [1]_: the step ``s`` is a trainable :class:`Parameter`.

    Parameters
    ----------
    spec : QuantSpec
        Any granularity (the paper uses per-tensor; per-channel and per-group reduce the step
        gradient over each parameter group).
    init : QParams or ndarray
        Either initial parameters (e.g. from MSE calibration; their zero point is kept fixed),
        or a sample tensor: then ``s = 2 mean|v| / sqrt(Q_P)`` per parameter group (the paper's
        initialisation) and the zero point 0 (the spec must be symmetric).
    n_per_step : int, optional
        ``N`` in the gradient scale; by default the number of elements per parameter group of
        the forward input (right for weights; for activations pass the features per sample, as
        the paper does, since the default would count the batch too).
    grad_scale : bool
        Multiply the step gradient by ``g = 1 / sqrt(N Q_P)`` (default, as in the paper).
    dtype : numpy dtype
        Precision of the step parameter: float64 (the default) for gradient checks, float32
        for a forward pass equal to the deployed :func:`refquant.fake_quantize` bit for bit.

    References
    ----------
    .. [1] S. K. Esser et al., "Learned Step Size Quantization", ICLR 2020, arXiv:1902.08153.

    Examples
    --------
    >>> from refquant import QParams, QuantSpec
    >>> lsq = LSQ(QuantSpec(bits=3), QParams(0.5), dtype=np.float32)
    >>> lsq.forward(np.array([0.2, -0.8, 1.3, 2.9])).tolist()
    [0.0, -1.0, 1.5, 1.5]
    >>> _ = lsq.backward(np.ones(4))
    >>> round(float(lsq.step.grad), 4)                           # 2.6 / sqrt(4 * 3)
    0.7506
    """

    def __init__(self, spec: QuantSpec, init, *, n_per_step: int | None = None,
                 grad_scale: bool = True, dtype=np.float64):
        self.spec = _check_spec(spec)
        if isinstance(init, QParams):
            init.check(spec)
            s0, z0 = init.scale, init.zero_point
        else:
            v = np.asarray(init)
            if not spec.symmetric:
                raise ValueError("initialising LSQ from a tensor needs a symmetric spec; pass "
                                 "QParams (e.g. from calibrate) for an asymmetric one")
            mean_abs = np.nanmean(np.abs(grouped(v, spec)), axis=-1)
            s0 = np.maximum(2.0 * mean_abs / math.sqrt(spec.qmax), np.finfo(np.float32).tiny)
            z0 = np.zeros(np.shape(s0), np.int32)
        self.step = Parameter(np.array(s0, dtype=dtype), "s")
        self.zero_point = np.array(z0, np.int32)
        self.n_per_step = n_per_step
        self.grad_scale = bool(grad_scale)
        self._v = None

    def qparams(self) -> QParams:
        """The current parameters as :class:`~refquant.QParams` (float32 scale)."""
        s = self.step.value
        if not np.all(np.isfinite(s)) or np.any(s <= 0):
            raise ValueError(f"LSQ step size left the positive range (min {np.min(s)!r}); lower "
                             f"the learning rate of the step")
        return QParams(s, self.zero_point)

    def forward(self, v):
        v = np.asarray(v)
        if param_shape(v.shape, self.spec) != self.step.value.shape:
            raise ValueError(f"input shape {v.shape} gives parameter shape "
                             f"{param_shape(v.shape, self.spec)}, the step has shape "
                             f"{self.step.value.shape}")
        self.qparams()                                       # validates the step
        self._v = v
        v_hat, self._q = lsq_forward(v, self.step.value, self.zero_point, self.spec,
                                     return_codes=True)
        return v_hat

    def backward(self, dv_hat):
        if self._v is None:
            raise ValueError("LSQ.backward called before forward")
        v = self._v
        n = self.n_per_step or max(1, v.size // max(1, self.step.value.size))
        g = lsq_grad_scale(n, self.spec) if self.grad_scale else 1.0
        dv, ds = lsq_backward(dv_hat, v, self.step.value, self.zero_point, self.spec, g,
                              q=self._q)
        self.step.grad = ds.astype(self.step.value.dtype)
        return dv

    def parameters(self) -> list[Parameter]:
        return [self.step]


__all__ = ["STE_MODES", "fake_quant", "ste_mask", "lsq_grad_scale", "lsq_forward",
           "lsq_backward", "FakeQuant", "LSQ"]
