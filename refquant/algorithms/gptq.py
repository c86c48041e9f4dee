"""GPTQ: post-training quantization of one weight matrix with second-order error feedback.

GPTQ [1]_ quantizes the columns (input features) of a weight ``W`` one at a time and, after each,
moves the rounding error onto the columns not yet quantized so that the layer's output on the
calibration inputs changes as little as possible. It minimizes, row by row, the quadratic

.. math::

    \\tfrac12\\,(\\mathbf w - \\mathbf q)\\,H\\,(\\mathbf w - \\mathbf q)^\\top,
    \\qquad H = \\tfrac{2}{n} X X^\\top

greedily, using the inverse Hessian in Cholesky form (Algorithm 1 of [1]_).

Symbols (shapes for a weight with ``d_row`` outputs and ``d_col`` inputs)
-----------------------------------------------------------------------
W          [d_row, d_col]  the weights being quantized, updated in place by the error feedback
H          [d_col, d_col]  the Hessian ``2 X X^T / n`` of the layer's squared output error
lambda     scalar          dampening ``damp * mean(diag H)`` added to ``diag H``
Hinv       [d_col, d_col]  the upper Cholesky factor ``U`` of ``H^-1`` (``H^-1 = U^T U``);
                           row ``i`` right of the diagonal carries column ``i``'s error forward
B          int             the lazy-batch size ``block_size``: columns ``i1:i2`` are quantized
                           against a local copy ``W1``; the rest of ``W`` is updated once per block
W1, Q1     [d_row, i2-i1]  the current block of weights and its dequantized quantization
Err1       [d_row, i2-i1]  the scaled errors ``(w - q) / [Hinv]_ii`` of the block's columns
Losses1    [d_row, i2-i1]  the per-element losses ``(w - q)^2 / [Hinv]_ii^2``
perm       [d_col]         processing order: ``argsort(-diag H)`` with ``act_order``, else identity
g_idx      [d_col]         group of each (original) input column

The loss
--------
Write the result row by row as ``w - q = e U`` with ``e_i = (w'_i - q_i) / U_ii`` (``w'`` the
error-updated weight when column ``i`` is quantized): column ``i`` is changed by
``-e_i U_ij`` at every step ``i <= j`` (step ``j`` itself sets it to ``q_j``). Since
``H_damped = (U^T U)^{-1} = U^{-1} U^{-T}``,

.. math::

    (\\mathbf w - \\mathbf q)\\,H_\\lambda\\,(\\mathbf w - \\mathbf q)^\\top
      = \\mathbf e\\,U U^{-1} U^{-T} U^\\top \\mathbf e^\\top = \\sum_i e_i^2 ,

so the reported loss ``sum_i (w'_i - q_i)^2 / (2 U_ii^2)`` (summed over rows) is *exactly*

.. math::

    \\mathcal L = \\tfrac12 \\operatorname{tr}\\big((W - \\hat W)\\,(H + \\lambda I)\\,(W - \\hat W)^\\top\\big)
      = \\frac{1}{n}\\lVert (W - \\hat W) X \\rVert_F^2 + \\frac{\\lambda}{2}\\lVert W - \\hat W\\rVert_F^2

(the second form when ``H = 2 X X^T / n``), with ``H`` after the dead-input fix below and ``W``
with the dead columns set to zero. The identity is exact in exact arithmetic; the tests confirm
it to 1e-5 (relative) with ``dtype=float64`` and to 1e-3 with the default float32 working
precision. The order of the columns does not matter (the permutation is
applied to ``W`` and ``H`` alike).

Dead inputs
-----------
An input whose diagonal ``H_ii`` is 0 never sees a nonzero calibration value: its column is set to
0 and ``H_ii`` to 1, so the Cholesky factorization exists and no error flows into or out of it.

Group parameters
----------------
``granularity="group"``: groups of ``group_size`` consecutive columns *in processing order*; the
(scale, zero point) of a group are computed with :func:`refquant.calibration.observers` (min-max) from the
current, error-updated weights of the group's columns when its first column is reached. With
``static_groups=True`` they are computed once from the original ``W`` for the groups
``c // group_size`` of the original columns, before the pass (so ``act_order`` keeps the
standard monotone ``g_idx``). ``"channel"`` (``axis=0``) and ``"tensor"`` parameters are always
computed once from ``W`` before the pass.

References
----------
.. [1] E. Frantar, S. Ashkboos, T. Hoefler, D. Alistarh, "GPTQ: Accurate Post-Training
       Quantization for Generative Pre-trained Transformers", ICLR 2023, arXiv:2210.17323.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from refquant.calibration.observers import calibrate
from refquant.schemes.numerics import as_float_array, check_positive_int, normalize_axis, round_to_int
from refquant.schemes.spec import QParams, QuantSpec, n_groups


@dataclass(frozen=True)
class GPTQResult:
    """The result of :func:`gptq`.

    Attributes
    ----------
    codes : numpy.ndarray [d_row, d_col] of ``spec.code_dtype``
        Integer codes in the original column order.
    qparams : QParams
        Scale and zero point, shape ``param_shape(W.shape, spec)`` (``[d_row, n_groups]`` for
        groups, where group ``g`` covers the original columns with ``g_idx == g``).
    w_hat : numpy.ndarray [d_row, d_col] float32
        Dequantized weights ``scale[:, g_idx] * (codes - zero_point[:, g_idx])``.

        ``codes`` and ``w_hat`` are returned in the column-major (Fortran) memory order in which
        GPTQ builds them, column by column; ``np.ascontiguousarray`` gives a row-major copy.
    perm : numpy.ndarray [d_col] int64
        The processing order (``W[:, perm]`` was quantized left to right).
    loss : float
        ``1/2 tr((W - W_hat)(H + lambda I)(W - W_hat)^T)`` (see the module docstring).
    g_idx : numpy.ndarray [d_col] int32 or None
        Group of each original column (``None`` unless ``granularity="group"``). Equals
        ``arange(d_col) // group_size`` except with ``act_order`` and dynamic groups, where it
        is ``position_in_perm // group_size``.
    spec : QuantSpec
    """

    codes: np.ndarray
    qparams: QParams
    w_hat: np.ndarray
    perm: np.ndarray
    loss: float
    g_idx: np.ndarray | None = None
    spec: QuantSpec | None = None


def _check_inputs(W, H, spec, block_size, damp):
    if not isinstance(spec, QuantSpec):
        raise ValueError(f"spec must be a QuantSpec, got {type(spec).__name__}")
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
    if spec.granularity == "channel" and normalize_axis(spec.axis, 2) != 0:
        raise ValueError(f"GPTQ needs per-output-channel parameters (axis=0), got axis={spec.axis}")
    return W, H


def _column_spec(spec: QuantSpec) -> QuantSpec:
    """The spec of one column ``[d_row, 1]`` with one parameter per row."""
    return QuantSpec(bits=spec.bits, symmetric=spec.symmetric, granularity="channel", axis=0,
                     rounding=spec.rounding, restricted=spec.restricted)


_SUB = 16          # columns per cache-sized sub-block inside a lazy batch


def _sub_matmul_(C, A, B):
    """``C -= A @ B`` in place for a Fortran-ordered ``C`` (one BLAS ``gemm`` call with
    ``beta = 1``, so no temporary of ``C``'s size is made)."""
    (gemm,) = scipy.linalg.blas.get_blas_funcs(("gemm",), (C,))
    out = gemm(-1.0, A, B, beta=1.0, c=C, overwrite_c=True)
    if not np.shares_memory(out, C):                                   # not expected for F-order C
        C[...] = out


def _as_columns(qp: QParams):
    """``(s, z)`` of one column's parameters as float64 ``[d_row]`` arrays."""
    return qp.scale.astype(np.float64), qp.zero_point.astype(np.float64)


def _quantize_column(w, s, z, spec: QuantSpec):
    """Codes and dequantized values of one column: exactly :func:`refquant.quantize` followed by
    :func:`refquant.dequantize` (same float64 arithmetic), without their per-call validation."""
    c = np.clip(round_to_int(w / s, spec.rounding) + z, spec.qmin, spec.qmax)   # [d_row]
    return c.astype(spec.code_dtype), s * (c - z)


def _inverse_hessian_factor(H: np.ndarray) -> np.ndarray:
    """``U`` upper triangular with ``H^-1 = U^T U``: the upper Cholesky factor of ``H^-1``.

    Computed without forming ``H^-1``: with ``P`` the order-reversing permutation and
    ``P H P = L L^T`` (Cholesky), ``U = P L^{-1} P``, since
    ``U^T U = P L^{-T} L^{-1} P = P (P H P)^{-1} P = H^{-1}`` and ``P L^{-1} P`` is upper
    triangular with a positive diagonal (so it is *the* Cholesky factor). One factorization
    and one triangular inverse instead of the three ``n^3`` steps of the reference.
    """
    # P H P is symmetric, so its row-major copy read as column-major (``.T``) is the same
    # matrix: LAPACK gets a Fortran array without a transposing copy
    PHP = np.ascontiguousarray(H[::-1, ::-1]).T
    try:
        L = scipy.linalg.cholesky(PHP, lower=True, overwrite_a=True)   # P H P = L L^T
    except np.linalg.LinAlgError as exc:
        raise ValueError("H + lambda I is not positive definite; increase damp") from exc
    (trtri,) = scipy.linalg.lapack.get_lapack_funcs(("trtri",), (L,))
    Linv, info = trtri(L, lower=1)                                      # L^-1, lower
    if info != 0:
        raise ValueError(f"inverting the Cholesky factor of H failed (LAPACK trtri info={info})")
    return np.asfortranarray(Linv[::-1, ::-1])                         # U = P L^-1 P, upper


def gptq(W, H, spec: QuantSpec, *, block_size: int = 128, damp: float = 0.01,
         act_order: bool = False, static_groups: bool = False, dtype=np.float32) -> GPTQResult:
    """Quantize ``W`` with GPTQ given the Hessian ``H`` of its calibration inputs.

    Parameters
    ----------
    W : array_like [d_row, d_col] float
        Weights in the (out_features, in_features) convention. Not modified.
    H : array_like [d_col, d_col] float
        Symmetric positive semi-definite Hessian, ``2 X X^T / n`` for inputs ``X [d_col, n]``.
    spec : QuantSpec
        Bits, symmetry, rounding and granularity (``"tensor"``, ``"channel"`` with ``axis=0``,
        or ``"group"``).
    block_size : int
        Lazy-batch size ``B``; the result does not depend on it (up to float rounding).
    damp : float
        ``lambda = damp * mean(diag H)`` is added to the diagonal of ``H``.
    act_order : bool
        Quantize columns in order of decreasing ``diag H`` ("activation order").
    static_groups : bool
        Compute every group's parameters from the original ``W`` before the pass.
    dtype : {numpy.float32, numpy.float64}
        Working precision of the factorization and the error feedback (float32 by default, as
        in the reference implementation; float64 for exact comparisons). Parameters, codes and
        dequantized values always follow :func:`refquant.quantize` / :func:`refquant.dequantize`
        (float64 arithmetic).

    Returns
    -------
    GPTQResult

    Notes
    -----
    Algorithm 1 of [1]_; for each column ``i`` (in processing order)

    .. math::

        q_i = \\operatorname{quant}(w_i), \\quad
        e_i = (w_i - q_i) / [H^{-1}]_{ii}^{\\mathrm{chol}}, \\quad
        w_{j} \\leftarrow w_j - e_i\\,[H^{-1}]_{ij}^{\\mathrm{chol}} \\; (j > i),

    the updates to columns beyond the current block deferred to one matrix product per block.
    The loss identity is derived in the module docstring.

    References
    ----------
    .. [1] E. Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative
           Pre-trained Transformers", ICLR 2023, arXiv:2210.17323.

    Examples
    --------
    >>> import numpy as np, refquant as rq
    >>> rng = np.random.default_rng(0)
    >>> W, X = rng.standard_normal((4, 8)), rng.standard_normal((8, 64))
    >>> res = rq.gptq(W, 2 * X @ X.T / 64, rq.QuantSpec(bits=4, symmetric=False, granularity="channel"))
    >>> res.codes.shape, res.w_hat.dtype
    ((4, 8), dtype('float32'))
    """
    W, H = _check_inputs(W, H, spec, block_size, damp)
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    d_row, d_col = W.shape
    col_spec = _column_spec(spec)
    grouped = spec.granularity == "group"
    gs = spec.group_size if grouped else d_col

    W = W.copy()                                                        # (H is already a new array)
    dead = np.diag(H) == 0                                              # [d_col]
    H[dead, dead] = 1.0
    W[:, dead] = 0.0

    # parameters fixed before the pass: tensor, channel, or static groups
    static_qp = None
    if not grouped:
        qp = calibrate(W, spec)
        s = np.broadcast_to(qp.scale, (d_row,)) if spec.granularity == "tensor" else qp.scale
        z = np.broadcast_to(qp.zero_point, (d_row,)) if spec.granularity == "tensor" else qp.zero_point
        static_qp = [QParams(np.ascontiguousarray(s), np.ascontiguousarray(z))]   # one "group"
        static_sz = [_as_columns(static_qp[0])]
    elif static_groups:
        qp = calibrate(W, spec)                                         # [d_row, n_groups]
        static_qp = [QParams(qp.scale[:, g].copy(), qp.zero_point[:, g].copy())
                     for g in range(qp.scale.shape[1])]
        static_sz = [_as_columns(p) for p in static_qp]

    perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(d_col)
    if act_order:
        W = W[:, perm]                                                  # [d_row, d_col] processing order
        H = H[np.ix_(perm, perm)]

    lam = damp * float(np.mean(np.diag(H)))
    H[np.diag_indices(d_col)] += lam
    Hinv = _inverse_hessian_factor(H.astype(dtype))                     # [d_col, d_col] upper

    W = np.asfortranarray(W, dtype=dtype)                               # columns contiguous
    Q = np.zeros((d_row, d_col), dtype, order="F")                      # dequantized, processing order
    codes = np.zeros((d_row, d_col), spec.code_dtype, order="F")
    Losses = np.zeros((d_row, d_col), dtype, order="F")
    dyn_qp = []                                                         # groups in processing order
    s_z = None
    for i1 in range(0, d_col, block_size):
        i2 = min(i1 + block_size, d_col)
        count = i2 - i1
        W1 = W[:, i1:i2].copy(order="F")                                # [d_row, count]
        Q1 = np.zeros_like(W1)
        Err1 = np.zeros_like(W1)
        Losses1 = np.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]                                      # [count, count]
        # The block's columns are processed in sub-blocks of _SUB columns with the same lazy
        # update (W1[:, s2:] once per sub-block): the same arithmetic, but the per-column rank-1
        # updates stay in cache. Mathematically identical to updating all of W1[:, i:].
        for s1 in range(0, count, _SUB):
            s2 = min(s1 + _SUB, count)
            for i in range(s1, s2):
                j = i1 + i                                              # position in processing order
                if not grouped:
                    s_z = static_sz[0]
                elif static_groups:
                    s_z = static_sz[perm[j] // gs]
                elif j % gs == 0:
                    # group start: parameters from the current (error-updated) weights of the
                    # group's columns j .. j+gs-1, applying the updates still pending for them
                    end = min(j + gs, d_col)
                    Wg = W1[:, i:min(i + gs, s2)]
                    if i + gs > s2 and s2 < count:
                        e = min(i + gs, count)
                        Wg = np.concatenate([Wg, W1[:, s2:e] - Err1[:, s1:i] @ Hinv1[s1:i, s2:e]], axis=1)
                    if end > i2:
                        Wg = np.concatenate([Wg, W[:, i2:end] - Err1[:, :i] @ Hinv[i1:j, i2:end]], axis=1)
                    qp = calibrate(Wg, col_spec)                        # [d_row] scale, zero point
                    dyn_qp.append(qp)
                    s_z = _as_columns(qp)
                w = W1[:, i]                                            # [d_row]
                d = Hinv1[i, i]
                c, q = _quantize_column(w, *s_z, spec)                  # codes, dequantized
                q = q.astype(W1.dtype, copy=False)
                codes[:, j] = c
                Q1[:, i] = q
                Losses1[:, i] = (w - q) ** 2 / d**2
                err1 = (w - q) / d                                      # [d_row]
                W1[:, i:s2] -= np.multiply.outer(Hinv1[i, i:s2], err1).T  # [d_row, s2 - i]
                Err1[:, i] = err1
            if s2 < count:
                _sub_matmul_(W1[:, s2:], Err1[:, s1:s2], Hinv1[s1:s2, s2:])
        Q[:, i1:i2] = Q1
        Losses[:, i1:i2] = Losses1 / 2
        if i2 < d_col:
            _sub_matmul_(W[:, i2:], Err1, Hinv[i1:i2, i2:])                # lazy batch update

    invperm = np.argsort(perm)
    unperm = (lambda A: A[:, invperm]) if act_order else (lambda A: A)   # back to input order
    g_idx = None
    if grouped:
        if static_groups:
            g_idx = (np.arange(d_col) // gs).astype(np.int32)
            qps = static_qp
        else:
            g_idx = (invperm // gs).astype(np.int32)                    # group of each original column
            qps = dyn_qp
        qparams = QParams(np.stack([p.scale for p in qps], axis=1),
                          np.stack([p.zero_point for p in qps], axis=1))
    elif spec.granularity == "channel":
        qparams = static_qp[0]
    else:
        qparams = QParams(static_qp[0].scale[0], static_qp[0].zero_point[0])
    return GPTQResult(codes=np.asfortranarray(unperm(codes)), qparams=qparams,
                      w_hat=np.asfortranarray(unperm(Q), dtype=np.float32),
                      perm=perm.astype(np.int64), loss=float(Losses.sum(dtype=np.float64)), g_idx=g_idx,
                      spec=spec)


def hessian(X, H=None, n_seen: int = 0):
    """Running ``H = 2 X X^T / n`` over batches of layer inputs ``X [..., d_col]``.

    Returns ``(H, n)``; pass them back with the next batch. ``H`` is float64 ``[d_col, d_col]``;
    each batch's product ``X^T X`` is computed in the input's precision (float32 inputs: a
    float32 product, as the reference implementation) and accumulated in float64.
    """
    X = as_float_array(X, "X")
    X = X.reshape(-1, X.shape[-1])                                      # [n_new, d_col]
    n_new = X.shape[0]
    if H is None:
        H = np.zeros((X.shape[1], X.shape[1]), np.float64)
    elif H.shape != (X.shape[1], X.shape[1]):
        raise ValueError(f"H has shape {H.shape}, inputs have {X.shape[1]} features")
    n = n_seen + n_new
    H = H * (n_seen / n) + (2.0 / n) * (X.T @ X).astype(np.float64)
    return H, n


__all__ = ["gptq", "GPTQResult", "hessian"]
