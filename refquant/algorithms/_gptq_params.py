"""GPTQ's argument checks, its quantization parameters and its per-column rounding step, for
integer and float grids.

:func:`refquant.algorithms.gptq.gptq` fixes tensor, channel, static-group and block parameters
before the pass (:func:`_params_before_pass`), computes a dynamic group's when its first column
is reached (:func:`_minmax_qparams`) and rounds one column at a time (:func:`_quantize_column`).
Integer specs use the reference implementations' arithmetic
(:func:`refquant.schemes.uniform._qparams_from_range_gptq_reference`); float element specs
(:class:`refquant.schemes.float_quant.FloatSpec`) the scale ``max|w| / x_max`` and
:func:`refquant.schemes.float_quant.round_to_float_grid`. See the module docstring of
:mod:`refquant.algorithms.gptq` ("Group parameters", "Float grids").

Symbols: ``W`` [d_row, d_col] the weights, ``S, Z`` [d_row, n_fixed] the fixed scales and zero
points expanded to rows (float64, Fortran order), ``col_k`` [d_col] the column of ``S, Z`` that
input ``c`` uses.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from refquant.schemes.float_quant import FloatSpec, float_qparams_from_range, round_to_float_grid
from refquant.schemes.numerics import as_float_array, check_positive_int, normalize_axis
from refquant.schemes.spec import QParams, QuantSpec, g_idx, grouped, n_groups, param_shape
from refquant.schemes.uniform import _dequantize_codes, _qparams_from_range_gptq_reference, _round_codes


#: what a dynamic group's parameters are computed from (see :func:`refquant.algorithms.gptq.gptq`)
GROUP_PARAMS = ("reference", "updated")


def _check_inputs(W, H, spec, block_size, damp, group_params, damp_retries, dtype, grid=None):
    """:func:`refquant.algorithms.gptq.gptq`'s arguments: ``(W, H)`` as float arrays, ``H``
    a new float64 array symmetrized as ``(H + H^T) / 2``; ``ValueError`` naming a bad one."""
    if grid is not None:
        if spec is not None:
            raise ValueError(f"pass either spec or grid, not both (got spec={spec!r})")
        if not callable(getattr(grid, "round", None)) or not hasattr(grid, "code_dtype"):
            raise ValueError(f"grid must have a round(w, c) method and a code_dtype, got "
                             f"{type(grid).__name__}")
    elif not isinstance(spec, (QuantSpec, FloatSpec)):
        raise ValueError(f"spec must be a QuantSpec or FloatSpec, got {type(spec).__name__}")
    W = as_float_array(W, "W")
    H = as_float_array(H, "H")
    if W.ndim != 2 or W.size == 0:
        raise ValueError(f"W must be a non-empty 2-D array [out, in], got shape {W.shape}")
    d_col = W.shape[1]
    if H.shape != (d_col, d_col):
        raise ValueError(f"H must have shape ({d_col}, {d_col}) for W of shape {W.shape}, got {H.shape}")
    H = H.astype(np.float64, copy=False)
    D = np.subtract(H, H.T)                                             # [d_col, d_col]
    # |H_ij| <= max(H_ii, H_jj) for a PSD matrix: the diagonal sets the scale
    if max(D.max(), -D.min()) > 1e-5 * max(float(np.abs(np.diag(H)).max()), np.finfo(np.float64).tiny):
        worst = np.unravel_index(np.argmax(np.abs(D)), H.shape)
        raise ValueError(f"H must be symmetric; H{worst} = {H[worst]!r} but "
                         f"H{worst[::-1]} = {H[worst[::-1]]!r}")
    D *= -0.5
    D += H                                                              # (H + H^T) / 2, a new array
    H = D
    if np.any(np.diag(H) < 0):
        raise ValueError(f"H must have a non-negative diagonal, found {np.diag(H).min()!r}")
    check_positive_int(block_size, "block_size")
    if isinstance(damp, bool) or not isinstance(damp, (int, float, np.floating, np.integer)) \
            or not np.isfinite(damp) or damp < 0:
        raise ValueError(f"damp must be a finite number >= 0, got {damp!r}")
    if isinstance(damp_retries, bool) or not isinstance(damp_retries, (int, np.integer)) or damp_retries < 0:
        raise ValueError(f"damp_retries must be an int >= 0, got {damp_retries!r}")
    if group_params not in GROUP_PARAMS:
        raise ValueError(f"group_params must be one of {GROUP_PARAMS}, got {group_params!r}")
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {np.dtype(dtype)}")
    if spec is not None and spec.granularity == "channel" and normalize_axis(spec.axis, 2) != 0:
        raise ValueError(f"GPTQ needs per-output-channel parameters (axis=0), got axis={spec.axis}")
    return W, H


def _check_spec(spec, static_groups, qparams, shape):
    """The spec and the given static parameters: ``ValueError`` for what GPTQ cannot do."""
    if isinstance(spec, FloatSpec):
        if spec.granularity == "token":
            raise ValueError("granularity 'token' is dynamic activation scaling; GPTQ quantizes "
                             "weights (use 'channel', 'group' or 'block')")
        if not spec.saturate:
            raise ValueError("GPTQ's error feedback moves weights past their scale's range, so a "
                             "FloatSpec for gptq must saturate (saturate=True)")
    if spec.granularity == "block" and not static_groups and qparams is None:
        raise ValueError("block scales are fixed before the pass: pass static_groups=True")
    if qparams is not None:
        if not isinstance(qparams, QParams):
            raise ValueError(f"qparams must be a QParams, got {type(qparams).__name__}")
        if qparams.scale.shape != param_shape(shape, spec):
            raise ValueError(f"qparams shape {qparams.scale.shape} does not match "
                             f"{param_shape(shape, spec)} for W of shape {shape}")
        if isinstance(spec, QuantSpec):
            qparams.check(spec)
        elif np.any(qparams.zero_point != 0):
            raise ValueError("a FloatSpec needs zero_point == 0")


def _range_qparams(lo, hi, spec) -> QParams:
    """Parameters of the ranges ``[lo, hi]``: the reference's arithmetic for integer grids,
    ``s = max(|lo|, |hi|) / x_max`` for float elements."""
    if isinstance(spec, FloatSpec):
        return float_qparams_from_range(lo, hi, spec)
    return _qparams_from_range_gptq_reference(lo, hi, spec)


def _minmax_qparams(Wg, spec) -> QParams:
    """Min-max parameters of each row of ``Wg`` [d_row, k] (the reference's arithmetic)."""
    return _range_qparams(Wg.min(axis=1), Wg.max(axis=1), spec)


class _FixedParams(NamedTuple):
    """Parameters fixed before the pass: the result's ``qparams``, float64 Fortran copies
    ``S, Z`` [d_row, n_fixed], and the column ``col_k[c]`` of ``S, Z`` of each input ``c``."""

    qparams: QParams
    S: np.ndarray
    Z: np.ndarray
    col_k: np.ndarray


def _params_before_pass(W, spec, static_groups: bool, qparams: QParams | None = None) -> _FixedParams | None:
    """Tensor, channel, static-group or block parameters (``qparams`` if given, else min-max
    from ``W``); ``None`` for dynamic groups."""
    d_row, d_col = W.shape
    col_k = np.zeros(d_col, np.intp)
    if spec.granularity == "group" and not static_groups and qparams is None:
        return None
    if qparams is not None:
        qp = qparams
    elif spec.granularity == "tensor":
        qp = _range_qparams(W.min(), W.max(), spec)                                # scalars
    elif spec.granularity == "channel":
        qp = _minmax_qparams(W, spec)                                              # [d_row]
    elif spec.granularity == "block":
        Wb = grouped(W, spec)                                                      # [nR, nC, b_r b_c]
        qp = _range_qparams(np.nanmin(Wb, axis=-1), np.nanmax(Wb, axis=-1), spec)  # [nR, nC]
    else:
        gs = spec.group_size
        parts = [_minmax_qparams(W[:, g * gs:(g + 1) * gs], spec) for g in range(n_groups(d_col, gs))]
        qp = QParams(np.stack([p.scale for p in parts], axis=1), np.stack([p.zero_point for p in parts], axis=1))
    if spec.granularity == "group":
        col_k = g_idx(d_col, spec.group_size)                                      # [d_row, n_groups]
    if spec.granularity == "block":                                                # rows -> row blocks
        col_k = g_idx(d_col, spec.block_shape[1])
        rows = g_idx(d_row, spec.block_shape[0])
        S, Z = (np.asfortranarray(p[rows, :], np.float64) for p in (qp.scale, qp.zero_point))
        return _FixedParams(qp, S, Z, col_k)                                       # [d_row, nC]
    n = int(col_k.max()) + 1
    S, Z = (np.asfortranarray(np.broadcast_to(np.reshape(p, (-1, n)), (d_row, n)), np.float64)
            for p in (qp.scale, qp.zero_point))
    return _FixedParams(qp, S, Z, col_k)


def _quantize_column(w, s, z, spec):
    """``quant(w)`` of Algorithm 1 for one column ``w`` [d_row]: codes and dequantized values
    from the one rounding core (:func:`refquant.quantize` / :func:`refquant.dequantize` bit for
    bit, without their per-call validation). ``s``, ``z`` are float64 [d_row]. Float elements:
    :func:`~refquant.schemes.float_quant.round_to_float_grid` at the scales ``s``."""
    if isinstance(spec, FloatSpec):
        return round_to_float_grid(w, s, spec.fmt, saturate=True, rounding=spec.rounding)
    c = _round_codes(w.astype(np.float64), s, z, spec.qmin, spec.qmax, spec.rounding)
    return c.astype(spec.code_dtype), _dequantize_codes(c, s, z)
