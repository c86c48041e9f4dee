"""Integer-only execution of linear layers and MLPs, after Jacob et al. [1]_.

A real value is ``r = S (q - Z)`` (scale ``S``, integer zero point ``Z``). For a linear layer
``y = W x + b`` with uint8 input ``q_x`` (``S_x, Z_x``), int8 per-channel symmetric weights
``q_w`` (``S_w[n]``, zero point 0) and uint8 output ``q_y`` (``S_y, Z_y``), eq. (4)-(9) of [1]_
give, per output channel ``n``,

.. math::

    q_{y,n} = \\operatorname{clamp}\\Big(Z_y + M_n \\big(\\textstyle\\sum_k q_{w,nk}
        (q_{x,k} - Z_x) + q_{b,n}\\big)\\Big), \\qquad M_n = \\frac{S_x S_{w,n}}{S_y},

with the int32 bias ``q_b = round(b / (S_x S_w))`` (zero point 0) and the real multiplier
``M_n`` applied in fixed point as ``M = M_0 2^{-n}``, ``M_0`` an int32 in ``[2^30, 2^31)``
(eq. 6): the product of the int32 accumulator and ``M_0`` is formed exactly in int64 and shifted
right by ``31 + n`` bits with round-to-nearest. A fused ReLU is the clamp's lower bound ``Z_y``
(section 2.4).

Symbols
-------
q_x     [B, K] uint8   input codes, S_x, Z_x their scale and zero point
q_w     [N, K] int8    weight codes (symmetric, per output channel), S_w [N]
q_b     [N] int32      bias codes, scale S_x S_w, zero point 0
acc     [B, N] int32   ``sum_k q_w (q_x - Z_x) + q_b``
M0, n   [N] int32      the fixed-point multiplier ``M = (M0 / 2^31) 2^-n = M0 2^-(31+n)``
q_y     [B, N] uint8   output codes, S_y, Z_y

Rounding of the fixed-point product
-----------------------------------
``round_shift(v, s) = floor((v + 2^(s-1)) / 2^s)``: round to nearest, ties toward +inf, in one
step on the exact int64 product (gemmlowp's two-step ``SaturatingRoundingDoublingHighMul`` +
``RoundingDivideByPOT`` rounds twice; the single rounding here is within one unit of it).

References
----------
.. [1] B. Jacob, S. Kligys, B. Chen, M. Zhu, M. Tang, A. Howard, H. Adam, D. Kalenichenko,
   "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
   Inference", CVPR 2018, arXiv:1712.05877.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refquant.kernels import uint8_int8_matmul

M_MIN, M_MAX = 2.0**-31, 2.0**15        # supported range of real multipliers


def quantize_multiplier(M) -> tuple[np.ndarray, np.ndarray]:
    """Decompose real multipliers ``M`` into ``(M0, n)`` with ``M ~= M0 2^-(31 + n)``.

    ``M0`` is an int32 in ``[2^30, 2^31)`` (the normalized mantissa, eq. 6 of Jacob et al.,
    arXiv:1712.05877) and ``n`` an int32 shift (negative for ``M >= 1``). With ``M0`` rounded to
    nearest, the relative error is at most ``2^-31``:

    .. math::  |M_0 2^{-(31+n)} - M| \\le 2^{-(31+n)} / 2 \\le 2^{-31} M .

    ``M`` must be finite, in ``[2^-31, 2^15]``; else ``ValueError``.

    >>> quantize_multiplier(0.5)
    (array(1073741824, dtype=int32), array(0, dtype=int32))
    """
    M = np.asarray(M, np.float64)
    if not np.all(np.isfinite(M)) or np.any(M < M_MIN) or np.any(M > M_MAX):
        raise ValueError(f"multipliers must be finite and in [2^-31, 2^15], got range "
                         f"{M.min()}..{M.max()}")
    mant, exp = np.frexp(M)                  # M = mant 2^exp, mant in [0.5, 1)
    M0 = np.rint(mant * 2.0**31).astype(np.int64)
    carry = M0 == 2**31                      # mant rounded up to 1.0
    M0 = np.where(carry, 2**30, M0)
    n = -(exp + carry)                       # M = (M0 / 2^31) 2^-n
    return M0.astype(np.int32), n.astype(np.int32)


def multiply_by_quantized_multiplier(acc, M0, n) -> np.ndarray:
    """``round(acc * M0 / 2^(31 + n))`` for int32 ``acc``, in int64, rounded to nearest.

    The product ``acc * M0`` (< 2^62) is exact in int64; the shift by ``31 + n`` bits (>= 16
    for supported multipliers) rounds ties toward +inf. Returns int64.
    """
    acc = np.asarray(acc)
    if acc.dtype != np.int32:
        raise ValueError(f"acc must be int32, got {acc.dtype}")
    s = 31 + np.asarray(n, np.int64)                                         # total shift
    prod = acc.astype(np.int64) * np.asarray(M0, np.int64)
    return (prod + (np.int64(1) << (s - 1))) >> s


@dataclass(frozen=True)
class QuantLinear:
    """An integer-only linear layer ``q_y = clamp(Z_y + M (q_w (q_x - Z_x) + q_b))``.

    ``q_w`` int8 [N, K], ``w_scale`` float64 [N], ``q_b`` int32 [N], ``in_scale``/``in_zero``
    (uint8 input), ``out_scale``/``out_zero`` (uint8 output), ``M0``/``shift`` int32 [N],
    ``relu``: clamp at ``out_zero`` instead of 0.
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

    @property
    def multiplier(self) -> np.ndarray:
        """The real multipliers ``M_n = S_x S_w[n] / S_y`` (float64, [N])."""
        return self.in_scale * self.w_scale / self.out_scale


def act_qparams(lo: float, hi: float) -> tuple[float, int]:
    """uint8 scale and zero point for the range ``[lo, hi]`` widened to contain 0 (exact zero).

    ``S = (hi - lo) / 255``, ``Z = round(-lo / S)`` clamped to [0, 255]; a zero-width range gets
    ``S = 1``. (Jacob et al. sec. 2.1: real 0 must be exactly representable.)
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"activation range must be finite, got [{lo}, {hi}]")
    S = (hi - lo) / 255.0 if hi > lo else 1.0
    Z = int(np.clip(np.rint(-lo / S), 0, 255))
    return S, Z


def quantize_act(x, scale: float, zero: int) -> np.ndarray:
    """uint8 codes ``clamp(round_half_even(x / S) + Z, 0, 255)``."""
    x = np.asarray(x, np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("activations contain NaN or Inf")
    return np.clip(np.rint(x / scale) + zero, 0, 255).astype(np.uint8)


def dequantize_act(q, scale: float, zero: int) -> np.ndarray:
    """``S (q - Z)`` as float32."""
    return (scale * (np.asarray(q, np.float64) - zero)).astype(np.float32)


def quantize_linear(W, b, in_q: tuple[float, int], out_q: tuple[float, int], *,
                    relu: bool = False) -> QuantLinear:
    """Quantize a float layer ``y = W x + b`` (``W`` [N, K]) for integer-only execution.

    Weights: symmetric int8 per output channel, ``S_w[n] = max_k |W_nk| / 127`` (1 for a zero
    row), ``q_w = round(W / S_w)``. Bias: ``q_b = round(b / (S_x S_w))`` in int32.
    ``in_q = (S_x, Z_x)`` and ``out_q = (S_y, Z_y)`` are the uint8 input and output parameters.
    """
    W = np.asarray(W, np.float64)
    b = np.zeros(W.shape[0]) if b is None else np.asarray(b, np.float64)
    if W.ndim != 2 or b.shape != (W.shape[0],):
        raise ValueError(f"W must be [N, K] and b [N], got {W.shape} and {b.shape}")
    if not (np.all(np.isfinite(W)) and np.all(np.isfinite(b))):
        raise ValueError("W or b contains NaN or Inf")
    S_x, Z_x = float(in_q[0]), int(in_q[1])
    S_y, Z_y = float(out_q[0]), int(out_q[1])
    if not (S_x > 0 and S_y > 0 and 0 <= Z_x <= 255 and 0 <= Z_y <= 255):
        raise ValueError(f"bad activation parameters in={in_q} out={out_q}")
    amax = np.abs(W).max(axis=1)                                           # [N]
    S_w = np.where(amax > 0, amax / 127.0, 1.0)                            # [N]
    q_w = np.clip(np.rint(W / S_w[:, None]), -127, 127).astype(np.int8)    # [N, K]
    q_b64 = np.rint(b / (S_x * S_w))
    if np.any(np.abs(q_b64) > 2**31 - 1):
        raise ValueError("bias does not fit in int32 at scale S_x S_w")
    M0, n = quantize_multiplier(S_x * S_w / S_y)
    return QuantLinear(q_w, S_w, q_b64.astype(np.int32), S_x, Z_x, S_y, Z_y, M0, n, bool(relu))


def accumulate(layer: QuantLinear, q_x, *, backend: str = "auto") -> np.ndarray:
    """The int32 accumulator ``acc = q_w (q_x - Z_x) + q_b`` for uint8 ``q_x`` [B, K] -> [B, N].

    The product goes through :func:`refquant.kernels.uint8_int8_matmul` (zero point by row and
    column sums).
    """
    acc = uint8_int8_matmul(q_x, layer.q_w.T, layer.in_zero, 0, backend=backend)   # [B, N]
    return acc + layer.q_b                                                           # int32


def linear_int(layer: QuantLinear, q_x, *, backend: str = "auto") -> np.ndarray:
    """Run one layer in integers only: uint8 [B, K] -> uint8 [B, N]."""
    acc = accumulate(layer, q_x, backend=backend)                          # [B, N] int32
    v = multiply_by_quantized_multiplier(acc, layer.M0, layer.shift)       # [B, N] int64
    lo = layer.out_zero if layer.relu else 0
    return np.clip(layer.out_zero + v, lo, 255).astype(np.uint8)


def linear_float_sim(layer: QuantLinear, q_x) -> np.ndarray:
    """The same layer simulated in float64: ``clamp(round(Z_y + M acc))`` with the *real* ``M``.

    Differs from :func:`linear_int` only by the fixed-point multiplier's rounding: by at most
    one code (see the tests).
    """
    acc = accumulate(layer, q_x, backend="numpy").astype(np.float64)
    v = np.rint(layer.out_zero + layer.multiplier * acc)
    lo = layer.out_zero if layer.relu else 0
    return np.clip(v, lo, 255).astype(np.uint8)


@dataclass(frozen=True)
class IntMLP:
    """A chain of :class:`QuantLinear` layers; input and output parameters at the ends."""
    layers: tuple
    in_q: tuple
    out_q: tuple

    def run(self, x, *, backend: str = "auto") -> np.ndarray:
        """Float input [B, K] -> float32 output: quantize once, integers throughout, dequantize."""
        q = quantize_act(x, *self.in_q)
        for layer in self.layers:
            q = linear_int(layer, q, backend=backend)
        return dequantize_act(q, *self.out_q)


def mlp_float(weights, biases, x) -> np.ndarray:
    """The float MLP ``x -> relu(W_1 x + b_1) -> ... -> W_L x + b_L`` (ReLU between layers)."""
    h = np.asarray(x, np.float64)
    for i, (W, b) in enumerate(zip(weights, biases)):
        h = h @ np.asarray(W, np.float64).T + b
        if i < len(weights) - 1:
            h = np.maximum(h, 0.0)
    return h


def quantize_mlp(weights, biases, x_calib) -> IntMLP:
    """Quantize a ReLU MLP for integer-only execution, ranges from min-max on ``x_calib``.

    Each layer's output range is observed on the float forward pass over the calibration
    batch; hidden layers fuse their ReLU into the output clamp.
    """
    if len(weights) != len(biases) or not weights:
        raise ValueError("weights and biases must be non-empty lists of the same length")
    h = np.asarray(x_calib, np.float64)
    in_q = act_qparams(h.min(), h.max())
    layers, q_prev = [], in_q
    for i, (W, b) in enumerate(zip(weights, biases)):
        h = h @ np.asarray(W, np.float64).T + b
        last = i == len(weights) - 1
        if not last:
            h = np.maximum(h, 0.0)
        out_q = act_qparams(h.min(), h.max())
        layers.append(quantize_linear(W, b, q_prev, out_q, relu=not last))
        q_prev = out_q
    return IntMLP(tuple(layers), in_q, q_prev)
