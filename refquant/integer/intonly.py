"""Integer-only execution of linear layers and MLPs, after Jacob et al. [1]_.

A real value is ``r = S (q - Z)`` (scale ``S``, integer zero point ``Z``). For a linear layer
``y = W x + b`` with uint8 input ``q_x`` (``S_x, Z_x``), int8 per-channel symmetric weights
``q_w`` (``S_w[n]``, zero point 0) and uint8 output ``q_y`` (``S_y, Z_y``), eq. (4)-(9) of [1]_
give, per output channel ``n``,

.. math::

    q_{y,n} = \\operatorname{clamp}\\Big(Z_y + M_n \\big(\\textstyle\\sum_k q_{w,nk}
        (q_{x,k} - Z_x) + q_{b,n}\\big),\\; lo,\\; 255\\Big), \\qquad
        M_n = \\frac{S_x S_{w,n}}{S_y},

with the int32 bias ``q_b = round(b / (S_x S_w))`` (zero point 0) and the real multiplier
``M_n`` applied in fixed point as ``M = M_0 2^{-(31+n)}`` (eq. 6;
:mod:`refquant.integer.fixed_point`, which also says how the product is rounded). A fused ReLU
is the clamp's lower bound ``lo = Z_y`` (section 2.4); otherwise ``lo = 0``.

Every rounding onto a grid (activations, weights, bias, the float simulation) is the one core
of :mod:`refquant.schemes.uniform`: the codes equal :func:`refquant.quantize` with the same
scale and zero point. Scales are kept in float64 here (the real multipliers are formed from
them); :class:`refquant.QParams` stores float32, so the two agree wherever a scale is a float32
value (tested).

Symbols
-------
=====  ============  =====================================================================
q_x    [B, K] uint8  input codes, S_x, Z_x their scale and zero point
q_w    [N, K] int8   weight codes (symmetric, per output channel, in [-127, 127]), S_w [N]
q_b    [N] int32     bias codes, scale S_x S_w, zero point 0
acc    [B, N] int32  ``sum_k q_w (q_x - Z_x) + q_b``
M0, n  [N] int32     the fixed-point multiplier ``M = M0 2^-(31+n)``
q_y    [B, N] uint8  output codes, S_y, Z_y
=====  ============  =====================================================================

References
----------
.. [1] B. Jacob, S. Kligys, B. Chen, M. Zhu, M. Tang, A. Howard, H. Adam, D. Kalenichenko,
   "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
   Inference", CVPR 2018, arXiv:1712.05877.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from refquant.integer.fixed_point import (INT32_MAX, M_MAX, M_MIN, SHIFT_MAX, SHIFT_MIN,
                                          multiply_by_quantized_multiplier, quantize_multiplier)
from refquant.kernels import uint8_int8_matmul
from refquant.schemes.numerics import as_float_array
from refquant.schemes.uniform import _dequantize_codes, _round_codes

W_QMAX = 127            # weight codes in [-127, 127] (restricted symmetric int8)
_RANGES = {"w_scale": "finite and > 0", "M0": "in [0, 2^31)",
           "shift": f"in [{SHIFT_MIN}, {SHIFT_MAX}]"}


def check_act_params(scale, zero, name: str = "activation") -> tuple[float, int]:
    """``(S, Z)`` of a uint8 tensor as ``(float, int)`` after checking them.

    ``S`` must be a finite real number > 0 and ``Z`` an integer in ``[0, 255]``; else
    ``ValueError`` naming the value.

    >>> check_act_params(0.5, 3)
    (0.5, 3)
    """
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) \
            or not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"{name} scale must be a finite number > 0, got {scale!r}")
    if isinstance(zero, (bool, np.bool_)) or not isinstance(zero, numbers.Integral) \
            or not 0 <= int(zero) <= 255:
        raise ValueError(f"{name} zero point must be an integer in [0, 255], got {zero!r}")
    return float(scale), int(zero)


def _check_vector(v, name: str, dtype, n: int) -> None:
    v = np.asarray(v)
    if v.dtype != dtype or v.shape != (n,):
        raise ValueError(f"{name} must be {np.dtype(dtype)} of shape ({n},), got {v.dtype} "
                         f"{v.shape}")


@dataclass(frozen=True)
class QuantLinear:
    """An integer-only linear layer ``q_y = clamp(Z_y + M (q_w (q_x - Z_x) + q_b))``.

    ``q_w`` int8 [N, K], ``w_scale`` float64 [N], ``q_b`` int32 [N], ``in_scale``/``in_zero``
    (uint8 input), ``out_scale``/``out_zero`` (uint8 output), ``M0``/``shift`` int32 [N],
    ``relu``: clamp at ``out_zero`` instead of 0. Construction checks dtypes, shapes and ranges
    (``ValueError`` naming the field); :func:`quantize_linear` builds one from a float layer.
    """
    q_w: np.ndarray
    w_scale: np.ndarray
    q_b: np.ndarray
    in_scale: float
    in_zero: int
    out_scale: float
    out_zero: int
    M0: np.ndarray
    shift: np.ndarray
    relu: bool = False

    def __post_init__(self):
        q_w = np.asarray(self.q_w)
        if q_w.dtype != np.int8 or q_w.ndim != 2:
            raise ValueError(f"q_w must be a 2-D int8 array [N, K], got {q_w.dtype} {q_w.shape}")
        N = q_w.shape[0]
        for name, dtype in (("w_scale", np.float64), ("q_b", np.int32), ("M0", np.int32),
                            ("shift", np.int32)):
            _check_vector(getattr(self, name), name, dtype, N)
        w_scale, M0, shift = (np.asarray(v) for v in (self.w_scale, self.M0, self.shift))
        for name, v, bad in (("w_scale", w_scale, ~(np.isfinite(w_scale) & (w_scale > 0))),
                             ("M0", M0, M0 < 0),
                             ("shift", shift, (shift < SHIFT_MIN) | (shift > SHIFT_MAX))):
            if np.any(bad):
                raise ValueError(f"{name} must be {_RANGES[name]}, got {v[bad][0].item()!r}")
        check_act_params(self.in_scale, self.in_zero, "input")
        check_act_params(self.out_scale, self.out_zero, "output")

    @property
    def multiplier(self) -> np.ndarray:
        """The real multipliers ``M_n = S_x S_w[n] / S_y`` (float64, [N])."""
        return self.in_scale * self.w_scale / self.out_scale


def act_qparams(lo: float, hi: float) -> tuple[float, int]:
    """uint8 scale and zero point for the range ``[lo, hi]`` widened to contain 0 (exact zero).

    ``S = (hi - lo) / 255``, ``Z = clamp(round(-lo / S), 0, 255)``; a zero-width range gets
    ``S = 1``. (Jacob et al. sec. 2.1: real 0 must be exactly representable.) ``lo`` and
    ``hi`` must be finite with ``lo <= hi`` and ``hi - lo`` finite.

    >>> act_qparams(-1.0, 3.0)                        # S = 4/255, Z = round(63.75)
    (0.01568627450980392, 64)
    """
    lo_in, hi_in = float(lo), float(hi)
    if not (np.isfinite(lo_in) and np.isfinite(hi_in)) or lo_in > hi_in:
        raise ValueError(f"activation range must be finite with lo <= hi, got [{lo_in}, {hi_in}]")
    lo, hi = min(lo_in, 0.0), max(hi_in, 0.0)
    if not np.isfinite(hi - lo):
        raise ValueError(f"activation range [{lo_in}, {hi_in}] is too wide: its width "
                         f"overflows float64")
    S = (hi - lo) / 255.0 if hi > lo else 1.0
    Z = _round_codes(np.float64(-lo), S, 0.0, 0, 255, "half_even")     # the code of real 0
    return S, int(Z)


def quantize_act(x, scale: float, zero: int) -> np.ndarray:
    """uint8 codes ``clamp(round_half_even(x / S) + Z, 0, 255)`` (the core of
    :func:`refquant.quantize`, with a float64 ``S``).

    >>> quantize_act([-1.0, 0.0, 0.5, 9.0], 0.25, 4).tolist()
    [0, 4, 6, 40]
    """
    S, Z = check_act_params(scale, zero)
    x = np.asarray(x, np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("activations contain NaN or Inf")
    return _round_codes(x, S, float(Z), 0, 255, "half_even").astype(np.uint8)


def dequantize_act(q, scale: float, zero: int) -> np.ndarray:
    """``S (q - Z)`` of uint8 codes ``q``, as float32.

    >>> dequantize_act(np.array([0, 4, 6], np.uint8), 0.25, 4).tolist()
    [-1.0, 0.0, 0.5]
    """
    S, Z = check_act_params(scale, zero)
    q = np.asarray(q)
    if q.dtype != np.uint8:
        raise ValueError(f"activation codes must be uint8, got {q.dtype}")
    return _dequantize_codes(q.astype(np.float64), S, float(Z)).astype(np.float32)


def _multipliers(S_x: float, S_w: np.ndarray, S_y: float) -> np.ndarray:
    """``S_x S_w / S_y`` [N], checked against the fixed-point range naming the inputs."""
    with np.errstate(over="ignore", under="ignore"):
        M = S_x * S_w / S_y
    bad = ~(np.isfinite(M) & (M >= M_MIN) & (M <= M_MAX))
    if np.any(bad):
        j = int(np.flatnonzero(bad)[0])
        raise ValueError(f"the multiplier S_x S_w[{j}] / S_y with S_x={S_x!r}, "
                         f"S_w[{j}]={float(S_w[j])!r}, S_y={S_y!r} is {float(M[j])!r}, outside "
                         f"[2^-31, 2^15]")
    return M


def quantize_linear(W, b, in_q: tuple[float, int], out_q: tuple[float, int], *,
                    relu: bool = False) -> QuantLinear:
    """Quantize a float layer ``y = W x + b`` (``W`` [N, K]) for integer-only execution.

    Weights: symmetric int8 per output channel, ``S_w[n] = max_k |W_nk| / 127`` (1 for a zero
    row), ``q_w = round(W / S_w)``. Bias: ``q_b = round(b / (S_x S_w))`` in int32.
    ``in_q = (S_x, Z_x)`` and ``out_q = (S_y, Z_y)`` are the uint8 input and output parameters.
    Raises ``ValueError`` naming the offending value for NaN/Inf weights or bias, bad
    activation parameters, a bias that does not fit in int32 or a multiplier outside
    ``[2^-31, 2^15]``.

    >>> layer = quantize_linear(np.array([[1.0, -0.5]]), np.array([0.25]), (1 / 255, 0), (2 / 255, 128))
    >>> layer.q_w.tolist(), layer.q_b.tolist(), int(layer.M0[0]), int(layer.shift[0])
    ([[127, -64]], [8096], 1082196484, 7)
    """
    W = np.asarray(W, np.float64)
    b = np.zeros(W.shape[0]) if b is None else np.asarray(b, np.float64)
    if W.ndim != 2 or b.shape != (W.shape[0],):
        raise ValueError(f"W must be [N, K] and b [N], got {W.shape} and {b.shape}")
    if not (np.all(np.isfinite(W)) and np.all(np.isfinite(b))):
        raise ValueError("W or b contains NaN or Inf")
    S_x, Z_x = check_act_params(*in_q, name="activation in_q")
    S_y, Z_y = check_act_params(*out_q, name="activation out_q")
    amax = np.abs(W).max(axis=1)                                           # [N]
    S_w = np.where(amax > 0, amax / W_QMAX, 1.0)                           # [N]
    q_w = _round_codes(W, S_w[:, None], 0.0, -W_QMAX, W_QMAX, "half_even").astype(np.int8)
    M0, n = quantize_multiplier(_multipliers(S_x, S_w, S_y))
    with np.errstate(over="ignore", under="ignore", divide="ignore"):
        S_b = S_x * S_w                                                    # [N]
        u = b / S_b
    bad = ~np.isfinite(u) | (np.abs(u) > INT32_MAX)
    if np.any(bad):
        j = int(np.flatnonzero(bad)[0])
        raise ValueError(f"bias b[{j}]={float(b[j])!r} does not fit in int32 at scale "
                         f"S_x S_w[{j}] = {float(S_b[j])!r}")
    q_b = _round_codes(b, S_b, 0.0, -INT32_MAX, INT32_MAX, "half_even").astype(np.int32)
    return QuantLinear(q_w, S_w, q_b, S_x, Z_x, S_y, Z_y, M0, n, bool(relu))


def accumulate(layer: QuantLinear, q_x, *, backend: str = "auto") -> np.ndarray:
    """The int32 accumulator ``acc = q_w (q_x - Z_x) + q_b`` for uint8 ``q_x`` [B, K] -> [B, N].

    The product goes through :func:`refquant.kernels.uint8_int8_matmul` (zero point by row and
    column sums).
    """
    acc = uint8_int8_matmul(q_x, layer.q_w.T, layer.in_zero, 0, backend=backend)   # [B, N]
    return acc + layer.q_b                                                           # int32


def linear_int(layer: QuantLinear, q_x, *, backend: str = "auto",
               rounding: str = "single") -> np.ndarray:
    """Run one layer in integers only: uint8 [B, K] -> uint8 [B, N].

    ``rounding`` is the fixed-point product's, see
    :func:`refquant.integer.fixed_point.multiply_by_quantized_multiplier` (``"gemmlowp"``
    matches TFLite's default kernels bit for bit).
    """
    acc = accumulate(layer, q_x, backend=backend)                          # [B, N] int32
    v = multiply_by_quantized_multiplier(acc, layer.M0, layer.shift, rounding)  # [B, N] int64
    lo = layer.out_zero if layer.relu else 0
    return np.clip(layer.out_zero + v, lo, 255).astype(np.uint8)


def linear_float_sim(layer: QuantLinear, q_x) -> np.ndarray:
    """The same layer simulated in float64: ``clamp(round(M acc) + Z_y)`` with the *real* ``M``.

    Differs from :func:`linear_int` only by the fixed-point multiplier's rounding: by at most
    one code (see the tests).
    """
    acc = accumulate(layer, q_x, backend="numpy").astype(np.float64)       # [B, N]
    lo = layer.out_zero if layer.relu else 0
    v = _round_codes(layer.multiplier * acc, 1.0, float(layer.out_zero), lo, 255, "half_even")
    return v.astype(np.uint8)


@dataclass(frozen=True)
class IntMLP:
    """A chain of :class:`QuantLinear` layers; input and output parameters at the ends."""
    layers: tuple
    in_q: tuple
    out_q: tuple

    def run(self, x, *, backend: str = "auto", rounding: str = "single") -> np.ndarray:
        """Float input [B, K] -> float32 output: quantize once, integers throughout, dequantize."""
        q = quantize_act(x, *self.in_q)
        for layer in self.layers:
            q = linear_int(layer, q, backend=backend, rounding=rounding)
        return dequantize_act(q, *self.out_q)


def mlp_float(weights, biases, x) -> np.ndarray:
    """The float MLP ``x -> relu(W_1 x + b_1) -> ... -> W_L x + b_L`` (ReLU between layers).

    >>> mlp_float([np.eye(2), np.ones((1, 2))], [np.zeros(2), np.zeros(1)], [[1.0, -2.0]]).tolist()
    [[1.0]]
    """
    h = np.asarray(x, np.float64)
    for i, (W, b) in enumerate(zip(weights, biases)):
        h = h @ np.asarray(W, np.float64).T + b                            # [B, K] -> [B, N]
        if i < len(weights) - 1:
            h = np.maximum(h, 0.0)
    return h


def quantize_mlp(weights, biases, x_calib) -> IntMLP:
    """Quantize a ReLU MLP for integer-only execution, ranges from min-max on ``x_calib``.

    Each layer's output range is observed on the float forward pass over the calibration
    batch; hidden layers fuse their ReLU into the output clamp.

    >>> rng = np.random.default_rng(0)
    >>> Ws, bs = [rng.standard_normal((4, 3)), rng.standard_normal((2, 4))], [np.zeros(4), np.zeros(2)]
    >>> mlp = quantize_mlp(Ws, bs, rng.standard_normal((32, 3)))
    >>> [layer.q_w.shape for layer in mlp.layers], mlp.run(np.zeros((1, 3)), backend="numpy").shape
    ([(4, 3), (2, 4)], (1, 2))
    """
    if len(weights) != len(biases) or not weights:
        raise ValueError("weights and biases must be non-empty lists of the same length")
    h = as_float_array(x_calib, "x_calib").astype(np.float64)
    in_q = act_qparams(h.min(), h.max())
    layers, q_prev = [], in_q
    for i, (W, b) in enumerate(zip(weights, biases)):
        with np.errstate(over="ignore", invalid="ignore"):
            h = h @ np.asarray(W, np.float64).T + b
        if not np.all(np.isfinite(h)):
            raise ValueError(f"the float forward pass over x_calib overflows (or meets NaN) at "
                             f"layer {i}")
        last = i == len(weights) - 1
        if not last:
            h = np.maximum(h, 0.0)
        out_q = act_qparams(h.min(), h.max())
        layers.append(quantize_linear(W, b, q_prev, out_q, relu=not last))
        q_prev = out_q
    return IntMLP(tuple(layers), in_q, q_prev)


__all__ = ["QuantLinear", "IntMLP", "act_qparams", "check_act_params", "quantize_act",
           "dequantize_act", "quantize_linear", "accumulate", "linear_int", "linear_float_sim",
           "mlp_float", "quantize_mlp", "quantize_multiplier", "multiply_by_quantized_multiplier"]
