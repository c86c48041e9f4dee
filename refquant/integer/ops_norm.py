"""Integer square root and integer RMSNorm with a per-token int8 output (I-BERT's i-sqrt [1]_,
I-LLM's DI-Norm [2]_ without its float parts).

isqrt
-----
Newton-Raphson on integers (I-BERT Algorithm 4): from ``x_0 = 2^ceil(bitlen(n)/2) >= sqrt(n)``,
``x_{k+1} = floor((x_k + floor(n / x_k)) / 2)`` decreases strictly until it reaches
``floor(sqrt(n))``, where it stops decreasing (the classic proof: for ``x > floor(sqrt n)`` the
next iterate is ``>= floor(sqrt n)`` by AM-GM and ``< x``). The result equals ``math.isqrt``
exactly (tested over random and edge inputs up to ``2^62``).

RMSNorm
-------
For a row ``x_t`` of the residual (int32, scale ``S_x``) and the gain ``g = s_g g_q`` (int16 codes
``g_q``, per-tensor ``s_g``), RMSNorm ``y = x g / sqrt(mean(x^2) + eps)`` followed by per-token
int8 quantization is computed as

1. normalize the row's magnitude: ``k_t = bitlen(max|x_t|) - 24`` (capped below at -16) and
   ``x' = x >> k_t`` (a left shift for ``k_t < 0``), so ``max|x'| < 2^24``;
2. ``ms_t = floor(sum_i x'^2 / d) + eps_t`` with ``eps_t = E >> 2 k_t``, ``E = round(eps/S_x^2)``
   (the epsilon in the units of ``x'^2``); the sum is exact in int64 since
   ``d 2^48 < 2^62`` for ``d <= 2^14`` (larger ``d`` raises ``ValueError`` with the bound);
3. ``r_t = isqrt(ms_t)`` (``>= 2^18`` for a row whose max has 24 bits and ``d <= 2^12``);
4. codes ``q = dynamic_int8(x' g_q)`` (``|x' g_q| < 2^39``) with row maximum ``m_t``, and the
   dynamic scale factor ``u_t = floor(m_t 2^P / r_t)``, ``P = 16``.

Since ``y = x' g_q s_g / r`` (the ``2^k`` cancels), ``y_t ~= q_t u_t beta`` with the static
base ``beta = s_g / (127 2^P)``: the norm's division only enters the scale, never the codes.

Error bound (in output LSBs, against float64 RMSNorm then per-token int8): the codes as
:func:`refquant.integer.requant.dynamic_int8` (``1/2 + 2^-9``) plus the truncation of ``x'``
(``2^-23`` relative when ``k > 0``); the scale ``u`` is within ``2^-17`` relative (``isqrt``'s floor
on ``r >= 2^18``, the floor of ``u >= 2^16``) plus ``eps``'s floor (``<= 1`` unit of ``ms``).

Symbols
-------
=====  ====================  ===========================================================
x      int32 [..., d]        residual rows, scale ``S_x``
g_q    int [d]               gain codes (``|g_q| < 2^15``), scale ``s_g``
E      int                   ``round(eps / S_x^2)``, ``0 <= E < 2^30``
q, u   int8 [..., d], [...]  output codes and their per-row factor (base ``s_g/(127 2^P)``)
=====  ====================  ===========================================================

References
----------
.. [1] S. Kim et al., "I-BERT: Integer-only BERT Quantization", ICML 2021, arXiv:2101.01321.
.. [2] X. Hu et al., "I-LLM: Efficient Integer-Only Inference for Fully-Quantized Low-Bit Large
       Language Models", 2024, arXiv:2405.17849.
"""

from __future__ import annotations

import numpy as np

from refquant.integer.requant import bit_length, dynamic_int8, int_array

NORM_BITS = 24          # rows are brought to max|x'| < 2^24
K_MIN = -16             # at most a 16-bit left shift of a small row
P = 16                  # u = m 2^P / r
D_MAX = 2**14           # d 2^48 < 2^62
G_ABS_MAX = 2**15
E_MAX = 2**30


def isqrt(n) -> np.ndarray:
    """``floor(sqrt(n))`` elementwise for int64 ``0 <= n < 2^62``, by integer Newton-Raphson.

    >>> isqrt(np.array([0, 1, 3, 4, 15, 16, 2**62 - 1])).tolist()
    [0, 1, 1, 2, 3, 4, 2147483647]
    """
    n = int_array(n, "n", 2**62)
    if np.any(n < 0):
        raise ValueError(f"isqrt needs n >= 0, got {int(n[n < 0].ravel()[0])}")
    n1 = np.maximum(n, 1)                                           # n = 0 answers 0 below
    x = np.int64(1) << ((bit_length(n1) + 1) >> 1)                  # >= sqrt(n), > 0
    while True:
        y = (x + n1 // x) >> 1
        smaller = y < x
        if not np.any(smaller):
            return np.where(n == 0, 0, x)
        x = np.where(smaller, y, x)


def i_rms_norm(x, g_q, E: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer RMSNorm with per-token int8 output: ``(q, u)`` with ``y ~= q u s_g / (127 2^16)``.

    See the module docstring for the steps, bounds and error. ``x`` int32 ``[..., d]``,
    ``g_q`` integer ``[d]`` with ``|g_q| < 2^15``, ``E`` an integer in ``[0, 2^30)``.

    >>> q, u = i_rms_norm(np.array([[3, -4, 0, 0]], np.int32), np.array([1, 1, 1, 1]), 0)
    >>> q.tolist(), u.tolist()            # y = x / 2.5 = (1.2, -1.6, 0, 0): u/2^16 = 1.6
    ([[95, -127, 0, 0]], [104857])
    """
    x = np.asarray(x)
    if x.dtype != np.int32:
        raise ValueError(f"x must be int32, got dtype {x.dtype}")
    d = x.shape[-1]
    if d > D_MAX:
        raise ValueError(f"RMSNorm over d={d} overflows the int64 sum of squares: d <= {D_MAX}")
    g_q = int_array(g_q, "g_q", G_ABS_MAX)
    if g_q.shape != (d,):
        raise ValueError(f"g_q must have shape ({d},), got {g_q.shape}")
    if isinstance(E, bool) or not isinstance(E, (int, np.integer)) or not 0 <= E < E_MAX:
        raise ValueError(f"E = round(eps / S_x^2) must be an integer in [0, 2^30), got {E!r}")
    x = x.astype(np.int64)
    k = np.maximum(bit_length(np.abs(x).max(axis=-1)) - NORM_BITS, K_MIN)[..., None]  # [..., 1]
    xs = np.where(k >= 0, x >> np.maximum(k, 0), x << np.maximum(-k, 0))          # |x'| < 2^24
    eps_t = np.where(k >= 0, np.int64(E) >> np.minimum(2 * np.maximum(k, 0), 62),
                     np.int64(E) << (2 * np.maximum(-k, 0)))                     # [..., 1]
    ms = np.einsum("...i,...i->...", xs, xs) // d + eps_t[..., 0]                # [...]
    r = np.maximum(isqrt(ms), 1)                                                 # [...]
    q, m = dynamic_int8(xs * g_q)                                                # [..., d], [...]
    u = (m << P) // r
    return q, np.maximum(u, 1)


__all__ = ["NORM_BITS", "P", "D_MAX", "isqrt", "i_rms_norm"]
