"""The first GGML block formats, Q8_0, Q4_0 and Q4_1, byte for byte as stored in GGUF files.

Each format cuts a row into blocks of 32 consecutive values (along the last axis, the input
dimension of a weight) and stores every block as a small header of float16 numbers followed by
the codes. The quantizers here reproduce the reference C quantizers of ``ggml-quants.c``
(``quantize_row_q8_0_ref``, ``quantize_row_q4_0_ref``, ``quantize_row_q4_1_ref``) and the
``gguf`` Python package's ``gguf.quants`` port of them bit for bit: every arithmetic step is
done in float32, in the same order, with the same rounding, and the result is vectorized by
reshaping to ``(n_blocks, 32)``. With an importance matrix, Q4_0 and Q4_1 follow ggml's
weighted searches instead (see "Importance-matrix quantizer" below); Q8_0 ignores it, as ggml.

Symbols (one block)
-------------------
=====  ==============================================================================
x      the 32 input values, float32
d      the block scale; computed in float32, *stored* as float16
m      the block minimum (Q4_1 only); stored as float16
id     ``1 / d`` in float32, or 0 where ``d == 0``
q      the codes: int8 in [-127, 127] (Q8_0) or 4-bit nibbles in [0, 15] (Q4_0, Q4_1)
x_hat  the dequantized value
=====  ==============================================================================

======  ============================  =======================================  ===========
format  scale (float32)               code                                     x_hat
======  ============================  =======================================  ===========
Q8_0    ``d = max|x| / 127``          ``q = roundf(x * id)``                   ``d q``
Q4_0    ``d = x[argmax|x|] / -8``     ``q = min(15, trunc(x * id + 8.5))``     ``d (q-8)``
Q4_1    ``d = (max x - min x) / 15``  ``q = min(15, trunc((x - m) id + .5))``  ``d q + m``
======  ============================  =======================================  ===========

Rounding, exactly
-----------------
* Q8_0 rounds the float32 product ``x * id`` half away from zero (C ``roundf``).
* Q4_0 and Q4_1 add 8.5 (0.5) in float32 and then truncate. This is *not* round-to-nearest of
  ``x * id``: (a) ties go up (towards +inf), so Q4_0 maps ``x * id = -2.5`` to code -2 where
  ``roundf`` gives -3; (b) the float32 sum is itself rounded, so a product just below a tie
  (``0.49999997``) can round up to the tie and then up again (code 1, not 0).
* Codes are computed with the float32 ``d`` (and Q4_1's float32 minimum), but ``d`` and ``m``
  are stored rounded to float16 (round to nearest even). The stored grid is therefore not
  exactly the grid the codes were chosen on; dequantization uses the stored float16 values.
* Q4_0's scale carries the *sign* of the largest-magnitude value (``d = max / -8`` with the
  signed max, the first one where several share the largest magnitude), so that value always
  gets code 0, i.e. ``-8 d = max`` exactly in float32; ``d`` is negative whenever that value is
  positive. An all-zero block stores ``d = -0.0`` (bytes ``00 80``) as ggml's C does; the ``gguf``
  package's NumPy port stores ``+0.0`` when the block's first value is ``-0.0``.

Importance-matrix quantizer (``quantize_row_q4_0_impl`` / ``quantize_row_q4_1_impl``)
-------------------------------------------------------------------------------------
``ggml_quantize_chunk`` (what ``llama-quantize`` calls) passes the importance matrix of the
tensor -- one weight ``imatrix_j`` per input column -- to ``quantize_q4_0`` / ``quantize_q4_1``,
which then no longer run the formulas above. Each value gets the weight

.. math:: w_j = \\mathrm{imatrix}_j \\sqrt{\\sigma^2 + x_j^2}, \\qquad
          \\sigma^2 = \\frac{1}{K} \\sum_{k=1}^{K} x_k^2

with :math:`\\sigma^2` over the *whole row* of ``K`` values (a float32 left-to-right sum), and
every block of 32 is fitted by a weighted least-squares search of
:mod:`refquant.formats.ggml._search`:

* Q4_0: ``d, q = make_qx_quants(x, nmax=8, rmse_type=1, w)``: for 19 candidate inverse
  scales ``iscale = -(8 + 0.1 k) / x_max`` (``k = -9..9``) the codes
  ``l = clamp(nearest_int(iscale x), -8, 7)`` (stored ``q = l + 8``) and their weighted
  least-squares scale :math:`d = \\sum w x l / \\sum w l^2`; kept: the candidate maximizing
  :math:`(\\sum w x l)^2 / \\sum w l^2`;
* Q4_1: ``d, -m, q = make_qkx3_quants(x, w, nmax=15, rmin=-0.9, rdelta=0.05, nstep=36)``:
  ``x ~ d q + m`` (``m <= 0``) minimizing :math:`\\sum w (d q + m - x)^2` over 37 candidates.

The stored float16 ``d`` (and ``m``) are the search's float32 values rounded; the codes are the
search's (not recomputed on the rounded scale). An all-zero block stores ``d = 0`` and codes 0
(Q4_0 too: its ``q`` is 0, not 8, as in ggml's C). Q8_0's ``quantize_q8_0`` ignores the matrix.

Where refquant is stricter than the reference
---------------------------------------------
* NaN/Inf input raises ``ValueError`` (the reference writes garbage).
* A scale or minimum that overflows float16 (``|d| >= 65520``, i.e. ``max|x|`` above about
  8.3e6 for Q8_0) raises ``ValueError`` naming the block (the reference stores ``inf``).
* Where ``1 / d`` overflows float32 (a block whose values are all below about 2^-126 in
  magnitude) the reference multiplies by ``inf`` and casts NaN/inf to an integer (undefined in
  C; platform dependent in NumPy). refquant treats such a block as the reference treats
  ``d == 0`` (``id = 0``): codes 0 (Q8_0, Q4_1) or 8 (Q4_0). The stored ``d`` is 0 in float16
  either way, so the dequantized block is identical; only the unused code bytes can differ.

Byte layout (little endian, one block; blocks are concatenated along each row)
------------------------------------------------------------------------------
======  =====  ===========  ======================================================================
format  bytes  bits/weight  layout
======  =====  ===========  ======================================================================
Q8_0    34     8.5          ``d`` float16, then 32 int8 codes
Q4_0    18     4.5          ``d`` float16, then 16 bytes; byte ``j`` holds code ``j`` in its low
                            nibble and code ``j + 16`` in its high nibble
Q4_1    20     5.0          ``d`` float16, ``m`` float16, then 16 bytes of nibbles as Q4_0
======  =====  ===========  ======================================================================

References
----------
.. [1] G. Gerganov et al., ggml / llama.cpp, ``ggml/src/ggml-quants.c`` (reference quantizers)
       and ``gguf-py/gguf/quants.py`` (the NumPy port this module is tested against).
.. [2] GGUF file format specification, ``ggml/docs/gguf.md`` in the ggml repository.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refquant.formats.ggml._registry import BlockType, check_imatrix, finite_rows, register
from refquant.formats.ggml._search import make_qkx3_quants, make_qx_quants, sum_f32
from refquant.schemes.numerics import round_to_int

QK = 32  # values per block, all three formats

#: format name -> (bytes per block, number of float16 header fields, GGML type id)
FORMATS = {"Q8_0": (34, 1, 8), "Q4_0": (18, 1, 2), "Q4_1": (20, 2, 3)}

_F16_MAX_FINITE_BELOW = np.float32(65520.0)  # float32 values >= this round to inf in float16


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown GGML block format {fmt!r}; choose from {sorted(FORMATS)}")
    return fmt


@dataclass(frozen=True)
class GGMLBlocks:
    """The fields of a run of blocks, before packing into bytes.

    Attributes
    ----------
    fmt : str
        ``"Q8_0"``, ``"Q4_0"`` or ``"Q4_1"``.
    d : numpy.ndarray of float16, shape ``[..., n_blocks]``
        Stored scales.
    m : numpy.ndarray of float16, shape ``[..., n_blocks]``, or None
        Stored minimums (Q4_1 only).
    q : numpy.ndarray, shape ``[..., n_blocks, 32]``
        Codes as stored: int8 for Q8_0, uint8 nibbles in [0, 15] for Q4_0 and Q4_1.
    """

    fmt: str
    d: np.ndarray
    m: np.ndarray | None
    q: np.ndarray


# ---------------------------------------------------------------------------------------------
# quantize: float32 -> block fields -> bytes


def _blocks_of(x, fmt: str) -> np.ndarray:
    """``x`` as float32 ``[..., n_blocks, 32]`` after checking it."""
    _check_format(fmt)
    x32 = finite_rows(x, fmt, QK)
    return x32.reshape(x32.shape[:-1] + (x32.shape[-1] // QK, QK))


def _reciprocal(d: np.ndarray) -> np.ndarray:
    """``id = 1 / d`` in float32, 0 where ``d == 0`` or where ``1 / d`` overflows float32."""
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.float32(1.0) / d
    return np.where((d == 0) | ~np.isfinite(inv), np.float32(0.0), inv).astype(np.float32)


def _to_f16(v: np.ndarray, what: str, fmt: str) -> np.ndarray:
    """Round float32 ``v`` to float16 (nearest even), raising where it would overflow."""
    big = np.abs(v) >= _F16_MAX_FINITE_BELOW
    if np.any(big):
        i = tuple(int(k) for k in np.argwhere(big)[0])
        raise ValueError(f"{fmt} block {i}: {what} = {float(v[i])!r} overflows float16 "
                         f"(|{what}| must stay below 65520); the values are too large for {fmt}")
    return v.astype(np.float16)


def _trunc_offset(v: np.ndarray, offset: float) -> np.ndarray:
    """``trunc(v + offset)`` with the sum rounded to float32 first, as the C reference's
    ``(int8_t)(x0 + 8.5f)``. Every argument here is >= 0 up to float32 rounding, so the cast
    to an integer type truncates towards zero."""
    s = (v + np.float32(offset)).astype(np.float32)       # one float32 rounding
    return np.trunc(s)


def row_weights(xb: np.ndarray, imatrix: np.ndarray) -> np.ndarray:
    """The importance weights of ggml's 32-block ``_impl`` quantizers (Q4_0, Q4_1, Q5_0, Q5_1):
    ``w_j = imatrix_j * sqrt(sigma2 + x_j^2)``, ``sigma2 = sum(x^2) / K`` over each whole row.

    ``xb`` is float32 ``[..., nb, 32]`` (a row of ``K = 32 nb`` values on the last two axes),
    ``imatrix`` float32 ``[K]``; returns float32 ``[..., nb, 32]``. ``sum(x^2)`` is C's
    left-to-right float32 loop; ``w`` is ``imatrix * sqrtf(sigma2 + x*x)`` in that order.
    """
    nb = xb.shape[-2]
    K = nb * xb.shape[-1]
    x = xb.reshape(xb.shape[:-2] + (K,))                              # [..., K]
    with np.errstate(all="ignore"):
        sigma2 = (sum_f32(x * x) / np.float32(K)).astype(np.float32)[..., None, None]
        qw = np.asarray(imatrix, np.float32).reshape(nb, xb.shape[-1])   # [nb, 32]
        return (qw * np.sqrt(sigma2 + xb * xb)).astype(np.float32)


def _quantize_blocks_imatrix(xb: np.ndarray, fmt: str, imatrix: np.ndarray):
    """Q4_0 / Q4_1 block fields of ``xb`` (float32 ``[..., nb, 32]``) by ggml's weighted
    searches (``quantize_row_q4_0_impl`` / ``_q4_1_impl``; module docstring), and the
    search's inverse scale and minimum ``(iscale, m_b)`` [..., nb] the codes were rounded with."""
    w = row_weights(xb, imatrix)                                      # [..., nb, 32]
    if fmt == "Q4_0":
        d, q, iscale = make_qx_quants(xb, 8, 1, w, return_iscale=True)   # q = l + 8, 0..15
        return GGMLBlocks(fmt, _to_f16(d, "d", fmt), None, q), iscale, np.zeros_like(iscale)
    d, the_min, q, iscale, m_b = make_qkx3_quants(xb, w, 15, -0.9, 0.05, 36, False, True)
    m = (-the_min).astype(np.float32)                                 # C: GGML_FP32_TO_FP16(-min)
    blocks = GGMLBlocks(fmt, _to_f16(d, "d", fmt), _to_f16(m, "m (block minimum)", fmt), q)
    return blocks, iscale, m_b


def quantize_blocks(x, fmt: str, imatrix=None) -> GGMLBlocks:
    """Quantize ``x`` (last axis a multiple of 32) into the block fields of ``fmt``.

    Parameters
    ----------
    x : array_like of float, shape ``[..., K]`` with ``K % 32 == 0``
        Read as float32 (as llama.cpp's converter does); must be finite.
    fmt : {"Q8_0", "Q4_0", "Q4_1"}
    imatrix : array_like of float, shape ``[K]``, optional
        llama.cpp's importance matrix (finite, >= 0). Q4_0 and Q4_1 then run ggml's weighted
        searches; Q8_0 ignores it, as ggml's ``quantize_q8_0`` does.

    Returns
    -------
    GGMLBlocks
        ``d`` (and ``m``) of shape ``[..., K // 32]``; ``q`` of shape ``[..., K // 32, 32]``.

    Notes
    -----
    See the module docstring for the formulas and the exact rounding.
    """
    return quantize_blocks_rule(x, fmt, imatrix)[0]


def quantize_blocks_rule(x, fmt: str, imatrix=None):
    """:func:`quantize_blocks` and the rule its codes were rounded with: ``(blocks, a, b)``,
    float32 ``[..., K // 32]``, the codes being those of ``(x - b) * a`` (``a = id`` and ``b``
    0 or Q4_1's float32 minimum; with an imatrix the search's ``iscale`` and minimum ``m_b``).
    GPTQ onto these grids rounds with it (:mod:`refquant.formats.ggml.gptq_grid`)."""
    xb = _blocks_of(x, fmt)                                       # [..., nb, 32] float32
    imatrix = check_imatrix(imatrix, xb.shape[-2] * QK, fmt)
    if imatrix is not None and fmt != "Q8_0":
        return _quantize_blocks_imatrix(xb, fmt, imatrix)
    zero = np.zeros(xb.shape[:-1], np.float32)
    if fmt == "Q8_0":
        amax = np.max(np.abs(xb), axis=-1)                        # [..., nb]
        d = (amax / np.float32(127)).astype(np.float32)
        inv = _reciprocal(d)
        x0 = (xb * inv[..., None]).astype(np.float32)             # float32 product
        # roundf (half away from zero) of the float32 product; round_half_away splits off the
        # fractional part, which is exact in float32, so no wider type is needed
        q = round_to_int(x0, "half_away").astype(np.int8)
        return GGMLBlocks(fmt, _to_f16(d, "d", fmt), None, q), inv, zero
    if fmt == "Q4_0":
        i_max = np.argmax(np.abs(xb), axis=-1)[..., None]         # first largest |x|
        x_max = np.take_along_axis(xb, i_max, axis=-1)[..., 0]    # signed, [..., nb]
        # ggml's C starts from max = 0.0f and replaces it only on a strictly larger |x|, so an
        # all-zero block gets max = +0 and d = -0.0 whatever the zeros' signs (the gguf
        # package's port takes x[argmax] = x[0] and stores +0 when x[0] is -0.0)
        x_max = np.where(x_max == 0, np.float32(0.0), x_max).astype(np.float32)
        d = (x_max / np.float32(-8)).astype(np.float32)
        inv = _reciprocal(d)
        x0 = (xb * inv[..., None]).astype(np.float32)
        q = np.minimum(_trunc_offset(x0, 8.5), 15).astype(np.uint8)
        return GGMLBlocks(fmt, _to_f16(d, "d", fmt), None, q), inv, zero
    # Q4_1
    # the first smallest / largest value, as C's strict-comparison loops pick them: that decides
    # the sign of a zero minimum (np.min may return -0.0 where C keeps the first +0.0)
    lo = np.take_along_axis(xb, np.argmin(xb, axis=-1)[..., None], axis=-1)[..., 0]  # [..., nb]
    hi = np.take_along_axis(xb, np.argmax(xb, axis=-1)[..., None], axis=-1)[..., 0]
    d = ((hi - lo) / np.float32(15)).astype(np.float32)
    inv = _reciprocal(d)
    x0 = ((xb - lo[..., None]).astype(np.float32) * inv[..., None]).astype(np.float32)
    q = np.minimum(_trunc_offset(x0, 0.5), 15).astype(np.uint8)
    d16 = _to_f16(d, "d", fmt)
    return GGMLBlocks(fmt, d16, _to_f16(lo, "m (block minimum)", fmt), q), inv, lo


def pack_blocks(blocks: GGMLBlocks) -> np.ndarray:
    """The GGUF bytes of ``blocks``: uint8 ``[..., n_blocks * bytes per block]``."""
    fmt = _check_format(blocks.fmt)
    q = np.asarray(blocks.q)
    lead_nb = q.shape[:-1]                                         # [..., nb]
    parts = [np.asarray(blocks.d, np.float16).astype("<f2")[..., None].view(np.uint8)]
    if fmt == "Q4_1":
        parts.append(np.asarray(blocks.m, np.float16).astype("<f2")[..., None].view(np.uint8))
    if fmt == "Q8_0":
        parts.append(q.astype(np.int8).view(np.uint8))
    else:
        q = q.astype(np.uint8)
        parts.append(q[..., :16] | (q[..., 16:] << np.uint8(4)))  # low nibble j, high j+16
    raw = np.concatenate(parts, axis=-1)                           # [..., nb, block_bytes]
    return np.ascontiguousarray(raw.reshape(lead_nb[:-1] + (-1,)))


def unpack_blocks(data, fmt: str) -> GGMLBlocks:
    """Inverse of :func:`pack_blocks`: the fields of GGUF bytes ``data`` (uint8 ``[..., n]``,
    ``n`` a multiple of the block size in bytes)."""
    nbytes = FORMATS[_check_format(fmt)][0]
    data = np.asarray(data)
    if data.dtype != np.uint8:
        raise ValueError(f"{fmt} data must be uint8 bytes, got dtype {data.dtype}")
    if data.ndim == 0 or data.shape[-1] % nbytes != 0 or data.shape[-1] == 0:
        raise ValueError(f"{fmt} rows must hold a positive multiple of {nbytes} bytes, "
                         f"got shape {data.shape}")
    raw = data.reshape(data.shape[:-1] + (data.shape[-1] // nbytes, nbytes))  # [..., nb, bytes]
    d = np.ascontiguousarray(raw[..., 0:2]).view("<f2")[..., 0].astype(np.float16)
    m = None
    start = 2
    if fmt == "Q4_1":
        m = np.ascontiguousarray(raw[..., 2:4]).view("<f2")[..., 0].astype(np.float16)
        start = 4
    body = raw[..., start:]
    if fmt == "Q8_0":
        q = np.ascontiguousarray(body).view(np.int8)
    else:
        q = np.concatenate([body & np.uint8(0x0F), body >> np.uint8(4)], axis=-1)
    return GGMLBlocks(fmt, d, m, q)


def dequantize_blocks(blocks: GGMLBlocks) -> np.ndarray:
    """``x_hat`` (float32 ``[..., n_blocks * 32]``) from block fields, in float32 as the
    reference: ``d q`` (Q8_0), ``d (q - 8)`` (Q4_0), ``d q + m`` (Q4_1)."""
    fmt = _check_format(blocks.fmt)
    d = np.asarray(blocks.d, np.float16).astype(np.float32)[..., None]   # [..., nb, 1]
    q = np.asarray(blocks.q)
    if fmt == "Q8_0":
        x_hat = d * q.astype(np.float32)
    elif fmt == "Q4_0":
        x_hat = d * (q.astype(np.float32) - np.float32(8))
    else:
        m = np.asarray(blocks.m, np.float16).astype(np.float32)[..., None]
        x_hat = (d * q.astype(np.float32)).astype(np.float32) + m
    x_hat = x_hat.astype(np.float32)
    return x_hat.reshape(q.shape[:-2] + (-1,))


def quantize(x, fmt: str, imatrix=None) -> np.ndarray:
    """GGUF bytes of ``x`` in ``fmt``: uint8 ``[..., K // 32 * bytes per block]``
    (``imatrix``: see :func:`quantize_blocks`)."""
    return pack_blocks(quantize_blocks(x, fmt, imatrix))


def dequantize(data, fmt: str) -> np.ndarray:
    """Float32 values ``[..., n_bytes // bytes per block * 32]`` of GGUF bytes ``data``."""
    return dequantize_blocks(unpack_blocks(data, fmt))


for _name, (_nbytes, _, _type_id) in FORMATS.items():
    register(BlockType(_name, _type_id, QK, _nbytes,
                       quantize_rows=lambda x, imatrix, _f=_name: quantize(x, _f, imatrix),
                       dequantize_rows=lambda data, _f=_name: dequantize(data, _f),
                       uses_imatrix=_name != "Q8_0"))


def quantize_q8_0(x) -> np.ndarray:
    """Q8_0 GGUF bytes of ``x`` (float, last axis a multiple of 32). See :func:`quantize`."""
    return quantize(x, "Q8_0")


def quantize_q4_0(x, imatrix=None) -> np.ndarray:
    """Q4_0 GGUF bytes of ``x`` (float, last axis a multiple of 32). See :func:`quantize`."""
    return quantize(x, "Q4_0", imatrix)


def quantize_q4_1(x, imatrix=None) -> np.ndarray:
    """Q4_1 GGUF bytes of ``x`` (float, last axis a multiple of 32). See :func:`quantize`."""
    return quantize(x, "Q4_1", imatrix)


def dequantize_q8_0(data) -> np.ndarray:
    """Float32 values of Q8_0 GGUF bytes (uint8, last axis a multiple of 34)."""
    return dequantize(data, "Q8_0")


def dequantize_q4_0(data) -> np.ndarray:
    """Float32 values of Q4_0 GGUF bytes (uint8, last axis a multiple of 18)."""
    return dequantize(data, "Q4_0")


def dequantize_q4_1(data) -> np.ndarray:
    """Float32 values of Q4_1 GGUF bytes (uint8, last axis a multiple of 20)."""
    return dequantize(data, "Q4_1")


__all__ = ["QK", "FORMATS", "GGMLBlocks", "row_weights", "quantize_blocks",
           "quantize_blocks_rule",
           "pack_blocks", "unpack_blocks", "dequantize_blocks", "quantize", "dequantize",
           "quantize_q8_0", "quantize_q4_0", "quantize_q4_1",
           "dequantize_q8_0", "dequantize_q4_0", "dequantize_q4_1"]
