"""What to quantize and how: :class:`QuantSpec`, the parameters :class:`QParams`, and the
granularity helpers that map a tensor onto its parameter groups.

Granularity
-----------
=============  ================================================================================
``"tensor"``   one (scale, zero point) for the whole array; parameter shape ``()``.
``"channel"``  one per index along ``axis``; parameter shape ``(x.shape[axis],)``. For a weight
               in the (out_features, in_features) convention, ``axis=0`` is one scale per
               output channel.
``"group"``    groups of ``group_size`` consecutive elements along the *last* axis (the input
               dimension of a weight), separately for every index of the leading axes;
               parameter shape ``x.shape[:-1] + (n_groups,)`` with
               ``n_groups = ceil(K / group_size)``. Element ``i`` of a row belongs to group
               ``g_idx = i // group_size`` (the GPTQ convention), so where ``group_size`` does
               not divide ``K`` the last group is shorter: K = 576 with groups of 128 gives
               groups of 128, 128, 128, 128 and 64. ``axis`` plays no part in this granularity.
``"block"``,   2-D blocks and per-token tiles, for float specs only
``"token"``    (:class:`refquant.schemes.float_quant.FloatSpec`, which documents them); the
               helpers below serve both kinds of spec.
=============  ================================================================================

Zero-range convention
---------------------
A parameter group whose calibrated range is empty (all zeros) gets ``scale = 1`` and zero
point ``0`` (symmetric) or the code that represents 0 (asymmetric), so it quantizes to codes
for exactly 0 and dequantizes to exactly 0: no division by zero, no NaN. Scales are never
below ``np.finfo(np.float32).tiny`` (the smallest normal float32).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from refquant.schemes.numerics import (ROUNDING_MODES, check_bits, check_positive_int,
                                      code_dtype, int_range, normalize_axis)

GRANULARITIES = ("tensor", "channel", "group")


def check_granularity(granularity, axis, group_size) -> None:
    """Validate the granularity fields shared by every spec (``QuantSpec``, ``LogSpec``)."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise ValueError(f"axis must be an integer, got {axis!r}")
    if granularity == "group":
        check_positive_int(group_size, "group_size")
    elif group_size is not None:
        raise ValueError(f"group_size={group_size!r} is only meaningful with "
                         f"granularity='group', not {granularity!r}")


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize: bit width, symmetry, granularity and rounding.

    Parameters
    ----------
    bits : int
        Code width, one of 2..8 or 16.
    symmetric : bool
        ``True``: signed codes, zero point 0, ``x_hat = s q``. ``False``: unsigned codes
        ``[0, 2^b - 1]`` with an integer zero point ``z``, ``x_hat = s (q - z)``.
    granularity : {"tensor", "channel", "group"}
        See the module docstring.
    axis : int
        The channel axis for ``granularity="channel"`` (default 0: output channels).
    group_size : int or None
        Elements per group along the last axis; required for ``"group"`` and only there.
    rounding : {"half_even", "half_away"}
        Rounding of ``x / s`` to an integer.
    restricted : bool
        Symmetric only: use ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` instead of the full signed range
        (so that ``q(-x) = -q(x)`` holds for every code, as in many int8 inference engines).
    """

    bits: int = 8
    symmetric: bool = True
    granularity: str = "tensor"
    axis: int = 0
    group_size: int | None = None
    rounding: str = "half_even"
    restricted: bool = False

    def __post_init__(self):
        check_bits(self.bits)
        if not isinstance(self.symmetric, (bool, np.bool_)):
            raise ValueError(f"symmetric must be a bool, got {self.symmetric!r}")
        check_granularity(self.granularity, self.axis, self.group_size)
        if self.rounding not in ROUNDING_MODES:
            raise ValueError(f"rounding must be one of {ROUNDING_MODES}, got {self.rounding!r}")
        if self.restricted and not self.symmetric:
            raise ValueError("restricted=True applies to symmetric specs only")

    @property
    def qmin(self) -> int:
        """Smallest integer code."""
        return int_range(self.bits, self.symmetric, self.restricted)[0]

    @property
    def qmax(self) -> int:
        """Largest integer code."""
        return int_range(self.bits, self.symmetric, self.restricted)[1]

    @property
    def code_dtype(self) -> np.dtype:
        """NumPy dtype of the codes :func:`refquant.quantize` returns."""
        return code_dtype(self.bits, self.symmetric)


_INT32 = np.iinfo(np.int32)


def _int32_zero_point(zero_point, shape) -> np.ndarray:
    """``zero_point`` as int32 (zeros of ``shape`` when None); ``ValueError`` naming the first
    value that is not an integer or lies outside ``[-2^31, 2^31 - 1]`` (never wrapped)."""
    if zero_point is None:
        return np.zeros(shape, np.int32)
    z = np.asarray(zero_point)
    if z.dtype.kind == "O" and all(isinstance(v, int) and not isinstance(v, bool) for v in z.flat):
        # Python integers beyond int64/uint64 (NumPy keeps them as objects)
        bad = [v for v in z.flat if not _INT32.min <= v <= _INT32.max]
        if bad:
            raise ValueError(f"zero_point {bad[0]} is outside the int32 range "
                             f"[{_INT32.min}, {_INT32.max}]")
        z = z.astype(np.int64)
    if z.dtype.kind == "f":
        frac = ~np.isfinite(z) | (z != np.round(z))
        if np.any(frac):
            raise ValueError(f"zero_point must hold integers, got {z[frac].ravel()[0].item()!r}")
    elif z.dtype.kind not in "iu":
        raise ValueError(f"zero_point must be integer, got dtype {z.dtype}")
    out = (z > _INT32.max) if z.dtype.kind == "u" else ((z < _INT32.min) | (z > _INT32.max))
    if np.any(out):
        raise ValueError(f"zero_point {z[out].ravel()[0].item()!r} is outside the int32 range "
                         f"[{_INT32.min}, {_INT32.max}]")
    return z.astype(np.int32)


@dataclass(frozen=True)
class QParams:
    """Quantization parameters: ``scale`` (float32, > 0) and integer ``zero_point``, both of
    the spec's parameter shape (see :func:`param_shape`). ``x_hat = scale * (q - zero_point)``.

    Zero points are stored as int32; one that is not an integer or does not fit in int32 raises
    ``ValueError`` naming it (it is never wrapped around). Whether it lies in a spec's code range
    is :meth:`check`'s question.

    Examples
    --------
    >>> qp = QParams([0.5, 0.25], [3, 8])
    >>> qp.scale.dtype, qp.zero_point.tolist()
    (dtype('float32'), [3, 8])
    >>> QParams(1.0, 2**32 + 3)
    Traceback (most recent call last):
    ...
    ValueError: zero_point 4294967299 is outside the int32 range [-2147483648, 2147483647]
    """

    scale: np.ndarray
    zero_point: np.ndarray = field(default=None)

    def __post_init__(self):
        s = np.asarray(self.scale)
        if s.dtype.kind not in "fiu":
            raise ValueError(f"scale must be numeric, got dtype {s.dtype}")
        s = s.astype(np.float32)
        if not np.all(np.isfinite(s)) or np.any(s <= 0):
            bad = s[~(np.isfinite(s) & (s > 0))].ravel()[0]
            raise ValueError(f"scale must be finite and positive, got {bad!r}")
        z = _int32_zero_point(self.zero_point, s.shape)
        if z.shape != s.shape:
            raise ValueError(f"zero_point shape {z.shape} does not match scale shape {s.shape}")
        object.__setattr__(self, "scale", s)
        object.__setattr__(self, "zero_point", z)

    def check(self, spec: QuantSpec) -> None:
        """Raise ``ValueError`` naming the first zero point outside the spec's code range.

        >>> QParams(1.0, 16).check(QuantSpec(bits=4, symmetric=False))
        Traceback (most recent call last):
        ...
        ValueError: zero_point 16 outside the code range [0, 15]
        """
        if spec.symmetric and np.any(self.zero_point != 0):
            raise ValueError("a symmetric spec needs zero_point == 0, got "
                             f"{self.zero_point[self.zero_point != 0].ravel()[0]}")
        out = (self.zero_point < spec.qmin) | (self.zero_point > spec.qmax)
        if np.any(out):
            raise ValueError(f"zero_point {self.zero_point[out].ravel()[0]} outside the code range "
                             f"[{spec.qmin}, {spec.qmax}]")


# ---------------------------------------------------------------------------------------------
# Granularity helpers: every quantizer and observer goes through these three functions.


def n_groups(k: int, group_size: int) -> int:
    """Number of groups along a dimension of length ``k``: ``ceil(k / group_size)``."""
    return -(-int(k) // int(group_size))


def param_shape(shape: tuple[int, ...], spec: QuantSpec) -> tuple[int, ...]:
    """Shape of the scale / zero-point arrays for an array of ``shape`` under ``spec``.

    >>> param_shape((3, 5), QuantSpec(bits=4, granularity="group", group_size=2))   # 2, 2, 1
    (3, 3)
    """
    shape = tuple(int(n) for n in shape)
    if spec.granularity == "tensor":
        return ()
    if len(shape) == 0:
        raise ValueError(f"granularity {spec.granularity!r} needs an array with at least one axis")
    if spec.granularity == "channel":
        return (shape[normalize_axis(spec.axis, len(shape))],)
    if spec.granularity == "block":
        _check_block_ndim(shape)
        return shape[:-2] + tuple(n_groups(n, b) for n, b in zip(shape[-2:], spec.block_shape))
    return shape[:-1] + (n_groups(shape[-1], _row_group_size(shape[-1], spec)),)


def _row_group_size(k: int, spec) -> int:
    """Elements per group along the last axis: ``group_size``, or for ``"token"`` (float specs)
    ``group_size`` (which must divide ``k``) or the whole row."""
    if spec.granularity != "token":
        return spec.group_size
    if spec.group_size is None:
        return max(int(k), 1)
    if k % spec.group_size:
        raise ValueError(f"token tiles of group_size={spec.group_size} do not divide the row "
                         f"length {k}")
    return spec.group_size


def _check_block_ndim(shape) -> None:
    if len(shape) < 2:
        raise ValueError(f"granularity 'block' needs an array with at least two axes, got shape "
                         f"{tuple(shape)}")


def grouped(x: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """View ``x`` as ``param_shape + (m,)``: the last axis holds the members of one group.

    Groups with fewer than ``m`` members (the short last group of ``"group"``) are padded
    with NaN, so reductions over the last axis use the NaN-aware NumPy functions.

    >>> grouped(np.arange(5.0)[None], QuantSpec(granularity="group", group_size=2)).tolist()
    [[[0.0, 1.0], [2.0, 3.0], [4.0, nan]]]
    """
    x = np.asarray(x)
    if x.size == 0:
        raise ValueError(f"cannot compute quantization parameters of an empty array (shape {x.shape})")
    if spec.granularity == "tensor":
        return x.reshape(-1)
    if spec.granularity == "channel":
        ax = normalize_axis(spec.axis, x.ndim)
        return np.moveaxis(x, ax, 0).reshape(x.shape[ax], -1)
    if spec.granularity == "block":
        return _grouped_blocks(x, spec.block_shape)
    k = x.shape[-1]
    g = _row_group_size(k, spec)
    ng = n_groups(k, g)
    pad = ng * g - k
    xf = x.astype(np.float64) if x.dtype.kind != "f" else x
    if pad:
        xf = np.concatenate([xf, np.full(x.shape[:-1] + (pad,), np.nan, xf.dtype)], axis=-1)
    return xf.reshape(x.shape[:-1] + (ng, g))


def _grouped_blocks(x: np.ndarray, block_shape) -> np.ndarray:
    """``x [..., R, C]`` as ``[..., nR, nC, b_r * b_c]``: the members of each 2-D block, the
    edge blocks NaN-padded."""
    _check_block_ndim(x.shape)
    (br, bc), (R, C) = block_shape, x.shape[-2:]
    nr, nc = n_groups(R, br), n_groups(C, bc)
    xf = x.astype(np.float64) if x.dtype.kind != "f" else x
    pad = [(0, 0)] * (x.ndim - 2) + [(0, nr * br - R), (0, nc * bc - C)]
    xf = np.pad(xf, pad, constant_values=np.nan)                 # [..., nR*b_r, nC*b_c]
    xf = xf.reshape(x.shape[:-2] + (nr, br, nc, bc))
    return np.swapaxes(xf, -3, -2).reshape(x.shape[:-2] + (nr, nc, br * bc))


def g_idx(in_features: int, group_size: int) -> np.ndarray:
    """The group of every input column: ``g_idx[i] = i // group_size`` (int32, shape ``[K]``).

    The GPTQ convention: where ``group_size`` does not divide ``in_features`` the last group is
    shorter.

    >>> g_idx(5, 2)
    array([0, 0, 1, 1, 2], dtype=int32)
    """
    return (np.arange(int(in_features)) // int(group_size)).astype(np.int32)


def expand(p: np.ndarray, shape: tuple[int, ...], spec: QuantSpec) -> np.ndarray:
    """Broadcast a parameter array of ``param_shape(shape, spec)`` against an array of ``shape``.

    >>> expand(np.array([[1.0, 2.0, 3.0]]), (1, 5), QuantSpec(granularity="group", group_size=2))
    array([[1., 1., 2., 2., 3.]])
    """
    p = np.asarray(p)
    expected = param_shape(shape, spec)
    if p.shape != expected:
        raise ValueError(f"parameter shape {p.shape} does not match {expected} expected for an "
                         f"array of shape {tuple(shape)} with granularity {spec.granularity!r}")
    if spec.granularity == "tensor":
        return p
    if spec.granularity == "channel":
        ax = normalize_axis(spec.axis, len(shape))
        return p.reshape((-1,) + (1,) * (len(shape) - 1 - ax))
    if spec.granularity == "block":
        (br, bc), (R, C) = spec.block_shape, shape[-2:]
        rows, cols = g_idx(R, br), g_idx(C, bc)
        return p[..., rows[:, None], cols[None, :]]              # [..., nR, nC] -> [..., R, C]
    return p[..., g_idx(shape[-1], _row_group_size(shape[-1], spec))]   # [..., n_groups] -> [..., K]
