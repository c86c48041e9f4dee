"""GPTQ: post-training quantization of one weight matrix with second-order error feedback.

GPTQ [1]_ quantizes the columns (input features) of a weight ``W`` one at a time and, after each,
moves the rounding error onto the columns not yet quantized so that the layer's output on the
calibration inputs changes as little as possible. It minimizes, row by row, the quadratic

.. math::

    \\tfrac12\\,(\\mathbf w - \\mathbf q)\\,H\\,(\\mathbf w - \\mathbf q)^\\top,
    \\qquad H = \\tfrac{2}{n} X X^\\top

greedily, using the inverse Hessian in Cholesky form (Algorithm 1 of [1]_).

Symbols (shapes for a weight with ``d_row`` outputs and ``d_col`` inputs)
-------------------------------------------------------------------------
=======  ==============  ========================================================================
W        [d_row, d_col]  the weights being quantized, updated in place by the error feedback
H        [d_col, d_col]  the Hessian ``2 X X^T / n`` of the layer's squared output error
lambda   scalar          dampening ``damp * mean(diag H)`` added to ``diag H``
Hinv     [d_col, d_col]  the upper Cholesky factor ``U`` of ``H^-1`` (``H^-1 = U^T U``);
                         row ``i`` right of the diagonal carries column ``i``'s error forward
B        int             the lazy-batch size ``block_size``: columns ``i1:i2`` are quantized
                         against a local copy ``W1``; the rest of ``W`` is updated once per block
W1, Q1   [d_row, i2-i1]  the current block of weights and its dequantized quantization
Err1     [d_row, i2-i1]  the scaled errors ``(w - q) / [Hinv]_ii`` of the block's columns
Losses1  [d_row, i2-i1]  the per-element losses ``(w - q)^2 / [Hinv]_ii^2``
perm     [d_col]         processing order: ``argsort(-diag H)`` with ``act_order``, else identity
g_idx    [d_col]         group of each (original) input column
=======  ==============  ========================================================================

The loss
--------
Row by row, ``w - q = e U`` with ``e_i = (w'_i - q_i) / U_ii`` (``w'`` the error-updated weight when
column ``i`` is quantized): column ``i`` is changed by ``-e_i U_ij`` at every step ``i <= j`` (step
``j`` itself sets it to ``q_j``). Since ``H_damped = (U^T U)^{-1} = U^{-1} U^{-T}``,

.. math::

    (\\mathbf w - \\mathbf q)\\,H_\\lambda\\,(\\mathbf w - \\mathbf q)^\\top
      = \\mathbf e\\,U U^{-1} U^{-T} U^\\top \\mathbf e^\\top = \\sum_i e_i^2 ,

so the reported loss ``sum_i (w'_i - q_i)^2 / (2 U_ii^2)`` (summed over rows) is *exactly*

.. math::

    \\mathcal L = \\tfrac12 \\operatorname{tr}\\big((W - \\hat W)\\,(H + \\lambda I)\\,(W - \\hat W)^\\top\\big)
      = \\frac{1}{n}\\lVert (W - \\hat W) X \\rVert_F^2 + \\frac{\\lambda}{2}\\lVert W - \\hat W\\rVert_F^2

(the second form when ``H = 2 X X^T / n``), with ``H`` after the dead-input fix below and ``W`` with
the dead columns set to zero. The identity is exact in exact arithmetic; the tests confirm it to
1e-5 (relative) with ``dtype=float64`` and to 1e-3 with the default float32 working precision. The
order of the columns does not matter (the permutation is applied to ``W`` and ``H`` alike).

Dead inputs
-----------
An input whose diagonal ``H_ii`` is 0 never sees a nonzero calibration value: its column is set to
0 and ``H_ii`` to 1, so the Cholesky factorization exists and no error flows into or out of it.

Group parameters (``group_params``)
-----------------------------------
Dynamic groups are ``group_size`` consecutive columns *in processing order*; when a group's
first column ``j`` is reached, its min-max parameters are computed from its columns of

- ``"reference"`` (default): ``W`` as it stood at the start of the current lazy block, as the
  authors' code does (IST-DASLab ``fasterquant``, AutoGPTQ, GPTQModel): it reads the group from
  the full ``W`` while the block's columns are updated in the copy ``W1`` and the rest of ``W``
  receives the block's errors only at its end. Every GPTQ checkpoint in circulation has this.
- ``"updated"``: the current weights, with every error so far applied: the paper's algorithm
  without lazy batching, independent of the block size.

They agree whenever every group starts a block (``block_size`` divides ``group_size``, e.g.
g128 with blocks of 128); with shorter groups the codes differ, neither objective lower in
general. ``static_groups=True`` computes the groups ``c // group_size`` of the original columns
from the original ``W`` before the pass (``act_order`` keeps the monotone ``g_idx``); channel
(``axis=0``) and tensor parameters are fixed before the pass as well, after the dead-input fix
(the reference's per-channel ones before it: they differ where a dead input has weights).

Parameter arithmetic
--------------------
Asymmetric parameters use the reference's ``find_params`` arithmetic, in float64
(:func:`refquant.schemes.uniform._qparams_from_range_gptq_reference`): ``s = (hi - lo) /
(2^b - 1)`` over the range widened to contain 0 (a zero range taken as ``[-1, 1]``) and
``z = round(-lo / s)`` half-to-even from this unrounded ``s``, then stored as float32 (the scale
of :func:`refquant.calibrate`). An exactly symmetric range (``max == -min``) then resolves like
the reference in float64: ``-lo / s`` is mostly exactly 7.5 at 4 bits (8), where the float32
scale gives 7.4999999 (7). Codes are :func:`refquant.quantize` with the stored float32 scale
(``w_hat == dequantize(codes, qparams)``; the reference's float64 scale differs only where
``w / s`` is within float32 rounding of a tie). Symmetric specs keep refquant's signed grid
(``z = 0``), not the reference's ``sym=True`` grid (unsigned codes around ``2^(b-1)``).

Float grids
-----------
With a :class:`refquant.schemes.float_quant.FloatSpec` the step ``quant(w)`` rounds the column to
the element format's grid at its scales, ``s * v(fp(w / s))``
(:func:`refquant.schemes.float_quant.round_to_float_grid`, the rounding of
:func:`refquant.quantize` for that spec, saturating: error feedback can push a weight past its
scale's range), and the codes are the uint8 element codes. Min-max scales are
``max|w| / x_max`` of the group's (block's, channel's) weights; ``"block"`` scales (2-D tiles,
DeepSeek-V3's 128 x 128) are fixed before the pass, and ``qparams`` fixes any scales, e.g. the
E8M0 block scales of MXFP4. With an identity Hessian every variant equals round-to-nearest on
the same grid (tested).

Column grids (``grid``)
-----------------------
Any grid fixed before the pass can be plugged in as ``grid`` (instead of ``spec``): an object
with a ``code_dtype`` and ``round(w, c) -> (codes, q)``, which rounds the error-updated column
``w`` [d_row] of *original* input ``c`` to its codes and the decoded values ``q`` that
Algorithm 1 takes as ``quant(w)``; pass, error feedback and loss are unchanged (``qparams``
None). :func:`refquant.formats.ggml.gptq_grid.gptq_ggml` uses it for the GGML block formats.

Damping
-------
Where ``H + lambda I`` cannot be factored in the working precision, it is retried with 10x
``damp`` at most ``damp_retries`` times (default 2: 0.01, 0.1, 1.0; the result reports the
``damp`` used and the retries), then (at once for ``damp == 0``) raises
:class:`HessianNotPositiveDefinite`, a ``ValueError`` carrying the values tried.

References
----------
.. [1] E. Frantar, S. Ashkboos, T. Hoefler, D. Alistarh, "GPTQ: Accurate Post-Training
       Quantization for Generative Pre-trained Transformers", ICLR 2023, arXiv:2210.17323.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from refquant.algorithms._gptq_fast import (_feed_error_forward_, _group_columns_updated,
                                            _inverse_hessian_factor, _quantize_block_fixed_,
                                            _sub_product_, fixed_columns_apply)
from refquant.algorithms._gptq_params import (GROUP_PARAMS, _check_inputs, _check_spec,
                                             _minmax_qparams, _params_before_pass, _quantize_column)
from refquant.schemes.float_quant import FloatSpec
from refquant.schemes.numerics import as_float_array
from refquant.schemes.spec import QParams, QuantSpec, g_idx



class HessianNotPositiveDefinite(ValueError):
    """``H + lambda I`` could not be factored at any damping tried: ``damps`` (tuple, each 10x
    the previous) and the matching ``lambdas = damp * mean(diag H)``."""

    def __init__(self, damps, lambdas):
        self.damps, self.lambdas = tuple(damps), tuple(lambdas)
        tried = ", ".join(f"{d!r} (lambda={lam:.6g})" for d, lam in zip(self.damps, self.lambdas))
        super().__init__(f"H + lambda I is not positive definite at damp = {tried}; "
                         f"increase damp (or drop inputs with a zero Hessian row)")


@dataclass(frozen=True)
class GPTQResult:
    """The result of :func:`gptq`.

    Attributes
    ----------
    codes : numpy.ndarray [d_row, d_col] of ``spec.code_dtype``
        Integer codes in the original column order (uint8 element codes for a
        :class:`~refquant.schemes.float_quant.FloatSpec`).
    qparams : QParams or None
        Scale and zero point, shape ``param_shape(W.shape, spec)`` (``[d_row, n_groups]`` for
        groups, where group ``g`` covers the original columns with ``g_idx == g``); None with
        a ``grid``.
    w_hat : numpy.ndarray [d_row, d_col] float32
        Dequantized weights ``scale[:, g_idx] * (codes - zero_point[:, g_idx])``. ``codes`` and
        ``w_hat`` come in the column-major (Fortran) order in which GPTQ builds them.
    perm : numpy.ndarray [d_col] int64
        The processing order (``W[:, perm]`` was quantized left to right).
    loss : float
        ``1/2 tr((W - W_hat)(H + lambda I)(W - W_hat)^T)`` (see the module docstring).
    g_idx : numpy.ndarray [d_col] int32 or None
        Group of each original column (``None`` unless ``granularity="group"``). Equals
        ``arange(d_col) // group_size`` except with ``act_order`` and dynamic groups, where it
        is ``position_in_perm // group_size``.
    spec : QuantSpec or FloatSpec
    damp, damp_retries : float, int
        The dampening used, ``damp * 10**damp_retries``, and the retries it took (0: none).
    """

    codes: np.ndarray
    qparams: QParams | None
    w_hat: np.ndarray
    perm: np.ndarray
    loss: float
    g_idx: np.ndarray | None = None
    spec: QuantSpec | None = None
    damp: float | None = None
    damp_retries: int = 0


def _damped_inverse_factor(H, damp: float, damp_retries: int, dtype):
    """``(Hinv, damp_used, retries)``: the upper Cholesky factor of ``(H + lambda I)^-1`` in
    ``dtype``, retrying with ``damp`` x 10 up to ``damp_retries`` times (module docstring)."""
    damps = [float(damp) * 10.0**retry for retry in range(damp_retries + 1)]
    lambdas = [d * float(np.mean(np.diag(H))) for d in damps]
    for retry, lam in enumerate(lambdas):
        Hd = H.copy()
        Hd[np.diag_indices_from(Hd)] += lam
        try:
            return _inverse_hessian_factor(Hd.astype(dtype)), damps[retry], retry
        except np.linalg.LinAlgError:
            if damp == 0:                                               # 10 x 0 is still 0
                break
    raise HessianNotPositiveDefinite(damps[:retry + 1], lambdas[:retry + 1])


def gptq(W, H, spec: QuantSpec | None = None, *, block_size: int = 128, damp: float = 0.01,
         act_order: bool = False, static_groups: bool = False, group_params: str = "reference",
         damp_retries: int = 2, dtype=np.float32, qparams: QParams | None = None,
         grid=None) -> GPTQResult:
    """Quantize ``W`` with GPTQ given the Hessian ``H`` of its calibration inputs.

    Parameters
    ----------
    W : array_like [d_row, d_col] float
        Weights in the (out_features, in_features) convention. Not modified.
    H : array_like [d_col, d_col] float
        Symmetric positive semi-definite Hessian, ``2 X X^T / n`` for inputs ``X [d_col, n]``.
    spec : QuantSpec or FloatSpec
        Bits, symmetry, rounding and granularity (``"tensor"``, ``"channel"`` with ``axis=0``,
        or ``"group"``); or an FP8/FP6/FP4 element format with those granularities or
        ``"block"`` (static: with ``static_groups=True`` or ``qparams``). See the module
        docstring's "Float grids".
    block_size : int
        Lazy-batch size ``B``; the result depends on it only through ``group_params``.
    damp : float
        ``lambda = damp * mean(diag H)`` is added to the diagonal of ``H``.
    act_order : bool
        Quantize columns in order of decreasing ``diag H`` ("activation order").
    static_groups : bool
        Compute every group's parameters from the original ``W`` before the pass.
    group_params : {"reference", "updated"}
        What a dynamic group's parameters are computed from when its first column ``j`` is
        reached: ``W[:, j:j+group_size]`` as it stood at the *start of the current lazy block*
        (``"reference"``, the authors' code) or as updated by every error so far (``"updated"``,
        the paper's unbatched algorithm). They agree where ``block_size`` divides
        ``group_size``; see the module docstring.
    damp_retries : int
        Retries of a failed factorization, each with 10x the damping (module docstring).
    dtype : {numpy.float32, numpy.float64}
        Working precision of the factorization and the error feedback (float32 as in the
        reference implementation; float64 for exact comparisons). Parameters, codes and
        dequantized values are computed in float64 (module docstring).
    qparams : QParams, optional
        Fixed parameters of ``param_shape(W.shape, spec)`` to use instead of min-max ones
        (static, for every granularity): the hook for scales chosen elsewhere, such as the
        power-of-two block scales of MXFP4 or NVFP4's two-level scales.
    grid : object, optional
        A column grid used instead of ``spec`` (then None): ``grid.round(w, c) -> (codes, q)``
        and ``grid.code_dtype`` (module docstring, "Column grids").

    Returns
    -------
    GPTQResult

    Raises
    ------
    HessianNotPositiveDefinite
        (a ``ValueError``) where ``H + lambda I`` cannot be factored at any damping tried.

    Notes
    -----
    Algorithm 1 of [1]_; for each column ``j`` (in processing order), with ``Hinv`` the upper
    Cholesky factor of ``H^-1``,

    .. math::

        q_j = \\operatorname{quant}(w_j), \\quad
        e_j = (w_j - q_j) / [H^{-1}]_{jj}, \\quad
        w_{k} \\leftarrow w_k - e_j\\,[H^{-1}]_{jk} \\; (k > j),

    the updates to columns beyond the current block ``i1:i2`` deferred to one matrix product
    per block. The loss identity is derived in the module docstring.

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
    >>> res.codes.shape, res.w_hat.dtype, res.damp_retries
    ((4, 8), dtype('float32'), 0)
    """
    W, H = _check_inputs(W, H, spec, block_size, damp, group_params, damp_retries, dtype, grid)
    d_col = W.shape[1]
    if grid is None:
        _check_spec(spec, static_groups, qparams, W.shape)
        gs = spec.group_size if spec.granularity == "group" else d_col
        col_spec = replace(spec, granularity="channel", axis=0, group_size=None,
                           **({"block_shape": None} if isinstance(spec, FloatSpec) else {}))

    W = W.copy()                                                        # (H is already a new array)
    dead = np.diag(H) == 0                                              # [d_col] inputs never seen
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    fixed = None if grid is not None else _params_before_pass(W, spec, static_groups, qparams)
    perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(d_col)
    if act_order:
        W, H = W[:, perm], H[np.ix_(perm, perm)]                        # processing order
    Hinv, damp_used, retries = _damped_inverse_factor(H, damp, damp_retries, dtype)   # upper

    W = np.asfortranarray(W, dtype=dtype)                               # [d_row, d_col] columns contiguous
    Q = np.zeros_like(W)                                                # dequantized, processing order
    codes = np.zeros(W.shape, (spec if grid is None else grid).code_dtype, order="F")
    Losses = np.zeros_like(W)
    group_qp = []                                                       # dynamic groups, processing order
    numba_columns = fixed_columns_apply(spec, fixed, grid)              # the column loop in Numba
    for i1 in range(0, d_col, block_size):
        i2 = min(i1 + block_size, d_col)
        W1 = W[:, i1:i2].copy(order="F")                                # [d_row, count]
        Q1, Err1, Losses1 = np.zeros_like(W1), np.zeros_like(W1), np.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]                                      # [count, count]
        if numba_columns:                                               # the loop below, in Numba
            _quantize_block_fixed_(W1, Q1, Err1, Losses1, codes[:, i1:i2], Hinv1, fixed,
                                   perm[i1:i2], spec)
        else:
            for i in range(i2 - i1):
                j = i1 + i                                              # position in processing order
                if fixed is not None:
                    k = fixed.col_k[perm[j]]
                    s, z = fixed.S[:, k], fixed.Z[:, k]                 # [d_row] float64
                elif grid is None and j % gs == 0:                      # a dynamic group starts
                    Wg = (W[:, j:j + gs] if group_params == "reference" # W at the block's start
                          else _group_columns_updated(W, W1, Err1, Hinv, i1, i, gs))
                    group_qp.append(_minmax_qparams(Wg, col_spec))
                    s, z = group_qp[-1].scale.astype(np.float64), group_qp[-1].zero_point.astype(np.float64)
                w = W1[:, i]                                            # [d_row]
                d = Hinv1[i, i]
                c, q = grid.round(w, int(perm[j])) if grid is not None else _quantize_column(w, s, z, spec)
                q = q.astype(W1.dtype)
                codes[:, j] = c
                Q1[:, i] = q
                Losses1[:, i] = (w - q) ** 2 / d**2
                Err1[:, i] = (w - q) / d
                _feed_error_forward_(W1, Err1, Hinv1, i)                # W1[:, i:] -= Err1[:, i] Hinv1[i, i:]
        Q[:, i1:i2] = Q1
        Losses[:, i1:i2] = Losses1 / 2
        _sub_product_(W[:, i2:], Err1, Hinv[i1:i2, i2:])                # W[:, i2:] -= Err1 Hinv[i1:i2, i2:]

    invperm = np.argsort(perm)                                          # the result, in input order
    unperm = (lambda A: A[:, invperm]) if act_order else (lambda A: A)
    if grid is not None:
        qparams, gi = None, None
    elif fixed is None:                                                 # dynamic groups
        qparams = QParams(np.stack([p.scale for p in group_qp], axis=1),
                          np.stack([p.zero_point for p in group_qp], axis=1))
        gi = g_idx(d_col, gs)[invperm]                                  # position in perm // gs
    else:
        qparams, gi = fixed.qparams, (g_idx(d_col, gs) if spec.granularity == "group" else None)
    return GPTQResult(codes=np.asfortranarray(unperm(codes)), qparams=qparams,
                      w_hat=np.asfortranarray(unperm(Q), dtype=np.float32), perm=perm.astype(np.int64),
                      loss=float(Losses.sum(dtype=np.float64)), g_idx=gi, spec=spec,
                      damp=damp_used, damp_retries=retries)


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


__all__ = ["gptq", "GPTQResult", "HessianNotPositiveDefinite", "hessian", "GROUP_PARAMS"]
