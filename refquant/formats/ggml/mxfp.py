"""GGML's microscaled FP4 block types MXFP4 (type 39) and NVFP4 (type 40), byte for byte.

Both store 4-bit E2M1 elements (1 sign, 2 exponent, 1 mantissa bit: values 0, 0.5, 1, 1.5, 2,
3, 4, 6 and their negatives) with one scale per small block. The quantizers reproduce ggml's
reference C (``quantize_row_mxfp4_ref`` / ``quantize_row_nvfp4_ref`` in ``ggml-quants.c``, the
helpers ``ggml_e8m0_to_fp32_half``, ``ggml_fp32_to_ue4m3`` and ``ggml_ue4m3_to_fp32`` in
``ggml-impl.h``) bit for bit; the tests compare with ggml's own C quantizer and decoder
(``libggml-python`` through ctypes) and with the ``gguf`` package's decoder. ggml's quantizers
of both types ignore the importance matrix, and so do these.

Symbols (one block)
-------------------
=======  ==================================================================================
x        the input values, float32
amax     ``max |x|`` over the block (MXFP4: 32 values) or sub-block (NVFP4: 16 values)
e        the E8M0 scale byte (MXFP4): the scale is ``X = 2^(e - 127)``
u        the UE4M3 scale byte (NVFP4): an E4M3 code with the sign bit 0
kv       ggml's ``kvalues_mxfp4``: twice the E2M1 value of each 4-bit code, so that the
         index into ``kv`` *is* the E2M1 bit pattern (sign in bit 3)
d        the float32 step ggml multiplies ``kv`` by: half the scale (``X / 2``)
q        the 4-bit codes (E2M1 bit patterns), ``x_hat = kv[q] d``
=======  ==================================================================================

The rules, exactly
------------------
* MXFP4: ``e = (uint8)(floorf(log2f(amax)) - 2 + 127)`` (0 for an all-zero block), so
  ``X = 2^(floor(log2 amax) - 2)`` -- the OCP rule with ``emax(E2M1) = 2``, except that
  ``log2f`` is float32: for the few float32 ``amax`` just below a power of two ``2^k`` whose
  ``log2`` rounds to ``k``, ggml takes exponent ``k`` where the exact OCP rule takes ``k - 1``.
  refquant computes ``log2`` in float64 and rounds it to float32 (tested equal to the
  wheel's ``log2f`` on every ``amax`` within 7 ulps below each power of two).
* MXFP4, tiny blocks: where ``amax < 2^-125`` the exponent is negative and C's conversion of a
  negative float to ``uint8_t`` is undefined; the x86-64 build (the wheel the tests use, and
  the ``gguf`` package's NumPy port) wraps it modulo 256 (``e`` = 248 ... 255, a scale near
  ``2^127``), so every code is 0 and the block decodes to zeros. refquant writes the same bytes.
  (The OCP rule clamps the scale to ``2^-127``, ``e = 0``; see below.)
* NVFP4: ``u = ggml_fp32_to_ue4m3(amax / 6)``, which is *not* round-to-nearest-even E4M3:
  the fourth mantissa bit rounds half up (ties away from zero; bits below it are ignored);
  values below ``2^-6`` take the subnormal code ``min(7, trunc(512 v + 0.5))``, so
  ``[7.5, 8) * 2^-9`` gets 7 rather than the normal ``2^-6``; and every value whose E4M3
  exponent would be 15 (``v >= 248``, i.e. 256 ... 448 after rounding) becomes the code
  ``0x7E`` (448), so the scales 256 ... 416 are never written. Inputs above 448 clamp to 448.
* Elements (both): ``q = argmin_i |kv[i] d - x|`` in float32, the *first* minimum on ties, as
  ggml's ``best_index_mxfp4``; since ``kv`` lists +0 ... +6 then -0 ... -6, an exact tie
  between two neighbours goes to the smaller magnitude (``x / X`` = 0.75 -> 0.5, 1.75 -> 1.5,
  3.5 -> 3), and no value gets the code of -0 (8). The OCP spec and ``ml_dtypes`` round half
  to even (0.75 -> 1, 1.75 -> 2, 3.5 -> 4). Magnitudes above ``6 X`` clamp to 6 X.
* Decoding: ``x_hat = kv[q] d`` in float32 with ``d = 2^(e - 128)`` (MXFP4) or
  ``d = E4M3(u) / 2`` (NVFP4; ggml ignores bit 7 of ``u`` and decodes ``0x7F``, E4M3FN's NaN,
  as 0).

ggml's rule and the OCP rule
----------------------------
:func:`quantize_mxfp4_ocp` writes GGML MXFP4 bytes by the OCP MX v1.0 rule instead: the
exact ``floor(log2 amax)``, the E8M0 scale clamped to ``[2^-127, 2^127]``, elements
``x / X`` rounded to E2M1 half to even with saturation (:func:`refquant.schemes.mx.mx_quantize`
with ``scale_rule="ocp"``). :func:`quantize_nvfp4_nvidia` writes GGML NVFP4 bytes by NVIDIA's
rule (E4M3 block scale rounded half to even, elements half to even,
:func:`refquant.schemes.mx.nvfp4_quantize` with a tensor scale of 1, since the GGML block has
no field for one). Both are read by every GGML decoder; they differ from ggml's bytes only at
the points listed above.

Byte layout (one block; blocks follow each other along the row)
---------------------------------------------------------------
======  ======  =====  ====  =============================================================
type    values  bytes  bpw   fields, in order
======  ======  =====  ====  =============================================================
MXFP4   32      17     4.25  ``e`` (uint8, E8M0); 16 bytes ``qs``: byte ``j`` holds code
                             ``j`` in its low nibble and code ``j + 16`` in its high nibble
NVFP4   64      36     4.5   ``u[4]`` (4 UE4M3 bytes, one per sub-block of 16); 32 bytes
                             ``qs``: sub-block ``s`` owns bytes ``8s ... 8s + 7``, whose
                             byte ``j`` holds code ``j`` (low nibble) and ``j + 8`` (high)
======  ======  =====  ====  =============================================================

References
----------
.. [1] G. Gerganov et al., ggml / llama.cpp, ``ggml/src/ggml-quants.c``, ``ggml-impl.h`` and
       ``ggml-common.h`` (``block_mxfp4``, ``block_nvfp4``, ``kvalues_mxfp4``).
.. [2] Open Compute Project, "OCP Microscaling Formats (MX) Specification", v1.0, 2023.
.. [3] NVIDIA, "NVFP4" (PTX ISA ``cvt`` with ``.e2m1x2``; Blackwell block-scaled formats).
"""

from __future__ import annotations

import numpy as np

from refquant.formats.ggml._registry import BlockType, register

QK_MXFP4 = 32      # values per MXFP4 block
QK_NVFP4 = 64      # values per NVFP4 block
QK_NVFP4_SUB = 16  # values per NVFP4 sub-block (one UE4M3 scale each)

#: ggml's kvalues_mxfp4: ``kv[q]`` is twice the E2M1 value of 4-bit code ``q``
KVALUES_MXFP4 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.int8)

_CHUNK = 1 << 16   # blocks per step of the 16-candidate search (bounds its memory)


# ---------------------------------------------------------------------------------------------
# scales


def e8m0_to_fp32_half(e) -> np.ndarray:
    """``d = 2^(e - 128)`` as float32 (half the E8M0 scale, ``ggml_e8m0_to_fp32_half``); for
    ``e`` 0 and 1 a float32 subnormal. ``e``: uint8 array."""
    e = np.asarray(e, np.uint8)
    return np.ldexp(np.float32(1.0), e.astype(np.int32) - 128).astype(np.float32)


def ggml_e8m0(amax) -> np.ndarray:
    """ggml's E8M0 byte of block maxima ``amax`` (float32, >= 0): ``floor(log2f(amax)) + 125``
    wrapped modulo 256, 0 where ``amax == 0`` (see the module docstring).

    ``log2f`` is emulated as the float64 ``log2`` rounded to float32; ``floor`` is exact.
    """
    amax = np.asarray(amax, np.float32)
    pos = amax > 0
    with np.errstate(divide="ignore"):
        l2 = np.log2(np.where(pos, amax, np.float32(1)).astype(np.float64)).astype(np.float32)
    e = np.floor(l2).astype(np.int64) - 2 + 127
    return np.where(pos, np.mod(e, 256), 0).astype(np.uint8)


def ue4m3_to_fp32_half(u) -> np.ndarray:
    """``d = E4M3(u) / 2`` as float32, ggml's ``ggml_ue4m3_to_fp32``: bits 6-3 exponent (bias
    7), bits 2-0 mantissa, bit 7 ignored; ``0x00`` and ``0x7F`` decode to 0."""
    u = np.asarray(u, np.uint8)
    E = ((u >> np.uint8(3)) & np.uint8(0xF)).astype(np.int32)
    M = (u & np.uint8(7)).astype(np.float32)
    raw = np.where(E == 0, np.ldexp(M, -9),
                   np.ldexp(np.float32(1) + M / np.float32(8), E - 7)).astype(np.float32)
    return np.where((u == 0) | (u == 0x7F), np.float32(0), raw * np.float32(0.5)).astype(np.float32)


def ggml_fp32_to_ue4m3(v) -> np.ndarray:
    """ggml's UE4M3 byte of float32 ``v`` (``ggml_fp32_to_ue4m3``; rules in the module
    docstring): 0 for ``v <= 0``, at most ``0x7E`` (448)."""
    v = np.minimum(np.asarray(v, np.float32), np.float32(448.0))
    bits = np.ascontiguousarray(v).view(np.uint32)
    E = ((bits >> np.uint32(23)) & np.uint32(0xFF)).astype(np.int32) - 127 + 7
    M = ((bits >> np.uint32(20)) & np.uint32(7)).astype(np.int32)
    M = M + ((bits >> np.uint32(19)) & np.uint32(1)).astype(np.int32)   # round half up
    E = np.where(M > 7, E + 1, E)                                        # mantissa carry
    M = np.where(M > 7, 0, M)
    normal = np.where(E >= 15, 0x7E, (np.clip(E, 0, 15) << 3) | M)
    with np.errstate(invalid="ignore"):
        sub = np.trunc((v * np.float32(512.0)).astype(np.float32) + np.float32(0.5))
    sub = np.minimum(np.nan_to_num(sub), 7).astype(np.int32)            # [7.5, 8) -> 7, as C
    raw_exp = ((bits >> np.uint32(23)) & np.uint32(0xFF)).astype(np.int32) - 127 + 7
    u = np.where(raw_exp <= 0, np.where(sub >= 1, sub, 0), normal)
    return np.where(v > 0, u, 0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# elements and nibbles


def best_index_mxfp4(x, d) -> np.ndarray:
    """ggml's element rule: ``argmin_i |kv[i] d - x|`` in float32, first minimum on ties.

    Parameters
    ----------
    x : numpy.ndarray of float32, shape ``[n_blocks, n]``
    d : numpy.ndarray of float32, shape ``[n_blocks]``

    Returns
    -------
    numpy.ndarray of uint8, shape ``[n_blocks, n]``: codes in [0, 15]
    """
    kv = KVALUES_MXFP4.astype(np.float32)
    q = np.empty(x.shape, np.uint8)
    for i in range(0, x.shape[0], _CHUNK):                # chunks only bound the memory
        xc, dc = x[i:i + _CHUNK], d[i:i + _CHUNK]
        with np.errstate(over="ignore", invalid="ignore"):  # kv d may overflow to +-inf
            grid = (dc[:, None] * kv[None, :]).astype(np.float32)         # [nb, 16]
            err = np.abs((grid[:, None, :] - xc[:, :, None]).astype(np.float32))  # [nb, n, 16]
        q[i:i + _CHUNK] = np.argmin(err, axis=-1)
    return q


def pack_halves(q) -> np.ndarray:
    """GGML's nibble order: ``[..., n]`` codes -> ``[..., n/2]`` bytes, byte ``j`` = code ``j``
    (low nibble) | code ``j + n/2`` (high nibble)."""
    q = np.asarray(q, np.uint8)
    h = q.shape[-1] // 2
    return (q[..., :h] | (q[..., h:] << np.uint8(4))).astype(np.uint8)


def unpack_halves(b) -> np.ndarray:
    """Inverse of :func:`pack_halves`: ``[..., m]`` bytes -> ``[..., 2m]`` codes."""
    b = np.asarray(b, np.uint8)
    return np.concatenate([b & np.uint8(0x0F), b >> np.uint8(4)], axis=-1)


def _decode(q, d) -> np.ndarray:
    """``kv[q] d`` in float32; ``q`` uint8 ``[..., n]``, ``d`` float32 ``[...]``."""
    return (KVALUES_MXFP4[q].astype(np.float32) * d[..., None]).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# MXFP4


def quantize_mxfp4(x, imatrix=None) -> np.ndarray:
    """GGML MXFP4 bytes of float32 rows ``x`` (``[n_rows, K]``, ``K % 32 == 0``, finite; as
    checked by :func:`refquant.formats.ggml.quantize`): uint8 ``[n_rows, K // 32 * 17]``.

    ``X = 2^(floor(log2f(amax)) - 2)`` per block of 32, codes by :func:`best_index_mxfp4`
    (module docstring). ``imatrix`` is ignored, as ggml ignores it.
    """
    n, K = x.shape
    xb = x.reshape(-1, QK_MXFP4)                                     # [n nb, 32]
    e = ggml_e8m0(np.max(np.abs(xb), axis=-1))                       # [n nb]
    q = best_index_mxfp4(xb, e8m0_to_fp32_half(e))                   # [n nb, 32]
    raw = np.concatenate([e[:, None], pack_halves(q)], axis=-1)      # [n nb, 17]
    return raw.reshape(n, -1)


def dequantize_mxfp4(data) -> np.ndarray:
    """Float32 ``[n_rows, n_bytes // 17 * 32]`` of MXFP4 bytes ``data`` (uint8
    ``[n_rows, n_bytes]``): ``x_hat = kv[q] 2^(e - 128)``."""
    n = data.shape[0]
    raw = data.reshape(-1, 17)
    x_hat = _decode(unpack_halves(raw[:, 1:]), e8m0_to_fp32_half(raw[:, 0]))
    return x_hat.reshape(n, -1)


def mxfp4_from_mx(mx) -> np.ndarray:
    """GGML MXFP4 bytes of an :class:`refquant.schemes.mx.MXArray` of format ``"mxfp4"``
    with blocks of 32 along the last axis: uint8 ``[..., K // 32 * 17]``."""
    if mx.fmt != "mxfp4" or mx.block_size != QK_MXFP4 or mx.axis != len(mx.shape) - 1:
        raise ValueError(f"GGML MXFP4 holds mxfp4 blocks of 32 along the last axis; got "
                         f"fmt={mx.fmt!r}, block_size={mx.block_size}, axis={mx.axis}")
    q = np.asarray(mx.codes, np.uint8).reshape(-1, QK_MXFP4)
    raw = np.concatenate([np.asarray(mx.scales, np.uint8).reshape(-1, 1), pack_halves(q)],
                         axis=-1)
    return np.ascontiguousarray(raw.reshape(tuple(mx.shape[:-1]) + (-1,)))


def quantize_mxfp4_ocp(x) -> np.ndarray:
    """GGML MXFP4 bytes of ``x`` (float ``[..., K]``, ``K % 32 == 0``) by the OCP MX v1.0
    rule (exact exponent, E2M1 half to even; module docstring) instead of ggml's."""
    from refquant.schemes.mx import mx_quantize
    return mxfp4_from_mx(mx_quantize(x, "mxfp4", axis=-1, block_size=QK_MXFP4,
                                     scale_rule="ocp"))


# ---------------------------------------------------------------------------------------------
# NVFP4


def quantize_nvfp4(x, imatrix=None) -> np.ndarray:
    """GGML NVFP4 bytes of float32 rows ``x`` (``[n_rows, K]``, ``K % 64 == 0``, finite):
    uint8 ``[n_rows, K // 64 * 36]``.

    Per sub-block of 16: ``u = ggml_fp32_to_ue4m3(amax / 6)``, ``d = E4M3(u) / 2``, codes by
    :func:`best_index_mxfp4`. No tensor scale (the GGML block has none). ``imatrix`` is
    ignored, as ggml ignores it.
    """
    n, K = x.shape
    xs = x.reshape(-1, QK_NVFP4_SUB)                                 # [n nb 4, 16]
    amax = np.max(np.abs(xs), axis=-1)
    u = ggml_fp32_to_ue4m3((amax / np.float32(6.0)).astype(np.float32))  # [n nb 4]
    q = best_index_mxfp4(xs, ue4m3_to_fp32_half(u))                  # [n nb 4, 16]
    qs = pack_halves(q).reshape(-1, QK_NVFP4 // 2)                   # [n nb, 32]
    raw = np.concatenate([u.reshape(-1, 4), qs], axis=-1)            # [n nb, 36]
    return raw.reshape(n, -1)


def dequantize_nvfp4(data) -> np.ndarray:
    """Float32 ``[n_rows, n_bytes // 36 * 64]`` of NVFP4 bytes ``data`` (uint8
    ``[n_rows, n_bytes]``): ``x_hat = kv[q] E4M3(u) / 2`` per sub-block."""
    n = data.shape[0]
    raw = data.reshape(-1, 36)
    d = ue4m3_to_fp32_half(raw[:, :4])                               # [n nb, 4]
    q = unpack_halves(raw[:, 4:].reshape(-1, 4, 8))                  # [n nb, 4, 16]
    return _decode(q, d).reshape(n, -1)


def nvfp4_from_nv(nv) -> np.ndarray:
    """GGML NVFP4 bytes of an :class:`refquant.schemes.mx.NVFP4Array` quantized along the last
    axis (``K % 64 == 0``) with tensor scale 1: uint8 ``[..., K // 64 * 36]``."""
    if float(nv.tensor_scale) != 1.0:
        raise ValueError(f"a GGML NVFP4 block has no field for a tensor scale; quantize with "
                         f"tensor_scale=1.0 (got {float(nv.tensor_scale)!r})")
    K = nv.shape[-1]
    if nv.axis != len(nv.shape) - 1 or K % QK_NVFP4:
        raise ValueError(f"GGML NVFP4 needs blocks along the last axis and a row length that "
                         f"is a multiple of {QK_NVFP4}; got axis={nv.axis}, shape {nv.shape}")
    q = np.asarray(nv.codes, np.uint8).reshape(-1, 4, QK_NVFP4_SUB)
    u = np.asarray(nv.scales, np.uint8).reshape(-1, 4)
    raw = np.concatenate([u, pack_halves(q).reshape(-1, QK_NVFP4 // 2)], axis=-1)
    return np.ascontiguousarray(raw.reshape(tuple(nv.shape[:-1]) + (-1,)))


def quantize_nvfp4_nvidia(x) -> np.ndarray:
    """GGML NVFP4 bytes of ``x`` (float ``[..., K]``, ``K % 64 == 0``) by NVIDIA's rule (E4M3
    scale and E2M1 elements rounded half to even, tensor scale 1) instead of ggml's."""
    from refquant.schemes.mx import nvfp4_quantize
    return nvfp4_from_nv(nvfp4_quantize(x, axis=-1, tensor_scale=1.0))


register(BlockType("MXFP4", 39, QK_MXFP4, 17, quantize_rows=quantize_mxfp4,
                   dequantize_rows=dequantize_mxfp4))
register(BlockType("NVFP4", 40, QK_NVFP4, 36, quantize_rows=quantize_nvfp4,
                   dequantize_rows=dequantize_nvfp4))

__all__ = ["QK_MXFP4", "QK_NVFP4", "QK_NVFP4_SUB", "KVALUES_MXFP4", "e8m0_to_fp32_half",
           "ggml_e8m0", "ue4m3_to_fp32_half", "ggml_fp32_to_ue4m3", "best_index_mxfp4",
           "pack_halves", "unpack_halves", "quantize_mxfp4", "dequantize_mxfp4",
           "mxfp4_from_mx", "quantize_mxfp4_ocp", "quantize_nvfp4", "dequantize_nvfp4",
           "nvfp4_from_nv", "quantize_nvfp4_nvidia"]
