"""Requantization between integer formats: dynamic per-token int8 codes, the static per-tensor
alternative, per-row times per-column rescaling of int32 accumulators, and residual adds.

The integer forward pass keeps every activation as an integer array whose real value is
``scale * codes``. Static scales are real numbers fixed offline (Jacob et al. [1]_, eq. 1); they
never appear at run time except through fixed-point multipliers ``M = M0 2^-(31+n)``
(:mod:`refquant.integer.fixed_point`). A *dynamic* per-token scale is computed at run time in
integer arithmetic as an integer ``u_t`` times a static base: the real value of row ``t`` is

.. math::  x_{tk} \\approx \\beta\\, u_t\\, q_{tk}, \\qquad q_{tk} \\in [-127, 127],

with ``beta`` static (e.g. ``S_x / 127`` for the row maximum ``u_t = max_k |x_tk|`` of an
integer tensor of scale ``S_x``). I-LLM [2]_ keeps its dynamic scales the same way (integer
mantissas and shifts computed on the fly, its DI-MatMul); LLM.int8() and SmoothQuant call the
float version per-token quantization.

Symbols
-------
======  ==============  ==============================================================
x       [T, K] integer  codes of a static scale ``S_x``
q       [T, K] int8     per-token int8 codes in ``[-127, 127]``
u       [T] int64       the dynamic per-row integer scale factor (``u = max|x|`` here)
R       [T] int64       fixed-point reciprocal ``round(127 2^b / u)``, ``b = RECIP_BITS``
acc     [T, N] int32    an int8 matmul of ``q`` with int8 weights
M0, n   [N] int         per-column static multiplier ``M_c = M0_c 2^-(31+n_c)``
a, e    [T] int64       ``u ~= a 2^e`` with ``a < 2^15`` (:func:`split_mantissa`)
======  ==============  ==============================================================

References
----------
.. [1] B. Jacob et al., "Quantization and Training of Neural Networks for Efficient
       Integer-Arithmetic-Only Inference", CVPR 2018, arXiv:1712.05877.
.. [2] X. Hu et al., "I-LLM: Efficient Integer-Only Inference for Fully-Quantized Low-Bit Large
       Language Models", 2024, arXiv:2405.17849.
"""

from __future__ import annotations

import numpy as np

from refquant.integer.fixed_point import (INT32_MAX, INT32_MIN, multiply_by_quantized_multiplier,
                                          quantize_multiplier)

Q_MAX = 127
RECIP_BITS = 55           # b: 127 2^55 < 2^62, so x R fits int64 for |x| < 2^47
X_ABS_MAX = 2**47         # inputs of dynamic_int8: |x| < 2^47
MANTISSA_BITS = 15        # u ~= a 2^e with a <= 2^15 (split_mantissa)
ACC_ABS_MAX = 2**32       # rescale_rows: |acc| < 2^32 so that acc a < 2^47
WIDE_SHIFT = 16           # quantize_multiplier_wide: M in [2^-47, 2^15]
N_MIN, N_MAX = -30, 47    # shifts rescale_rows accepts


def int_array(x, name: str, abs_max: int | None = None) -> np.ndarray:
    """``x`` as an int64 array after checking its dtype is integer and, given ``abs_max``,
    that ``|x| < abs_max``; else ``ValueError`` naming the dtype or the first bad value.

    >>> int_array(np.array([1, -2], np.int8), "x").dtype
    dtype('int64')
    """
    a = np.asarray(x)
    if a.dtype.kind not in "iu":
        raise ValueError(f"{name} must be an integer array, got dtype {a.dtype}")
    a = a.astype(np.int64, copy=False)
    if abs_max is not None and a.size:
        bad = np.abs(a) >= abs_max
        if np.any(bad):
            raise ValueError(f"{name} must satisfy |{name}| < 2^{int(abs_max).bit_length() - 1},"
                             f" got {int(a[bad].ravel()[0])}")
    return a


def bit_length(u) -> np.ndarray:
    """``int(u).bit_length()`` of every element of a non-negative int64 array, by a 6-step
    binary search on shifts (integer only; checked against Python's ``int.bit_length``).

    >>> bit_length(np.array([0, 1, 2, 3, 255, 256, 2**62], np.int64)).tolist()
    [0, 1, 2, 2, 8, 9, 63]
    """
    u = int_array(u, "u")
    if np.any(u < 0):
        raise ValueError(f"u must be >= 0, got {int(u[u < 0].ravel()[0])}")
    n = np.zeros(u.shape, np.int64)
    v = u.copy()
    for k in (32, 16, 8, 4, 2, 1):
        big = (v >> k) > 0
        n += np.where(big, k, 0)
        v = np.where(big, v >> k, v)
    return n + (v > 0)


def dynamic_int8(x) -> tuple[np.ndarray, np.ndarray]:
    """Per-token int8 codes of an integer tensor: ``u_t = max_k |x_tk|``, ``q = round(127 x / u)``.

    The division is one fixed-point reciprocal per row, ``R_t = round(127 2^b / u_t)``
    (``b = 55``; one integer division per row), then ``q = (x R + 2^(b-1)) >> b``.

    Scale bookkeeping: if ``x`` has the static scale ``S_x``, row ``t`` of ``q`` has the scale
    ``(S_x / 127) u_t``. A zero row gets ``u = 1`` (codes 0).

    Error bound: ``|R - 127 2^b/u| <= 1/2`` and ``|x| <= u``, so

    .. math:: |q - 127 x / u| \\le \\tfrac12 + u\\, 2^{-(b+1)} \\le \\tfrac12 + 2^{-9}

    output LSBs (``u < 2^47``): round to nearest except within ``u 2^-56`` of a tie; the codes
    stay in ``[-127, 127]``.

    Parameters
    ----------
    x : integer array [..., K], ``|x| < 2^47`` (else ``ValueError`` with the bound)

    Returns
    -------
    q : int8 [..., K];  u : int64 [...]

    >>> q, u = dynamic_int8(np.array([[10, -20, 5], [0, 0, 0]], np.int32))
    >>> q.tolist(), u.tolist()
    ([[64, -127, 32], [0, 0, 0]], [20, 1])
    """
    x = int_array(x, "x", X_ABS_MAX)
    u = np.maximum(np.abs(x).max(axis=-1), 1)                       # [...]
    R = ((np.int64(Q_MAX) << RECIP_BITS) + (u >> 1)) // u           # [...] round(127 2^b / u)
    q = (x * R[..., None] + (np.int64(1) << (RECIP_BITS - 1))) >> RECIP_BITS
    return np.clip(q, -Q_MAX, Q_MAX).astype(np.int8), u


def static_int8(x, M0, n) -> np.ndarray:
    """Static per-tensor int8 codes ``q = clamp(round(x M), -127, 127)``, ``M = S_x / S_q``
    (a calibrated scale ``S_q``, Jacob et al. eq. 7), through the fixed-point multiplier.

    Error bound: ``|q - x M| <= 1/2 + 2^-31 |x M|`` LSB inside the clamp (the multiplier's
    relative error is ``2^-31``; the product is rounded once).

    >>> from refquant.integer.fixed_point import quantize_multiplier
    >>> M0, n = quantize_multiplier(0.25)
    >>> static_int8(np.array([10, -6, 1000], np.int32), M0, n).tolist()
    [3, -1, 127]
    """
    x = np.asarray(x)
    if x.dtype.kind not in "iu":
        raise ValueError(f"x must be an integer array, got dtype {x.dtype}")
    q = multiply_by_quantized_multiplier(x.astype(np.int32), M0, n)
    return np.clip(q, -Q_MAX, Q_MAX).astype(np.int8)


def split_mantissa(u) -> tuple[np.ndarray, np.ndarray]:
    """``u ~= a 2^e`` with ``a = round(u / 2^e) <= 2^15``, ``e = max(bitlen(u) - 15, 0)``.

    Relative error ``|a 2^e - u| / u <= 2^-15`` (exact for ``u < 2^15``).

    >>> [v.tolist() for v in split_mantissa(np.array([5, 2**20 + 2**4], np.int64))]
    [[5, 16384], [0, 6]]
    """
    u = int_array(u, "u")
    if np.any(u <= 0):
        raise ValueError(f"u must be > 0, got {int(u[u <= 0].ravel()[0])}")
    e = np.maximum(bit_length(u) - MANTISSA_BITS, 0)
    half = np.where(e > 0, np.int64(1) << np.maximum(e - 1, 0), 0)
    return (u + half) >> e, e


def quantize_multiplier_wide(M) -> tuple[np.ndarray, np.ndarray]:
    """Offline: ``(M0, n)`` with ``M ~= M0 2^-(31+n)`` for ``M`` in ``[2^-47, 2^15]``, the range
    :func:`rescale_rows` needs when the row factor ``u`` carries up to ``2^16`` of the scale
    (:func:`refquant.integer.fixed_point.quantize_multiplier` where ``M >= 2^-31``, else of
    ``M 2^16``, then ``n + 16``: ``n`` in ``[-30, 47]``). Relative error ``2^-31``.

    >>> [int(v) for v in quantize_multiplier_wide(2.0**-40)]
    [1073741824, 39]
    """
    M = np.asarray(M, np.float64)
    bad = ~(np.isfinite(M) & (M >= 2.0**-47) & (M <= 2.0**15))
    if np.any(bad):
        raise ValueError(f"multipliers must be finite and in [2^-47, 2^15], got "
                         f"{float(M[bad].ravel()[0])!r}")
    big = M >= 2.0**-31                                         # plain quantize_multiplier
    M0, n = quantize_multiplier(np.where(big, M, M * 2.0**WIDE_SHIFT))
    return M0, np.where(big, n, n + WIDE_SHIFT).astype(np.int32)


def mul_shift_round(p, M0, s) -> np.ndarray:
    """``round(p M0 / 2^s)`` exactly (ties toward +inf), for ``|p| < 2^47``, ``0 <= M0 < 2^31``
    and ``17 <= s <= 78``, in int64 without overflow: ``M0 = hi 2^16 + lo`` and

    .. math:: \\Big\\lfloor \\frac{p M_0 + 2^{s-1}}{2^s} \\Big\\rfloor
              = \\Big\\lfloor \\big(p\\,hi + 2^{s-17}
                + \\lfloor p\\,lo / 2^{16} \\rfloor\\big) / 2^{s-16} \\Big\\rfloor

    (nested floors of divisions by powers of two compose exactly). Checked against Python ints.

    >>> int(mul_shift_round(np.int64(5), np.int64(2**30), np.int64(32)))     # 5/4 -> 1
    1
    """
    p = int_array(p, "p", 2**47)
    M0 = int_array(M0, "M0")
    s = int_array(s, "s")
    if np.any((M0 < 0) | (M0 > INT32_MAX)):
        raise ValueError(f"M0 must lie in [0, 2^31), got {int(M0[(M0 < 0) | (M0 > INT32_MAX)][0])}")
    if np.any((s < 17) | (s > 78)):
        bad = int(s[(s < 17) | (s > 78)].ravel()[0])
        raise ValueError(f"total shift s={bad} outside [17, 78]: the per-row times per-column "
                         f"multiplier must lie in [2^-63, 2^-2] per accumulator LSB")
    hi, lo = M0 >> 16, M0 & 0xFFFF
    A = p * hi + (np.int64(1) << np.minimum(s - 17, 62))
    A = A + ((p * lo) >> 16)
    return A >> np.minimum(s - 16, 63)


def use_numba(backend: str) -> bool:
    """Whether the element-wise ops run their Numba kernels: ``"numba"``, or ``"auto"`` where
    Numba is installed; ``"numpy"`` (the specification) and ``"cuda"`` (whose kernels cover
    the GEMMs only) run NumPy. Anything else raises ``ValueError``."""
    if backend not in ("auto", "numpy", "numba", "cuda"):
        raise ValueError(f"unknown backend {backend!r}; choose auto, numpy, numba or cuda")
    if backend == "auto":
        from refquant.kernels import backends
        return "numba" in backends()
    return backend == "numba"


def rescale_rows(acc, u, M0, n, *, backend: str = "numpy") -> np.ndarray:
    """``round(acc_tc u_t M_c)`` into int32: an int8 matmul of per-token codes (row factor
    ``u_t``, dynamic) by per-channel weights (column multiplier ``M_c = M0_c 2^-(31+n_c)``,
    static) brought to the output's static scale, in integer arithmetic only.

    Scale bookkeeping: for input codes of scale ``beta u_t``, weights of scale ``s_w,c`` and an
    output scale ``S_y``, pass ``M_c = beta s_w,c / S_y``. Steps: ``u ~= a 2^e``
    (:func:`split_mantissa`), ``p = acc a`` (exact, ``|p| < 2^47``), then
    :func:`mul_shift_round` with ``s = 31 + n - e``. Results outside int32 saturate (TFLite's
    clamp).

    Error bound: ``|y - acc u M| <= 1/2 + |acc u M| (2^-15 + 2^-31)`` output LSBs (mantissa of
    ``u``, of ``M``, one final rounding).

    Parameters
    ----------
    acc : integer [..., T, C], ``|acc| < 2^32``
    u : integer [..., T] > 0
    M0, n : integer [C] (or scalars) from :func:`quantize_multiplier_wide` (``n`` in ``[-30, 47]``)
    backend : "numpy" (the specification) or "numba"/"auto" (:mod:`refquant.integer._numba_ops`,
        equal bit for bit; 2-D ``acc``)

    Returns
    -------
    int32 [..., T, C]

    >>> from refquant.integer.fixed_point import quantize_multiplier
    >>> M0, n = quantize_multiplier(np.array([0.5, 0.25]))
    >>> rescale_rows(np.array([[3, 3], [-3, -3]], np.int32), np.array([1, 4]), M0, n).tolist()
    [[2, 1], [-6, -3]]
    """
    acc = int_array(acc, "acc", ACC_ABS_MAX)
    M0 = int_array(M0, "M0")
    n = int_array(n, "shift n")
    if np.any((n < N_MIN) | (n > N_MAX)):
        raise ValueError(f"shift n must lie in [{N_MIN}, {N_MAX}], got "
                         f"{int(n[(n < N_MIN) | (n > N_MAX)].ravel()[0])}")
    a, e = split_mantissa(u)                                        # [..., T] each
    if use_numba(backend) and acc.ndim == 2:
        from refquant.integer import _numba_ops
        C = acc.shape[1]
        M0c, nc = np.broadcast_to(M0, (C,)), np.broadcast_to(n, (C,))
        s_lo, s_hi = 31 + int(nc.min()) - int(e.max()), 31 + int(nc.max()) - int(e.min())
        if 17 <= s_lo and s_hi <= 78:
            return _numba_ops.rescale_rows(acc, a, e, np.ascontiguousarray(M0c),
                                           np.ascontiguousarray(nc))
    p = acc * a[..., None]                                          # [..., T, C], < 2^47
    y = mul_shift_round(p, M0, 31 + n - e[..., None])
    return np.clip(y, INT32_MIN, INT32_MAX).astype(np.int32)


def residual_add(x, y, M0, n) -> np.ndarray:
    """``x + round(y M)`` in int32: the residual ``x`` (scale ``S_x``) plus a branch ``y`` (scale
    ``S_y``) brought to ``S_x`` by ``M = S_y / S_x`` in fixed point (Jacob et al. section 2.3:
    both operands of an addition on one scale). Saturates at the int32 range.

    Error bound: ``1/2 + 2^-31 |y M|`` LSB of ``S_x`` (one rounding; the sum is exact).

    >>> from refquant.integer.fixed_point import quantize_multiplier
    >>> residual_add(np.array([100], np.int32), np.array([7], np.int32), *quantize_multiplier(0.5))
    array([104], dtype=int32)
    """
    x = np.asarray(x)
    if x.dtype != np.int32:
        raise ValueError(f"x must be int32, got dtype {x.dtype}")
    yy = np.asarray(y)
    if yy.dtype.kind not in "iu":
        raise ValueError(f"y must be an integer array, got dtype {yy.dtype}")
    z = x.astype(np.int64) + multiply_by_quantized_multiplier(yy.astype(np.int32), M0, n)
    return np.clip(z, INT32_MIN, INT32_MAX).astype(np.int32)


__all__ = ["Q_MAX", "RECIP_BITS", "int_array", "bit_length", "dynamic_int8", "static_int8",
           "split_mantissa", "quantize_multiplier_wide", "use_numba", "mul_shift_round", "rescale_rows", "residual_add"]
