"""Codebook quantization: nearest level from a sorted table, and the NF4 table of QLoRA.

.. math::

    q = \\arg\\min_i |x / s - c_i|, \\qquad \\hat x = s\\, c_q

The log-scale quantizer and Lloyd-Max fitting in :mod:`refquant.schemes.nonuniform` are built on the
rule here; :mod:`refquant.schemes.nonuniform` re-exports every public name of this module.

Symbols
-------
=  ===============================================================
x  real input, any shape (weights are (out_features, in_features))
s  scale > 0: a scalar, or one per block, broadcast against ``x``
c  levels, 1-D, strictly increasing (float64 internally)
q  integer code, an index into ``c``
=  ===============================================================

Nearest level and ties
----------------------
The code is the index of the nearest level to ``u = x / s`` (``u`` computed in float64).
Halfway between two levels, the *lower* level (smaller index) wins. The decision thresholds
are the exact midpoints :math:`(c_i + c_{i+1}) / 2`: the float64 sum :math:`S_i = c_i \\oplus
c_{i+1}` can round (e.g. for the table ``[-2, -2^-52]`` the midpoint ``-1 - 2^-53`` is no float64),
so its rounding error :math:`E_i = c_i + c_{i+1} - S_i` is kept (Knuth's TwoSum, error-free) and
:math:`2u` is compared with the pair: :math:`2u > S_i + E_i` iff :math:`2u > S_i`, or
:math:`2u = S_i` and :math:`E_i < 0` (no float64 lies strictly between :math:`S_i` and
:math:`S_i + E_i`). Values beyond the first or last level clip to it. Tables must have
:math:`|c_i| \\le 2^{1022}` and strictly increasing sums :math:`S_i` (true unless three entries
are within two float64 steps of each other); otherwise ``ValueError``.

Zero-range convention
---------------------
An all-zero NF4 block gets the absmax scale 1, so it quantizes to the code of exactly 0 and
dequantizes to exactly 0, without NaN. Scales are never below the smallest normal float32.

References
----------
.. [1] T. Dettmers, A. Pagnoni, A. Holtzman, L. Zettlemoyer, "QLoRA: Efficient Finetuning of
       Quantized LLMs", NeurIPS 2023, arXiv:2305.14314.
.. [2] D. E. Knuth, "The Art of Computer Programming", vol. 2, 3rd ed., 1997, sec. 4.2.2
       (the error-free sum, TwoSum).
"""

from __future__ import annotations

import numpy as np

from refquant.schemes.numerics import as_float_array, check_positive_int
from refquant.schemes.spec import QuantSpec, expand, grouped

_TINY = np.float64(np.finfo(np.float32).tiny)
_C_MAX = 2.0**1022            # table entries: |c| <= _C_MAX, so c_i + c_{i+1} cannot overflow
MAX_CODEBOOK_LEVELS = 2**16   # codes fit in uint16

# The 16 NF4 levels as published with QLoRA [1] (bitsandbytes' table; float32 values).
# They are the normal quantiles of QLoRA's construction, normalised to [-1, 1]; the tests
# recompute them from scipy.stats.norm.ppf.
NF4_LEVELS = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], dtype=np.float32)
NF4_LEVELS.setflags(write=False)


# ---------------------------------------------------------------------------------------------
# Codebooks


def _check_levels(levels, name: str = "levels") -> np.ndarray:
    """``levels`` as a float64 1-D array; ``ValueError`` unless finite and strictly increasing."""
    c = np.asarray(levels)
    if c.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a real array, got dtype {c.dtype}")
    c = c.astype(np.float64)
    if c.ndim != 1 or c.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D table, got shape {c.shape}")
    if c.size > MAX_CODEBOOK_LEVELS:
        raise ValueError(f"{name} has {c.size} entries; at most {MAX_CODEBOOK_LEVELS} are supported")
    if not np.all(np.isfinite(c)):
        raise ValueError(f"{name} contains NaN or Inf: {c[~np.isfinite(c)][0]!r}")
    bad = np.flatnonzero(np.diff(c) <= 0)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name} must be sorted strictly increasing, but entry {i} = {float(c[i])!r} "
                         f"is followed by {float(c[i + 1])!r}")
    if np.any(np.abs(c) > _C_MAX):
        raise ValueError(f"{name} has an entry beyond 2**1022 in magnitude: {float(c[np.abs(c) > _C_MAX][0])!r}")
    if not _separable(c):
        raise ValueError(f"{name} has entries too close together (within two float64 steps) to order "
                         f"their decision thresholds")
    return c


def _twice_thresholds(c: np.ndarray):
    """``c_i + c_{i+1} = S_i + E_i`` exactly (TwoSum, D. E. Knuth, TAOCP vol. 2, 4.2.2)."""
    a, b = c[:-1], c[1:]
    S = a + b                                                 # [n - 1] rounded sums
    b_virtual = S - a
    E = (a - (S - b_virtual)) + (b - b_virtual)               # [n - 1] their exact errors
    return S, E


def _separable(c: np.ndarray) -> bool:
    S, _ = _twice_thresholds(c)
    return bool(np.all(np.diff(c) > 0) and np.all(np.diff(S) > 0))


def _check_scale(scale, shape, name: str = "scale") -> np.ndarray:
    s = np.asarray(scale)
    if s.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be numeric, got dtype {s.dtype}")
    s = s.astype(np.float64)
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"{name} must be finite and positive, got {s[~(np.isfinite(s) & (s > 0))].ravel()[0]!r}")
    try:
        out = np.broadcast_shapes(s.shape, tuple(shape))
    except ValueError:
        out = None
    if out != tuple(shape):
        raise ValueError(f"{name} of shape {s.shape} does not broadcast to the data shape {tuple(shape)}")
    return s


def _nearest_index(u: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of the increasing table ``c`` to each ``u``; ties go lower.

    The index is the number of exact midpoints strictly below ``u`` (module docstring)."""
    S, E = _twice_thresholds(c)                               # [n - 1] twice the midpoints
    v = 2.0 * u                                               # exact (inf on overflow: still ordered)
    i = np.searchsorted(S, v, side="left")                    # number of S_j < v
    j = np.minimum(i, S.size - 1) if S.size else np.zeros_like(i)
    if S.size:
        i = i + ((i < S.size) & (S[j] == v) & (E[j] < 0))     # midpoint S_j + E_j just below v
    return i


def _codebook_dtype(n: int) -> np.dtype:
    return np.dtype(np.uint8 if n <= 256 else np.uint16)


def codebook_quantize(x, levels, scale=1.0) -> np.ndarray:
    """Codes of the nearest level: ``q = argmin_i |x / s - c_i|`` (ties to the lower level).

    Parameters
    ----------
    x : array_like of float, any shape
        Must be finite.
    levels : array_like of float, shape (n,)
        The table ``c``, strictly increasing and finite (``ValueError`` naming it otherwise).
    scale : float or array_like of float, broadcastable to ``x.shape``
        ``s > 0``.

    Returns
    -------
    numpy.ndarray of uint8 (n <= 256) or uint16, the shape of ``x``

    Examples
    --------
    >>> codebook_quantize([-3.0, 0.2, 0.5, 0.51, 7.0], [-1.0, 0.0, 1.0])
    array([0, 1, 1, 2, 2], dtype=uint8)
    """
    x = as_float_array(x)
    c = _check_levels(levels)
    s = _check_scale(scale, x.shape)
    u = x.astype(np.float64) / s                               # [...]
    return _nearest_index(u, c).astype(_codebook_dtype(c.size))


def codebook_dequantize(codes, levels, scale=1.0, dtype=np.float32) -> np.ndarray:
    """Values ``x_hat = s * c[q]`` (float64 arithmetic, returned as ``dtype``).

    >>> codebook_dequantize(np.array([0, 2, 1], np.uint8), [-1.0, 0.0, 1.0], 0.5)
    array([-0.5,  0.5,  0. ], dtype=float32)
    """
    c = _check_levels(levels)
    q = np.asarray(codes)
    if q.dtype.kind not in "iu":
        raise ValueError(f"codes must be an integer array, got dtype {q.dtype}")
    if q.size and (q.min() < 0 or q.max() >= c.size):
        raise ValueError(f"codes must index a table of {c.size} levels, found {q.min()}..{q.max()}")
    s = _check_scale(scale, q.shape)
    return (s * c[q]).astype(dtype)


# ---------------------------------------------------------------------------------------------
# NF4 with absmax blocks


def _block_spec(block_size) -> QuantSpec:
    return QuantSpec(bits=4, granularity="group", group_size=check_positive_int(block_size, "block_size"))


def _absmax(x: np.ndarray, spec) -> np.ndarray:
    """Per-group ``max |x|`` as float32; an all-zero group gets 1 (zero-range convention)."""
    amax = np.nanmax(np.abs(grouped(x, spec)), axis=-1)
    if spec.granularity == "tensor":
        amax = np.asarray(amax).reshape(())
    return np.where(amax == 0, 1.0, np.maximum(amax, _TINY)).astype(np.float32)


def nf4_quantize(x, block_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """NF4 codes with one absmax scale per block of ``block_size`` elements along the last axis.

    .. math:: s_b = \\max_{i \\in b} |x_i|, \\qquad q_i = \\arg\\min_j |x_i / s_b - c^{NF4}_j|

    Blocks follow refquant's group convention (``g_idx = i // block_size``, a shorter last
    block where ``block_size`` does not divide the row length). QLoRA blocks the flattened
    tensor; for rows whose length is a multiple of ``block_size`` the two agree.

    Returns
    -------
    codes : numpy.ndarray of uint8, the shape of ``x``, values 0..15 (index into NF4_LEVELS)
    absmax : numpy.ndarray of float32, shape ``x.shape[:-1] + (ceil(K / block_size),)``

    Examples
    --------
    >>> codes, absmax = nf4_quantize(np.array([[0.0, 0.5, -1.0, 2.0]]), block_size=4)
    >>> codes, absmax
    (array([[ 7, 10,  2, 15]], dtype=uint8), array([[2.]], dtype=float32))
    >>> nf4_dequantize(codes, absmax, block_size=4)[0, [0, 3]]      # 0 and the absmax are exact
    array([0., 2.], dtype=float32)
    """
    x = as_float_array(x)
    spec = _block_spec(block_size)
    absmax = _absmax(x, spec)
    return codebook_quantize(x, NF4_LEVELS, expand(absmax, x.shape, spec)), absmax


def nf4_dequantize(codes, absmax, block_size: int = 64, dtype=np.float32) -> np.ndarray:
    """Inverse of :func:`nf4_quantize`: ``x_hat_i = s_b * NF4_LEVELS[q_i]``."""
    codes = np.asarray(codes)
    spec = _block_spec(block_size)
    s = _check_scale(absmax, np.asarray(absmax).shape, "absmax")
    return codebook_dequantize(codes, NF4_LEVELS, expand(s, codes.shape, spec), dtype=dtype)


__all__ = ["codebook_quantize", "codebook_dequantize", "NF4_LEVELS", "nf4_quantize", "nf4_dequantize"]
