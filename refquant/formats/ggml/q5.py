"""GGML's 5-bit block formats Q5_0 and Q5_1, byte for byte as ggml writes them.

Q5_0 and Q5_1 are Q4_0 and Q4_1 with one more bit per code: blocks of 32 values along a row,
a float16 scale (and, for Q5_1, a float16 minimum), 32 five-bit codes split into their low
nibbles and a 32-bit word of fifth bits.

Symbols (one block)
-------------------
=====  ==================================================================================
x      the 32 input values, float32
d      the block scale (float32 while the codes are chosen, stored as float16)
m      Q5_1's block minimum (stored as float16)
q      the codes, 0..31
w      importance weights of the block's values (imatrix path)
=====  ==================================================================================

Reference quantizer (``imatrix=None``: ``quantize_row_q5_0_ref`` / ``quantize_row_q5_1_ref``)
---------------------------------------------------------------------------------------------
======  =============================  =================================================  ==============
format  scale (float32)                code                                               x_hat
======  =============================  =================================================  ==============
Q5_0    ``d = x[argmax|x|] / -16``     ``q = min(31, trunc(x id + 16.5))``                ``d (q - 16)``
Q5_1    ``d = (max x - min x) / 31``   ``q = trunc((x - m) id + 0.5)``, ``m = min x``     ``d q + m``
======  =============================  =================================================  ==============

with ``id = 1/d`` in float32. The rounding is Q4_0's and Q4_1's (float32 add, then truncate: ties
go up, and a sum that rounds up to a tie goes up again); the sign and first-occurrence rules for
the extremes, the zero-scale rule and the float16 overflow check are those of
:mod:`refquant.formats.ggml.legacy`, whose helpers are used here. Q5_1 has no ``min(31, .)``
(the C has none; the code cannot pass 31). Where ``1 / d`` overflows float32 (a block whose
values all lie below about 2^-122 in magnitude) ggml's C converts inf/NaN to an integer
(undefined behaviour; code 0 on x86-64); refquant takes ``id = 0`` there as legacy does, giving
Q5_0 codes 16 (Q5_1: 0, the same as x86-64's). The stored float16 ``d`` is 0 either way, so the
decoded block is identical; only Q5_0's unused code bits differ.

Importance-matrix quantizer (``quantize_row_q5_0_impl`` / ``_q5_1_impl``)
-------------------------------------------------------------------------
With an importance matrix ``imatrix`` (one weight per column of the row) each value gets the
weight ``w_i = imatrix_i sqrt(sigma^2 + x_i^2)``, ``sigma^2 = sum(x^2) / K`` over the *whole
row* of ``K`` values (a float32 left-to-right sum), and

* Q5_0: ``d, q = make_qx_quants(x, nmax=16, rmse_type=1, w)`` (symmetric weighted
  least-squares search, :func:`refquant.formats.ggml._search.make_qx_quants`), ``q = l + 16``;
* Q5_1: ``d, -m, q = make_qkx3_quants(x, w, nmax=31, rmin=-0.9, rdelta=0.05, nstep=36)``.

The stored float16 ``d`` (and ``m``) are the search's float32 values rounded; the codes are
the search's codes (not recomputed with the rounded scale).

Byte layout (little endian, one block; blocks are concatenated along each row)
------------------------------------------------------------------------------
======  =====  ===========  =================================================================
format  bytes  bits/weight  fields, in order
======  =====  ===========  =================================================================
Q5_0    22     5.5          ``d`` float16 (2 bytes); ``qh`` uint32 (4): bit ``j`` is bit 4 of
                            code ``j``; ``qs`` (16): byte ``j`` holds the low nibbles of codes
                            ``j`` (low half) and ``j + 16`` (high half)
Q5_1    24     6.0          ``d`` float16, ``m`` float16, then ``qh`` and ``qs`` as Q5_0
======  =====  ===========  =================================================================

References
----------
.. [1] G. Gerganov et al., ggml / llama.cpp, ``ggml/src/ggml-quants.c`` (``quantize_row_q5_*``,
       ``dequantize_row_q5_*``) and ``ggml/src/ggml-common.h`` (``block_q5_0``, ``block_q5_1``).
"""

from __future__ import annotations

import numpy as np

from refquant.formats.ggml._registry import BlockType, register
from refquant.formats.ggml._search import make_qkx3_quants, make_qx_quants
from refquant.formats.ggml.legacy import _reciprocal, _to_f16, _trunc_offset, row_weights

QK5 = 32
_F32 = np.float32
#: name -> (bytes per block, has a minimum, GGML type id)
Q5_FORMATS = {"Q5_0": (22, False, 6), "Q5_1": (24, True, 7)}


def _first(xb, pick):
    """The first value picked by ``pick`` (argmin / argmax) along the last axis, as C's
    strict-comparison loops choose it."""
    return np.take_along_axis(xb, pick(xb, axis=-1)[..., None], axis=-1)[..., 0]


def quantize_q5_blocks(x, fmt: str, imatrix=None):
    """The fields of rows ``x`` (float32 ``[n_rows, K]``, ``K % 32 == 0``, finite) in Q5_0 or
    Q5_1: ``(d, m, q)``, float32 ``d`` and ``m`` ``[n_rows, K // 32]`` (``m`` None for Q5_0) and
    uint8 codes ``q`` ``[n_rows, K // 32, 32]``. ``imatrix`` (float32 ``[K]``) selects ggml's
    importance-matrix quantizer (see the module docstring)."""
    return quantize_q5_blocks_rule(x, fmt, imatrix)[:3]


def quantize_q5_blocks_rule(x, fmt: str, imatrix=None):
    """``(d, m, q, a, b)``: :func:`quantize_q5_blocks` and the rule its codes were rounded
    with, float32 ``a, b`` ``[n_rows, K // 32]``: the codes are those of ``(x - b) * a``
    (``a = id``, ``b`` 0 or Q5_1's float32 minimum; with an imatrix the search's ``iscale``
    and minimum ``m_b``). GPTQ onto these grids rounds with it
    (:mod:`refquant.formats.ggml.gptq_grid`)."""
    x = np.asarray(x, dtype=_F32)
    n_rows, K = x.shape
    xb = x.reshape(n_rows, K // QK5, QK5)                                  # [r, nb, 32]
    if imatrix is not None:
        w = row_weights(xb, imatrix)                              # [r, nb, 32], sigma2 per row
        if fmt == "Q5_0":
            d, q, iscale = make_qx_quants(xb, 16, 1, w, return_iscale=True)
            return d, None, q, iscale, np.zeros_like(iscale)
        d, the_min, q, iscale, m_b = make_qkx3_quants(xb, w, 31, -0.9, 0.05, 36, False, True)
        return d, (-the_min).astype(_F32), q, iscale, m_b
    if fmt == "Q5_0":
        x_max = _first_signed_amax(xb)                                       # signed
        x_max = np.where(x_max == 0, _F32(0), x_max).astype(_F32)           # C: max = +0.0f
        d = (x_max / _F32(-16)).astype(_F32)
        inv = _reciprocal(d)
        q = np.minimum(_trunc_offset((xb * inv[..., None]).astype(_F32), 16.5), 31)
        return d, None, q.astype(np.uint8), inv, np.zeros_like(inv)
    lo = _first(xb, np.argmin)
    hi = _first(xb, np.argmax)
    d = ((hi - lo) / _F32(31)).astype(_F32)
    inv = _reciprocal(d)
    v = ((xb - lo[..., None]).astype(_F32) * inv[..., None]).astype(_F32)
    q = _trunc_offset(v, 0.5).astype(np.int64) & 0x1F                      # C: (uint8_t), no clamp
    return d, lo, q.astype(np.uint8), inv, lo


def _first_signed_amax(xb):
    """``x[argmax |x|]``: the first value of largest magnitude, with its sign."""
    return np.take_along_axis(xb, np.argmax(np.abs(xb), axis=-1)[..., None], axis=-1)[..., 0]


def pack_q5(d, m, q) -> np.ndarray:
    """Q5_0 (``m`` None) or Q5_1 bytes ``[n_rows, nb * bytes]`` of float16-rounded fields."""
    fmt = "Q5_0" if m is None else "Q5_1"
    n_rows, nb, _ = q.shape
    parts = [_to_f16(d, "d", fmt).astype("<f2")[..., None].view(np.uint8)]
    if m is not None:
        parts.append(_to_f16(m, "m (block minimum)", fmt).astype("<f2")[..., None].view(np.uint8))
    bit4 = ((q >> np.uint8(4)) & np.uint8(1)).astype("<u4")                  # [r, nb, 32]
    qh = np.bitwise_or.reduce(bit4 << np.arange(32, dtype="<u4"), axis=-1)   # bit j: code j
    parts.append(qh.astype("<u4")[..., None].view(np.uint8))
    parts.append((q[..., :16] & np.uint8(0x0F)) | ((q[..., 16:] & np.uint8(0x0F)) << np.uint8(4)))
    return np.ascontiguousarray(np.concatenate(parts, axis=-1).reshape(n_rows, -1))


def unpack_q5(data, fmt: str):
    """``(d, m, q)`` of Q5 bytes ``data`` (uint8 ``[n_rows, nb * bytes]``): float16 ``d``,
    ``m`` (None for Q5_0) ``[n_rows, nb]``, uint8 codes ``[n_rows, nb, 32]``."""
    nbytes, has_m, _ = Q5_FORMATS[fmt]
    raw = data.reshape(data.shape[0], -1, nbytes)                              # [r, nb, bytes]
    d = np.ascontiguousarray(raw[..., 0:2]).view("<f2")[..., 0]
    m = np.ascontiguousarray(raw[..., 2:4]).view("<f2")[..., 0] if has_m else None
    o = 4 if has_m else 2
    qh = np.ascontiguousarray(raw[..., o:o + 4]).view("<u4")[..., 0]           # [r, nb]
    qs = raw[..., o + 4:]                                                      # [r, nb, 16]
    low = np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=-1)    # [r, nb, 32]
    high = ((qh[..., None] >> np.arange(32, dtype="<u4")) & 1).astype(np.uint8)
    return d, m, low | (high << np.uint8(4))


def dequantize_q5(data, fmt: str) -> np.ndarray:
    """Float32 ``[n_rows, nb * 32]`` of Q5 bytes, in float32 as ``dequantize_row_q5_*``:
    ``(q - 16) d`` (Q5_0) or ``q d + m`` (Q5_1)."""
    d, m, q = unpack_q5(data, fmt)
    d = d.astype(_F32)[..., None]
    if m is None:
        x_hat = (q.astype(np.int32) - 16).astype(_F32) * d
    else:
        x_hat = (q.astype(_F32) * d).astype(_F32) + m.astype(_F32)[..., None]
    return x_hat.astype(_F32).reshape(q.shape[0], -1)


def _quantize_rows(fmt):
    def quantize_rows(x, imatrix):
        d, m, q = quantize_q5_blocks(x, fmt, imatrix)
        return pack_q5(d, m, q)
    return quantize_rows


for _name, (_nbytes, _, _type_id) in Q5_FORMATS.items():
    register(BlockType(_name, _type_id, QK5, _nbytes, quantize_rows=_quantize_rows(_name),
                       dequantize_rows=lambda data, _f=_name: dequantize_q5(data, _f),
                       uses_imatrix=True))

__all__ = ["QK5", "Q5_FORMATS", "quantize_q5_blocks", "quantize_q5_blocks_rule", "pack_q5",
           "unpack_q5", "dequantize_q5"]
