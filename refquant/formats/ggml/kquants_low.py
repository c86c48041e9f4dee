"""Q2_K and Q3_K: the 2- and 3-bit K-quants, byte for byte as ggml writes them.

Both cut a row into super-blocks of 256 values and those into 16 sub-blocks of 16, each with
its own scale; the 16 sub-block scales are themselves quantized to 4 or 6 bits against one
float16 "scale of scales" ``d`` per super-block. Q2_K is asymmetric (``x_hat = d s_j q -
d_min m_j`` with 2-bit codes ``q`` in [0, 3] and a 4-bit minimum ``m_j`` per sub-block), Q3_K
symmetric (``x_hat = d (s_j - 32) (q - 4)`` with 3-bit codes).

ggml has two quantizers per type and ``ggml_quantize_chunk`` picks by the importance matrix:
without one it runs the reference ``quantize_row_q2_K_ref`` / ``quantize_row_q3_K_ref``, with
one ``quantize_row_q2_K_impl`` / ``quantize_row_q3_K_impl``. Both are reproduced here; the
per-sub-block searches are the shared ones of :mod:`refquant.formats.ggml._search`.

Symbols (one super-block)
-------------------------
=======  ====================================================================================
x        the 256 values, float32; ``x_j`` the 16 of sub-block ``j``
w        per-value fit weights (see each quantizer)
q        the codes: 2 bits (Q2_K) or 3 bits, ``q = l + 4`` for ``l`` in [-4, 3] (Q3_K)
d_j      sub-block ``j``'s float32 scale from the search; ``m_j >= 0`` its minimum (Q2_K)
s_j      the stored 4-bit (Q2_K) or 6-bit (Q3_K) scale code of sub-block ``j``
d, dmin  the float16 super-block scales of ``s_j`` and of the minimum codes (Q2_K)
=======  ====================================================================================

The quantizers
--------------
Q2_K without an importance matrix: each sub-block's ``(d_j, m_j, q)`` minimizes
``sum_i |x_i| |d_j q_i - m_j - x_i|`` (``make_qkx2_quants`` with ``w = |x|``, mean absolute
error, 16 trial scales ``(nmax - 0.5 + 0.1 k) / range``); then ``d = max_j d_j / 15``,
``s_j = nearest_int(15 d_j / max d_j)``, likewise for the minimums, and every code is chosen
again against the *stored* float16 grid, ``q = clamp(nearest_int((x + dmin m_j) / (d s_j)),
0, 3)``. With an importance matrix ``a``: ``w = a sqrt(sigma2 + x^2)``, ``sigma2 = sum x^2 /
256``; the sub-block fit minimizes the weighted squared error (``make_qkx3_quants``, 37 trial
scales), and the 16 scales and the 16 minimums are each fitted by a weighted least-squares
4-bit quantizer (``make_qp_quants``, weights ``sum_i w_i`` of each sub-block) instead of the
max rule; codes again against the stored grid.

Q3_K without an importance matrix: each sub-block's symmetric fit maximizes ``(sum w x l)^2 /
sum w l^2`` with ``w = x^2`` by coordinate descent (``make_q3_quants``); ``max_scale`` is the
signed ``d_j`` of largest magnitude, ``s_j - 32 = clamp(nearest_int(-32 d_j / max_scale), -32,
31)``, ``d = max_scale / -32``, and the codes are chosen again, ``l = clamp(nearest_int(x / (d
(s_j - 32))), -4, 3)``. With an importance matrix: ``w = a sqrt(sigma2 + x^2)``, ``sigma2 = 2
sum x^2 / 256``; the sub-block fit is ``make_qx_quants`` (19 trial scales), and the 16 scales
are fitted by ``make_qx_quants`` too (6-bit, weights ``sum_i w_i``). A sub-block whose stored
scale is 0 keeps the codes of its search.

Exact arithmetic: every step is float32 in C's order (sums left to right from ``+0.0``,
products as C groups them, :func:`~refquant.formats.ggml._search.nearest_int` rounding half to
even); the codes are chosen again with the float16 super-block scales but the scale codes with
the float32 ones, as in C. Stored values that C writes into a ``uint8_t`` (Q2_K's scale codes)
wrap modulo 256 here too.

Byte layout (little endian; super-blocks are concatenated along each row)
-------------------------------------------------------------------------
Q2_K, 256 values in 84 bytes, 2.625 bits per weight:

======  =====  =======================================================================
offset  bytes  field
======  =====  =======================================================================
0       16     ``scales``: byte ``j`` = ``s_j`` (low nibble) | ``m_j`` code (high nibble)
16      64     ``qs``: byte ``32 h + l`` holds the codes of values ``128 h + 32 k + l`` in
               bits ``2k, 2k+1``, ``k = 0 ... 3``
80      2      ``d`` float16, the scale of the sub-block scales
82      2      ``dmin`` float16, the scale of the sub-block minimums
======  =====  =======================================================================

``x_hat = (d s_j) q - (dmin m_j)`` in float32: 16 x (4 + 4) bits of scales and minimums and
two float16 per 256 values on top of the 2-bit codes.

Q3_K, 256 values in 110 bytes, 3.4375 bits per weight:

======  =====  ==========================================================================
offset  bytes  field
======  =====  ==========================================================================
0       32     ``hmask``: bit ``b`` of byte ``m`` is the high bit of the code of value
               ``32 b + m`` (set: ``q >= 4``)
32      64     ``qs``: the low 2 bits of the codes, packed as Q2_K's ``qs``
96      12     ``scales``, 16 codes of 6 bits: bytes 0-7 hold the low 4 bits of ``s_j``
               (``j < 8`` low nibble of byte ``j``, ``j >= 8`` high nibble of byte ``j - 8``);
               byte ``8 + k`` holds the high 2 bits of ``s_{k + 4g}`` in bits ``2g, 2g+1``
108     2      ``d`` float16, the scale of the sub-block scales
======  =====  ==========================================================================

``x_hat = (d (s_j - 32)) (q - 4)`` in float32.

Row lengths that are not a multiple of 256 are refused (``ValueError``); llama.cpp's
``llama-quantize`` writes such a tensor as IQ4_NL instead (``src/llama-quant.cpp``, the
fallback switch of ``llama_tensor_get_type``), which is the GGUF writer's choice to make.

References
----------
.. [1] G. Gerganov, I. Kawrakow et al., llama.cpp, ``ggml/src/ggml-quants.c``
       (``quantize_row_q2_K_ref``, ``quantize_row_q2_K_impl``, ``quantize_row_q3_K_ref``,
       ``quantize_row_q3_K_impl``, ``dequantize_row_q2_K``, ``dequantize_row_q3_K``) and
       ``ggml-common.h`` (``block_q2_K``, ``block_q3_K``); the K-quants, llama.cpp pull request
       1684 (2023), importance matrices, pull request 4861 (2024).
"""

from __future__ import annotations

import numpy as np

from refquant.formats.ggml._registry import BlockType, register
from refquant.formats.ggml._search import (make_q3_quants, make_qkx2_quants, make_qkx3_quants,
                                           make_qp_quants, make_qx_quants, nearest_int, sum_f32)
from refquant.formats.ggml.legacy import _to_f16

QK_K = 256
_F32 = np.float32


def _f16(v: np.ndarray, what: str, fmt: str) -> np.ndarray:
    """float32 -> stored float16 (round to nearest even), raising where not finite or too large."""
    if not np.all(np.isfinite(v)):
        i = int(np.argmax(~np.isfinite(v)))
        raise ValueError(f"{fmt} super-block {i}: {what} = {float(v.reshape(-1)[i])!r} is not "
                         f"finite; the values are too large for {fmt}")
    return _to_f16(v, what, fmt)


def _imatrix_weights(xs, imatrix, n_rows, sigma_factor):
    """``w = a sqrt(sigma2 + x^2)``, ``sigma2 = sigma_factor * sum(x^2) / 256`` per super-block
    (``xs`` float32 ``[N, 256]``, ``imatrix`` float32 ``[K]``) -> float32 ``[N, 16, 16]``."""
    a = np.broadcast_to(np.asarray(imatrix, _F32).reshape(1, -1, QK_K),
                        (n_rows, xs.shape[0] // n_rows, QK_K)).reshape(-1, QK_K)
    sumx2 = sum_f32(xs * xs)                                               # [N]
    sigma2 = ((_F32(sigma_factor) * sumx2) / _F32(QK_K)).astype(_F32)      # C: 2*sumx2/QK_K
    w = (a * np.sqrt((sigma2[:, None] + xs * xs).astype(_F32))).astype(_F32)
    return w.reshape(-1, 16, 16)


def _pack_2bit(q: np.ndarray) -> np.ndarray:
    """Codes in [0, 3], ``[N, 256]`` -> ``qs`` ``[N, 64]``: byte ``32 h + l`` holds values
    ``128 h + 32 k + l`` in bits ``2k``."""
    q = q.reshape(-1, 2, 4, 32).astype(np.uint8)                           # [N, h, k, l]
    return (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(-1, 64)


def _unpack_2bit(qs: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_pack_2bit`: ``[N, 64]`` -> ``[N, 256]`` codes."""
    shifts = (2 * np.arange(4, dtype=np.uint8))[:, None]                   # [k, 1]
    return ((qs.reshape(-1, 2, 1, 32) >> shifts) & 3).reshape(-1, QK_K)


# ---------------------------------------------------------------------------------------------
# Q2_K


def _q2_k_codes(xb, d16, dmin16, sc, L):
    """Codes chosen again on the stored grid: ``q = clamp(nearest_int((x + dm) / d), 0, 3)``
    with ``d = d16 (sc & 15)``, ``dm = dmin16 (sc >> 4)``; sub-blocks with ``d == 0`` keep ``L``.
    ``xb`` ``[N, 16, 16]``, ``d16``/``dmin16`` float16 ``[N]``, ``sc`` uint8 ``[N, 16]``."""
    d = (d16.astype(_F32)[:, None] * (sc & 0xF).astype(_F32)).astype(_F32)          # [N, 16]
    dm = (dmin16.astype(_F32)[:, None] * (sc >> 4).astype(_F32)).astype(_F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        l = np.clip(nearest_int(((xb + dm[..., None]) / d[..., None]).astype(_F32)), 0, 3)
    return np.where((d != 0)[..., None], l, L).reshape(-1, QK_K)


def quantize_q2_k(x: np.ndarray, imatrix=None) -> np.ndarray:
    """Q2_K bytes of float32 rows ``x`` ``[n_rows, K]`` (``K % 256 == 0``), with the optional
    importance matrix ``imatrix`` float32 ``[K]``: uint8 ``[n_rows, K // 256 * 84]``."""
    xs = np.ascontiguousarray(x, dtype=_F32).reshape(-1, QK_K)             # [N, 256]
    xb = xs.reshape(-1, 16, 16)                                            # [N, 16, 16]
    if imatrix is None:                                                    # quantize_row_q2_K_ref
        d_j, m_j, L = make_qkx2_quants(xb, np.abs(xb), 3, -0.5, 0.1, 15, True)
        max_scale = np.maximum(np.max(d_j, axis=-1), _F32(0))               # C: from 0, strict >
        max_min = np.maximum(np.max(m_j, axis=-1), _F32(0))
        with np.errstate(divide="ignore", invalid="ignore"):
            inv_s = (_F32(15) / max_scale).astype(_F32)
            inv_m = (_F32(15) / max_min).astype(_F32)
            ls = np.where((max_scale > 0)[:, None], nearest_int(inv_s[:, None] * d_j), 0)
            lm = np.where((max_min > 0)[:, None], nearest_int(inv_m[:, None] * m_j), 0)
            d = np.where(max_scale > 0, max_scale / _F32(15), _F32(0)).astype(_F32)
            dmin = np.where(max_min > 0, max_min / _F32(15), _F32(0)).astype(_F32)
        sc = ((ls | (lm << 4)) & 0xFF).astype(np.uint8)                    # uint8_t stores
    else:                                                                  # quantize_row_q2_K_impl
        w = _imatrix_weights(xs, imatrix, x.shape[0], 1.0)                # sigma2 = sum x^2/256
        sw = sum_f32(w)                                                    # [N, 16]
        d_j, m_j, L = make_qkx3_quants(xb, w, 3, -0.9, 0.05, 36, False)
        d, Ls = make_qp_quants(d_j, 15, sw)
        dmin, Lm = make_qp_quants(m_j, 15, sw)
        sc = ((Ls.astype(np.int32) | (Lm.astype(np.int32) << 4)) & 0xFF).astype(np.uint8)
    d16, dmin16 = _f16(d, "d", "Q2_K"), _f16(dmin, "dmin", "Q2_K")
    q = _q2_k_codes(xb, d16, dmin16, sc, L)                               # [N, 256]
    raw = np.concatenate([sc, _pack_2bit(q), d16.astype("<f2")[:, None].view(np.uint8),
                          dmin16.astype("<f2")[:, None].view(np.uint8)], axis=-1)   # [N, 84]
    return raw.reshape(x.shape[0], -1)


def dequantize_q2_k(data: np.ndarray) -> np.ndarray:
    """float32 ``[n_rows, n_bytes // 84 * 256]`` of Q2_K bytes: ``(d s_j) q - (dmin m_j)``
    (ggml's ``dequantize_row_q2_K``)."""
    raw = data.reshape(-1, 84)
    sc = raw[:, :16]
    d = np.ascontiguousarray(raw[:, 80:82]).view("<f2").astype(_F32)                  # [N, 1]
    dmin = np.ascontiguousarray(raw[:, 82:84]).view("<f2").astype(_F32)
    dl = (d * (sc & 0xF).astype(_F32)).astype(_F32)                                    # [N, 16]
    ml = (dmin * (sc >> 4).astype(_F32)).astype(_F32)
    q = _unpack_2bit(raw[:, 16:80]).reshape(-1, 16, 16).astype(_F32)
    x_hat = ((dl[..., None] * q).astype(_F32) - ml[..., None]).astype(_F32)
    return x_hat.reshape(data.shape[0], -1)


# ---------------------------------------------------------------------------------------------
# Q3_K


def _pack_q3_scales(ls: np.ndarray) -> np.ndarray:
    """6-bit scale codes ``[N, 16]`` (0 ... 63) -> the 12 ``scales`` bytes ``[N, 12]``."""
    ls = ls.astype(np.uint8)
    low = (ls[:, :8] & 0xF) | ((ls[:, 8:] & 0xF) << 4)                     # [N, 8]
    hi = (ls >> 4).reshape(-1, 4, 4)                                       # [N, g, k]: s_{4g+k}
    high = hi[:, 0] | (hi[:, 1] << 2) | (hi[:, 2] << 4) | (hi[:, 3] << 6)  # [N, 4]
    return np.concatenate([low, high], axis=-1)


def _unpack_q3_scales(b: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_pack_q3_scales`: ``[N, 12]`` -> ``[N, 16]`` codes 0 ... 63."""
    low = np.concatenate([b[:, :8] & 0xF, b[:, :8] >> 4], axis=-1)         # [N, 16]
    high = (b[:, None, 8:12] >> (2 * np.arange(4, dtype=np.uint8))[:, None]) & 3   # [N, g, k]
    return low | (high.reshape(-1, 16) << 4)


def _q3_k_codes(xb, d16, ls, L):
    """Codes chosen again on the stored grid, ``l = clamp(nearest_int(x / (d16 (s_j - 32))),
    -4, 3) + 4``; sub-blocks whose scale is 0 keep ``L`` (``[N, 16, 16]``, the search's)."""
    d = (d16.astype(_F32)[:, None] * (ls.astype(np.int32) - 32).astype(_F32)).astype(_F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        l = np.clip(nearest_int((xb / d[..., None]).astype(_F32)), -4, 3) + 4
    return np.where((d != 0)[..., None], l, L).reshape(-1, QK_K)


def quantize_q3_k(x: np.ndarray, imatrix=None) -> np.ndarray:
    """Q3_K bytes of float32 rows ``x`` ``[n_rows, K]`` (``K % 256 == 0``), with the optional
    importance matrix ``imatrix`` float32 ``[K]``: uint8 ``[n_rows, K // 256 * 110]``."""
    xs = np.ascontiguousarray(x, dtype=_F32).reshape(-1, QK_K)             # [N, 256]
    xb = xs.reshape(-1, 16, 16)
    if imatrix is None:                                                    # quantize_row_q3_K_ref
        d_j, L = make_q3_quants(xb, 4, True)                               # [N, 16], [N, 16, 16]
        i = np.argmax(np.abs(d_j), axis=-1)[:, None]                       # first largest |d_j|
        max_scale = np.take_along_axis(d_j, i, axis=-1)[:, 0]
        with np.errstate(divide="ignore", invalid="ignore"):
            iscale = (_F32(-32) / max_scale).astype(_F32)
            l = np.clip(nearest_int(iscale[:, None] * d_j), -32, 31) + 32
            ls = np.where((max_scale != 0)[:, None], l, 0)                 # memset 0 otherwise
            d = np.where(max_scale != 0, _F32(1) / iscale, _F32(0)).astype(_F32)
    else:                                                                  # quantize_row_q3_K_impl
        w = _imatrix_weights(xs, imatrix, x.shape[0], 2.0)                # sigma2 = 2 sum x^2/256
        d_j, L = make_qx_quants(xb, 4, 1, w)
        d, ls = make_qx_quants(d_j, 32, 1, sum_f32(w))                     # ls = l + 32
    d16 = _f16(d, "d", "Q3_K")
    q = _q3_k_codes(xb, d16, ls, L)                                        # [N, 256] in 0 ... 7
    raw = np.concatenate([q3_k_code_bytes(q), _pack_q3_scales(ls),
                          d16.astype("<f2")[:, None].view(np.uint8)], axis=-1)           # [N, 110]
    return raw.reshape(x.shape[0], -1)


def q3_k_code_bytes(q: np.ndarray) -> np.ndarray:
    """Q3_K codes ``q`` in 0 ... 7, ``[N, 256]`` -> their bytes ``hmask`` and ``qs``, ``[N, 96]``
    (offsets 0 ... 95 of a super-block)."""
    q = q.astype(np.uint8)
    high = (q > 3).reshape(-1, 8, 32).astype(np.uint8)                     # [N, b, m]
    hmask = np.bitwise_or.reduce(high << np.arange(8, dtype=np.uint8)[:, None], axis=1)  # [N, 32]
    return np.concatenate([hmask, _pack_2bit(q & 3)], axis=-1)


def q3_k_codes(raw: np.ndarray) -> np.ndarray:
    """Inverse of :func:`q3_k_code_bytes`: the codes 0 ... 7 ``[N, 256]`` of Q3_K super-blocks
    ``raw`` (uint8 ``[N, 110]``)."""
    high = (raw[:, None, :32] >> np.arange(8, dtype=np.uint8)[:, None]) & 1             # [N, b, m]
    return _unpack_2bit(raw[:, 32:96]) | (high.reshape(-1, QK_K) << np.uint8(2))


def dequantize_q3_k(data: np.ndarray) -> np.ndarray:
    """float32 ``[n_rows, n_bytes // 110 * 256]`` of Q3_K bytes: ``(d (s_j - 32)) (q - 4)``
    (ggml's ``dequantize_row_q3_K``)."""
    raw = data.reshape(-1, 110)
    d = np.ascontiguousarray(raw[:, 108:110]).view("<f2").astype(_F32)                # [N, 1]
    dl = (d * (_unpack_q3_scales(raw[:, 96:108]).astype(np.int32) - 32).astype(_F32)).astype(_F32)
    high = (raw[:, None, :32] >> np.arange(8, dtype=np.uint8)[:, None]) & 1             # [N, b, m]
    q = (_unpack_2bit(raw[:, 32:96]).astype(np.int32)
         - 4 * (1 - high.reshape(-1, QK_K).astype(np.int32)))                           # -4 ... 3
    x_hat = (dl[..., None] * q.reshape(-1, 16, 16).astype(_F32)).astype(_F32)
    return x_hat.reshape(data.shape[0], -1)


register(BlockType("Q2_K", 10, QK_K, 84, quantize_rows=quantize_q2_k,
                   dequantize_rows=dequantize_q2_k, uses_imatrix=True))
register(BlockType("Q3_K", 11, QK_K, 110, quantize_rows=quantize_q3_k,
                   dequantize_rows=dequantize_q3_k, uses_imatrix=True))

__all__ = ["quantize_q2_k", "dequantize_q2_k", "quantize_q3_k", "dequantize_q3_k",
           "q3_k_code_bytes", "q3_k_codes"]
