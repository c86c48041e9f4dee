"""GGML's symmetric K-quants, Q6_K and Q8_K, byte for byte as ggml writes them.

Q6_K: a super-block of 256 values holds 16 sub-blocks of 16, each with a signed 8-bit scale
``sc_j`` against one float16 super-block scale ``d``, and 6-bit codes: ``x ~ d sc_j (q - 32)``.
Q8_K: a super-block of 256 int8 codes with one float32 scale and the 16 sums of its codes
(``bsums``, used by ggml's dot products: llama.cpp quantizes activations to Q8_K inside its
K-quant matrix products; it is not a weight type of GGUF files, but ggml can store it).

Symbols (one super-block)
-------------------------
=========  ==================================================================================
x          the 256 input values, float32 (Q6_K: 16 sub-blocks ``x_j`` of 16)
s_j        Q6_K sub-block scale found by the search (float32, signed)
d          the super-block scale: float16 (Q6_K), float32 (Q8_K)
sc_j       Q6_K 8-bit signed sub-block scale codes, ``-128..127``
l          Q6_K codes ``-32..31``, stored ``q = l + 32``; Q8_K codes ``-127..127`` (int8)
x_hat      ``(d sc_j) l`` (Q6_K), ``d l`` (Q8_K), float32
=========  ==================================================================================

Q6_K quantizer (``quantize_row_q6_K_ref``; with an imatrix ``quantize_row_q6_K_impl``)
--------------------------------------------------------------------------------------
1. Per sub-block, ``s_j, l = make_qx_quants(x_j, nmax=32, rmse_type=1, qw)``: the symmetric
   weighted least-squares search of :mod:`refquant.formats.ggml._search` with ``w = x^2``
   (reference) or ``w = imatrix`` as given (the imatrix path does *not* mix in ``sigma^2``).
2. ``s_max`` = the first ``s_j`` of largest ``|s_j|``; below ``GROUP_MAX_EPS`` the whole
   super-block is stored as zero bytes. Else ``iscale = -128 / s_max``, ``d = 1 / iscale``
   (float16) and ``sc_j = min(127, nearest_int(iscale s_j))``.
3. Codes again on the stored grid: ``l = clamp(nearest_int(x / (d sc_j)), -32, 31)``; a
   sub-block with ``d sc_j == 0`` keeps the search's codes.

Q8_K quantizer (``quantize_row_q8_K_ref``)
------------------------------------------
``x_max`` = the first value of largest ``|x|``; ``iscale = -127 / x_max``, ``l = min(127,
nearest_int(iscale x))``, ``d = 1 / iscale`` (float32, negative where ``x_max > 0``); an
all-zero super-block stores ``d = 0`` and zero codes (ggml leaves its ``bsums`` as they were in
the destination; refquant writes 0, which is what a zeroed buffer holds). There is no imatrix
path. Where ``iscale`` overflows (all ``|x|`` below ~2^-126, float32 subnormals) the
reference's arithmetic on inf/NaN is followed bit for bit: ``nearest_int`` gives 0 or a value
that ``int8_t`` wraps to 0, and ``d = -0.0``.

Byte layout (little endian; super-blocks concatenated along each row)
---------------------------------------------------------------------
======  ==========  =====  =====================================================================
type    field       bytes  meaning
======  ==========  =====  =====================================================================
Q6_K    ``ql``      128    low 4 bits: for half ``h`` (values ``128 h ..``), byte ``64 h + i``
                           holds ``q[128h + i]`` (low nibble) and ``q[128h + 64 + i]`` (high),
                           byte ``64 h + 32 + i`` holds ``q[128h + 32 + i]`` and ``q[128h + 96 + i]``
Q6_K    ``qh``      64     high 2 bits: byte ``32 h + i`` holds those of ``q[128h + 32 g + i]`` in
                           bits ``2g, 2g + 1``, ``g = 0..3``
Q6_K    ``scales``  16     ``sc_j``, int8
Q6_K    ``d``       2      float16
Q8_K    ``d``       4      float32
Q8_K    ``qs``      256    the codes, int8
Q8_K    ``bsums``   32     16 int16 sums of 16 consecutive codes
======  ==========  =====  =====================================================================

Q6_K: 210 bytes, 6.5625 bits per weight; Q8_K: 292 bytes, 9.125 bits per weight. Bit-exactness
notes: float32 throughout in C's order (``sum_f32`` for sums); ``sc_j`` is C's ``MIN(127, .)``
stored into ``int8_t`` (modulo 256, kept here); a Q6_K ``d`` that overflows float16 raises
``ValueError`` (as in :mod:`~refquant.formats.ggml.legacy`).

References
----------
.. [1] K. Kawrakow, "k-quants", llama.cpp PR #1684 (2023); ``ggml/src/ggml-quants.c`` and
       ``ggml/src/ggml-common.h`` (``block_q6_K``, ``block_q8_K``).
"""

from __future__ import annotations

import numpy as np

from refquant.formats.ggml._registry import BlockType, register
from refquant.formats.ggml._search import GROUP_MAX_EPS, make_qx_quants, nearest_int
from refquant.formats.ggml.legacy import _to_f16

QK_K = 256
_F32 = np.float32
Q6_K_BYTES, Q8_K_BYTES = 210, 292


def _first_amax(v):
    """The first value of largest magnitude along the last axis (C: ``if (|v| > amax)``)."""
    return np.take_along_axis(v, np.argmax(np.abs(v), axis=-1)[..., None], axis=-1)[..., 0]


def quantize_q6_k_blocks(x, imatrix=None):
    """The fields of rows ``x`` (float32 ``[n_rows, K]``, ``K % 256 == 0``) in Q6_K:
    ``(d, sc, q)``: float16 ``d`` ``[n_sb]``, int8 ``sc`` ``[n_sb, 16]``, uint8 ``q = l + 32``
    ``[n_sb, 256]``; an all-zero super-block has ``d = 0``, ``sc = 0``, ``q = 0``."""
    x = np.asarray(x, _F32)
    xs = x.reshape(-1, 16, 16)                                               # [n, 16, 16]
    qw = None if imatrix is None else np.broadcast_to(
        np.asarray(imatrix, _F32).reshape(1, -1), x.shape).reshape(-1, 16, 16)
    s, L = make_qx_quants(xs, 32, 1, qw)                                     # [n, 16], [n, 16, 16]
    s_max = _first_amax(s)                                                   # [n]
    zero = np.abs(s_max) < GROUP_MAX_EPS
    with np.errstate(all="ignore"):
        iscale = (_F32(-128) / s_max).astype(_F32)
        d = _to_f16(np.where(zero, _F32(0), _F32(1) / iscale).astype(_F32), "d", "Q6_K")
        sc = (np.minimum(127, nearest_int(iscale[:, None] * s)) & 0xFF).astype(np.uint8).view(np.int8)
        dj = (d.astype(_F32)[:, None] * sc.astype(_F32)).astype(_F32)         # [n, 16]
        l = np.clip(nearest_int((xs / dj[..., None]).astype(_F32)), -32, 31)
    q = np.where((dj == 0)[..., None], L, l + 32)                            # C: if (!d) continue
    sc = np.where(zero[:, None], 0, sc).astype(np.int8)
    q = np.where(zero[:, None, None], 0, q).astype(np.uint8)
    return d, sc, q.reshape(-1, QK_K)


def pack_q6_k(d, sc, q) -> np.ndarray:
    """Q6_K super-block bytes [n, 210] of the fields."""
    n = len(q)
    qg = q.reshape(n, 2, 4, 32)                                              # [n, half, g, i]
    lo = qg & np.uint8(0xF)
    ql = np.concatenate([lo[:, :, 0] | (lo[:, :, 2] << np.uint8(4)),
                         lo[:, :, 1] | (lo[:, :, 3] << np.uint8(4))], axis=-1)   # [n, half, 64]
    hi = (qg >> np.uint8(4)) & np.uint8(3)
    qh = np.bitwise_or.reduce(hi << (2 * np.arange(4, dtype=np.uint8))[None, None, :, None],
                              axis=2)                                        # [n, half, 32]
    return np.concatenate([ql.reshape(n, 128), qh.reshape(n, 64), sc.view(np.uint8),
                           d.astype("<f2")[:, None].view(np.uint8)], axis=-1)


def unpack_q6_k(data):
    """``(d, sc, q)`` of Q6_K bytes ``data`` [n, 210]."""
    n = len(data)
    ql = data[:, :128].reshape(n, 2, 2, 32)                                  # [n, half, part, i]
    lo = np.stack([ql[:, :, 0] & np.uint8(0xF), ql[:, :, 1] & np.uint8(0xF),
                   ql[:, :, 0] >> np.uint8(4), ql[:, :, 1] >> np.uint8(4)], axis=2)
    qh = data[:, 128:192].reshape(n, 2, 1, 32)
    hi = (qh >> (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]) & np.uint8(3)
    q = (lo | (hi << np.uint8(4))).reshape(n, QK_K)
    sc = np.ascontiguousarray(data[:, 192:208]).view(np.int8)
    d = np.ascontiguousarray(data[:, 208:210]).view("<f2")[:, 0]
    return d, sc, q


def dequantize_q6_k(data) -> np.ndarray:
    """Float32 [n_rows, K] of Q6_K bytes, as ``dequantize_row_q6_K``: ``(d sc_j) (q - 32)``."""
    n_rows = data.shape[0]
    d, sc, q = unpack_q6_k(data.reshape(-1, Q6_K_BYTES))
    dj = (d.astype(_F32)[:, None] * sc.astype(_F32)).astype(_F32)            # [n, 16]
    l = (q.reshape(-1, 16, 16).astype(np.int32) - 32).astype(_F32)
    return (dj[..., None] * l).astype(_F32).reshape(n_rows, -1)


def quantize_q8_k(x) -> np.ndarray:
    """Q8_K bytes [n_rows, K // 256 * 292] of rows ``x`` (float32 ``[n_rows, K]``)."""
    n_rows = x.shape[0]
    xs = np.asarray(x, _F32).reshape(-1, QK_K)                               # [n, 256]
    x_max = _first_amax(xs)
    zero = x_max == 0
    with np.errstate(all="ignore"):
        iscale = (_F32(-127) / x_max).astype(_F32)
        l = np.minimum(127, nearest_int(iscale[:, None] * xs))
        qs = (l & 0xFF).astype(np.uint8).view(np.int8)                       # int8_t store
        d = (_F32(1) / iscale).astype(_F32)
    qs = np.where(zero[:, None], 0, qs).astype(np.int8)
    d = np.where(zero, _F32(0), d).astype("<f4")
    bsums = qs.reshape(-1, 16, 16).astype(np.int32).sum(axis=-1).astype("<i2")   # [n, 16]
    raw = np.concatenate([d[:, None].view(np.uint8), qs.view(np.uint8), bsums.view(np.uint8)],
                         axis=-1)
    return raw.reshape(n_rows, -1)


def dequantize_q8_k(data) -> np.ndarray:
    """Float32 [n_rows, K] of Q8_K bytes: ``d l``, as ``dequantize_row_q8_K``."""
    n_rows = data.shape[0]
    raw = data.reshape(-1, Q8_K_BYTES)
    d = np.ascontiguousarray(raw[:, 0:4]).view("<f4")                        # [n, 1]
    qs = np.ascontiguousarray(raw[:, 4:260]).view(np.int8)
    return (d * qs.astype(_F32)).astype(_F32).reshape(n_rows, -1)


register(BlockType("Q6_K", 14, QK_K, Q6_K_BYTES,
                   quantize_rows=lambda x, imatrix: pack_q6_k(
                       *quantize_q6_k_blocks(x, imatrix)).reshape(x.shape[0], -1),
                   dequantize_rows=dequantize_q6_k, uses_imatrix=True))
register(BlockType("Q8_K", 15, QK_K, Q8_K_BYTES,
                   quantize_rows=lambda x, imatrix: quantize_q8_k(x),
                   dequantize_rows=dequantize_q8_k))

__all__ = ["QK_K", "Q6_K_BYTES", "Q8_K_BYTES", "quantize_q6_k_blocks", "pack_q6_k",
           "unpack_q6_k", "dequantize_q6_k", "quantize_q8_k", "dequantize_q8_k"]
