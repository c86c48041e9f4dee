"""IQ4_NL and IQ4_XS: 4-bit codes on a fixed *non-uniform* grid, byte for byte as ggml writes them.

Both formats store, for every block of 32 weights, 16 four-bit indices into one table of 16
signed levels (``kvalues_iq4nl`` of ``ggml-common.h``), denser near zero than at the ends,
and one scale per block: ``x_hat = d_b * v[q]``. IQ4_NL stores ``d_b`` as a float16 per block of
32; IQ4_XS groups 8 blocks into a super-block of 256 with one float16 ``d`` and a 6-bit signed
integer per block, ``d_b = d * (ls - 32)``.

The quantizer is ggml's ``quantize_row_iq4_nl_impl`` (``ggml-quants.c``), the same for both
formats, which ``ggml_quantize_chunk`` runs with ``ntry = 7`` with and without an importance
matrix (``quantize_iq4_nl`` / ``quantize_iq4_xs``; the ``ntry = -1`` path of
``quantize_row_iq4_nl_ref`` is not what llama.cpp writes files with).

Symbols (one block of 32 unless said)
-------------------------------------
=====  ======================================================================================
x      the 32 input values, float32
v      the 16 levels ``(-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89,
       113)``, sorted; note the asymmetry (``|v_0| > v_15``)
q      the codes, indices into ``v`` (4 bits)
w      the weight of each value in the fit: ``x^2`` without an importance matrix, else
       ``imatrix_j * sqrt(sigma2 + x_j^2)``, ``sigma2 = 2 sum(x^2) / S`` over the super-block
       of ``S`` values (``S = 32`` for IQ4_NL, 256 for IQ4_XS)
m      the value of largest magnitude, signed (the first one where several share it)
d_b    the block scale (float32 during the search)
d      IQ4_XS's super-block scale, ``-max_scale / 32`` in float32, stored as float16
ls     IQ4_XS's 6-bit block scale code in [0, 63]; ``d_b = d (ls - 32)``
=====  ======================================================================================

The scale search, per block
---------------------------
For a trial inverse scale ``id`` every value takes its nearest level, ``q_j = argmin_k
|id x_j - v_k|`` (:func:`best_index`), and the weighted least-squares scale for those codes is

.. math::

    d_b = \\frac{\\sum_j w_j v_{q_j} x_j}{\\sum_j w_j v_{q_j}^2},
    \\qquad
    E(d_b) = \\sum_j w_j (x_j - d_b v_{q_j})^2
           = \\sum_j w_j x_j^2 - \\frac{(\\sum_j w_j v_{q_j} x_j)^2}{\\sum_j w_j v_{q_j}^2}.

Minimizing ``E`` means maximizing ``(sum w v x)^2 / sum w v^2``; the search tries 16 trial
inverse scales, ``id = 127 / m`` (so that ``m`` lands on ``v_0 = -127`` up to its sign) and then
``id = (t - 127) / m`` for ``t = -7 ... 7``, keeping the first trial that strictly improves the
objective (ggml compares ``(sum w v x)^2 > best * sum w v^2``, ``best = d_b sum w v x``). The
trials ``id = (t - 127) / m`` are *negative* multiples of the first: they map ``m`` to the
other end of the asymmetric table, so the sign of ``d_b`` is part of the search.

Then, IQ4_NL: ``d_b`` is stored as float16 and the codes are chosen again for the *float32*
``d_b`` (``q_j = best_index(x_j / d_b)``). IQ4_XS: with ``max_scale`` the signed ``d_b`` of the
largest magnitude (the first one), ``d = -max_scale / 32`` in float32, ``ls - 32 =
clamp(nearest_int(d_b / d), -32, 31)``, and the codes are chosen again for the float32 product
``d (ls - 32)`` (not for the float16 ``d`` that is stored).

Exact arithmetic (what bit-exactness needs)
-------------------------------------------
* Every step is float32, in C's order: ``w * v * x`` is ``(w * v) * x``; sums run left to right
  from ``+0.0`` (:func:`~refquant.formats.ggml._search.sum_f32`; NumPy's pairwise ``sum``
  would round differently).
* :func:`best_index` is ggml's ``best_index_int8``: the level above a midpoint wins
  (``2x >= v_{k-1} + v_k``, compared exactly on ``x + x``).
* ``nearest_int`` is ggml's magic-number rounding, round half to even of the float32 value
  (:func:`~refquant.formats.ggml._search.nearest_int`).
* A block whose largest magnitude is below ``GROUP_MAX_EPS = 1e-15`` gets ``d_b = 0``: IQ4_NL
  then stores ``d = 0`` and code 8 (level 1, the first level at or above 0) everywhere; an
  IQ4_XS super-block of such blocks stores ``d = -0.0`` (float16 bits ``0x8000``, from
  ``-0 / 32``), ``ls = 32`` and code 8.

Byte layout (little endian; blocks are concatenated along each row)
-------------------------------------------------------------------
IQ4_NL, 32 values in 18 bytes, 4.5 bits per weight:

======  =====  =====================================================================
offset  bytes  field
======  =====  =====================================================================
0       2      ``d`` float16, the block scale
2       16     ``qs``: byte ``j`` holds code ``j`` (low nibble) and code ``j + 16`` (high)
======  =====  =====================================================================

IQ4_XS, one super-block of 256 values (8 blocks of 32) in 136 bytes, 4.25 bits per weight:

======  =====  =====================================================================================
offset  bytes  field
======  =====  =====================================================================================
0       2      ``d`` float16, the super-block scale (the scale of the block scales)
2       2      ``scales_h`` uint16: bits ``2b, 2b+1`` are the high 2 bits of block ``b``'s ``ls``
4       4      ``scales_l``: byte ``b // 2`` holds the low 4 bits of ``ls`` of block ``b`` (low
               nibble for even ``b``, high for odd)
8       128    ``qs``: 16 bytes per block ``b``, byte ``16 b + j`` holds code ``32 b + j`` (low
               nibble) and code ``32 b + 16 + j`` (high)
======  =====  =====================================================================================

Block scales are 6-bit signed, ``d (ls - 32)`` with ``ls - 32`` in [-32, 31]; the storage is
``(2 + 2 + 4 + 128) * 8 / 256 = 4.25`` bits per weight, against IQ4_NL's 4.5.

Where refquant is stricter than the reference
---------------------------------------------
A scale that overflows float16 raises ``ValueError`` naming the block (the reference stores
``inf``); ``refquant.formats.ggml.quantize`` already rejects NaN/Inf input.

References
----------
.. [1] G. Gerganov et al., ggml / llama.cpp, ``ggml/src/ggml-quants.c``
       (``quantize_row_iq4_nl_impl``, ``quantize_iq4_nl``, ``quantize_iq4_xs``,
       ``dequantize_row_iq4_nl``, ``dequantize_row_iq4_xs``) and ``ggml/src/ggml-common.h``
       (``block_iq4_nl``, ``block_iq4_xs``, ``kvalues_iq4nl``).
.. [2] I. Kawrakow, "IQ4_NL: 4-bit non-linear quants with blocks of 32", llama.cpp pull
       request 5590 (2024); "IQ4_XS: a 4.25 bpw quantization", pull request 5747 (2024).
"""

from __future__ import annotations

import numpy as np

from refquant.formats.ggml._registry import BlockType, register
from refquant.formats.ggml._search import GROUP_MAX_EPS, nearest_int, sum_f32
from refquant.formats.ggml.legacy import _to_f16

QK4_NL = 32     # values per block (both formats), and per IQ4_NL super-block
QK_K = 256      # values per IQ4_XS super-block
NTRY = 7        # ggml_quantize_chunk's quantize_iq4_nl / quantize_iq4_xs pass ntry = 7

#: ggml-common.h's kvalues_iq4nl, the 16 levels
KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10,
                          1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)
_V = KVALUES_IQ4NL.astype(np.float32)
# 2 x the midpoints between neighbouring levels, exact small integers in float32
_MID2 = (KVALUES_IQ4NL[:-1].astype(np.int32) + KVALUES_IQ4NL[1:]).astype(np.float32)


def best_index(x: np.ndarray) -> np.ndarray:
    """The index of the level of :data:`KVALUES_IQ4NL` nearest to each float32 ``x``.

    ggml's ``best_index_int8``: the index ``k`` is the number of midpoints
    ``(v_{k-1} + v_k) / 2`` that ``x`` reaches, compared as ``x + x >= v_{k-1} + v_k`` in float32
    (``x + x`` is exact, so the comparison is exact); at a midpoint the upper level wins. NaN
    reaches no midpoint (index 0), as in C.

    Parameters
    ----------
    x : numpy.ndarray of float32, any shape

    Returns
    -------
    numpy.ndarray of intp, same shape, in [0, 15].

    Examples
    --------
    >>> best_index(np.array([-115.5, -115.6, 0.0, 120.0], np.float32)).tolist()
    [1, 0, 8, 15]
    """
    x2 = (x + x).astype(np.float32)
    k = np.searchsorted(_MID2, x2, side="right")
    return np.where(np.isnan(x2), 0, k)


def _fit(inv_scale, x, w):
    """``(sum w v_q x, sum w v_q^2)`` for the codes ``q = best_index(inv_scale x)``.

    ``inv_scale`` float32 ``[...]``, ``x`` and ``w`` float32 ``[..., 32]`` -> two float32 ``[...]``.
    """
    q = _V[best_index((inv_scale[..., None] * x).astype(np.float32))]     # [..., 32] levels
    wq = (w * q).astype(np.float32)
    return sum_f32(wq * x), sum_f32(wq * q)


def block_scales(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The weighted least-squares scale ``d_b`` of each block of 32 (the search of the module
    docstring).

    Parameters
    ----------
    x, w : numpy.ndarray of float32, shape ``[..., 32]``
        Values and their weights.

    Returns
    -------
    numpy.ndarray of float32, shape ``[...]``; 0 for blocks below ``GROUP_MAX_EPS``.
    """
    i_max = np.argmax(np.abs(x), axis=-1)[..., None]                # the first largest |x|
    m = np.take_along_axis(x, i_max, axis=-1)[..., 0]               # signed, [...]
    zero = np.abs(m) < GROUP_MAX_EPS
    m = np.where(zero, np.float32(1), m).astype(np.float32)         # zero blocks: any m, masked
    # overflow to inf (values beyond ~1e5) is IEEE as in C; a non-finite d raises when stored
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d0 = ((-m) / _V[0]).astype(np.float32)                       # C: -max / values[0]
        sqx, sq2 = _fit((np.float32(1) / d0).astype(np.float32), x, w)
        d = np.where(sq2 > 0, sqx / sq2, np.float32(0)).astype(np.float32)
        best = (d * sqx).astype(np.float32)
        for t in range(-NTRY, NTRY + 1):                              # C's itry loop, in order
            inv = (np.float32(t + int(KVALUES_IQ4NL[0])) / m).astype(np.float32)
            sqx, sq2 = _fit(inv, x, w)
            better = (sq2 > 0) & ((sqx * sqx).astype(np.float32) > (best * sq2).astype(np.float32))
            d = np.where(better, sqx / sq2, d).astype(np.float32)
            best = np.where(better, d * sqx, best).astype(np.float32)
    return np.where(zero, np.float32(0), d).astype(np.float32)


def _weights(xs: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    """``w`` of the module docstring for super-blocks ``xs`` (float32 ``[N, S]``) and the
    matching importance-matrix entries ``qw`` (``[N, S]`` or None) -> float32 ``[N, S]``."""
    if qw is None:
        return (xs * xs).astype(np.float32)
    S = xs.shape[-1]
    sigma2 = (sum_f32(xs * xs) * np.float32(2.0 / S)).astype(np.float32)   # 2/S exact
    return (qw * np.sqrt((sigma2[:, None] + xs * xs).astype(np.float32))).astype(np.float32)


def _super_blocks(x: np.ndarray, imatrix, S: int):
    """Rows ``x`` (float32 ``[n_rows, K]``) as super-blocks ``[N, S]`` and their weights."""
    xs = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, S)
    qw = None
    if imatrix is not None:
        qw = np.broadcast_to(np.asarray(imatrix, np.float32).reshape(1, -1, S),
                             (x.shape[0], x.shape[1] // S, S)).reshape(-1, S)
    return xs, _weights(xs, qw)


def _inverse(v: np.ndarray) -> np.ndarray:
    """``v ? 1/v : 0`` in float32."""
    with np.errstate(divide="ignore"):
        return np.where(v != 0, np.float32(1) / v, np.float32(0)).astype(np.float32)


def _pack_codes(L: np.ndarray) -> np.ndarray:
    """Codes ``[..., 32]`` -> 16 bytes ``[..., 16]``: code ``j`` low nibble, ``j + 16`` high."""
    L = L.astype(np.uint8)
    return L[..., :16] | (L[..., 16:] << np.uint8(4))


def _unpack_codes(qs: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_pack_codes`: ``[..., 16]`` bytes -> codes ``[..., 32]``."""
    return np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=-1)


def _f16(v: np.ndarray, fmt: str) -> np.ndarray:
    if not np.all(np.isfinite(v)):
        i = int(np.argmax(~np.isfinite(v)))
        raise ValueError(f"{fmt} block {i}: scale d = {float(v.reshape(-1)[i])!r} is not finite; "
                         f"the values are too large for {fmt}")
    return _to_f16(v, "d", fmt).astype("<f2")


def quantize_iq4_nl(x: np.ndarray, imatrix=None) -> np.ndarray:
    """IQ4_NL bytes of float32 rows ``x`` ``[n_rows, K]`` (``K % 32 == 0``), with the optional
    importance matrix ``imatrix`` float32 ``[K]``: uint8 ``[n_rows, K // 32 * 18]``."""
    xs, w = _super_blocks(x, imatrix, QK4_NL)                          # [N, 32]
    d = block_scales(xs, w)                                            # [N]
    d16 = _f16(d, "IQ4_NL")
    L = best_index((_inverse(d)[:, None] * xs).astype(np.float32))     # for the float32 d
    raw = np.concatenate([d16[:, None].view(np.uint8), _pack_codes(L)], axis=-1)   # [N, 18]
    return raw.reshape(x.shape[0], -1)


def iq4_xs_scales(x: np.ndarray, imatrix=None):
    """The scales of IQ4_XS super-blocks of float32 rows ``x`` ``[n_rows, K]``: ``(d, l, dl)``,
    the float32 super-block scale ``d`` ``[N]`` (stored as float16), the block codes ``l = ls -
    32`` ``[N, 8]`` and the float32 block scales ``dl = d l`` ``[N, 8]`` the codes are chosen
    for (``q = best_index(x / dl)``, see the module docstring)."""
    xs, w = _super_blocks(x, imatrix, QK_K)                            # [N, 256]
    N = xs.shape[0]
    d_b = block_scales(xs.reshape(N, 8, QK4_NL), w.reshape(N, 8, QK4_NL))   # [N, 8]
    i_max = np.argmax(np.abs(d_b), axis=-1)[:, None]                   # first largest |d_b|
    max_scale = np.take_along_axis(d_b, i_max, axis=-1)[:, 0]
    d = ((-max_scale) / np.float32(32)).astype(np.float32)            # [N]; -0.0 if all zero
    l = np.clip(nearest_int((_inverse(d)[:, None] * d_b).astype(np.float32)), -32, 31)  # [N, 8]
    dl = (d[:, None] * l.astype(np.float32)).astype(np.float32)       # float32 d, not float16
    return d, l, dl


def quantize_iq4_xs(x: np.ndarray, imatrix=None) -> np.ndarray:
    """IQ4_XS bytes of float32 rows ``x`` ``[n_rows, K]`` (``K % 256 == 0``), with the optional
    importance matrix ``imatrix`` float32 ``[K]``: uint8 ``[n_rows, K // 256 * 136]``."""
    d, l, dl = iq4_xs_scales(x, imatrix)                               # [N], [N, 8], [N, 8]
    N = len(d)
    xb = np.ascontiguousarray(x, dtype=np.float32).reshape(N, 8, QK4_NL)   # [N, 8, 32]
    L = best_index((_inverse(dl)[..., None] * xb).astype(np.float32))  # [N, 8, 32]
    ls = (l + 32).astype(np.uint16)                                    # [N, 8] in [0, 63]
    scales_h = np.bitwise_or.reduce((ls >> 4) << (2 * np.arange(8, dtype=np.uint16)), axis=-1)
    lo = (ls & 0xF).astype(np.uint8)
    scales_l = lo[:, 0::2] | (lo[:, 1::2] << np.uint8(4))              # [N, 4]
    raw = np.concatenate([_f16(d, "IQ4_XS")[:, None].view(np.uint8),
                          scales_h.astype("<u2")[:, None].view(np.uint8), scales_l,
                          _pack_codes(L).reshape(N, 128)], axis=-1)      # [N, 136]
    return raw.reshape(x.shape[0], -1)


def dequantize_iq4_nl(data: np.ndarray) -> np.ndarray:
    """float32 ``[n_rows, n_bytes // 18 * 32]`` of IQ4_NL bytes ``[n_rows, n_bytes]``:
    ``x_hat = d * v[q]`` in float32 (ggml's ``dequantize_row_iq4_nl``)."""
    raw = data.reshape(data.shape[0], -1, 18)
    d = np.ascontiguousarray(raw[..., :2]).view("<f2").astype(np.float32)      # [n, nb, 1]
    x_hat = (d * _V[_unpack_codes(raw[..., 2:])]).astype(np.float32)           # [n, nb, 32]
    return x_hat.reshape(data.shape[0], -1)


def iq4_xs_block_scales(raw: np.ndarray) -> np.ndarray:
    """The 6-bit block scale codes ``ls - 32`` (int ``[..., 8]``, in [-32, 31]) of IQ4_XS
    super-blocks ``raw`` (uint8 ``[..., 136]``)."""
    scales_h = np.ascontiguousarray(raw[..., 2:4]).view("<u2")                # [..., 1]
    hi = (scales_h >> (2 * np.arange(8, dtype=np.uint16))) & 3               # [..., 8]
    sl = raw[..., 4:8]
    lo = np.stack([sl & 0xF, sl >> 4], axis=-1).reshape(sl.shape[:-1] + (8,))
    return (lo.astype(np.int32) | (hi.astype(np.int32) << 4)) - 32


def dequantize_iq4_xs(data: np.ndarray) -> np.ndarray:
    """float32 ``[n_rows, n_bytes // 136 * 256]`` of IQ4_XS bytes ``[n_rows, n_bytes]``:
    ``x_hat = (d * (ls - 32)) * v[q]`` in float32 (ggml's ``dequantize_row_iq4_xs``)."""
    raw = data.reshape(data.shape[0], -1, 136)                                 # [n, N, 136]
    d = np.ascontiguousarray(raw[..., :2]).view("<f2").astype(np.float32)      # [n, N, 1]
    dl = (d * iq4_xs_block_scales(raw).astype(np.float32)).astype(np.float32)  # [n, N, 8]
    q = _unpack_codes(raw[..., 8:].reshape(raw.shape[:2] + (8, 16)))           # [n, N, 8, 32]
    x_hat = (dl[..., None] * _V[q]).astype(np.float32)
    return x_hat.reshape(data.shape[0], -1)


register(BlockType("IQ4_NL", 20, QK4_NL, 18, quantize_rows=quantize_iq4_nl,
                   dequantize_rows=dequantize_iq4_nl, uses_imatrix=True))
register(BlockType("IQ4_XS", 23, QK_K, 136, quantize_rows=quantize_iq4_xs,
                   dequantize_rows=dequantize_iq4_xs, uses_imatrix=True))

__all__ = ["KVALUES_IQ4NL", "best_index", "block_scales", "quantize_iq4_nl",
           "iq4_xs_scales", "quantize_iq4_xs", "dequantize_iq4_nl", "dequantize_iq4_xs", "iq4_xs_block_scales"]
