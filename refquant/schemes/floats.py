"""Low-precision floating-point element formats: FP8 (E4M3, E5M2), FP6 (E2M3, E3M2), FP4 (E2M1)
and the power-of-two scale format E8M0.

These are the same family as :func:`refquant.schemes.casts.cast_fp16` and
:func:`~refquant.schemes.casts.cast_bf16` (a sign, ``E`` exponent bits, ``M`` stored mantissa
bits, round to nearest), with fewer bits and with the special values each standard defines.
One grid rule serves every format here; :data:`FLOAT_FORMATS` holds the table.

Value of a code
---------------
A code with sign bit ``S``, exponent field ``E`` and mantissa field ``M`` (``m`` bits) is

.. math::

    v = (-1)^S \\cdot \\begin{cases}
        2^{1 - \\text{bias}} \\cdot M / 2^m & E = 0 \\text{ (subnormal)} \\\\
        2^{E - \\text{bias}} \\cdot (1 + M / 2^m) & E > 0 \\text{ (normal)}
    \\end{cases}

except for the special codes of the table below; E8M0 has neither sign nor mantissa nor
subnormals, ``v = 2^{E - 127}``.

The formats
-----------
=======  ===========  ====  ==========  ==========  ===========  ================  =========================
format   layout       bias  max normal  min normal  min subnorm  specials          overflow: saturate=True /
                                                                                   saturate=False
=======  ===========  ====  ==========  ==========  ===========  ================  =========================
e4m3fn   S EEEE MMM   7     448         2^-6        2^-9         NaN = S.1111.111  +-448 / NaN (0x7F, 0xFF)
                                                                 (no Inf)
e5m2     S EEEEE MM   15    57344       2^-14       2^-16        Inf = S.11111.00  +-57344 / +-Inf
                                                                 NaN = S.11111.xx  (0x7C, 0xFC)
e2m3fn   S EE MMM     1     7.5         1           2^-3         none              +-7.5 / +-7.5 (clamp)
e3m2fn   S EEE MM     3     28          2^-2        2^-4         none              +-28 / +-28 (clamp)
e2m1fn   S EE M       1     6           1           2^-1         none              +-6 / +-6 (clamp)
e8m0fnu  EEEEEEEE     127   2^127       2^-127      (none)       NaN = 0xFF;       2^127 / NaN (0xFF)
                                                                 no zero, no sign
=======  ===========  ====  ==========  ==========  ===========  ================  =========================

FP8 is the OCP 8-bit floating point specification [1]_ (E4M3 and E5M2, proposed in [3]_);
FP6, FP4 and E8M0 are the element and scale types of the OCP Microscaling formats [2]_.
The value grids of FP4 E2M1: ``0, 0.5, 1, 1.5, 2, 3, 4, 6``; of FP6 E2M3: multiples of 1/8 up
to 2, of 1/4 up to 4, of 1/2 up to 7.5.

Traps
-----
- **E4M3FN has no infinity.** Its exponent field 1111 holds normal numbers (256 .. 448), only
  S.1111.111 is NaN. ``ml_dtypes`` casts without saturation, so a value that rounds beyond 448
  (``|x| > 464``; 464 itself is a tie and goes to the even 448) becomes **NaN**, not Inf and
  not 448. Pass ``saturate=True`` (the default here, and what FP8 GEMM libraries do when
  quantizing) to clamp to +-448.
- **"E4M3 max 240" is another format**: ``float8_e4m3fnuz`` (bias 8, one NaN 0x80, no negative
  zero; AMD MI300 and Graphcore) tops out at 240. The OCP ``e4m3fn`` of this module tops out at
  448. The same holds for E5M2: ``e5m2fnuz`` has max 57344 too but a different bias and no Inf.
- **E8M0FNU has no zero and no sign**: code 0 is :math:`2^{-127}`, 0xFF is NaN. Zero or negative
  input raises ``ValueError``; positive values below :math:`2^{-127}` become :math:`2^{-127}`
  (there is nothing smaller to round to; ``ml_dtypes`` does the same).
- **Ties with no mantissa bits (E8M0)**: with :math:`m = 0` the significands of a binade are 1
  and 2, so half-to-even sends a tie :math:`1.5 \\cdot 2^e` *up* to :math:`2^{e+1}` in every
  binade (``ml_dtypes`` does the same); it is not "the even exponent code".

Rounding (exact, in float64)
----------------------------
Every input is converted to float64 first (exact for float16, float32 and float64 input). With
:math:`e = \\lfloor \\log_2 |x| \\rfloor` (exact, from ``frexp``), clamped below at the format's
smallest normal exponent :math:`e_{min}`, the grid spacing at ``x`` is
:math:`\\Delta = 2^{\\max(e,\\, e_{min}) - m}` (:func:`grid_step`) and

.. math:: \\hat x = \\operatorname{sign}(x)\\, \\Delta \\cdot \\operatorname{round}(|x| / \\Delta)

where ``round`` is the spec's rounding mode (``"half_even"``: IEEE roundTiesToEven, ties to the
even significand, which is the even mantissa code; ``"half_away"``: ties away from zero). Both
steps are exact in float64 (a power-of-two scaling and an integer rounding). The grid is
extended past the top binade as if the exponent were unbounded, so a value between the largest
finite number and the next (virtual) grid point rounds to whichever is nearer: only values that
round *beyond* max normal overflow, which is IEEE's rule and ``ml_dtypes``'.
The sign of a value that rounds to zero is kept (``-1e-9`` gives ``-0``, code ``0x80`` in E4M3).

NaN policy and ``saturate=False``
---------------------------------
The *input* must be finite: NaN or Inf raises ``ValueError`` (refquant never quantizes NaN).
What happens to a finite input that rounds beyond the largest finite value is the format's
business: ``saturate=True`` clamps to +-max normal; ``saturate=False`` returns the code the
format defines for an overflow (E4M3FN: NaN 0x7F/0xFF; E5M2: +-Inf 0x7C/0xFC; E8M0: NaN 0xFF;
FP6/FP4 have no special codes and clamp either way), bit-exact with ``ml_dtypes``.
:func:`from_float_bits` decodes finite codes only (NaN/Inf codes raise ``ValueError``, as
:func:`~refquant.schemes.casts.from_bf16_bits` does), so :func:`cast_float` with
``saturate=False`` raises on overflow instead of returning NaN or Inf, as ``cast_fp16`` does.

References
----------
.. [1] Open Compute Project, "OCP 8-bit Floating Point Specification (OFP8)", Revision 1.0,
       2023.
.. [2] Open Compute Project, "OCP Microscaling Formats (MX) Specification", Version 1.0, 2023.
.. [3] P. Micikevicius et al., "FP8 Formats for Deep Learning", arXiv:2209.05433, 2022.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refquant.schemes.numerics import ROUNDING_MODES, as_float_array, round_to_int


@dataclass(frozen=True)
class FloatFormat:
    """One row of the format table (see the module docstring).

    Attributes
    ----------
    name : str
        ``"e4m3fn"``, ``"e5m2"``, ``"e2m3fn"``, ``"e3m2fn"``, ``"e2m1fn"`` or ``"e8m0fnu"``.
    ebits, mbits : int
        Exponent and stored mantissa bits.
    bias : int
        Exponent bias.
    signed : bool
        Whether there is a sign bit (all but E8M0).
    has_inf : bool
        Whether the format encodes +-Inf (E5M2 only).
    nan : str
        NaN encoding: ``"ieee"`` (exponent all ones, mantissa non-zero), ``"all_ones"`` (only
        exponent and mantissa all ones: E4M3FN's S.1111.111, E8M0's 0xFF) or ``"none"``.
    max_normal, min_normal, min_subnormal : float
        Largest finite value, smallest normal value, smallest positive subnormal value (equal
        to ``min_normal`` where there are no subnormals: E8M0).
    """

    name: str
    ebits: int
    mbits: int
    bias: int
    signed: bool
    has_inf: bool
    nan: str
    max_normal: float
    min_normal: float
    min_subnormal: float

    @property
    def nbits(self) -> int:
        """Bits per code: sign + exponent + mantissa."""
        return int(self.signed) + self.ebits + self.mbits

    @property
    def subnormals(self) -> bool:
        """Whether exponent field 0 holds subnormals (all but E8M0, where it is :math:`2^{-127}`)."""
        return self.mbits > 0

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal value, :math:`\\log_2` ``min_normal``."""
        return (1 if self.subnormals else 0) - self.bias


#: The format table, by name (see the module docstring).
FLOAT_FORMATS = {f.name: f for f in (
    FloatFormat("e4m3fn", 4, 3, 7, True, False, "all_ones", 448.0, 2.0**-6, 2.0**-9),
    FloatFormat("e5m2", 5, 2, 15, True, True, "ieee", 57344.0, 2.0**-14, 2.0**-16),
    FloatFormat("e2m3fn", 2, 3, 1, True, False, "none", 7.5, 1.0, 2.0**-3),
    FloatFormat("e3m2fn", 3, 2, 3, True, False, "none", 28.0, 2.0**-2, 2.0**-4),
    FloatFormat("e2m1fn", 2, 1, 1, True, False, "none", 6.0, 1.0, 2.0**-1),
    FloatFormat("e8m0fnu", 8, 0, 127, False, False, "all_ones", 2.0**127, 2.0**-127, 2.0**-127),
)}


def float_format(fmt) -> FloatFormat:
    """The :class:`FloatFormat` named ``fmt`` (a name or a ``FloatFormat``); ``ValueError`` for
    an unknown name.

    >>> float_format("e4m3fn").max_normal
    448.0
    """
    if isinstance(fmt, FloatFormat):
        return fmt
    if not isinstance(fmt, str) or fmt not in FLOAT_FORMATS:
        raise ValueError(f"unknown float format {fmt!r}; expected one of {tuple(FLOAT_FORMATS)}")
    return FLOAT_FORMATS[fmt]


def grid_step(x, fmt) -> np.ndarray:
    """The spacing :math:`\\Delta = 2^{\\max(\\lfloor \\log_2 |x| \\rfloor,\\, e_{min}) - m}` of the
    format's grid at ``x`` (float64, the shape of ``x``; the subnormal step for ``|x|`` below the
    smallest normal, including 0).

    ``x`` and its two grid neighbours ``floor(|x| / Delta) Delta`` and that plus ``Delta`` lie
    in one binade, which is what stochastic rounding needs. Past max normal the grid continues
    as if the exponent were unbounded.

    >>> grid_step([1.0, 1.9, 448.0, 0.0], "e4m3fn").tolist()
    [0.125, 0.125, 32.0, 0.001953125]
    """
    f = float_format(fmt)
    a = np.abs(as_float_array(x).astype(np.float64))
    _, e_frexp = np.frexp(a)                            # a = frac 2^e_frexp, 0.5 <= frac < 1
    e = np.where(a == 0, f.emin, np.maximum(e_frexp - 1, f.emin))   # floor(log2 a) >= e_min
    return np.ldexp(1.0, e - f.mbits)


def _check_rounding(rounding):
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"rounding must be one of {ROUNDING_MODES}, got {rounding!r}")


def _encode(r: np.ndarray, negative: np.ndarray, f: FloatFormat) -> np.ndarray:
    """Codes (uint8) of the grid values ``r >= 0`` (each exactly representable, <= max normal)
    with sign bits ``negative``."""
    _, e_frexp = np.frexp(r)
    e = e_frexp - 1                                             # exact exponent of r > 0
    normal = r >= f.min_normal
    E = np.where(normal, e + f.bias, 0)                         # biased exponent field
    frac = np.where(normal, r / np.ldexp(1.0, e) - 1.0, r / f.min_subnormal)   # [0, 1) or M
    M = np.where(normal, frac * 2**f.mbits, frac)               # mantissa field, an integer
    code = (E.astype(np.int64) << f.mbits) | M.astype(np.int64)
    if f.signed:
        code |= negative.astype(np.int64) << (f.nbits - 1)
    return code.astype(np.uint8)


def _overflow_code(negative: np.ndarray, f: FloatFormat) -> np.ndarray:
    """The code a non-saturating cast gives a value beyond max normal: NaN, Inf, or max."""
    sign = negative.astype(np.int64) << (f.nbits - 1) if f.signed else np.zeros(negative.shape, np.int64)
    if f.has_inf:                                               # e5m2: S.11111.00
        return (sign | (((1 << f.ebits) - 1) << f.mbits)).astype(np.uint8)
    if f.nan == "all_ones":                                     # e4m3fn: S.1111.111, e8m0: 0xFF
        return (sign | ((1 << (f.ebits + f.mbits)) - 1)).astype(np.uint8)
    return _encode(np.full(negative.shape, f.max_normal), negative, f)   # no specials: clamp


def float_bits(x, fmt, *, saturate: bool = True, rounding: str = "half_even") -> np.ndarray:
    """The codes (uint8) of ``x`` rounded to the float format ``fmt``.

    .. math:: \\hat x = \\operatorname{sign}(x)\\, \\Delta\\, \\operatorname{round}(|x| / \\Delta),
              \\quad \\Delta = 2^{\\max(\\lfloor \\log_2 |x| \\rfloor,\\, e_{min}) - m}

    Parameters
    ----------
    x : array_like of float, any shape
        Finite (NaN/Inf raise ``ValueError``); for ``"e8m0fnu"`` also positive.
    fmt : str or FloatFormat
        A name of :data:`FLOAT_FORMATS`.
    saturate : bool
        ``True``: values that round beyond the largest finite value become +-max normal.
        ``False``: they get the format's overflow code (E4M3FN and E8M0 NaN, E5M2 +-Inf;
        FP6/FP4 clamp), as ``ml_dtypes``' cast does. See the module docstring.
    rounding : {"half_even", "half_away"}
        Tie rule (see the module docstring); ``"half_even"`` is IEEE's and ``ml_dtypes``'.

    Returns
    -------
    numpy.ndarray of uint8, the shape of ``x``
        Codes in ``[0, 2^nbits)``: FP6 in the low 6 bits, FP4 in the low 4 bits, sign bit on top.

    Examples
    --------
    >>> [hex(c) for c in float_bits([1.0, -448.0, 500.0, 2.0**-9], "e4m3fn")]
    ['0x38', '0xfe', '0x7e', '0x1']
    >>> [hex(c) for c in float_bits([500.0, 464.0], "e4m3fn", saturate=False)]   # NaN, tie to 448
    ['0x7f', '0x7e']
    >>> float_bits([0.25, 0.75, 2.5, 5.0], "e2m1fn").tolist()    # ties to even: 0, 1, 2, 4
    [0, 2, 4, 6]
    """
    f = float_format(fmt)
    _check_rounding(rounding)
    if not isinstance(saturate, (bool, np.bool_)):
        raise ValueError(f"saturate must be a bool, got {saturate!r}")
    x64 = as_float_array(x).astype(np.float64)
    if not f.signed and np.any(x64 <= 0):
        raise ValueError(f"{f.name} has no zero and no sign; x holds {float(x64[x64 <= 0].ravel()[0])!r}")
    negative = np.signbit(x64)
    step = grid_step(x64, f)
    r = round_to_int(np.abs(x64) / step, rounding) * step       # exact: power-of-two scaling
    if not f.signed:
        r = np.maximum(r, f.min_normal)                        # e8m0: nothing below 2^-127
    over = r > f.max_normal
    codes = _encode(np.minimum(r, f.max_normal), negative, f)
    if not saturate and np.any(over):
        codes = np.where(over, _overflow_code(negative, f), codes)
    return codes


def _check_codes(codes, f: FloatFormat) -> np.ndarray:
    c = np.asarray(codes)
    if c.dtype.kind not in "iu":
        raise ValueError(f"{f.name} codes must be an integer array, got dtype {c.dtype}")
    out = (c < 0) | (c >= 2**f.nbits)
    if np.any(out):
        raise ValueError(f"code {int(c[out].ravel()[0])} is out of range for {f.name} "
                         f"({f.nbits} bits: 0..{2**f.nbits - 1})")
    return c.astype(np.int64)


def _fields(c: np.ndarray, f: FloatFormat):
    """Exponent and mantissa fields of the int64 codes ``c``."""
    return (c >> f.mbits) & ((1 << f.ebits) - 1), c & ((1 << f.mbits) - 1)


def _special(c: np.ndarray, f: FloatFormat) -> np.ndarray:
    """Where the int64 codes ``c`` are NaN or Inf codes of ``f``."""
    E, M = _fields(c, f)
    top = E == (1 << f.ebits) - 1
    return {"ieee": top, "all_ones": top & (M == (1 << f.mbits) - 1),
            "none": np.zeros(c.shape, bool)}[f.nan]


def from_float_bits(codes, fmt) -> np.ndarray:
    """Decode codes of the float format ``fmt`` to float32 values (exact).

    Parameters
    ----------
    codes : array_like of int, any shape
        In ``[0, 2^nbits)``; codes outside raise ``ValueError`` naming the first, and so do
        NaN and Inf codes (see the module docstring).
    fmt : str or FloatFormat

    Returns
    -------
    numpy.ndarray of float32, the shape of ``codes``

    Examples
    --------
    >>> from_float_bits(np.array([0x38, 0xFE, 0x01, 0x80], np.uint8), "e4m3fn").tolist()
    [1.0, -448.0, 0.001953125, -0.0]
    >>> from_float_bits([0, 1, 127, 254], "e8m0fnu").tolist()[1:]
    [1.1754943508222875e-38, 1.0, 1.7014118346046923e+38]
    """
    f = float_format(fmt)
    c = _check_codes(codes, f)
    E, M = _fields(c, f)
    special = _special(c, f)
    if np.any(special):
        bad = int(c[special].ravel()[0])
        kind = "Inf" if f.has_inf and (bad & ((1 << f.mbits) - 1)) == 0 else "NaN"
        raise ValueError(f"code {hex(bad)} is {f.name} {kind}; refquant decodes finite codes only")
    if f.subnormals:
        mag = np.where(E == 0, M * f.min_subnormal,
                       np.ldexp(1.0 + M / 2**f.mbits, (E - f.bias).astype(np.int64)))
    else:
        mag = np.ldexp(1.0, (E - f.bias).astype(np.int64))
    if f.signed:
        mag = np.where((c >> (f.nbits - 1)) & 1, -mag, mag)
    return mag.astype(np.float32)


def cast_float(x, fmt, *, saturate: bool = True, rounding: str = "half_even") -> np.ndarray:
    """Round ``x`` to the float format ``fmt`` and return the values as float32:
    ``from_float_bits(float_bits(x, fmt, ...), fmt)``.

    With ``saturate=False`` a value that overflows (E4M3FN, E5M2, E8M0) raises ``ValueError``
    instead of giving NaN or Inf.

    Examples
    --------
    >>> cast_float([0.3, 1000.0, -7.0], "e4m3fn").tolist()
    [0.3125, 448.0, -7.0]
    >>> cast_float([0.3, 5.2, -7.0], "e2m1fn").tolist()
    [0.5, 6.0, -6.0]
    """
    f = float_format(fmt)
    codes = float_bits(x, f, saturate=saturate, rounding=rounding)
    over = _special(codes.astype(np.int64), f)
    if np.any(over):
        raise ValueError(f"x holds {float(np.asarray(x)[over].ravel()[0])!r}, which rounds beyond the "
                         f"largest finite {f.name} value {f.max_normal!r}")
    return from_float_bits(codes, f)


__all__ = ["FloatFormat", "FLOAT_FORMATS", "float_format", "grid_step", "float_bits",
           "from_float_bits", "cast_float"]
