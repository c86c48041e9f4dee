"""Microscaled block formats: OCP MX (MXFP8, MXFP6, MXFP4, MXINT8) and NVIDIA's NVFP4.

A block of ``k`` consecutive values along ``axis`` shares one scale ``X``; each value is stored
as a low-precision element ``P_i`` and decodes as ``x_hat_i = X P_i``.

Symbols
-------
=======  ====================================================================================
x        the input, float; blocks of ``k`` values along ``axis``
amax     ``max |x|`` over a block
X        the block scale: ``2^(E - 127)`` with ``E`` the E8M0 code (MX), or an E4M3 value
         times the tensor scale (NVFP4)
emax     exponent of the element format's largest normal value (E4M3 8, E5M2 15, E2M3 2,
         E3M2 4, E2M1 2, INT8 0)
P        the element: ``x / X`` cast to the element format with saturation
s_t      NVFP4's float32 tensor scale ``amax(|x|) / (448 * 6)``
=======  ====================================================================================

The MX formats
--------------
The OCP MX formats [1]_:

==========  ==========  ========  ====  ===================================================
format      element     max abs   emax  bits per weight (k = 32, 8-bit E8M0 scale)
==========  ==========  ========  ====  ===================================================
mxfp8_e4m3  FP8 E4M3FN  448       8     8.25
mxfp8_e5m2  FP8 E5M2    57344     15    8.25
mxfp6_e2m3  FP6 E2M3    7.5       2     6.25
mxfp6_e3m2  FP6 E3M2    28        4     6.25
mxfp4       FP4 E2M1    6         2     4.25
mxint8      INT8        127/64    0     8.25 (``P = q / 64``, ``q`` in [-127, 127])
==========  ==========  ========  ====  ===================================================

Scale rules (``scale_rule``):

* ``"ocp"`` -- OCP MX v1.0, section 6.3: :math:`X = 2^{\\lfloor \\log_2 \\text{amax} \\rfloor -
  e_{max}}`, the exponent exact (from ``frexp``) and clamped to E8M0's ``[-127, 127]``;
  an all-zero block gets ``X = 2^-127`` (code 0). ``amax / X`` lies in ``[2^emax,
  2^(emax+1))``, above the element's max normal for every format, so the largest values clamp
  (``saturate=True``): this rule trades a little clipping for never wasting the top binade.
* ``"rceil"`` -- round the scale up (NVIDIA's cuBLAS / Transformer Engine MXFP8 recipe,
  torchao's ``ScaleCalculationMode.RCEIL``): :math:`X = 2^{\\lceil \\log_2(\\text{amax} /
  \\max|P|) \\rceil}`, the smallest power of two with ``amax / X <= max|P|``, so nothing
  clips. refquant finds it exactly; torchao computes ``amax / max|P|`` and ``log2`` in
  float32, so where that quotient lies within float32 rounding of a power of two it can take
  the next smaller scale and then clamp one element.

Elements are cast with :func:`refquant.schemes.floats.float_bits` (exact, half to even by
default, saturating), as ``ml_dtypes`` and torchao's casts round; ``P = x / X`` is exact in
float64 (``X`` a power of two). MXINT8: ``q = clip(round(64 x / X), -127, 127)`` (the OCP
spec allows -128, which refquant does not produce; the symmetric range keeps ``q -> -q``).
GGML's MXFP4 differs in its exponent's float32 ``log2f`` and its ties, see
:mod:`refquant.formats.ggml.mxfp`.

NVFP4
-----
NVIDIA's format [2]_ [3]_: blocks of 16 FP4 E2M1 values along ``axis``; each block's scale
is an FP8 E4M3 number, and the whole tensor has a float32 scale ``s_t`` on top (two-level
scaling), as torchao's
``nvfp4_quantize`` (with a per-tensor scale) and NVIDIA's ModelOpt compute it, in float32:

.. math::

    s_t = \\text{amax}(|x|) / (448 \\cdot 6), \\qquad
    u = \\operatorname{E4M3}\\big(\\operatorname{clip}(\\text{amax}_b / 6 / s_t,\\;
        2^{-6},\\; 448)\\big), \\qquad
    P = \\operatorname{E2M1}\\big(\\operatorname{clip}(x / (s_t u), -6, 6)\\big)

(each operation rounded to float32; the casts half to even). ``x_hat = P (s_t u)``. Storage:
4.5 bits per weight plus 32 bits per tensor. The lower clip at ``2^-6`` (E4M3's smallest
normal, torchao's ``E4M3_EPS``) means no block has a zero or subnormal scale. A tensor that is
all zeros gets ``s_t = 1``. GGML's NVFP4 (blocks of 64 in 4 sub-blocks, no tensor scale)
rounds differently, see :mod:`refquant.formats.ggml.mxfp`.

FP4 packing
-----------
:func:`pack_fp4` stores two E2M1 codes per byte along the last axis, code ``2j`` in the low
nibble of byte ``j`` and code ``2j + 1`` in the high nibble: PyTorch's ``float4_e2m1fn_x2`` and
torchao's ``pack_uint4`` order, and :func:`refquant.schemes.packing.pack` with ``bits=4``.
(GGML instead pairs code ``j`` with code ``j + k/2`` of the same block.)

References
----------
.. [1] Open Compute Project, "OCP Microscaling Formats (MX) Specification", Version 1.0, 2023;
       B. D. Rouhani et al., "Microscaling Data Formats for Deep Learning", arXiv:2310.10537.
.. [2] NVIDIA, "Introducing NVFP4 for Efficient and Accurate Low-Precision Inference", 2025;
       PTX ISA, ``cvt.rn.satfinite.e2m1x2.f32``.
.. [3] PyTorch ao, ``torchao/prototype/mx_formats`` (``mx_tensor.to_mx``,
       ``nvfp4_tensor.nvfp4_quantize``, ``kernels.pack_uint4``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refquant.schemes.floats import float_bits, float_format, from_float_bits
from refquant.schemes.numerics import as_float_array, check_positive_int, round_to_int
from refquant.schemes.packing import pack, unpack

#: MX format name -> element format (a name of ``refquant.schemes.floats.FLOAT_FORMATS``, or
#: ``"int8"``) and the exponent ``emax`` of its largest normal value
MX_FORMATS = {"mxfp8_e4m3": ("e4m3fn", 8), "mxfp8_e5m2": ("e5m2", 15),
              "mxfp6_e2m3": ("e2m3fn", 2), "mxfp6_e3m2": ("e3m2fn", 4),
              "mxfp4": ("e2m1fn", 2), "mxint8": ("int8", 0)}
SCALE_RULES = ("ocp", "rceil")
NVFP4_BLOCK = 16
_E8M0_BIAS = 127
_INT8_MAX = 127                     # MXINT8 codes in [-127, 127]; P = q / 64


@dataclass(frozen=True)
class MXArray:
    """An MX-quantized tensor.

    Attributes
    ----------
    codes : numpy.ndarray of uint8, shape ``shape``
        Element bit patterns (FP8: 8 bits; FP6: the low 6 bits; FP4: the low 4; MXINT8: the
        two's-complement byte of ``q``).
    scales : numpy.ndarray of uint8
        E8M0 codes, ``shape`` with ``shape[axis]`` replaced by ``shape[axis] // block_size``.
    fmt : str
        A name of :data:`MX_FORMATS`.
    shape : tuple of int
    axis : int
        The blocked axis, non-negative.
    block_size : int
    scale_rule : str
        The rule that chose the scales (:data:`SCALE_RULES`).
    """

    codes: np.ndarray
    scales: np.ndarray
    fmt: str
    shape: tuple
    axis: int
    block_size: int
    scale_rule: str = "ocp"


@dataclass(frozen=True)
class NVFP4Array:
    """An NVFP4-quantized tensor: E2M1 ``codes`` (uint8, shape ``shape``), E4M3 block
    ``scales`` (uint8, ``shape[axis] // 16`` along ``axis``), the float32 ``tensor_scale``,
    ``shape`` and the blocked ``axis`` (non-negative)."""

    codes: np.ndarray
    scales: np.ndarray
    tensor_scale: float
    shape: tuple
    axis: int
    block_size: int = NVFP4_BLOCK


def _blocks(x, axis, block_size: int, what: str):
    """``x`` as float64 ``[..., n_blocks, block_size]`` with ``axis`` moved last, the
    non-negative axis and the original shape; ``ValueError`` for non-finite input, a bad axis
    or a block size that does not divide the axis."""
    x = as_float_array(x)
    if x.ndim == 0:
        raise ValueError(f"{what} needs an array with at least one axis, got a scalar")
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis!r} is out of range for an array with {x.ndim} axes")
    axis = int(axis) % x.ndim
    n = x.shape[axis]
    if n == 0 or n % block_size:
        raise ValueError(f"{what}: block_size {block_size} does not divide the length {n} of "
                         f"axis {axis}")
    xm = np.moveaxis(x.astype(np.float64), axis, -1)
    return xm.reshape(xm.shape[:-1] + (n // block_size, block_size)), axis, x.shape


def _unblock(b: np.ndarray, axis: int) -> np.ndarray:
    """Inverse of :func:`_blocks`' reshape: ``[..., n_blocks, k]`` -> original layout."""
    return np.moveaxis(b.reshape(b.shape[:-2] + (-1,)), -1, axis)


def _check_fmt(fmt: str):
    if fmt not in MX_FORMATS:
        raise ValueError(f"unknown MX format {fmt!r}; expected one of {tuple(MX_FORMATS)}")
    return MX_FORMATS[fmt]


def _max_element(fmt: str) -> float:
    elem, _ = MX_FORMATS[fmt]
    return _INT8_MAX / 64 if elem == "int8" else float_format(elem).max_normal


def mx_scale_exponent(amax, fmt: str, scale_rule: str = "ocp") -> np.ndarray:
    """Unbiased scale exponent ``E - 127`` (int64, in [-127, 127]) of blocks with maxima
    ``amax`` (float, >= 0) under ``scale_rule`` (see the module docstring).

    >>> mx_scale_exponent([1.0, 6.0, 7.9, 0.0], "mxfp4").tolist()          # floor(log2) - 2
    [-2, 0, 0, -127]
    >>> mx_scale_exponent([1.0, 6.0, 7.9, 0.0], "mxfp4", "rceil").tolist()  # 6 * 2^E >= amax
    [-2, 0, 1, -127]
    """
    _, emax = _check_fmt(fmt)
    if scale_rule not in SCALE_RULES:
        raise ValueError(f"scale_rule must be one of {SCALE_RULES}, got {scale_rule!r}")
    a = np.asarray(amax, np.float64)
    _, e = np.frexp(a)
    floor_log2 = e.astype(np.int64) - 1                          # exact for a > 0
    if scale_rule == "ocp":
        E = floor_log2 - emax
    else:
        m = _max_element(fmt)
        E = floor_log2 - (np.frexp(m)[1] - 1) - 1                # one below the answer
        for _ in range(3):                                       # smallest E: amax <= m 2^E
            E = np.where(a > np.ldexp(m, E), E + 1, E)
    E = np.where(a > 0, E, -_E8M0_BIAS)
    return np.clip(E, -_E8M0_BIAS, _E8M0_BIAS).astype(np.int64)


def mx_quantize(x, fmt: str, *, axis: int = -1, block_size: int = 32, scale_rule: str = "ocp",
                rounding: str = "half_even") -> MXArray:
    """Quantize ``x`` to the MX format ``fmt``: one E8M0 scale per ``block_size`` values
    along ``axis``, ``P = cast(x / X)`` with saturation.

    Parameters
    ----------
    x : array_like of float
        Finite (NaN/Inf raise ``ValueError``).
    fmt : {"mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4", "mxint8"}
    axis : int
        The axis cut into blocks (weights: -1, the input dimension).
    block_size : int
        Values per block (32 in the OCP spec); must divide ``x.shape[axis]``.
    scale_rule : {"ocp", "rceil"}
        See the module docstring.
    rounding : {"half_even", "half_away"}
        Tie rule of the element cast.

    Returns
    -------
    MXArray

    Examples
    --------
    >>> mx = mx_quantize(np.array([[6.0, 0.75, -1.75, 3.5] + [0.0] * 28]), "mxfp4")
    >>> int(mx.scales[0, 0]), mx_dequantize(mx)[0, :4].tolist()    # X = 1, ties to even
    (127, [6.0, 1.0, -2.0, 4.0])
    """
    elem, _ = _check_fmt(fmt)
    block_size = check_positive_int(block_size, "block_size")
    xb, axis, shape = _blocks(x, axis, block_size, fmt)                   # [..., nb, k]
    E = mx_scale_exponent(np.max(np.abs(xb), axis=-1), fmt, scale_rule)   # [..., nb]
    P = xb / np.ldexp(1.0, E)[..., None]                                  # exact
    if elem == "int8":
        q = np.clip(round_to_int(P * 64, rounding), -_INT8_MAX, _INT8_MAX)
        codes = q.astype(np.int8).view(np.uint8)
    else:
        codes = float_bits(P, elem, saturate=True, rounding=rounding)
    scales = np.moveaxis((E + _E8M0_BIAS).astype(np.uint8), -1, axis)
    return MXArray(_unblock(codes, axis), np.ascontiguousarray(scales), fmt, tuple(shape),
                   axis, block_size, scale_rule)


def _check_layout(a, block_size: int):
    """``(codes, scales)`` of an MXArray / NVFP4Array moved to ``[..., n_blocks, k]`` and
    ``[..., n_blocks]``, after checking their shapes against ``shape``, ``axis`` and the block."""
    if not isinstance(a, (MXArray, NVFP4Array)):
        raise ValueError(f"expected an MXArray or NVFP4Array, got {type(a).__name__}")
    codes, scales = np.asarray(a.codes), np.asarray(a.scales)
    shape = tuple(a.shape)
    if codes.shape != shape or not 0 <= a.axis < len(shape) or shape[a.axis] % block_size:
        raise ValueError(f"codes of shape {codes.shape} do not fit shape {shape}, axis {a.axis} "
                         f"and blocks of {block_size}")
    s_shape = shape[:a.axis] + (shape[a.axis] // block_size,) + shape[a.axis + 1:]
    if scales.shape != s_shape:
        raise ValueError(f"scales must have shape {s_shape} for shape {shape}, axis {a.axis} and "
                         f"blocks of {block_size}; got {scales.shape}")
    codes = np.moveaxis(codes, a.axis, -1)
    codes = codes.reshape(codes.shape[:-1] + (-1, block_size))
    return codes, np.moveaxis(scales, a.axis, -1)


def mx_dequantize(mx: MXArray) -> np.ndarray:
    """``x_hat = X P`` (float32, shape ``mx.shape``) of an :class:`MXArray`; exact (every
    product is a float32 number). Codes out of range for the format raise ``ValueError``."""
    elem, _ = _check_fmt(mx.fmt)
    codes, scales = _check_layout(mx, check_positive_int(mx.block_size, "block_size"))
    if elem == "int8":
        c = np.asarray(codes)
        if c.dtype != np.uint8:
            raise ValueError(f"mxint8 codes must be uint8 bytes, got dtype {c.dtype}")
        P = c.view(np.int8).astype(np.float64) / 64
        if np.any(c == 0x80):
            raise ValueError("mxint8 code 0x80 (q = -128) is outside refquant's range [-127, 127]")
    else:
        P = from_float_bits(codes, elem).astype(np.float64)
    X = from_float_bits(scales, "e8m0fnu")
    x_hat = P * X.astype(np.float64)[..., None]
    return _unblock(x_hat, mx.axis).astype(np.float32)


def nvfp4_tensor_scale(x) -> np.float32:
    """NVFP4's float32 tensor scale ``amax(|x|) / (448 * 6)`` in float32; 1 for all zeros."""
    amax = np.float32(np.max(np.abs(as_float_array(x).astype(np.float32))))
    return np.float32(1.0) if amax == 0 else np.float32(amax / np.float32(448.0 * 6.0))


def nvfp4_quantize(x, *, axis: int = -1, tensor_scale=None,
                   rounding: str = "half_even") -> NVFP4Array:
    """Quantize ``x`` to NVFP4: blocks of 16 E2M1 values along ``axis`` with an E4M3 scale,
    under a float32 tensor scale (module docstring), all arithmetic in float32.

    Parameters
    ----------
    x : array_like of float
        Finite; ``x.shape[axis]`` a multiple of 16.
    axis : int
    tensor_scale : float, optional
        ``s_t`` (positive, finite); default :func:`nvfp4_tensor_scale` of ``x``.
    rounding : {"half_even", "half_away"}
        Tie rule of both casts (E4M3 scale and E2M1 elements).

    Returns
    -------
    NVFP4Array

    Examples
    --------
    >>> nv = nvfp4_quantize(np.array([[2688.0, 1.0] + [0.0] * 14]))   # s_t = 1, u = 448
    >>> float(nv.tensor_scale), nvfp4_dequantize(nv)[0, :2].tolist()
    (1.0, [2688.0, 0.0])
    """
    xb, axis, shape = _blocks(x, axis, NVFP4_BLOCK, "nvfp4")
    with np.errstate(over="ignore"):                        # checked on the next line
        xb = xb.astype(np.float32)
    if not np.all(np.isfinite(xb)):
        raise ValueError(f"nvfp4 computes in float32; x holds {float(xb[~np.isfinite(xb)][0])!r} "
                         "after the cast (|x| must stay below 3.4e38)")
    if tensor_scale is None:
        s_t = nvfp4_tensor_scale(xb)
    else:
        s_t = np.float32(tensor_scale)
        if not (np.isfinite(s_t) and s_t > 0):
            raise ValueError(f"tensor_scale must be a positive finite float32, got {tensor_scale!r}")
    block = (np.max(np.abs(xb), axis=-1) / np.float32(6.0)).astype(np.float32)   # [..., nb]
    scaled = np.clip((block / s_t).astype(np.float32), np.float32(2.0**-6), np.float32(448.0))
    u = float_bits(scaled, "e4m3fn", saturate=True, rounding=rounding)
    total = (s_t * from_float_bits(u, "e4m3fn")).astype(np.float32)              # s_t u
    P = np.clip((xb / total[..., None]).astype(np.float32), np.float32(-6), np.float32(6))
    codes = float_bits(P, "e2m1fn", saturate=True, rounding=rounding)
    return NVFP4Array(_unblock(codes, axis), np.ascontiguousarray(np.moveaxis(u, -1, axis)),
                      float(s_t), tuple(shape), axis)


def nvfp4_dequantize(nv: NVFP4Array) -> np.ndarray:
    """``x_hat = P (s_t u)`` in float32 (shape ``nv.shape``) of an :class:`NVFP4Array`."""
    codes, u = _check_layout(nv, NVFP4_BLOCK)
    if not (np.isfinite(nv.tensor_scale) and nv.tensor_scale > 0):
        raise ValueError(f"tensor_scale must be positive and finite, got {nv.tensor_scale!r}")
    total = (np.float32(nv.tensor_scale) * from_float_bits(u, "e4m3fn")).astype(np.float32)
    x_hat = (from_float_bits(codes, "e2m1fn") * total[..., None]).astype(np.float32)
    return _unblock(x_hat, nv.axis)


def pack_fp4(codes) -> np.ndarray:
    """Two E2M1 codes per byte along the last axis (even length): code ``2j`` in the low
    nibble of byte ``j``, ``2j + 1`` in the high nibble (see the module docstring).

    >>> pack_fp4(np.array([1, 2, 15, 0], np.uint8)).tolist()
    [33, 15]
    """
    codes = np.asarray(codes)
    if codes.ndim == 0 or codes.shape[-1] % 2:
        raise ValueError(f"FP4 packing needs an even length along the last axis, got shape "
                         f"{codes.shape}")
    if codes.dtype.kind not in "iu":
        raise ValueError(f"FP4 codes must be an integer array, got dtype {codes.dtype}")
    bad = (codes < 0) | (codes > 15)
    if np.any(bad):
        raise ValueError(f"FP4 code {int(codes[bad].ravel()[0])} is outside [0, 15]")
    return pack(codes.astype(np.uint8), 4)


def unpack_fp4(packed, n: int) -> np.ndarray:
    """Inverse of :func:`pack_fp4`: the first ``n`` codes (uint8) of each row of ``packed``."""
    return unpack(np.asarray(packed), 4, n)


__all__ = ["MX_FORMATS", "SCALE_RULES", "NVFP4_BLOCK", "MXArray", "NVFP4Array",
           "mx_scale_exponent", "mx_quantize", "mx_dequantize", "nvfp4_tensor_scale",
           "nvfp4_quantize", "nvfp4_dequantize", "pack_fp4", "unpack_fp4"]
