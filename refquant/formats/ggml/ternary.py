"""TQ1_0 and TQ2_0: ternary weights {-1, 0, +1} times one scale per 256, as ggml writes them.

Ternary ("1.58-bit") models such as BitNet b1.58 and TriLM store every weight as
``x_hat = d * t`` with a trit ``t`` in {-1, 0, 1} and one float16 scale ``d`` per super-block of
256 weights. ggml has two packings of the trits: TQ2_0 spends 2 bits per trit (fast to unpack),
TQ1_0 packs 5 trits into one byte (``3^5 = 243 <= 256``), 1.6 bits per trit.

The quantizer is ggml's reference (``quantize_row_tq1_0_ref`` / ``quantize_row_tq2_0_ref``),
which ``ggml_quantize_chunk`` runs with or without an importance matrix (it ignores it): no
search, the scale is the largest magnitude and every value rounds to the nearest trit.

Symbols (one super-block of 256)
--------------------------------
=====  ===============================================================================
x      the 256 input values, float32
d      ``max |x|`` (float32), stored as float16
id     ``1 / d`` in float32, or 0 where ``d == 0`` or where ``1 / d`` overflows float32
t      the trits ``lroundf(x * id)`` in {-1, 0, 1} (half away from zero); stored ``t + 1``
=====  ===============================================================================

Rounding, exactly: ``x * id`` is the float32 product, rounded half away from zero (C
``lroundf``), so ``|x| = d / 2`` exactly (up to the rounding of ``id``) goes to +-1. The
dequantized value is the float32 product ``(t) * d`` with the float16 ``d``. Where ``1 / d``
overflows (a super-block of float32 subnormals) C's ``lroundf`` of inf/NaN is undefined; refquant
uses ``id = 0`` (all trits 0) as :mod:`refquant.formats.ggml.legacy` does, and the stored
``d`` is 0 either way.

Byte layout (little endian; super-blocks are concatenated along each row)
-------------------------------------------------------------------------
TQ2_0, 256 values in 66 bytes, 2.0625 bits per weight:

======  =====  ====================================================================
offset  bytes  field
======  =====  ====================================================================
0       64     ``qs``: byte ``32 c + m`` (``c`` = 0, 1) holds ``t + 1`` of values
               ``128 c + 32 n + m`` in bits ``2n, 2n+1``, ``n = 0 ... 3``
64      2      ``d`` float16
======  =====  ====================================================================

TQ1_0, 256 values in 54 bytes, 1.6875 bits per weight. A byte holds up to 5 trits ``u_0 ...
u_4`` (``u = t + 1``) as the base-3 number ``U = 81 u_0 + 27 u_1 + 9 u_2 + 3 u_3 + u_4`` in
[0, 242], stored as the fixed-point fraction ``ceil(256 U / 243)``; the decoder recovers
``u_n`` as ``(3 (byte * 3^n mod 256)) >> 8``:

======  =====  ====================================================================
offset  bytes  field
======  =====  ====================================================================
0       32     5 trits per byte: byte ``m`` holds values ``m + 32 n``, ``n = 0 ... 4``
               (values 0 ... 159; ``u_0`` is value ``m``)
32      16     5 trits per byte: byte ``32 + m`` holds values ``160 + m + 16 n``
               (values 160 ... 239)
48      4      ``qh``, 4 trits per byte: byte ``j`` holds values ``240 + j + 4 n``,
               ``n = 0 ... 3``, as ``u_0 ... u_3`` with ``u_4 = 0``
52      2      ``d`` float16
======  =====  ====================================================================

References
----------
.. [1] G. Gerganov, F. Bisson (compilade) et al., ggml / llama.cpp, ``ggml/src/ggml-quants.c``
       (``quantize_row_tq1_0_ref``, ``quantize_row_tq2_0_ref``, ``dequantize_row_tq1_0``,
       ``dequantize_row_tq2_0``) and ``ggml-common.h`` (``block_tq1_0``, ``block_tq2_0``);
       llama.cpp pull request 8151 (2024).
.. [2] S. Ma et al., "The Era of 1-bit LLMs: All Large Language Models are in 1.58 Bits",
       arXiv:2402.17764 (2024).
"""

from __future__ import annotations

import numpy as np

from refquant.formats.ggml._registry import BlockType, register
from refquant.formats.ggml.legacy import _reciprocal, _to_f16
from refquant.schemes.numerics import round_to_int

QK_K = 256
_POW3_5 = np.array([81, 27, 9, 3, 1], dtype=np.int32)     # u_0 is the most significant trit
_POW3_4 = np.array([81, 27, 9, 3], dtype=np.int32)        # qh: 4 trits, shifted up one place


def trits(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The scale and the trits of each super-block.

    Parameters
    ----------
    x : numpy.ndarray of float32, shape ``[N, 256]``

    Returns
    -------
    d : numpy.ndarray of float32, shape ``[N]``
        ``max |x|``.
    u : numpy.ndarray of int32, shape ``[N, 256]``
        ``t + 1`` in {0, 1, 2}.
    """
    d = np.max(np.abs(x), axis=-1).astype(np.float32)                      # [N]
    t = round_to_int((x * _reciprocal(d)[:, None]).astype(np.float32), "half_away")
    return d, t.astype(np.int32) + 1


def _base3_byte(u: np.ndarray, pow3: np.ndarray) -> np.ndarray:
    """``ceil(256 U / 243)`` of ``U = sum_n pow3[n] u[..., n, :]`` (``u`` ``[..., n, m]``)."""
    U = np.einsum("n,...nm->...m", pow3, u)                                 # [..., m]
    return ((U * 256 + 242) // 243).astype(np.uint8)


def quantize_tq1_0(x: np.ndarray, imatrix=None) -> np.ndarray:
    """TQ1_0 bytes of float32 rows ``x`` ``[n_rows, K]`` (``K % 256 == 0``; ``imatrix`` is ignored,
    as ggml's ``quantize_tq1_0`` ignores it): uint8 ``[n_rows, K // 256 * 54]``."""
    d, u = trits(np.asarray(x, np.float32).reshape(-1, QK_K))             # [N], [N, 256]
    N = u.shape[0]
    qs0 = _base3_byte(u[:, :160].reshape(N, 5, 32), _POW3_5)               # [N, 32]
    qs1 = _base3_byte(u[:, 160:240].reshape(N, 5, 16), _POW3_5)            # [N, 16]
    qh = _base3_byte(u[:, 240:].reshape(N, 4, 4), _POW3_4)                 # [N, 4]
    d16 = _to_f16(d, "d", "TQ1_0").astype("<f2")[:, None].view(np.uint8)
    return np.concatenate([qs0, qs1, qh, d16], axis=-1).reshape(x.shape[0], -1)


def quantize_tq2_0(x: np.ndarray, imatrix=None) -> np.ndarray:
    """TQ2_0 bytes of float32 rows ``x`` ``[n_rows, K]`` (``K % 256 == 0``; ``imatrix`` is ignored,
    as ggml's ``quantize_tq2_0`` ignores it): uint8 ``[n_rows, K // 256 * 66]``."""
    d, u = trits(np.asarray(x, np.float32).reshape(-1, QK_K))
    N = u.shape[0]
    u = u.reshape(N, 2, 4, 32).astype(np.uint8)                            # [N, c, n, m]
    qs = u[:, :, 0] | (u[:, :, 1] << 2) | (u[:, :, 2] << 4) | (u[:, :, 3] << 6)   # [N, 2, 32]
    d16 = _to_f16(d, "d", "TQ2_0").astype("<f2")[:, None].view(np.uint8)
    return np.concatenate([qs.reshape(N, 64), d16], axis=-1).reshape(x.shape[0], -1)


def _decode_base3(b: np.ndarray, n_trits: int) -> np.ndarray:
    """``u_n = (3 (b 3^n mod 256)) >> 8`` for ``n < n_trits``: uint8 ``[..., m]`` ->
    int32 ``[..., n_trits, m]``, ggml's ``dequantize_row_tq1_0`` digit extraction."""
    pow3 = (3 ** np.arange(n_trits, dtype=np.int32))[:, None]             # [n, 1]
    q = (b[..., None, :].astype(np.int32) * pow3) & 0xFF                   # uint8 wrap-around
    return (q * 3) >> 8


def dequantize_tq1_0(data: np.ndarray) -> np.ndarray:
    """float32 ``[n_rows, n_bytes // 54 * 256]`` of TQ1_0 bytes: ``(u - 1) * d``."""
    raw = data.reshape(-1, 54)
    N = raw.shape[0]
    d = np.ascontiguousarray(raw[:, 52:54]).view("<f2").astype(np.float32)          # [N, 1]
    u = np.concatenate([_decode_base3(raw[:, :32], 5).reshape(N, 160),
                        _decode_base3(raw[:, 32:48], 5).reshape(N, 80),
                        _decode_base3(raw[:, 48:52], 4).reshape(N, 16)], axis=-1)  # [N, 256]
    return ((u - 1).astype(np.float32) * d).astype(np.float32).reshape(data.shape[0], -1)


def dequantize_tq2_0(data: np.ndarray) -> np.ndarray:
    """float32 ``[n_rows, n_bytes // 66 * 256]`` of TQ2_0 bytes: ``(u - 1) * d``."""
    raw = data.reshape(-1, 66)
    N = raw.shape[0]
    d = np.ascontiguousarray(raw[:, 64:66]).view("<f2").astype(np.float32)          # [N, 1]
    qs = raw[:, :64].reshape(N, 2, 1, 32)
    u = (qs >> (2 * np.arange(4, dtype=np.uint8))[:, None]) & 3                      # [N, 2, 4, 32]
    x_hat = ((u.reshape(N, 256).astype(np.float32) - 1) * d).astype(np.float32)
    return x_hat.reshape(data.shape[0], -1)


register(BlockType("TQ1_0", 34, QK_K, 54, quantize_rows=quantize_tq1_0,
                   dequantize_rows=dequantize_tq1_0))
register(BlockType("TQ2_0", 35, QK_K, 66, quantize_rows=quantize_tq2_0,
                   dequantize_rows=dequantize_tq2_0))

__all__ = ["trits", "quantize_tq1_0", "quantize_tq2_0", "dequantize_tq1_0", "dequantize_tq2_0"]
