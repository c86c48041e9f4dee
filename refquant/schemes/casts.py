"""FP16 and BF16 casts as a "quantization": round float32 values to a 16-bit float grid.

Both formats keep the sign bit and trade exponent bits for mantissa bits:

=======  ========  ========  =========  ================  =====================  ==============
format   exponent  mantissa  precision  max finite        smallest normal        subnormal step
                   (stored)  p          (``x_max``)       (``x_min``)
=======  ========  ========  =========  ================  =====================  ==============
fp16     5         10        11         65504             2^-14 ~ 6.1e-5         2^-24
bf16     8         7         8          ~3.3895e38        2^-126 ~ 1.18e-38      2^-133
float32  8         23        24         ~3.4028e38        2^-126                 2^-149
=======  ========  ========  =========  ================  =====================  ==============

Rounding is to nearest, ties to even (IEEE 754 ``roundTiesToEven``), on the float32 value.

Error bound
-----------
With unit roundoff :math:`u = 2^{-p}`, every ``x`` whose rounded value is a normal number of
the format satisfies

.. math::

    |x - \\hat x| \\le u\\,|x|, \\qquad u_{bf16} = 2^{-8}, \\quad u_{fp16} = 2^{-11},

because inside one binade :math:`[2^e, 2^{e+1})` the grid step is :math:`2^{e-p+1}` and rounding
to nearest moves ``x`` by at most half a step, :math:`2^{e-p} \\le 2^{-p}|x|`.
Below the smallest normal (the subnormal range) the step is fixed, so the bound is absolute:
:math:`|x - \\hat x| \\le 2^{-25}` (fp16) and :math:`\\le 2^{-134}` (bf16); values smaller than half
the subnormal step round to a (signed) zero. Zero stays zero, signs are kept (``-0.0`` too).

Input and overflow
------------------
``x`` is converted to float32 first (exact for float32, float16 and integers up to 2^24; other
float64 values are rounded to nearest float32 there, so the cast of a float64 value is the cast
of its float32 rounding). NaN or Inf in the input, a float64 value outside the float32 range, or
a value that rounds beyond the format's largest finite number (``|x| >= 65520`` for fp16,
``|x| >= 0x7F7F8000`` as float32 bits ~ 3.3961e38 for bf16) raises ``ValueError`` naming it:
refquant never turns data into Inf silently.

Implementation
--------------
BF16 is the upper half of the float32 bit pattern, so round-to-nearest-even is integer
arithmetic on the bits, as in hardware converters: add ``0x7FFF`` plus the lowest kept bit, then
drop the low 16 bits (a carry out of the mantissa correctly bumps the exponent). This also rounds
float32 subnormals correctly, because bf16 has float32's exponent range.
FP16 has a different exponent range, so it is computed on the grid directly: with
:math:`e = \\lfloor \\log_2 |x| \\rfloor` (exact, from ``frexp``) the fp16 step at ``x`` is
:math:`\\Delta = 2^{\\max(e, -14) - 10}`, and :math:`\\hat x = \\Delta\\,\\operatorname{rint}(x / \\Delta)`;
every operation is exact in float64 (division and multiplication by a power of two, ``rint``).

References
----------
.. [1] IEEE Standard for Floating-Point Arithmetic, IEEE Std 754-2019 (binary16, rounding).
.. [2] D. Kalamkar et al., "A Study of BFLOAT16 for Deep Learning Training", arXiv:1905.12322, 2019.
.. [3] N. J. Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., SIAM 2002, sec. 2.1
       (unit roundoff).
"""

from __future__ import annotations

import numpy as np

from refquant.schemes.numerics import as_float_array

FP16_MAX = 65504.0
FP16_UNIT_ROUNDOFF = 2.0**-11
BF16_UNIT_ROUNDOFF = 2.0**-8
BF16_MAX = float(np.array(0x7F7F0000, np.uint32).view(np.float32))   # (2 - 2^-7) * 2^127

_EXP16_MASK_BF16, _EXP16_MASK_FP16 = 0x7F80, 0x7C00      # exponent bits of the 16-bit formats


def _as_float32(x, name: str = "x") -> np.ndarray:
    """``x`` as a float32 array; ``ValueError`` for NaN/Inf or values beyond the float32 range."""
    a = as_float_array(x, name)
    with np.errstate(over="ignore"):
        a32 = a.astype(np.float32)
    if not np.all(np.isfinite(a32)):
        bad = a[~np.isfinite(a32)].ravel()[0]
        raise ValueError(f"{name} holds {bad!r}, which is outside the float32 range")
    return a32


def _first(x: np.ndarray, mask: np.ndarray):
    return x[mask].ravel()[0]


def _finite_bits(bits, exp_mask: int, name: str) -> np.ndarray:
    """``bits`` as a uint16 array, or ``ValueError`` for another dtype or for the first NaN/Inf
    pattern (all exponent bits of ``exp_mask`` set) of the 16-bit format ``name``."""
    b = np.asarray(bits)
    if b.dtype != np.uint16:
        raise ValueError(f"{name} bit patterns must be uint16, got dtype {b.dtype}")
    special = (b & np.uint16(exp_mask)) == np.uint16(exp_mask)
    if np.any(special):
        article = "an" if name == "fp16" else "a"
        raise ValueError(f"bit pattern {hex(int(_first(b, special)))} is {article} {name} NaN or Inf")
    return b


# --------------------------------------------------------------------------------------------
# BF16


def bf16_bits(x) -> np.ndarray:
    """The bf16 bit patterns (uint16) of ``x`` rounded to nearest, ties to even.

    Parameters
    ----------
    x : array_like of float, any shape
        Finite; converted to float32 first (see the module docstring).

    Returns
    -------
    numpy.ndarray of uint16, the shape of ``x``

    Examples
    --------
    >>> [hex(b) for b in bf16_bits([1.0, -2.0, 1.00390625, 1.01171875])]   # 1 + 2^-8 and 1 + 3 * 2^-8: ties
    ['0x3f80', '0xc000', '0x3f80', '0x3f82']
    """
    x32 = _as_float32(x)
    u = x32.view(np.uint32)                                   # float32 bits, same shape
    lsb = (u >> np.uint32(16)) & np.uint32(1)                 # lowest bit that is kept
    rounded = (u + np.uint32(0x7FFF) + lsb) >> np.uint32(16)  # no uint32 overflow: u <= 0xFF7FFFFF
    bits = rounded.astype(np.uint16)
    overflow = (bits & np.uint16(0x7FFF)) == np.uint16(_EXP16_MASK_BF16)
    if np.any(overflow):
        raise ValueError(f"x holds {float(_first(x32, overflow))!r}, which rounds beyond the largest "
                         f"finite bf16 value {BF16_MAX!r}")
    return bits


def from_bf16_bits(bits) -> np.ndarray:
    """Decode bf16 bit patterns (uint16) to float32 values (exact).

    NaN and Inf patterns (exponent bits all ones) raise ``ValueError`` naming the first one.

    >>> from_bf16_bits(np.array([0x3F80, 0xC000, 0x0001], np.uint16)).tolist()
    [1.0, -2.0, 9.183549615799121e-41]
    """
    b = _finite_bits(bits, _EXP16_MASK_BF16, "bf16")
    return (b.astype(np.uint32) << np.uint32(16)).view(np.float32)


def cast_bf16(x) -> np.ndarray:
    """Round ``x`` to the nearest bf16 value (ties to even) and return it as float32.

    .. math:: \\hat x = \\operatorname{bf16}(x), \\qquad |x - \\hat x| \\le 2^{-8} |x|
              \\text{ for normal } \\hat x

    Parameters
    ----------
    x : array_like of float, any shape
        Finite, within the float32 range, and not rounding beyond the largest bf16 value.

    Returns
    -------
    numpy.ndarray of float32, the shape of ``x``

    Examples
    --------
    >>> cast_bf16([3.14159265, 1.0, -0.0, 1e-3]).tolist()
    [3.140625, 1.0, -0.0, 0.00099945068359375]
    """
    return from_bf16_bits(bf16_bits(x))


# --------------------------------------------------------------------------------------------
# FP16


def cast_fp16(x) -> np.ndarray:
    """Round ``x`` to the nearest IEEE binary16 value (ties to even) and return it as float32.

    .. math:: \\hat x = \\Delta\\,\\operatorname{rint}(x / \\Delta), \\quad
              \\Delta = 2^{\\max(\\lfloor \\log_2 |x| \\rfloor,\\,-14) - 10}, \\qquad
              |x - \\hat x| \\le 2^{-11} |x| \\text{ for normal } \\hat x

    Parameters
    ----------
    x : array_like of float, any shape
        Finite, within the float32 range, ``|x| < 65520`` (larger values round to Inf in fp16).

    Returns
    -------
    numpy.ndarray of float32, the shape of ``x``

    Examples
    --------
    >>> cast_fp16([3.14159265, 65504.0, 2049.0, 2051.0, 2.0**-25, 3 * 2.0**-26]).tolist()
    [3.140625, 65504.0, 2048.0, 2052.0, 0.0, 5.960464477539063e-08]
    """
    x32 = _as_float32(x)
    x64 = x32.astype(np.float64)
    _, e_frexp = np.frexp(x64)                        # x = m 2^e_frexp, 0.5 <= |m| < 1
    e = np.maximum(e_frexp - 1, -14)                  # floor(log2|x|), clamped to the subnormal binade
    step = np.ldexp(1.0, e - 10)                      # fp16 grid spacing at x
    x_hat = np.rint(x64 / step) * step                # exact: power-of-two scaling and rint
    x_hat = np.copysign(x_hat, x64)                   # keep the sign of values that round to zero
    over = np.abs(x_hat) > FP16_MAX
    if np.any(over):
        raise ValueError(f"x holds {float(_first(x32, over))!r}, which rounds beyond the largest "
                         f"finite fp16 value {FP16_MAX!r}")
    return x_hat.astype(np.float32)


def fp16_bits(x) -> np.ndarray:
    """The IEEE binary16 bit patterns (uint16) of :func:`cast_fp16` ``(x)``.

    >>> [hex(b) for b in fp16_bits([1.0, -2.0, 65504.0])]
    ['0x3c00', '0xc000', '0x7bff']
    """
    # cast_fp16's values are exactly representable, so NumPy's conversion only re-encodes them.
    return cast_fp16(x).astype(np.float16).view(np.uint16)


def from_fp16_bits(bits) -> np.ndarray:
    """Decode IEEE binary16 bit patterns (uint16) to float32 values (exact).

    NaN and Inf patterns (exponent bits all ones) raise ``ValueError`` naming the first one.

    >>> from_fp16_bits(np.array([0x3C00, 0xC000, 0x0001], np.uint16)).tolist()   # 0x0001 = 2^-24
    [1.0, -2.0, 5.960464477539063e-08]
    """
    b = _finite_bits(bits, _EXP16_MASK_FP16, "fp16")
    return b.view(np.float16).astype(np.float32)


__all__ = ["cast_fp16", "cast_bf16", "bf16_bits", "from_bf16_bits", "fp16_bits", "from_fp16_bits",
           "FP16_MAX", "BF16_MAX", "FP16_UNIT_ROUNDOFF", "BF16_UNIT_ROUNDOFF"]
