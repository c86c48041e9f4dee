"""AWQ: activation-aware weight quantization (Lin et al., MLSys 2024).

AWQ [1]_ protects the weights that see large activations. Multiplying input channel ``j`` of a
weight by ``s_j > 1`` and dividing the activation by the same ``s_j`` leaves the float layer
unchanged, ``W x = (W diag(s)) (diag(s)^{-1} x)``, but shrinks the *relative* rounding error of
that channel's weights. The scales are found by a grid search over one exponent,

.. math::

    \\mathbf s = \\mathbf s_x^{\\alpha}, \\qquad
    \\alpha^* = \\arg\\min_{\\alpha \\in \\{0, 1/n, \\dots, (n-1)/n\\}}
    \\big\\lVert f(W;\\, X) - f\\big(Q(W \\operatorname{diag}(\\mathbf s))
    \\operatorname{diag}(\\mathbf s)^{-1};\\, X\\big)\\big\\rVert^2 ,

where ``s_x`` is the mean activation magnitude of each input channel and ``f`` the real output
of the block (or sub-module) that the weights feed, then folded into the operation before the
weights (an RMSNorm's weight or the rows of the previous linear), so the float model is
unchanged. A second grid search then shrinks each group's clipping range (:func:`awq_clip`).
The block-level recipe for a Llama block is :func:`refquant.pipeline.awq_block.awq_block`.

Symbols
-------
X          [n, in]    calibration inputs of the weights (tokens flattened)
W          [out, in]  one weight (out_features, in_features); several ``W`` may share ``X``
s_x        [C]        mean |X| of each input channel (C = in, or fewer shared channels, below)
alpha      scalar     the exponent, on the grid ``k / n_grid``, ``k = 0..n_grid-1``
s          [C]        the per-channel scale ``s_x^alpha``, normalized (below)
Q          the fake quantizer of the spec (min-max calibration, :func:`refquant.fake_quantize`)
f          ``forward_fn``: candidate weights -> the output whose error is measured
c          [in]       ``channel_map``: input channel ``j`` of ``W`` uses scale ``s[c_j]``
                      (identity by default; grouped-query attention shares one scale among the
                      query heads that read the same key/value head, see :func:`fold_scales`)

Normalization of s
------------------
``s = max(s_x^alpha, 1e-4) / sqrt(max(.) * min(.))``, as in the reference implementation [2]_:
the geometric centre of the scales is 1, so the weights are scaled up and down by comparable
factors and stay in the float range of the original ones. In exact arithmetic any positive
common factor ``c`` is immaterial (``Q(c W) = c Q(W)`` for min-max quantizers whose parameter
groups lie along the rows, and it cancels in the fold); the floor ``1e-4`` keeps channels that
never fire (``s_x = 0``) finite. ``alpha = 0`` gives ``s = 1``: exactly round-to-nearest.

The loss is the mean squared error over all elements of ``f``'s output, in float64. Ties keep the
smaller ``alpha`` (the first strict minimum), so the chosen loss is never above the RTN loss.

References
----------
.. [1] J. Lin, J. Tang, H. Tang, S. Yang, W.-M. Chen, W.-C. Wang, G. Xiao, X. Dang, C. Gan,
       S. Han, "AWQ: Activation-aware Weight Quantization for On-Device LLM Compression and
       Acceleration", MLSys 2024, arXiv:2306.00978.
.. [2] MIT HAN Lab, llm-awq (the authors' code), ``awq/quantize/auto_scale.py`` and
       ``auto_clip.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from refquant.schemes.numerics import as_float_array, check_positive_int
from refquant.schemes.spec import QParams, QuantSpec
from refquant.calibration.fake import fake_quantize
from refquant.schemes.uniform import dequantize, qparams_from_range, quantize

_S_FLOOR = 1e-4


# ---------------------------------------------------------------------------------------------
# input checks


def _matrix(x, name: str) -> np.ndarray:
    a = as_float_array(x, name)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or Inf")
    return a


def _spec(spec, name="spec") -> QuantSpec:
    if not isinstance(spec, QuantSpec):
        raise ValueError(f"{name} must be a QuantSpec, got {type(spec).__name__}")
    return spec


def _specs(spec, n: int) -> list:
    """One QuantSpec (or None = keep float) per weight."""
    if isinstance(spec, QuantSpec):
        return [spec] * n
    if isinstance(spec, Sequence) and not isinstance(spec, str) and len(spec) == n:
        out = [None if sp is None else _spec(sp, "spec[i]") for sp in spec]
        if all(sp is None for sp in out):
            raise ValueError("spec is None for every weight: nothing to quantize")
        return out
    raise ValueError(f"spec must be a QuantSpec or a sequence of {n} QuantSpec/None, got {spec!r}")


def _channel_map(channel_map, k: int):
    """Validate ``c`` [k]; returns (c, C) with C the number of shared channels."""
    if channel_map is None:
        return np.arange(k), k
    c = np.asarray(channel_map)
    if c.dtype.kind not in "iu" or c.shape != (k,):
        raise ValueError(f"channel_map must be an integer array of shape ({k},), got "
                         f"dtype {c.dtype} shape {c.shape}")
    C = int(c.max()) + 1
    if c.min() < 0 or np.any(np.bincount(c, minlength=C) == 0):
        raise ValueError("channel_map must use every index 0..C-1 and no negative index")
    return c.astype(np.int64), C


# ---------------------------------------------------------------------------------------------
# activation magnitudes and the scale search


def activation_scale(X, channel_map=None) -> np.ndarray:
    """``s_x``: the mean magnitude of each input channel over the calibration tokens.

    .. math:: (s_x)_c = \\operatorname{mean}_{t,\\, j:\\, c_j = c} |X_{tj}|

    Parameters
    ----------
    X : array_like [n, in] (or [..., in]; leading axes are flattened)
    channel_map : int array [in], optional
        Channels mapped to the same index share one magnitude (their mean).

    Returns
    -------
    numpy.ndarray [C] float64
    """
    X = as_float_array(X, "X")
    if X.ndim < 2:
        raise ValueError(f"X must have at least 2 axes (tokens, channels), got shape {X.shape}")
    X = _matrix(X.reshape(-1, X.shape[-1]), "X")
    c, C = _channel_map(channel_map, X.shape[1])
    per_channel = np.abs(X.astype(np.float64)).mean(axis=0)               # [in]
    return np.bincount(c, per_channel, minlength=C) / np.bincount(c, minlength=C)


def scale_from_alpha(s_x, alpha: float) -> np.ndarray:
    """``s = max(s_x^alpha, 1e-4) / sqrt(max * min)`` as float32 (see the module docstring)."""
    s_x = np.asarray(s_x, np.float64)
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
    s = np.maximum(s_x ** float(alpha), _S_FLOOR)                            # [C]
    s = s / np.sqrt(s.max() * s.min())
    return s.astype(np.float32)


def scaled_fake_quantize(W, s, spec: QuantSpec, channel_map=None) -> np.ndarray:
    """``Q(W diag(s_c)) diag(s_c)^{-1}``: the candidate weight of the scale search, in the
    original (unscaled) space. ``W`` [out, in], ``s`` [C]; returns float32 [out, in]."""
    W = _matrix(W, "W").astype(np.float32)
    c, _ = _channel_map(channel_map, W.shape[1])
    s_in = np.asarray(s, np.float32)[c]                                      # [in]
    return fake_quantize(W * s_in, _spec(spec)) / s_in


@dataclass(frozen=True)
class AWQScaleResult:
    """Result of :func:`awq_search_scale`.

    Attributes
    ----------
    s : ndarray [C] float32
        The chosen per-channel scale ``s_x^alpha*`` (normalized). Fold it with
        :func:`fold_scales`: the weights' input channel ``j`` is multiplied by ``s[c_j]``.
    alpha : float
        The chosen exponent.
    alphas : ndarray [n_grid]
        The grid ``k / n_grid``.
    losses : ndarray [n_grid] float64
        The output MSE at every grid point; ``losses[0]`` is round-to-nearest (``alpha = 0``).
    s_x : ndarray [C] float64
        The activation magnitudes.
    """

    s: np.ndarray
    alpha: float
    alphas: np.ndarray
    losses: np.ndarray
    s_x: np.ndarray

    @property
    def loss(self) -> float:
        """The loss at the chosen ``alpha``."""
        return float(self.losses[int(np.flatnonzero(self.alphas == self.alpha)[0])])

    @property
    def loss_rtn(self) -> float:
        """The loss at ``alpha = 0`` (round-to-nearest)."""
        return float(self.losses[0])


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def awq_search_scale(W_list, X, spec, forward_fn: Callable | None = None, n_grid: int = 20, *,
                     channel_map=None, s_x=None) -> AWQScaleResult:
    """Grid search of the AWQ per-channel scale for weights that share one input.

    .. math::

        \\alpha^* = \\arg\\min_{\\alpha} \\operatorname{mean}\\big(f(W_1..W_m) -
        f(\\hat W_1(\\alpha)..\\hat W_m(\\alpha))\\big)^2, \\quad
        \\hat W_i(\\alpha) = Q(W_i \\operatorname{diag}(\\mathbf s_\\alpha))
        \\operatorname{diag}(\\mathbf s_\\alpha)^{-1}, \\quad
        \\mathbf s_\\alpha = \\mathbf s_x^{\\alpha} / \\sqrt{\\max \\cdot \\min}

    Parameters
    ----------
    W_list : sequence of array_like [out_i, in]
        The weights that read the same input ``X`` (e.g. q, k and v after the input RMSNorm).
    X : array_like [n, in] (or [..., in])
        Their calibration input; gives ``s_x`` (unless ``s_x`` is passed) and the default loss.
    spec : QuantSpec or sequence of (QuantSpec or None)
        How each weight is quantized (typically asymmetric, groups of 128 along the input);
        ``None`` keeps that weight in float during the search.
    forward_fn : callable, optional
        ``forward_fn(list of m float32 arrays [out_i, in]) -> ndarray``: the real output of the
        block or sub-module computed with these weights (all else fixed). The reference output
        is ``forward_fn(W_list)``. Default: the weights' own outputs
        ``concat_i(X @ W_i^T)``.
    n_grid : int
        Number of grid points of ``alpha`` in ``[0, 1)`` (default 20, as in [1]_).
    channel_map : int array [in], optional
        Input channel ``j`` uses scale ``s[c_j]``; default the identity.
    s_x : array_like [C], optional
        Activation magnitudes, if already known; default :func:`activation_scale` of ``X``.

    Returns
    -------
    AWQScaleResult

    Examples
    --------
    >>> import numpy as np, refquant as rq
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(256, 64)) * np.where(np.arange(64) < 4, 20.0, 1.0)
    >>> W = rng.normal(size=(32, 64))
    >>> spec = rq.QuantSpec(bits=3, symmetric=False, granularity="group", group_size=32)
    >>> r = awq_search_scale([W], X, spec)
    >>> r.loss < r.loss_rtn
    True
    """
    if isinstance(W_list, np.ndarray) or not isinstance(W_list, Sequence) or len(W_list) == 0:
        raise ValueError("W_list must be a non-empty list of 2-D weights")
    Ws = [_matrix(W, f"W_list[{i}]").astype(np.float32) for i, W in enumerate(W_list)]
    k = Ws[0].shape[1]
    for i, W in enumerate(Ws):
        if W.shape[1] != k:
            raise ValueError(f"W_list[{i}] has {W.shape[1]} inputs, W_list[0] has {k}")
    X = as_float_array(X, "X")
    if X.ndim < 2 or X.shape[-1] != k:
        raise ValueError(f"X must have shape [..., {k}] to match the weights, got {X.shape}")
    X = _matrix(X.reshape(-1, k), "X").astype(np.float32)                  # [n, in]
    specs = _specs(spec, len(Ws))
    n_grid = check_positive_int(n_grid, "n_grid")
    c, C = _channel_map(channel_map, k)
    if s_x is None:
        s_x = activation_scale(X, c)
    else:
        s_x = np.asarray(s_x, np.float64)
        if s_x.shape != (C,) or not np.all(np.isfinite(s_x)) or np.any(s_x < 0):
            raise ValueError(f"s_x must be finite, non-negative, of shape ({C},), got {s_x.shape}")
    if forward_fn is None:
        def forward_fn(weights):                                             # [n, sum out_i]
            return np.concatenate([X @ W.T for W in weights], axis=-1)
    elif not callable(forward_fn):
        raise ValueError(f"forward_fn must be callable, got {type(forward_fn).__name__}")

    Y = np.asarray(forward_fn(Ws))                                           # reference output
    if not np.all(np.isfinite(Y)):
        raise ValueError("forward_fn(W_list) returned NaN or Inf")
    alphas = np.arange(n_grid) / n_grid                                      # [n_grid]
    losses = np.empty(n_grid)
    best = 0
    for a_i, alpha in enumerate(alphas):
        s = scale_from_alpha(s_x, alpha)                                     # [C]
        W_hat = [W if sp is None else scaled_fake_quantize(W, s, sp, c)
                 for W, sp in zip(Ws, specs)]
        Y_hat = np.asarray(forward_fn(W_hat))
        if Y_hat.shape != Y.shape:
            raise ValueError(f"forward_fn returned shape {Y_hat.shape} for candidate weights, "
                             f"{Y.shape} for the originals")
        losses[a_i] = _mse(Y, Y_hat)
        if losses[a_i] < losses[best]:
            best = a_i
    return AWQScaleResult(s=scale_from_alpha(s_x, alphas[best]), alpha=float(alphas[best]),
                          alphas=alphas, losses=losses, s_x=s_x)


# ---------------------------------------------------------------------------------------------
# folding


@dataclass(frozen=True)
class FoldResult:
    """Result of :func:`fold_scales`: the new previous operation and the new weights."""

    prev: np.ndarray
    weights: list


def fold_scales(s, prev, weights, *, channel_map=None) -> FoldResult:
    """Fold the AWQ scale into the operation before the weights; the float function is unchanged.

    .. math::

        W_i \\leftarrow W_i \\operatorname{diag}(s_{c}), \\qquad
        \\text{prev} \\leftarrow \\operatorname{diag}(s)^{-1}\\,\\text{prev}

    ``prev`` 1-D ``[C]``: an RMSNorm weight ``g`` (``y = g * x / rms(x)``), divided elementwise.
    ``prev`` 2-D ``[C, in_prev]``: a linear whose output rows feed the weights through an
    operation that is linear in each channel (``up_proj`` before ``down_proj`` through
    ``silu(gate) * up``; ``v_proj`` before ``o_proj`` through the attention average); its rows
    are divided.

    Grouped-query attention: ``v_proj`` has ``n_kv_heads * head_dim`` rows, ``o_proj``
    ``n_heads * head_dim`` inputs, and query head ``h`` reads key/value head
    ``h // (n_heads / n_kv_heads)``. With ``channel_map[h * head_dim + d] =
    (h // n_rep) * head_dim + d`` the scale of each value channel is shared by every query head
    that reads it, so ``v`` rows ``/ s`` and ``o`` columns ``* s[c]`` cancel exactly.

    Parameters
    ----------
    s : array_like [C] (> 0)
    prev : array_like [C] or [C, in_prev]
    weights : sequence of array_like [out_i, in]
    channel_map : int array [in], optional (identity; then C = in)

    Returns
    -------
    FoldResult with float32 arrays (the inputs are not modified).
    """
    s = np.asarray(as_float_array(s, "s"), np.float32)
    if s.ndim != 1 or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError("s must be a 1-D array of finite positive scales")
    prev = as_float_array(prev, "prev").astype(np.float32)
    if prev.ndim not in (1, 2) or prev.shape[0] != s.shape[0]:
        raise ValueError(f"prev must have shape ({s.shape[0]},) or ({s.shape[0]}, n), "
                         f"got {prev.shape}")
    Ws = [_matrix(W, f"weights[{i}]").astype(np.float32) for i, W in enumerate(weights)]
    out = []
    for i, W in enumerate(Ws):
        c, C = _channel_map(channel_map, W.shape[1])
        if C != s.shape[0]:
            raise ValueError(f"weights[{i}] has {C} scale channels, s has {s.shape[0]}")
        out.append(W * s[c])                                                 # [out, in]
    new_prev = prev / s if prev.ndim == 1 else prev / s[:, None]
    return FoldResult(prev=new_prev, weights=out)


# ---------------------------------------------------------------------------------------------
# clipping


@dataclass(frozen=True)
class AWQClipResult:
    """Result of :func:`awq_clip`.

    Attributes
    ----------
    shrink : ndarray [out, G]
        The chosen shrink factor of each parameter group (1 = no clipping).
    lo, hi : ndarray [out, G] float64
        The chosen clipping range of each group.
    qparams : QParams [out, G]
    codes : ndarray [out, in]
        Integer codes of the weight under ``qparams``.
    w_hat : ndarray [out, in] float32
        The dequantized weight.
    group_loss, group_loss_noclip : ndarray [out, G] float64
        The search objective of each group with the chosen range and with the min-max range.
    """

    shrink: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    qparams: QParams
    codes: np.ndarray
    w_hat: np.ndarray
    group_loss: np.ndarray
    group_loss_noclip: np.ndarray

    @property
    def loss(self) -> float:
        """Sum over groups of the search objective, chosen ranges."""
        return float(self.group_loss.sum())

    @property
    def loss_noclip(self) -> float:
        """Sum over groups of the search objective, min-max ranges (plain RTN)."""
        return float(self.group_loss_noclip.sum())


def _clip_groups(spec: QuantSpec, k: int) -> tuple[QuantSpec, int]:
    """The group spec and group size the clip search works with."""
    if spec.granularity == "group":
        return spec, spec.group_size
    if spec.granularity == "channel" and spec.axis in (0, -2):
        return spec, k
    raise ValueError("awq_clip needs per-group or per-output-channel (axis=0) parameters, got "
                     f"granularity={spec.granularity!r} axis={spec.axis!r}")


def group_output_error(X, W, W_hat, group_size: int) -> np.ndarray:
    """``mean_t (X_{t,g} (W - W_hat)_{r,g}^T)^2`` for every row ``r`` and input group ``g``.

    The mean squared error of group ``g``'s partial output, computed from the group's
    second-moment matrix :math:`H_g = X_g^\\top X_g / n` (``[gs, gs]``, float64) as
    :math:`\\mathbf d_{rg} H_g \\mathbf d_{rg}^\\top` with ``d = W - W_hat``: the cost is
    ``out * in * gs`` whatever the number of tokens.

    Parameters
    ----------
    X : array_like [n, in]
    W, W_hat : array_like [out, in]
    group_size : int

    Returns
    -------
    numpy.ndarray [out, G] float64
    """
    return _group_error(_group_moments(X, group_size), W, W_hat, group_size)


def _group_moments(X, group_size: int) -> list:
    """``[X_g^T X_g / n for each group g]`` in float64."""
    X = np.asarray(X, np.float64)
    return [X[:, a:a + group_size].T @ X[:, a:a + group_size] / X.shape[0]
            for a in range(0, X.shape[1], group_size)]


def _group_error(H: list, W, W_hat, group_size: int) -> np.ndarray:
    D = np.asarray(W, np.float64) - np.asarray(W_hat, np.float64)          # [out, in]
    err = [((D[:, a:a + group_size] @ H_g) * D[:, a:a + group_size]).sum(axis=1)
           for H_g, a in zip(H, range(0, D.shape[1], group_size))]           # G x [out]
    return np.maximum(np.stack(err, axis=1), 0.0)                            # [out, G]


def awq_clip(W, X, spec: QuantSpec, *, n_grid: int = 20, max_shrink: float = 0.5,
             max_tokens: int | None = None) -> AWQClipResult:
    """AWQ's weight clipping: shrink each group's range to minimize its output error.

    For every parameter group (row ``r``, input group ``g``) and shrink factor
    ``beta in {1, 1 - 1/n, ..., 1 - floor(max_shrink n - 1)/n}`` (``n = n_grid``; default
    1, 0.95, ..., 0.55 as in [2]_), the range ``beta [min(w, 0), max(w, 0)]`` (symmetric:
    ``beta max|w|``) is quantized and the group's partial-output error

    .. math::

        L_{rg}(\\beta) = \\operatorname{mean}_t \\Big(\\sum_{j \\in g} X_{tj}
        \\big(W_{rj} - Q_\\beta(W)_{rj}\\big)\\Big)^2

    measured; each group keeps its best ``beta`` (ties keep the larger, so ``beta = 1``, plain
    min-max, wins unless a clip is strictly better: ``group_loss <= group_loss_noclip``
    elementwise). The objective is the reference implementation's [2]_: it is separable by group,
    so the whole layer's output error ``||X (W - W_hat)^T||^2``, which also has cross terms
    between groups, is usually but not provably lowered. The reference clamps both sides at
    ``+-beta max|w|``; here both ends of the range shrink by ``beta``, like the ``mse``
    observer of :mod:`refquant.calibration.observers`.

    Parameters
    ----------
    W : array_like [out, in]
    X : array_like [n, in] (or [..., in])
        Calibration inputs of the layer.
    spec : QuantSpec
        ``granularity="group"`` or ``"channel"`` with ``axis=0``.
    n_grid : int
    max_shrink : float in [0, 1)
        The largest fraction of the range that may be cut away.
    max_tokens : int or None
        Use every ``ceil(n / max_tokens)``-th token; default None: all of them (the error is
        computed from the per-group second moments, so tokens cost only their one-time
        ``n * in * gs``; the reference [2]_ subsamples 512 to bound its cost).

    Returns
    -------
    AWQClipResult
    """
    W = _matrix(W, "W").astype(np.float32)
    X = as_float_array(X, "X")
    if X.ndim < 2 or X.shape[-1] != W.shape[1]:
        raise ValueError(f"X must have shape [..., {W.shape[1]}] to match W, got {X.shape}")
    X = _matrix(X.reshape(-1, W.shape[1]), "X")
    spec, gs = _clip_groups(_spec(spec), W.shape[1])
    n_grid = check_positive_int(n_grid, "n_grid")
    if not 0.0 <= float(max_shrink) < 1.0:
        raise ValueError(f"max_shrink must lie in [0, 1), got {max_shrink!r}")
    if max_tokens is not None:
        max_tokens = check_positive_int(max_tokens, "max_tokens")
        X = X[::-(-X.shape[0] // max_tokens)]                                # [<= max_tokens, in]

    out, k = W.shape
    starts = np.arange(0, k, gs)                                             # [G]
    lo0 = np.minimum.reduceat(W, starts, axis=1).astype(np.float64)          # [out, G]
    hi0 = np.maximum.reduceat(W, starts, axis=1).astype(np.float64)
    if spec.symmetric:
        hi0 = np.maximum(np.abs(lo0), np.abs(hi0))
        lo0 = -hi0
    else:
        lo0, hi0 = np.minimum(lo0, 0.0), np.maximum(hi0, 0.0)

    def shaped(p):                                             # [out, G] -> the parameter shape
        return p if spec.granularity == "group" else p[:, 0]

    H = _group_moments(X, gs)                                                # G x [gs, gs]
    best_loss = best_beta = loss_noclip = None
    n_steps = max(1, int(np.ceil(float(max_shrink) * n_grid - 1e-12)))
    for i_s in range(n_steps):
        beta = 1.0 - i_s / n_grid
        qp = qparams_from_range(shaped(beta * lo0), shaped(beta * hi0), spec)
        W_hat = dequantize(quantize(W, qp, spec), qp, spec)                  # [out, in]
        loss = _group_error(H, W, W_hat, gs)                                 # [out, G]
        if best_loss is None:
            best_loss, best_beta, loss_noclip = loss, np.ones_like(loss), loss
            continue
        better = loss < best_loss
        best_loss = np.where(better, loss, best_loss)
        best_beta = np.where(better, beta, best_beta)
    lo, hi = best_beta * lo0, best_beta * hi0
    qp = qparams_from_range(shaped(lo), shaped(hi), spec)
    codes = quantize(W, qp, spec)
    return AWQClipResult(shrink=best_beta, lo=lo, hi=hi, qparams=qp, codes=codes,
                         w_hat=dequantize(codes, qp, spec), group_loss=best_loss,
                         group_loss_noclip=loss_noclip)


__all__ = ["activation_scale", "scale_from_alpha", "scaled_fake_quantize",
           "awq_search_scale",
           "AWQScaleResult", "fold_scales", "FoldResult", "awq_clip", "AWQClipResult",
           "group_output_error"]
