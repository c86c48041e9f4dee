"""Integer causal grouped-query attention: int8 ``Q K^T`` into int32, a fixed-point rescale to
the softmax's input scale, the integer softmax, and uint8 probabilities times int8 ``V``.

For one key/value head ``h`` with its ``r`` query heads (queries per-token int8 ``q`` with row
factors ``u`` and base ``beta_q``; keys and values int8 of static per-head scales ``s_k,h``,
``s_v,h``, the int8 KV cache),

.. math::

    acc = q k^\\top \\;(\\text{int32, } |acc| \\le 127^2 h_d), \\qquad
    z_{ts} = \\operatorname{round}\\big(acc_{ts}\\, u_t\\, M_{s,h}\\big), \\quad
    M_{s,h} = \\frac{\\beta_q s_{k,h}}{\\sqrt{h_d}\\, 2^{-F}}

(``z`` in the scale ``2^-F`` of :func:`refquant.integer.ops_exp.i_softmax`; the
``1/sqrt(h_d)`` is folded into the offline multiplier), then
``p = i_softmax(z, F, causal)`` (uint8, scale ``1/255``) and

.. math::

    o = p\\, v \\;(\\text{int32, exact for } S \\le 65793), \\qquad
    \\hat o = \\operatorname{round}(o\\, M_{o,h}), \\quad M_{o,h} = \\frac{s_{v,h}}{255\\, S_o},

int32 codes of one static scale ``S_o`` for every head (the input of ``o_proj``).

Error bound: the scores as :func:`refquant.integer.requant.rescale_rows`
(``1/2 + 2^-15`` relative LSBs of ``2^-F``), the probabilities as ``i_softmax``, the output
``1/2`` LSB of ``S_o`` plus ``sum_s |p - 255 softmax| |v| / 255`` (tested against float64
attention on the same int8 ``q, k, v``).

Symbols
-------
====  ==========================  ====================================================
q     int8 [B, H_kv, r, T, h_d]   queries (after RoPE), u [B, H_kv, r, T] row factors
k, v  int8 [B, H_kv, S, h_d]      keys (after RoPE) and values, ``S = start_pos + T``
Ms    (M0, n) [H_kv]              score multipliers; Mo (M0, n) [H_kv] output multipliers
====  ==========================  ====================================================
"""

from __future__ import annotations

import numpy as np

from refquant.integer.fixed_point import multiply_by_quantized_multiplier
from refquant.integer.ops_exp import P_MAX, causal_mask, i_softmax
from refquant.integer.requant import rescale_rows
from refquant.kernels import int8_matmul, uint8_int8_matmul

S_MAX = (2**31 - 1) // (P_MAX * 128)        # p v exact in int32: 65793 keys


def i_attention(q, u, k, v, Ms, Mo, start_pos: int, F: int, *,
                backend: str = "auto") -> np.ndarray:
    """Integer causal attention; returns int32 ``[B, H_kv, r, T, h_d]`` of the scale ``S_o``.

    >>> from refquant.integer.fixed_point import quantize_multiplier
    >>> q = np.full((1, 1, 1, 2, 2), 64, np.int8); u = np.ones((1, 1, 1, 2), np.int64)
    >>> k = np.array([[[[127, 0], [0, 127]]]], np.int8); v = np.array([[[[100, 0], [0, 100]]]], np.int8)
    >>> Ms = quantize_multiplier(np.array([2.0**-6])); Mo = quantize_multiplier(np.array([1.0]))
    >>> i_attention(q, u, k, v, Ms, Mo, 0, 12).tolist()    # token 0 sees key 0; token 1 both
    [[[[[25500, 0], [12800, 12800]]]]]
    """
    q, k, v = np.asarray(q), np.asarray(k), np.asarray(v)
    for name, a in (("q", q), ("k", k), ("v", v)):
        if a.dtype != np.int8:
            raise ValueError(f"{name} must be int8, got dtype {a.dtype}")
    B, H_kv, r, T, hd = q.shape
    S = start_pos + T
    if k.shape[:2] != (B, H_kv) or k.shape[2] < S or v.shape[:3] != k.shape[:3]:
        raise ValueError(f"keys {k.shape} / values {v.shape} do not hold {S} positions for "
                         f"queries {q.shape}")
    if S > S_MAX:
        raise ValueError(f"attention over {S} keys overflows the int32 sum p v: at most {S_MAX}")
    valid = causal_mask(T, S, start_pos)                                  # [T, S]
    out = np.empty((B, H_kv, r, T, hd), np.int32)
    for b in range(B):
        for h in range(H_kv):
            qb = q[b, h].reshape(r * T, hd)                               # [r T, h_d]
            acc = int8_matmul(qb, np.ascontiguousarray(k[b, h, :S].T), backend=backend)
            z = rescale_rows(acc, u[b, h].reshape(r * T), Ms[0][h], Ms[1][h],
                             backend=backend)                           # [r T, S]
            p = i_softmax(z.reshape(r, T, S), F, valid, backend=backend)  # [r, T, S] uint8
            o = uint8_int8_matmul(p.reshape(r * T, S), np.ascontiguousarray(v[b, h, :S]), 0,
                                  backend=backend)                        # [r T, h_d] int32
            o = multiply_by_quantized_multiplier(o, Mo[0][h], Mo[1][h])
            out[b, h] = o.reshape(r, T, hd)
    return out


__all__ = ["S_MAX", "i_attention"]
