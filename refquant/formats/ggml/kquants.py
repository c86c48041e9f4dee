"""GGML's K-quants with a minimum, Q4_K and Q5_K, byte for byte as ggml writes them.

A super-block of 256 values along a row holds 8 sub-blocks of 32. Each sub-block ``j`` has its
own scale and minimum, ``x ~ d_j q - m_j`` with 4-bit (Q4_K) or 5-bit (Q5_K) codes ``q``; the
16 numbers ``d_j, m_j`` are themselves quantized to 6 bits against two float16
"scales of scales" of the super-block: ``d_j = d * sc_j``, ``m_j = dmin * mn_j``.

Symbols (one super-block)
-------------------------
=========  ==================================================================================
x          the 256 input values, float32, as 8 sub-blocks ``x_j`` of 32
w          importance weights (``[8, 32]``): ``w = sqrt(mean x_j^2) + |x|`` (reference) or
           ``imatrix * sqrt(sigma^2 + x^2)``, ``sigma^2 = 2 sum(x^2) / 256`` (imatrix path)
s_j, m_j   the sub-block scale and minimum found by the search (float32, ``m_j >= 0``)
d, dmin    the super-block's float16 scales of the 6-bit ``sc_j`` and ``mn_j``
sc, mn     the 6-bit sub-block scale and minimum codes, 0..63
q          the codes: 0..15 (Q4_K), 0..31 (Q5_K)
x_hat      ``d sc_j q - dmin mn_j`` in float32
=========  ==================================================================================

Quantizer (``quantize_row_q4_K_ref`` etc.; with an imatrix ``quantize_row_q4_K_impl``)
--------------------------------------------------------------------------------------
1. Per sub-block, ``s_j, m_j, q = make_qkx2_quants(x_j, w_j, nmax, rmin, rdelta, nstep)``
   (reference: Q4_K ``nmax=15, -1.0, 0.1, 20``; Q5_K ``nmax=31, -0.5, 0.1, 15``) or
   ``make_qkx3_quants(x_j, w_j, nmax, -0.9, 0.05, 36)`` (imatrix), see
   :mod:`refquant.formats.ggml._search`.
2. Scales of scales. Reference: ``d = max_j s_j / 63``, ``sc_j = min(63, nearest_int(63 s_j /
   max_j s_j))``, the same for the minimums. Imatrix: ``d, sc = make_qp_quants(s, 63, sw)``
   and ``dmin, mn = make_qp_quants(m, 63, sw)``, ``sw_j = sum_i w_ji`` (the weighted fit of
   the 8 scales, :func:`~refquant.formats.ggml._search.make_qp_quants`).
3. ``d``, ``dmin`` are rounded to float16, and every code is chosen again on the stored grid:
   ``q = clamp(nearest_int((x + dmin mn_j) / (d sc_j)), 0, nmax)``; a sub-block whose
   ``d sc_j`` is 0 keeps the search's codes.

Byte layout (little endian; super-blocks concatenated along each row)
---------------------------------------------------------------------
======  ===========  =====  ===========================================================
type    field        bytes  meaning
======  ===========  =====  ===========================================================
both    ``d``        2      float16 scale of the 6-bit sub-block scales
both    ``dmin``     2      float16 scale of the 6-bit sub-block minimums
both    ``scales``   12     the 8 ``sc_j`` and 8 ``mn_j`` (see below)
Q5_K    ``qh``       32     fifth bits: bit ``2c`` (``2c + 1``) of byte ``i`` is bit 4 of
                            the code of value ``64 c + i`` (``64 c + 32 + i``)
both    ``qs``       128    low nibbles: byte ``32 c + i`` holds the codes of values
                            ``64 c + i`` (low half) and ``64 c + 32 + i`` (high half)
======  ===========  =====  ===========================================================

Q4_K: 144 bytes, 4.5 bits per weight; Q5_K: 176 bytes, 5.5 bits per weight. The 12 scale
bytes (``get_scale_min_k4``): for ``j < 4``, byte ``j`` is ``sc_j`` and byte ``j + 4`` is
``mn_j`` (6 bits each); for ``j >= 4``, byte ``j + 4`` holds ``sc_j``'s low 4 bits (low
nibble) and ``mn_j``'s (high nibble), and their top 2 bits sit in the top 2 bits of bytes
``j - 4`` and ``j``.

Bit-exactness notes: every sum is a float32 left-to-right loop (``sum_f32``); ``sigma^2`` is
``(2 sum) / 256`` and the reference's ``mean x_j^2`` is ``sum / 32``, in that order; C stores
``nearest_int`` of the scale ratios into ``uint8_t`` before ``MIN(63, .)`` (a wrap modulo 256,
kept here); the float16 roundings are numpy's (round to nearest even, as ggml's). A float16
overflow of ``d`` or ``dmin`` raises ``ValueError`` (as in :mod:`~refquant.formats.ggml.legacy`).

References
----------
.. [1] K. Kawrakow, "k-quants", llama.cpp PR #1684 (2023); ``ggml/src/ggml-quants.c`` and
       ``ggml/src/ggml-common.h`` (``block_q4_K``, ``block_q5_K``).
"""

from __future__ import annotations

import numpy as np

from refquant.formats.ggml._registry import BlockType, register
from refquant.formats.ggml._search import (make_qkx2_quants, make_qkx3_quants, make_qp_quants,
                                           nearest_int, sum_f32)
from refquant.formats.ggml.legacy import _to_f16

QK_K = 256
_F32 = np.float32
#: name -> (code maximum, type size in bytes, GGML type id, reference search (rmin, rdelta, nstep))
KQ_FORMATS = {"Q4_K": (15, 144, 12, (-1.0, 0.1, 20)), "Q5_K": (31, 176, 13, (-0.5, 0.1, 15))}


def running_max(v) -> np.ndarray:
    """``float m = 0; for (...) if (v[j] > m) m = v[j];`` over the last axis (ggml's ``max_scale``)."""
    m = np.zeros(v.shape[:-1], _F32)
    for j in range(v.shape[-1]):
        m = np.where(v[..., j] > m, v[..., j], m).astype(_F32)
    return m


def _weights(xs, imatrix):
    """Search weights ``w`` [n, 8, 32] of super-blocks ``xs`` [n, 8, 32] (see the symbols)."""
    with np.errstate(all="ignore"):
        if imatrix is None:
            av_x = np.sqrt(sum_f32(xs * xs) / _F32(32)).astype(_F32)          # [n, 8]
            return (av_x[..., None] + np.abs(xs)).astype(_F32)
        x256 = xs.reshape(len(xs), QK_K)
        sigma2 = ((_F32(2) * sum_f32(x256 * x256)) / _F32(QK_K)).astype(_F32)   # (2*s)/256
        qw = imatrix.reshape(-1, 8, 32)                                          # [n, 8, 32]
        return (qw * np.sqrt(sigma2[:, None, None] + xs * xs)).astype(_F32)


def _six_bit(v, vmax):
    """Reference scale codes: ``min(63, uint8(nearest_int(63 / vmax * v)))``, 0 where vmax = 0."""
    with np.errstate(all="ignore"):
        inv = np.where(vmax > 0, _F32(63) / vmax, _F32(0)).astype(_F32)      # [n]
        return np.minimum(63, nearest_int(inv[:, None] * v) & 0xFF)


def quantize_kq_blocks(x, fmt: str, imatrix=None):
    """The fields of rows ``x`` (float32 ``[n_rows, K]``, ``K % 256 == 0``) in Q4_K or Q5_K:
    ``(d, dmin, sc, mn, q)`` with ``d, dmin`` float16 ``[n_sb]``, ``sc, mn`` uint8 ``[n_sb, 8]``
    and codes ``q`` uint8 ``[n_sb, 256]`` (``n_sb`` = all super-blocks, row-major)."""
    nmax, _, _, (rmin, rdelta, nstep) = KQ_FORMATS[fmt]
    x = np.asarray(x, _F32)
    K = x.shape[-1]
    xs = x.reshape(-1, 8, 32)                                                # [n, 8, 32]
    im = None if imatrix is None else np.broadcast_to(
        np.asarray(imatrix, _F32).reshape(1, K), x.shape).reshape(-1, QK_K)
    w = _weights(xs, im)
    if im is None:
        s, m, L = make_qkx2_quants(xs, w, nmax, rmin, rdelta, nstep, False)   # [n, 8] ...
        s_max, m_max = running_max(s), running_max(m)
        sc, mn = _six_bit(s, s_max), _six_bit(m, m_max)
        d_f32 = (s_max / _F32(63)).astype(_F32)
        dmin_f32 = (m_max / _F32(63)).astype(_F32)
    else:
        s, m, L = make_qkx3_quants(xs, w, nmax, -0.9, 0.05, 36, False)
        sw = sum_f32(w)                                                      # [n, 8]
        d_f32, sc = make_qp_quants(s, 63, sw)
        dmin_f32, mn = make_qp_quants(m, 63, sw)
        sc, mn = sc.astype(np.int32), mn.astype(np.int32)
        if fmt == "Q5_K":                                  # only Q5_K's impl clamps to 63
            sc, mn = np.minimum(sc, 63), np.minimum(mn, 63)
    d = _to_f16(d_f32, "d", fmt)
    dmin = _to_f16(dmin_f32, "dmin", fmt)
    # the codes are those the stored bytes give back: a Q4_K impl code above 63 only keeps
    # what survives the packing (its low 6 bits)
    sc, mn = _unpack_scales(_pack_scales(sc, mn))
    with np.errstate(all="ignore"):
        dj = (d.astype(_F32)[:, None] * sc.astype(_F32)).astype(_F32)        # [n, 8]
        mj = (dmin.astype(_F32)[:, None] * mn.astype(_F32)).astype(_F32)
        q = np.clip(nearest_int(((xs + mj[..., None]) / dj[..., None]).astype(_F32)), 0, nmax)
    q = np.where((dj == 0)[..., None], L, q)                                 # C: if (!d) continue
    return d, dmin, sc, mn, q.reshape(-1, QK_K).astype(np.uint8)


def _pack_scales(sc, mn) -> np.ndarray:
    """The 12 scale bytes [n, 12] of 6-bit codes ``sc, mn`` [n, 8] (the table above); uint8
    arithmetic wraps as C's stores into ``uint8_t`` do."""
    sc, mn = sc.astype(np.uint8), mn.astype(np.uint8)
    hi_s, hi_m = sc[:, 4:] >> np.uint8(4), mn[:, 4:] >> np.uint8(4)
    return np.concatenate([sc[:, :4] | (hi_s << np.uint8(6)),
                           mn[:, :4] | (hi_m << np.uint8(6)),
                           (sc[:, 4:] & np.uint8(0xF)) | ((mn[:, 4:] & np.uint8(0xF)) << np.uint8(4))],
                          axis=-1)


def _unpack_scales(b):
    """``(sc, mn)`` uint8 [n, 8] of the 12 scale bytes ``b`` [n, 12] (``get_scale_min_k4``)."""
    sc = np.concatenate([b[:, 0:4] & np.uint8(63),
                         (b[:, 8:12] & np.uint8(0xF)) | ((b[:, 0:4] >> np.uint8(6)) << np.uint8(4))], axis=-1)
    mn = np.concatenate([b[:, 4:8] & np.uint8(63),
                         (b[:, 8:12] >> np.uint8(4)) | ((b[:, 4:8] >> np.uint8(6)) << np.uint8(4))], axis=-1)
    return sc, mn


def pack_kq(fmt, d, dmin, sc, mn, q) -> np.ndarray:
    """Super-block bytes [n, type_size] of the fields (see :func:`quantize_kq_blocks`)."""
    n = len(q)
    q4 = q.reshape(n, 4, 2, 32)                                              # [n, c, half, i]
    qs = (q4[:, :, 0] & np.uint8(0xF)) | ((q4[:, :, 1] & np.uint8(0xF)) << np.uint8(4))
    parts = [d.astype("<f2")[:, None].view(np.uint8), dmin.astype("<f2")[:, None].view(np.uint8),
             _pack_scales(sc, mn)]
    if fmt == "Q5_K":
        bit4 = (q4 >> np.uint8(4)) & np.uint8(1)                             # [n, c, half, i]
        shift = (2 * np.arange(4)[:, None] + np.arange(2)[None, :]).astype(np.uint8)
        parts.append(np.bitwise_or.reduce(bit4 << shift[None, :, :, None], axis=(1, 2)))
    parts.append(qs.reshape(n, 128))
    return np.concatenate(parts, axis=-1)


def unpack_kq(data, fmt):
    """``(d, dmin, sc, mn, q)`` of super-block bytes ``data`` [n, type_size]."""
    d = np.ascontiguousarray(data[:, 0:2]).view("<f2")[:, 0]
    dmin = np.ascontiguousarray(data[:, 2:4]).view("<f2")[:, 0]
    sc, mn = _unpack_scales(data[:, 4:16])
    o = 16 if fmt == "Q4_K" else 48
    qs = data[:, o:o + 128].reshape(-1, 4, 1, 32)
    q = np.concatenate([qs & np.uint8(0xF), qs >> np.uint8(4)], axis=2)     # [n, c, half, i]
    if fmt == "Q5_K":
        shift = (2 * np.arange(4)[:, None] + np.arange(2)[None, :]).astype(np.uint8)
        qh = data[:, 16:48][:, None, None, :]
        q = q | (((qh >> shift[None, :, :, None]) & np.uint8(1)) << np.uint8(4))
    return d, dmin, sc, mn, q.reshape(-1, QK_K)


def dequantize_kq(data, fmt) -> np.ndarray:
    """Float32 values [n_rows, K] of Q4_K/Q5_K bytes [n_rows, K // 256 * type_size], as
    ``dequantize_row_q4_K``: ``(d sc_j) q - (dmin mn_j)`` in float32."""
    n_rows = data.shape[0]
    d, dmin, sc, mn, q = unpack_kq(data.reshape(-1, KQ_FORMATS[fmt][1]), fmt)
    dj = (d.astype(_F32)[:, None] * sc.astype(_F32)).astype(_F32)            # [n, 8]
    mj = (dmin.astype(_F32)[:, None] * mn.astype(_F32)).astype(_F32)
    x_hat = dj[..., None] * q.reshape(-1, 8, 32).astype(_F32) - mj[..., None]
    return x_hat.astype(_F32).reshape(n_rows, -1)


def _quantize_rows(fmt):
    def quantize_rows(x, imatrix):
        n_rows = x.shape[0]
        return pack_kq(fmt, *quantize_kq_blocks(x, fmt, imatrix)).reshape(n_rows, -1)
    return quantize_rows


for _name, (_, _size, _type_id, _) in KQ_FORMATS.items():
    register(BlockType(_name, _type_id, QK_K, _size, quantize_rows=_quantize_rows(_name),
                       dequantize_rows=lambda data, _f=_name: dequantize_kq(data, _f),
                       uses_imatrix=True))

__all__ = ["QK_K", "KQ_FORMATS", "running_max", "quantize_kq_blocks", "pack_kq", "unpack_kq",
           "dequantize_kq"]
