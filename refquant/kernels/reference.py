"""The integer matmul core, specified in NumPy. Every fast kernel must return exactly this.

Symbols
-------
======  ==============  =======================================================================
A       [M, K]          int8 left operand (activations)
B       [K, N]          int8 right operand (weights, input-major: ``B = W^T``)
C       [M, N]          int32 result ``C = A B`` accumulated in int32
a_z     int             zero point of uint8 activations ``A_u``: ``A = A_u - a_z``
b_z     int             zero point of the int8 weights (0 for symmetric weights)
x       [M, K]          float32 activations of the 4-bit weight-only product
packed  [N, ceil(K/8)]  int32: the 4-bit codes ``q`` of ``W[N, K]`` packed by :func:`refquant.pack`
s, z    [N, G]          per-group scales (float32, > 0) and integer zero points in [0, 15],
                        ``G = ceil(K / group_size)``
======  ==============  =======================================================================

Overflow bound
--------------
An int8 x int8 product lies in ``[-128*127, (-128)^2] = [-16256, 2^14]``, so a sum of ``K`` of
them fits in int32 (``<= 2^31 - 1``) for every input iff ``K * 2^14 <= 2^31 - 1``, i.e.

.. math::

    K \\le K_{max} = \\lfloor (2^{31}-1) / 2^{14} \\rfloor = 131071 .

(``K = 2^17 = 131072`` rows of ``(-128)(-128)`` sum to exactly ``2^31``, one past int32's
maximum.) Larger ``K`` raises ``ValueError``.

For uint8 x int8 with zero points the factors are ``a - a_z`` in ``[-255, 255]`` and
``b - b_z`` with ``|b - b_z| <= 128 + |b_z|``, so each product is bounded by
``255 (128 + |b_z|)`` and

.. math::

    K \\le \\lfloor (2^{31}-1) / (255\\,(128 + |b_z|)) \\rfloor ,

65793 for ``b_z = 0`` and 32896 for ``|b_z| = 128`` (:func:`check_k_zero_point`); the int8
bound ``K_max`` does not cover these products (``131071 * 32640 > 2^31``).

NumPy's ``int8 @ int8`` computes in int8 and wraps around silently; the specification therefore
casts to int32 first (``A.astype(int32) @ B.astype(int32)``), which is exact under the bound.
"""

from __future__ import annotations

import numpy as np

from refquant.schemes.packing import unpack
from refquant.schemes.spec import g_idx as group_index

K_MAX = (2**31 - 1) // 2**14          # 131071: the largest K with no int32 overflow possible


def check_k(K: int) -> None:
    """Raise ``ValueError`` if ``K`` products of 8-bit integers could overflow int32."""
    if K > K_MAX:
        raise ValueError(f"K={K} exceeds K_max={K_MAX}: a sum of K int8*int8 products "
                         f"(each up to 2^14) can overflow int32")


def check_int8_operands(a, b, a_dtype=np.int8, name_a: str = "a"):
    """Validate the operands of an 8-bit matmul; return them as arrays ``(a[M,K], b[K,N])``."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.dtype != a_dtype:
        raise ValueError(f"{name_a} must have dtype {np.dtype(a_dtype)}, got {a.dtype}")
    if b.dtype != np.int8:
        raise ValueError(f"b must have dtype int8, got {b.dtype}")
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"{name_a} and b must be 2-D, got shapes {a.shape} and {b.shape}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"inner dimensions differ: {name_a}.shape={a.shape}, b.shape={b.shape}")
    if 0 in a.shape or b.shape[1] == 0:
        raise ValueError(f"empty operands: {name_a}.shape={a.shape}, b.shape={b.shape}")
    check_k(a.shape[1])
    return a, b


def int8_matmul(a, b) -> np.ndarray:
    """Exact ``C = A B`` of int8 ``A[M, K]`` and int8 ``B[K, N]`` in int32 (the specification).

    .. math::  C_{mn} = \\sum_{k=0}^{K-1} A_{mk} B_{kn} \\quad (\\text{int32, exact for } K \\le 131071)

    Raises ``ValueError`` on a dtype other than int8, non-2-D or mismatched shapes, or
    ``K > K_MAX``.

    >>> int8_matmul(np.array([[-128, 127]], np.int8), np.array([[-128], [127]], np.int8))
    array([[32513]], dtype=int32)
    """
    a, b = check_int8_operands(a, b)
    return a.astype(np.int32) @ b.astype(np.int32)                        # [M, N]


def check_zero_point(z, lo: int, hi: int, name: str) -> int:
    """``z`` as an int, or ``ValueError`` naming it unless it is an integer in ``[lo, hi]``."""
    if isinstance(z, bool) or not isinstance(z, (int, np.integer)) or not lo <= int(z) <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {z!r}")
    return int(z)


def uint8_int8_matmul(a_u8, b, a_zero: int, b_zero: int = 0) -> np.ndarray:
    """Exact ``(A_u - a_z)(B - b_z)`` in int32 for uint8 ``A_u[M, K]`` and int8 ``B[K, N]``.

    The specification subtracts the zero points elementwise in int32 and multiplies; the fast
    kernels use the expansion of Jacob et al. [1]_ (eq. 7), whose extra terms cost O(MK + KN):

    .. math::

        \\sum_k (a_{mk} - a_z)(b_{kn} - b_z)
          = \\sum_k a_{mk} b_{kn} - b_z \\sum_k a_{mk} - a_z \\sum_k b_{kn} + K a_z b_z .

    ``a_zero`` lies in [0, 255] and ``b_zero`` in [-128, 127]. Each product is bounded by
    ``255 * (128 + |b_z|)``, and ``K`` is checked so that ``K`` of them fit in int32 (``K <= 65793``
    for ``b_z = 0``, ``K <= 32896`` for ``|b_z| = 128``); then the expansion is also exact in
    wrapping int32 arithmetic, whatever its intermediate terms do.

    References
    ----------
    .. [1] B. Jacob et al., "Quantization and Training of Neural Networks for Efficient
       Integer-Arithmetic-Only Inference", CVPR 2018, arXiv:1712.05877.
    """
    a_u8, b = check_int8_operands(a_u8, b, np.uint8, "a_u8")
    a_z = check_zero_point(a_zero, 0, 255, "a_zero")
    b_z = check_zero_point(b_zero, -128, 127, "b_zero")
    check_k_zero_point(a_u8.shape[1], b_z)
    return (a_u8.astype(np.int32) - a_z) @ (b.astype(np.int32) - b_z)       # [M, N]


def check_k_zero_point(K: int, b_z: int) -> None:
    """The overflow bound for zero-point products: ``K * max|(a-a_z)(b-b_z)| <= 2^31 - 1``."""
    worst = 255 * (128 + abs(b_z))                       # max |a - a_z| * max |b - b_z|
    k_max = (2**31 - 1) // worst
    if K > k_max:
        raise ValueError(f"K={K} exceeds {k_max}, the largest K for which a sum of "
                         f"(a - a_zero)(b - b_zero) products (each up to {worst}) fits in int32")


def _first(mask: np.ndarray, values: np.ndarray) -> str:
    """``"<value> at index (i, j)"`` for the first element where ``mask`` holds."""
    idx = tuple(int(i) for i in np.argwhere(mask)[0])
    return f"{values[idx].item()!r} at index {idx}"


def check_w4_params(scales, zeros, N: int, G: int):
    """Validate the per-group parameters of :func:`w4_matmul`; return ``(scales, zeros)``.

    ``scales``: float32 (the dtype of ``x``, so that no backend rounds them), shape ``[N, G]``,
    finite and > 0. ``zeros``: integers of shape ``[N, G]`` inside the 4-bit code range
    ``[0, 15]``. ``ValueError`` names the first offending value and its index.
    """
    scales = np.asarray(scales)
    zeros = np.asarray(zeros)
    if scales.shape != (N, G):
        raise ValueError(f"scales must have shape [N, G] = [{N}, {G}], got {scales.shape}")
    if zeros.shape != (N, G):
        raise ValueError(f"zeros must have shape [N, G] = [{N}, {G}], got {zeros.shape}")
    if scales.dtype != np.float32:
        raise ValueError(f"scales must have dtype float32 (the dtype of x), got {scales.dtype}")
    bad = ~(np.isfinite(scales) & (scales > 0))
    if bad.any():
        raise ValueError(f"scales must be finite and > 0, got {_first(bad, scales)}")
    if zeros.dtype.kind not in "iu":
        raise ValueError(f"zeros must be integers in [0, 15], got dtype {zeros.dtype}")
    bad = (zeros < 0) | (zeros > 15)
    if bad.any():
        raise ValueError(f"zeros must be integers in [0, 15] (the 4-bit code range), got "
                         f"{_first(bad, zeros)}")
    return scales, zeros


def check_w4_x(x, K: int | None = None) -> np.ndarray:
    """Validate the activations of the W4 products: float32, non-empty 2-D, finite, and ``K``
    columns where ``K`` is given; ``ValueError`` names the offending value."""
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise ValueError(f"x must have dtype float32, got {x.dtype}")
    if x.ndim != 2 or 0 in x.shape:
        raise ValueError(f"x must be a non-empty 2-D array [M, K], got shape {x.shape}")
    if K is not None and x.shape[1] != K:
        raise ValueError(f"x must have K={K} columns (the weight's in_features), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"x contains NaN or Inf: {_first(~np.isfinite(x), x)}")
    return x


def check_w4_operands(x, packed, scales, zeros, group_size):
    """Validate the operands of :func:`w4_matmul`; return ``(x, packed, scales, zeros, K, G)``.

    ``x`` float32 ``[M, K]``, finite; ``packed`` int32 ``[N, ceil(K/8)]`` with zero padding bits;
    ``group_size`` a positive integer; the parameters as :func:`check_w4_params` says.
    """
    x = check_w4_x(x)
    packed = np.asarray(packed)
    M, K = x.shape
    if packed.dtype != np.int32:
        raise ValueError(f"packed must have dtype int32 (refquant.pack(codes, 4, 'int32')), "
                         f"got {packed.dtype}")
    n_words = -(-K // 8)
    if packed.ndim != 2 or packed.shape[1] != n_words or packed.shape[0] == 0:
        raise ValueError(f"packed must have shape [N, ceil(K/8)] = [N, {n_words}] for K={K}, "
                         f"got {packed.shape}")
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) \
            or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    G = -(-K // int(group_size))
    scales, zeros = check_w4_params(scales, zeros, packed.shape[0], G)
    if K % 8 and np.any(packed[:, -1].view(np.uint32) >> np.uint32(4 * (K % 8))):
        raise ValueError(f"packed has nonzero padding bits past K={K} in its last word")
    return x, packed, scales, zeros, K, G


def dequantize_w4(packed, scales, zeros, group_size: int, K: int) -> np.ndarray:
    """``W_hat[n, k] = s[n, g] (q[n, k] - z[n, g])`` with ``g = k // group_size`` (float32)."""
    from refquant.schemes.packing import unpack
    from refquant.schemes.spec import g_idx as group_index
    q = unpack(packed, 4, K).astype(np.float32)                             # [N, K]
    g_idx = group_index(K, group_size)                                      # [K]
    s = np.asarray(scales, np.float32)[:, g_idx]                            # [N, K]
    z = np.asarray(zeros, np.float32)[:, g_idx]                             # [N, K]
    return s * (q - z)


def w4_matmul(x, packed, scales, zeros, group_size: int) -> np.ndarray:
    """``y = x W_hat^T`` for 4-bit group-quantized ``W_hat[N, K]``: dequantize, then matmul.

    .. math::  y_{mn} = \\sum_k x_{mk}\\, s_{n,g(k)} \\big(q_{nk} - z_{n,g(k)}\\big),
               \\quad g(k) = \\lfloor k / \\text{group\\_size} \\rfloor

    ``x`` float32 [M, K]; ``packed`` int32 [N, ceil(K/8)] from ``refquant.pack(q, 4, "int32")``
    (code ``8j + i`` at bits ``4i..4i+3`` of word ``j``); ``scales`` float32 [N, G], finite and
    > 0; ``zeros`` integers in [0, 15], [N, G]. Returns float32 [M, N]. This is the specification; the fast
    kernels never build ``W_hat`` and sum in another order, so they agree with it to rounding
    error (see :func:`refquant.kernels.w4_tolerance`).
    """
    x, packed, scales, zeros, K, _ = check_w4_operands(x, packed, scales, zeros, group_size)
    W_hat = dequantize_w4(packed, scales, zeros, int(group_size), K)         # [N, K]
    return x @ W_hat.T                                                      # [M, N]


# --- W4A8: 4-bit weights times 8-bit activations (ggml's Q4_0 x Q8_0 arithmetic) ---------------

ACT_BLOCK = 32          # activation block of the W4A8 product (ggml's Q8_0 block)


def quantize_act_q8(x) -> tuple[np.ndarray, np.ndarray]:
    """Activations to int8 per block of 32 as ggml's ``quantize_row_q8_0_ref``: ``(a, d)``.

    .. math::  d_{mb} = \\max_{k \\in b} |x_{mk}| / 127, \\quad
               a_{mk} = \\mathrm{roundf}\\big(x_{mk} \\cdot \\mathrm{fl}_{32}(1 / d_{mb})\\big)

    all in float32, rounded half away from zero (C ``roundf``); ``1/d`` is 0 where ``d = 0``.
    ggml stores ``d`` in float16; here it stays float32 (the codes ``a`` are ggml's bit for
    bit). A block whose ``1/d`` overflows float32 (``max|x| < 127 * 2^-128``) gets ``d = 0`` and
    zero codes (ggml's C would convert ``inf`` to int8, which is undefined).

    ``x`` float32 [M, K] with ``K % 32 == 0``; returns ``a`` int8 [M, K] and ``d`` float32
    [M, K // 32].

    >>> a, d = quantize_act_q8(np.arange(32, dtype=np.float32)[None] - 16)
    >>> int(a[0, 0]), int(a[0, 31]), bool(d[0, 0] == np.float32(16) / np.float32(127))
    (-127, 119, True)
    """
    from refquant.schemes.numerics import round_half_away
    x = np.asarray(x, np.float32)
    M, K = x.shape
    if K % ACT_BLOCK:
        raise ValueError(f"K={K} must be a multiple of {ACT_BLOCK} (the activation block)")
    xb = x.reshape(M, K // ACT_BLOCK, ACT_BLOCK)                            # [M, nb, 32]
    d = (np.abs(xb).max(axis=2) / np.float32(127)).astype(np.float32)      # [M, nb]
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.where(d > 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    tiny = ~np.isfinite(inv)
    d, inv = np.where(tiny, np.float32(0), d), np.where(tiny, np.float32(0), inv)
    a = round_half_away(xb * inv[:, :, None]).astype(np.int8)              # |a| <= 127
    return a.reshape(M, K), d


def check_w4a8_operands(x, packed, scales, zeros, group_size):
    """:func:`check_w4_operands` plus the W4A8 shapes: ``K`` and ``group_size`` multiples of 32
    (a group holds whole activation blocks). Returns ``(x, packed, scales, zeros, K, G)``."""
    x, packed, scales, zeros, K, G = check_w4_operands(x, packed, scales, zeros, group_size)
    if K % ACT_BLOCK:
        raise ValueError(f"W4A8 needs K % {ACT_BLOCK} == 0 (whole activation blocks), got K={K}")
    if group_size % ACT_BLOCK:
        raise ValueError(f"W4A8 needs group_size % {ACT_BLOCK} == 0 (whole activation blocks), "
                         f"got group_size={group_size}")
    return x, packed, scales, zeros, K, G


def w4a8_block_dots(a, packed, K: int) -> np.ndarray:
    """The integer part: ``P[m, n, b] = sum_{k in block b} q_nk a_mk`` (int32, exact: each
    ``|P| <= 32 * 15 * 127``), ``a`` int8 [M, K], ``packed`` int32 [N, ceil(K/8)]."""
    M, N, nb = a.shape[0], packed.shape[0], K // ACT_BLOCK
    q = unpack(packed, 4, K).astype(np.int64).reshape(N, nb, ACT_BLOCK)      # [N, nb, 32]
    ab = np.asarray(a, np.int64).reshape(M, nb, ACT_BLOCK)                  # [M, nb, 32]
    return np.einsum("nbk,mbk->mnb", q, ab).astype(np.int32)                # [M, N, nb]


def w4a8_matmul(x, packed, scales, zeros, group_size: int) -> np.ndarray:
    """``y = x W_hat^T`` with the activations quantized to int8 per block of 32 (the
    specification): integer block dot products, then one float combination.

    .. math::

        y_{mn} = \\sum_b s_{n,g(b)}\\, d_{mb}
                 \\Big(\\sum_{k \\in b} q_{nk} a_{mk} - z_{n,g(b)} \\sum_{k \\in b} a_{mk}\\Big)

    with ``(a, d) =`` :func:`quantize_act_q8` ``(x)`` and ``g(b)`` the group of block ``b``
    (a group is ``group_size / 32`` whole blocks). The integer sums are exact (int64 here); the
    sum over blocks is taken in float64 of the float32 ``s`` and ``d`` and rounded once to
    float32. This is ggml's ``vec_dot_q4_0_q8_0`` arithmetic for an asymmetric 4-bit weight with
    float32 scales. Operands as :func:`w4_matmul`, plus ``K % 32 == 0`` and
    ``group_size % 32 == 0`` (:func:`check_w4a8_operands`). Returns float32 [M, N].
    """
    x, packed, scales, zeros, K, _ = check_w4a8_operands(x, packed, scales, zeros, group_size)
    a, d = quantize_act_q8(x)                                               # [M, K], [M, nb]
    nb = K // ACT_BLOCK
    g_b = np.arange(nb) * ACT_BLOCK // int(group_size)                      # [nb]
    P = w4a8_block_dots(a, packed, K).astype(np.int64)                      # [M, N, nb]
    A = a.astype(np.int64).reshape(a.shape[0], nb, ACT_BLOCK).sum(axis=2)   # [M, nb]
    I = P - zeros[:, g_b].astype(np.int64)[None] * A[:, None, :]            # [M, N, nb]
    sd = scales[:, g_b].astype(np.float64)[None] * d.astype(np.float64)[:, None, :]
    return (sd * I).sum(axis=2).astype(np.float32)                          # [M, N]
