"""Float64 stand-ins for the integer ops of :mod:`refquant.models.llama_int`, for the ablation
(``float_ops=``): each reads and writes the same integer formats as the op it replaces, so
swapping one shows what that op's integer arithmetic costs.

=============  ===========================================================================
``rms_norm``   float64 RMSNorm of ``x S_x``, then per-token int8 codes ``round(127 y/max|y|)``
               and the row factor ``u = round(2^16 max|y| / s_g)`` (the same base)
``rope``       the exact rotation by ``c / 2^30``, ``s / 2^30`` (the tables' own angles), rounded
``swiglu``     ``round(silu(g 2^-16) v)`` in float64
``softmax``    the same int8 scores ``round(acc u M_s)``, float64 softmax and float64 ``p v``
               (no uint8 probabilities), rounded to the output scale
``attention``  the whole attention core in float64 on the int32 ``q, k, v`` (no int8 Q, K,
               V, no integer softmax): what integer attention costs altogether
=============  ===========================================================================

These are float on purpose: the integer-only test must flag them (its probe).
"""

from __future__ import annotations

import numpy as np

from refquant.integer.ops_exp import causal_mask
from refquant.integer.ops_norm import P as NORM_P


def _M(M0, n):
    return np.asarray(M0, np.float64) * 2.0 ** (-(31.0 + np.asarray(n, np.float64)))


def rms_norm(x, g_q, E: int):
    x = np.asarray(x, np.float64)
    y = x * np.asarray(g_q, np.float64) / np.sqrt((x * x).mean(axis=-1, keepdims=True) + E)
    m = np.maximum(np.abs(y).max(axis=-1), 1e-300)                       # [...]
    q = np.rint(127 * y / m[..., None]).astype(np.int8)
    return q, np.maximum(np.rint(m * 2.0**NORM_P), 1).astype(np.int64)


def rope(x, c, s):
    x = np.asarray(x, np.float64)
    cos, sin = np.asarray(c) / 2.0**30, np.asarray(s) / 2.0**30
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    y = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return np.clip(np.rint(y), -(2**31), 2**31 - 1).astype(np.int32)


def swiglu(g, v, F: int):
    gf = np.asarray(g, np.float64) * 2.0**-F
    return np.rint(gf / (1 + np.exp(-gf)) * np.asarray(v, np.float64)).astype(np.int64)


def _attend(scores, v, M_o, start_pos):
    """float64 softmax of ``scores [r, T, S]`` (causal) times ``v [S, h_d]``, times ``M_o``."""
    r, T, S = scores.shape
    s = np.where(causal_mask(T, S, start_pos), scores, -np.inf)
    s = np.exp(s - s.max(axis=-1, keepdims=True))
    p = s / s.sum(axis=-1, keepdims=True)
    o = (p @ v) * (255 * M_o)
    return np.clip(np.rint(o), -(2**31), 2**31 - 1).astype(np.int32)


def softmax(q, u, k, v, Ms, Mo, start_pos: int, F: int, *, backend: str = "auto"):
    B, H_kv, r, T, hd = q.shape
    S = start_pos + T
    out = np.empty((B, H_kv, r, T, hd), np.int32)
    for b in range(B):
        for h in range(H_kv):
            acc = np.asarray(q[b, h], np.float64) @ np.asarray(k[b, h, :S], np.float64).T
            z = np.rint(acc * np.asarray(u[b, h], np.float64)[..., None] * _M(Ms[0][h], Ms[1][h]))
            out[b, h] = _attend(z * 2.0**-F, np.asarray(v[b, h, :S], np.float64),
                                _M(Mo[0][h], Mo[1][h]), start_pos)
    return out


def attention(qh, kh, vh, start_pos: int):
    """The whole attention core in float64 on the int32 ``q, k, v`` codes (scale ``2^-16``,
    before any int8 quantization): ``[B, H, T, h_d]``, ``[B, H_kv, S, h_d]`` x2 -> int32
    ``[B, H_kv, r, T, h_d]`` at ``2^-16``."""
    B, H, T, hd = qh.shape
    H_kv, S = kh.shape[1], kh.shape[2]
    r = H // H_kv
    out = np.empty((B, H_kv, r, T, hd), np.int32)
    for b in range(B):
        for h in range(H_kv):
            qb = np.asarray(qh[b, h * r:(h + 1) * r], np.float64) * 2.0**-16      # [r, T, h_d]
            kb = np.asarray(kh[b, h], np.float64) * 2.0**-16                      # [S, h_d]
            scores = qb @ kb.T / np.sqrt(hd)                                      # [r, T, S]
            # _attend scales p v by 255 M_o (its callers' v are codes of s_v, p of 1/255): here
            # v is already at the output scale 2^-16, so M_o = 1/255
            out[b, h] = _attend(scores, np.asarray(vh[b, h], np.float64), 1 / 255, start_pos)
    return out
