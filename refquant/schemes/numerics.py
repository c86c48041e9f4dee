"""Integer ranges, rounding modes and input checks shared by every quantizer.

Symbols
-------
=====  ======================================================================================
b      bit width of the integer codes (2..8, or 16)
q_min  smallest code, q_max largest code
round  the rounding function named by the spec: ``"half_even"`` (IEEE round-half-to-even,
       NumPy's ``rint``; the default) or ``"half_away"`` (ties away from zero, as llama.cpp's
       ``roundf``)
=====  ======================================================================================

Ranges
------
===================  =========================  ===============================
codes                q_min                      q_max
===================  =========================  ===============================
signed (full)        -2^(b-1)                   2^(b-1) - 1
signed (restricted)  -(2^(b-1) - 1)             2^(b-1) - 1
unsigned             0                          2^b - 1
===================  =========================  ===============================
"""

from __future__ import annotations

import functools

import numpy as np

from refquant.schemes._jit import stable

SUPPORTED_BITS = (2, 3, 4, 5, 6, 7, 8, 16)
#: The rounding modes a spec can name: round half to even (IEEE 754, NumPy's ``rint``) and
#: round half away from zero (C's ``roundf``, as llama.cpp rounds).
ROUNDING_MODES = ("half_even", "half_away")


def check_bits(bits) -> int:
    """Return ``bits`` as an int, or raise ``ValueError`` if it is not a supported width."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or int(bits) not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits!r}")
    return int(bits)


def int_range(bits: int, signed: bool, restricted: bool = False) -> tuple[int, int]:
    """The inclusive integer code range ``(q_min, q_max)`` for ``bits``-bit codes.

    >>> int_range(8, signed=True)
    (-128, 127)
    >>> int_range(8, signed=True, restricted=True)
    (-127, 127)
    >>> int_range(4, signed=False)
    (0, 15)
    """
    b = check_bits(bits)
    if signed:
        q_max = 2 ** (b - 1) - 1
        return (-q_max if restricted else -q_max - 1), q_max
    if restricted:
        raise ValueError("restricted=True applies to signed (symmetric) codes only")
    return 0, 2**b - 1


def code_dtype(bits: int, signed: bool) -> np.dtype:
    """The smallest NumPy integer dtype that holds every ``bits``-bit code."""
    b = check_bits(bits)
    if b <= 8:
        return np.dtype(np.int8 if signed else np.uint8)
    return np.dtype(np.int16 if signed else np.uint16)


def round_half_even(x: np.ndarray) -> np.ndarray:
    """Round to the nearest integer, ties to even (``np.rint``): 0.5 -> 0, 1.5 -> 2, -2.5 -> -2."""
    return np.rint(x)


def round_half_away(x: np.ndarray) -> np.ndarray:
    """Round to the nearest integer, ties away from zero (C ``roundf``): 0.5 -> 1, -2.5 -> -3.

    Computed as ``sign(x) * (floor(|x|) + [|x| - floor(|x|) >= 1/2])``. The fractional part
    ``|x| - floor(|x|)`` is exact in floating point, so this is exact for every finite input.
    (The shortcut ``floor(|x| + 0.5)`` is not: for ``x = 0.5 - 2**-54`` the sum rounds up to
    1.0 and the result would be 1 instead of 0.)

    >>> round_half_away(np.array([0.5, 1.5, -2.5, 0.5 - 2**-54]))
    array([ 1.,  2., -3.,  0.])
    """
    x = np.asarray(x)
    a = np.abs(x)
    whole = np.floor(a)
    return np.sign(x) * (whole + (a - whole >= 0.5))


@functools.lru_cache(maxsize=None)
def round_scalar_numba():
    """A Numba function ``rnd(y, away)`` rounding one float64 as :func:`round_half_away`
    (``away`` true) or :func:`round_half_even` do, with the same arithmetic: for the Numba loops
    that must round as :func:`round_to_int` (compiled on first use, inlined into its callers)."""
    import numba

    @numba.njit(inline="always", cache=True, fastmath=False)
    def rnd(y, away):
        if away:                                   # sign(y) (floor|y| + [|y| - floor|y| >= 1/2])
            a = abs(y)
            f = np.floor(a)
            return np.sign(y) * (f + (1.0 if a - f >= 0.5 else 0.0))
        return np.rint(y)
    return stable(rnd)


def round_to_int(x: np.ndarray, mode: str = "half_even") -> np.ndarray:
    """Round ``x`` with the named rounding ``mode`` (see :data:`ROUNDING_MODES`).

    >>> round_to_int(np.array([0.5, 1.5, 2.5]), "half_even")
    array([0., 2., 2.])
    """
    if mode == "half_even":
        return round_half_even(x)
    if mode == "half_away":
        return round_half_away(x)
    raise ValueError(f"rounding must be one of {ROUNDING_MODES}, got {mode!r}")


def as_float_array(x, name: str = "x") -> np.ndarray:
    """Return ``x`` as a floating array, rejecting NaN/Inf, non-numeric and complex input."""
    a = np.asarray(x)
    if a.dtype.kind in "iub":
        a = a.astype(np.float64)
    elif a.dtype.kind != "f":
        raise ValueError(f"{name} must be a real floating or integer array, got dtype {a.dtype}")
    if not np.all(np.isfinite(a)):
        bad = np.argwhere(~np.isfinite(a))[0]
        raise ValueError(f"{name} contains NaN or Inf (first at index {tuple(int(i) for i in bad)}: "
                         f"{a[tuple(bad)]!r})")
    return a


def check_positive_int(value, name: str) -> int:
    """Return ``value`` as an int if it is a positive integer, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def normalize_axis(axis, ndim: int) -> int:
    """Return ``axis`` in ``range(ndim)``; raise ``ValueError`` naming it if out of range."""
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise ValueError(f"axis must be an integer, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for an array with {ndim} dimension(s)")
    return int(axis) % ndim
