"""Scaled quantization with floating-point elements: FP8/FP6/FP4 codes times a float scale.

.. math::

    q = \\operatorname{fp}(x / s), \\qquad \\hat x = s \\cdot v(q), \\qquad
    s = \\frac{\\max |x|}{x_{max}}

``fp`` rounds to the element format's grid (:func:`refquant.schemes.floats.float_bits`,
saturating by default) and ``v`` decodes a code (:func:`~refquant.schemes.floats.from_float_bits`);
the scale maps each parameter group's largest magnitude onto the format's largest finite value
``x_max`` (448 for E4M3FN), as FP8 inference engines and DeepSeek-V3 [1]_ do.

:class:`FloatSpec`, not a field of :class:`refquant.QuantSpec`
---------------------------------------------------------------
A float element has no zero point, no integer code range, no ``restricted`` range and no bit
width apart from its format; its codes are bit patterns (uint8), not integers to subtract a
zero point from. A sibling spec keeps every field of each spec meaningful and leaves the
integer path untouched. Both go through the same public functions: ``rq.calibrate``,
``rq.quantize``, ``rq.dequantize``, ``rq.fake_quantize``, ``rq.clip_range``, ``rq.size_report``
and ``rq.gptq`` accept either, and the granularity helpers of :mod:`refquant.schemes.spec`
(``param_shape``, ``grouped``, ``expand``) serve both. ``QParams.zero_point`` is always 0.

Granularity
-----------
``"tensor"``, ``"channel"`` and ``"group"`` are exactly those of :class:`refquant.QuantSpec`
(the last group shorter where ``group_size`` does not divide the row), plus:

===========  ===================================================================================
``"block"``  2-D tiles of ``block_shape = (b_r, b_c)`` over the last two axes, one scale each:
             parameter shape ``x.shape[:-2] + (ceil(R / b_r), ceil(C / b_c))``. DeepSeek-V3
             stores its FP8 weights with 128 x 128 blocks [1]_, and like its checkpoints
             (``weight_scale_inv`` of ``kv_a_proj_with_mqa``, 576 x 7168, is 5 x 56) the edge
             blocks are shorter where the block does not divide the matrix.
``"token"``  dynamic per-token scaling for activations ``[..., T, K]``: one scale per token
             (``group_size=None``) or per ``1 x group_size`` tile of it; parameter shape
             ``x.shape[:-1] + (K / group_size,)``. As in DeepSeek-V3's ``act_quant`` the tile
             must divide ``K`` (``ValueError`` naming both otherwise). "Dynamic" means the
             scales come from the tensor being quantized: ``rq.fake_quantize(x, spec)``
             calibrates on ``x`` itself, at every call.
===========  ===================================================================================

Error bounds (tested in ``tests/test_float_quant.py``)
------------------------------------------------------
With ``m`` mantissa bits, for ``|x| / s`` in the normal range of the format and at most
``x_max`` (always, for the min-max scale), :math:`|x - \\hat x| \\le 2^{-(m+1)} |x|`; below the
normal range :math:`|x - \\hat x| \\le s \\cdot` ``min_subnormal / 2``. ``x / s`` is computed in
float64 (one rounding, relative ``2^-53``); the element rounding is then exact, and
``s * v`` is exact in float64 (a float32 times a value of at most 4 significant bits).

Zero-range convention
---------------------
As for integer specs: an all-zero group gets ``s = 1`` (codes of +0, exactly 0 back); scales are
never below the smallest normal float32.

References
----------
.. [1] DeepSeek-AI, "DeepSeek-V3 Technical Report", arXiv:2412.19437, 2024 (section 3.3,
       fine-grained FP8 quantization: 1 x 128 activation tiles, 128 x 128 weight blocks).
.. [2] P. Micikevicius et al., "FP8 Formats for Deep Learning", arXiv:2209.05433, 2022.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refquant.schemes.floats import (FLOAT_FORMATS, FloatFormat, _special, float_bits,
                                     from_float_bits)
from refquant.schemes.numerics import ROUNDING_MODES, as_float_array, check_positive_int
from refquant.schemes.spec import QParams, expand

FLOAT_GRANULARITIES = ("tensor", "channel", "group", "block", "token")
_TINY = np.float64(np.finfo(np.float32).tiny)


@dataclass(frozen=True)
class FloatSpec:
    """Scaled quantization with float elements: format, granularity, overflow and rounding.

    Parameters
    ----------
    fmt : str
        Element format: ``"e4m3fn"``, ``"e5m2"``, ``"e2m3fn"``, ``"e3m2fn"`` or ``"e2m1fn"``
        (see :mod:`refquant.schemes.floats`; ``"e8m0fnu"`` is a scale format, not an element).
    granularity : {"tensor", "channel", "group", "block", "token"}
        See the module docstring.
    axis : int
        The channel axis for ``"channel"`` (default 0: output channels).
    group_size : int or None
        Elements per group along the last axis: required for ``"group"``, optional for
        ``"token"`` (None: the whole row), not allowed otherwise.
    block_shape : tuple of two ints or None
        ``(b_r, b_c)`` for ``"block"`` (and only there), e.g. ``(128, 128)``.
    saturate : bool
        Clamp elements beyond the format's largest finite value (True) or fail on them: with
        ``False`` an overflowing element raises ``ValueError`` where the format would give
        NaN/Inf (min-max scales never overflow; given scales can).
    rounding : {"half_even", "half_away"}
        Tie rule of the element rounding.

    Examples
    --------
    >>> spec = FloatSpec("e4m3fn", granularity="block", block_shape=(128, 128))
    >>> spec.bits, spec.qmax
    (8, 448.0)
    """

    fmt: str = "e4m3fn"
    granularity: str = "tensor"
    axis: int = 0
    group_size: int | None = None
    block_shape: tuple | None = None
    saturate: bool = True
    rounding: str = "half_even"

    def __post_init__(self):
        if not isinstance(self.fmt, str) or self.fmt not in FLOAT_FORMATS:
            raise ValueError(f"unknown float format {self.fmt!r}; expected one of "
                             f"{tuple(n for n, f in FLOAT_FORMATS.items() if f.signed)}")
        if not FLOAT_FORMATS[self.fmt].signed:
            raise ValueError(f"{self.fmt!r} is a scale format (no sign, no zero), not an element format")
        if self.granularity not in FLOAT_GRANULARITIES:
            raise ValueError(f"granularity must be one of {FLOAT_GRANULARITIES}, got {self.granularity!r}")
        if isinstance(self.axis, bool) or not isinstance(self.axis, (int, np.integer)):
            raise ValueError(f"axis must be an integer, got {self.axis!r}")
        if self.granularity == "group" or (self.granularity == "token" and self.group_size is not None):
            check_positive_int(self.group_size, "group_size")
        elif self.group_size is not None:
            raise ValueError(f"group_size={self.group_size!r} is only meaningful with granularity "
                             f"'group' or 'token', not {self.granularity!r}")
        if self.granularity == "block":
            bs = self.block_shape
            if not isinstance(bs, tuple) or len(bs) != 2:
                raise ValueError(f"block_shape must be a tuple (rows, cols), got {bs!r}")
            for n in bs:
                check_positive_int(n, "block_shape entry")
            object.__setattr__(self, "block_shape", (int(bs[0]), int(bs[1])))
        elif self.block_shape is not None:
            raise ValueError(f"block_shape={self.block_shape!r} is only meaningful with "
                             f"granularity='block', not {self.granularity!r}")
        if not isinstance(self.saturate, (bool, np.bool_)):
            raise ValueError(f"saturate must be a bool, got {self.saturate!r}")
        if self.rounding not in ROUNDING_MODES:
            raise ValueError(f"rounding must be one of {ROUNDING_MODES}, got {self.rounding!r}")

    @property
    def format(self) -> FloatFormat:
        """The element format's row of :data:`refquant.FLOAT_FORMATS`."""
        return FLOAT_FORMATS[self.fmt]

    @property
    def bits(self) -> int:
        """Bits per element code (8, 6 or 4)."""
        return self.format.nbits

    symmetric = True            # a float grid is symmetric about 0: zero point 0, s = amax / qmax
    code_dtype = np.dtype(np.uint8)

    @property
    def qmax(self) -> float:
        """The largest element value, ``max_normal`` of the format."""
        return self.format.max_normal

    @property
    def qmin(self) -> float:
        """The smallest element value, ``-max_normal``."""
        return -self.format.max_normal


def float_qparams_from_range(lo, hi, spec: FloatSpec) -> QParams:
    """Scales ``s = max(|lo|, |hi|) / x_max`` (float32, zero point 0) for the clipping ranges
    ``[lo, hi]`` of each parameter group; an empty range (all zeros) gets ``s = 1``.

    >>> float(float_qparams_from_range(-896.0, 3.0, FloatSpec("e4m3fn")).scale)
    2.0
    """
    lo = as_float_array(lo, "lo").astype(np.float64)
    hi = as_float_array(hi, "hi").astype(np.float64)
    if lo.shape != hi.shape:
        raise ValueError(f"lo shape {lo.shape} and hi shape {hi.shape} differ")
    amax = np.maximum(np.abs(lo), np.abs(hi))
    s = np.where(amax == 0, 1.0, np.maximum(amax / spec.qmax, _TINY)).astype(np.float32)
    return QParams(s, np.zeros(s.shape, np.int32))


def round_to_float_grid(w, s, fmt, *, saturate: bool = True, rounding: str = "half_even"):
    """The one float-element rounding core: ``s * v(fp(w / s))`` and the codes, in float64.

    This is the per-column step of GPTQ on float grids (:func:`refquant.gptq` with a
    :class:`FloatSpec`) and the hook for any other static scale: pass a column ``w`` [d_row]
    and its scales ``s`` [d_row] (or any two arrays that broadcast), get the rounded column.
    :func:`float_quantize` / :func:`float_dequantize` are this function with their checks.

    Parameters
    ----------
    w, s : array_like of float
        Values and positive finite scales (already expanded to broadcast against ``w``).
    fmt : str or FloatFormat
        A signed element format of :data:`refquant.FLOAT_FORMATS`.
    saturate, rounding
        As in :func:`refquant.float_bits`.

    Returns
    -------
    (codes, w_hat) : uint8 array and float64 array, the broadcast shape

    Examples
    --------
    >>> codes, w_hat = round_to_float_grid([0.3, -1.0, 7.0], [0.5, 0.5, 0.5], "e2m1fn")
    >>> codes.tolist(), w_hat.tolist()      # 0.6 -> 0.5, -2 -> -2, 14 -> 6 (saturated)
    ([1, 12, 7], [0.25, -1.0, 3.0])
    """
    w = np.asarray(w, np.float64)
    s = np.asarray(s, np.float64)
    codes = float_bits(w / s, fmt, saturate=saturate, rounding=rounding)
    return codes, s * from_float_bits(codes, fmt).astype(np.float64)


def _checked_scales(shape, qp: QParams, spec: FloatSpec) -> np.ndarray:
    if not isinstance(qp, QParams):
        raise ValueError(f"qparams must be a QParams, got {type(qp).__name__}")
    if np.any(qp.zero_point != 0):
        raise ValueError("a float spec needs zero_point == 0, got "
                         f"{qp.zero_point[qp.zero_point != 0].ravel()[0]}")
    return expand(qp.scale, shape, spec).astype(np.float64)


def float_quantize(x, qp: QParams, spec: FloatSpec) -> np.ndarray:
    """Element codes (uint8) ``q = fp(x / s)``; what :func:`refquant.quantize` returns for a
    :class:`FloatSpec`.

    >>> float_quantize([1.0, -3.0, 500.0], QParams(1.0), FloatSpec("e4m3fn")).tolist()
    [56, 196, 126]
    """
    x = as_float_array(x)
    s = _checked_scales(x.shape, qp, spec)
    codes = float_bits(x.astype(np.float64) / s, spec.fmt, saturate=spec.saturate,
                       rounding=spec.rounding)
    over = _special(codes.astype(np.int64), spec.format)       # saturate=False: NaN/Inf codes
    if np.any(over):
        raise ValueError(f"x holds {float(x[over].ravel()[0])!r}, which overflows {spec.fmt} at its "
                         f"scale {float(np.broadcast_to(s, x.shape)[over].ravel()[0])!r} "
                         f"(saturate=False)")
    return codes


def float_dequantize(q, qp: QParams, spec: FloatSpec, dtype=np.float32) -> np.ndarray:
    """``x_hat = s * v(q)`` (float64, returned as ``dtype``); codes out of range or NaN/Inf
    codes raise ``ValueError``."""
    q = np.asarray(q)
    if q.dtype.kind not in "iu":
        raise ValueError(f"codes must be an integer array, got dtype {q.dtype}")
    s = _checked_scales(q.shape, qp, spec)
    return (s * from_float_bits(q, spec.fmt).astype(np.float64)).astype(dtype)


def float_clip_range(qp: QParams, spec: FloatSpec):
    """The representable range ``[-s x_max, s x_max]`` of each parameter group."""
    s = qp.scale.astype(np.float64)
    return -s * spec.qmax, s * spec.qmax


__all__ = ["FloatSpec", "FLOAT_GRANULARITIES", "float_qparams_from_range", "round_to_float_grid",
           "float_quantize", "float_dequantize", "float_clip_range"]
