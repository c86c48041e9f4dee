"""AWQ's scale search and folding (Lin et al. [1]_): ``s = s_x^alpha``, the grid search of
``alpha`` on the real output the weights feed, and the fold of ``s`` into the operation before them.

.. math::

    \\alpha^* = \\arg\\min_{\\alpha \\in \\{0, 1/n, \\dots, (n-1)/n\\}}
    \\big\\lVert f(W;\\, X) - f\\big(Q(W \\operatorname{diag}(\\mathbf s_\\alpha))
    \\operatorname{diag}(\\mathbf s_\\alpha)^{-1};\\, X\\big)\\big\\rVert^2 ,
    \\qquad W \\leftarrow W \\operatorname{diag}(\\mathbf s), \\quad
    \\text{prev} \\leftarrow \\operatorname{diag}(\\mathbf s)^{-1} \\text{prev}

The symbols (``X``, ``W``, ``s_x``, ``alpha``, ``s``, ``Q``, ``f``, ``c``), the normalization of
``s`` and the tie rule are those of :mod:`refquant.algorithms.awq`.

References
----------
.. [1] J. Lin et al., "AWQ: Activation-aware Weight Quantization for On-Device LLM Compression
       and Acceleration", MLSys 2024, arXiv:2306.00978.
.. [2] MIT HAN Lab, llm-awq (the authors' code), ``awq/quantize/auto_scale.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from refquant.algorithms.awq._checks import matrix as _matrix, quant_spec as _spec
from refquant.algorithms.awq._fast import _scaled_fake_quantize
from refquant.algorithms.awq.quantizer import WeightQuantizer
from refquant.calibration.fake import fake_quantize
from refquant.schemes.numerics import as_float_array, check_positive_int
from refquant.schemes.spec import QuantSpec

_S_FLOOR = 1e-4


def _specs(spec, n: int) -> list:
    """One QuantSpec or WeightQuantizer (or None = keep float) per weight."""
    if isinstance(spec, (QuantSpec, WeightQuantizer)):
        return [spec] * n
    if isinstance(spec, Sequence) and not isinstance(spec, str) and len(spec) == n:
        out = [sp if sp is None or isinstance(sp, WeightQuantizer) else _spec(sp, "spec[i]")
               for sp in spec]
        if all(sp is None for sp in out):
            raise ValueError("spec is None for every weight: nothing to quantize")
        return out
    raise ValueError(f"spec must be a QuantSpec, a WeightQuantizer or a sequence of {n} of "
                     f"them (or None), got {spec!r}")


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
    with np.errstate(over="ignore"):                     # finite X can overflow the float64 sum
        per_channel = np.abs(X.astype(np.float64)).mean(axis=0)           # [in]
        s_x = np.bincount(c, per_channel, minlength=C) / np.bincount(c, minlength=C)
    bad = np.flatnonzero(~np.isfinite(s_x))
    if bad.size:
        raise ValueError(f"the mean |X| of channel {int(bad[0])} overflows float64 "
                         f"({bad.size} such channel(s))")
    return s_x


def _check_s_x(s_x, C: int | None = None) -> np.ndarray:
    """``s_x`` as float64 ``[C]``: 1-D, non-empty (of length ``C`` if given), finite and >= 0;
    ``ValueError`` naming the first bad channel (its index) otherwise."""
    s_x = np.asarray(as_float_array(s_x, "s_x"), np.float64)      # names a NaN/Inf's index
    if s_x.ndim != 1 or s_x.size == 0 or (C is not None and s_x.shape != (C,)):
        want = "(C,) with C >= 1" if C is None else f"({C},)"
        raise ValueError(f"s_x must have shape {want}, got {s_x.shape}")
    bad = np.flatnonzero(s_x < 0)
    if bad.size:
        j = int(bad[0])
        raise ValueError(f"s_x[{j}] = {float(s_x[j])}: activation magnitudes must be >= 0 "
                         f"({bad.size} negative channel(s))")
    return s_x


def scale_from_alpha(s_x, alpha: float) -> np.ndarray:
    """``s = max(s_x^alpha, 1e-4) / sqrt(max * min)`` as float32 (see the module docstring).

    ``s_x`` ``[C]`` must be finite and >= 0 and ``alpha`` in ``[0, 1]``; a ``ValueError`` names
    the first bad channel, or the first channel whose scale is not a finite positive float32
    (a spread ``max / min`` of ``s_x^alpha`` above ~1e77).

    Examples
    --------
    >>> scale_from_alpha([4.0, 1.0, 0.25], 0.5)
    array([2. , 1. , 0.5], dtype=float32)
    >>> scale_from_alpha([1.0, float("nan")], 0.5)
    Traceback (most recent call last):
    ...
    ValueError: s_x contains NaN or Inf (first at index (1,): np.float64(nan))
    """
    s_x = _check_s_x(s_x)
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
    s = np.maximum(s_x ** float(alpha), _S_FLOOR)                            # [C]
    with np.errstate(over="ignore"):             # overflow to inf (or, of max*min, to 0):
        s = (s / np.sqrt(s.max() * s.min())).astype(np.float32)   # checked next
    bad = np.flatnonzero(~np.isfinite(s) | (s <= 0))
    if bad.size:
        j = int(bad[0])
        raise ValueError(f"the scale of channel {j} is {s[j]} in float32 (s_x[{j}] = {float(s_x[j])}, "
                         f"alpha = {float(alpha)!r}): the spread of s_x is too large")
    return s


def scaled_fake_quantize(W, s, spec, channel_map=None) -> np.ndarray:
    """``Q(W diag(s_c)) diag(s_c)^{-1}``: the candidate weight of the scale search, in the
    original (unscaled) space. ``W`` [out, in], ``s`` [C]; returns float32 [out, in].

    ``spec`` is a :class:`~refquant.schemes.spec.QuantSpec` (``Q`` = min-max
    :func:`refquant.fake_quantize`) or a
    :class:`~refquant.algorithms.awq.quantizer.WeightQuantizer` (``Q`` = its functions, told
    the scale of the columns: ``Q(W diag(s_c), s_c)``).
    """
    W = _matrix(W, "W").astype(np.float32)
    c, _ = _channel_map(channel_map, W.shape[1])
    s_in = np.asarray(s, np.float32)[c]                                      # [in]
    if isinstance(spec, WeightQuantizer):
        return spec(W * s_in, s_in) / s_in
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
                     channel_map=None, s_x=None, Y=None) -> AWQScaleResult:
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
    spec : QuantSpec, WeightQuantizer, or sequence of (QuantSpec, WeightQuantizer or None)
        How each weight is quantized (typically asymmetric, groups of 128 along the input; a
        :class:`~refquant.algorithms.awq.quantizer.WeightQuantizer` is called as
        ``Q(W diag(s), s)``, e.g. a GGML block format's quantizer); ``None`` keeps that weight
        in float during the search.
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
    Y : array_like, optional
        The reference output ``forward_fn(W_list)``, if already known (e.g. recorded while the
        float block ran); default: computed.

    Notes
    -----
    Each candidate ``Q(W_i diag(s)) diag(s)^{-1}`` is computed by a one-pass kernel equal to
    :func:`scaled_fake_quantize` bit for bit (:mod:`refquant.algorithms.awq._fast`).

    Returns
    -------
    AWQScaleResult

    References
    ----------
    .. [1] J. Lin et al., "AWQ: Activation-aware Weight Quantization for On-Device LLM
           Compression and Acceleration", MLSys 2024, arXiv:2306.00978.

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
    s_x = activation_scale(X, c) if s_x is None else _check_s_x(s_x, C)
    if forward_fn is None:
        def forward_fn(weights):                                             # [n, sum out_i]
            return np.concatenate([X @ W.T for W in weights], axis=-1)
    elif not callable(forward_fn):
        raise ValueError(f"forward_fn must be callable, got {type(forward_fn).__name__}")

    given = Y is not None
    Y = np.asarray(Y if given else forward_fn(Ws))                           # reference output
    if not np.all(np.isfinite(Y)):
        raise ValueError("the reference output Y contains NaN or Inf" if given else
                         "forward_fn(W_list) returned NaN or Inf")
    alphas = np.arange(n_grid) / n_grid                                      # [n_grid]
    losses = np.empty(n_grid)
    best = 0
    for a_i, alpha in enumerate(alphas):
        s = scale_from_alpha(s_x, alpha)                                     # [C]
        W_hat = [W if sp is None else _candidate(W, s[c], sp)                # = scaled_fake_
                 for W, sp in zip(Ws, specs)]                                # quantize(W, s, sp, c)
        Y_hat = np.asarray(forward_fn(W_hat))
        if Y_hat.shape != Y.shape:
            raise ValueError(f"forward_fn returned shape {Y_hat.shape} for candidate weights, "
                             f"{Y.shape} for the originals")
        losses[a_i] = _mse(Y, Y_hat)
        if not np.isfinite(losses[a_i]):          # a NaN loss would never win, silently
            raise ValueError(f"the loss at alpha = {float(alpha)} is {losses[a_i]}: forward_fn "
                             "returned NaN or Inf for the candidate weights")
        if losses[a_i] < losses[best]:
            best = a_i
    return AWQScaleResult(s=scale_from_alpha(s_x, alphas[best]), alpha=float(alphas[best]),
                          alphas=alphas, losses=losses, s_x=s_x)


def _candidate(W: np.ndarray, s_in: np.ndarray, spec) -> np.ndarray:
    """:func:`scaled_fake_quantize` ``(W, s, spec, c)`` with ``s_in = s[c]`` of a checked
    float32 ``W``: a QuantSpec through the one-pass kernel (:func:`_scaled_fake_quantize`), a
    WeightQuantizer as written there."""
    if isinstance(spec, WeightQuantizer):
        return spec(W * s_in, s_in) / s_in
    return _scaled_fake_quantize(W, s_in, spec)


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
    with np.errstate(over="ignore"):                             # checked below
        s = np.asarray(as_float_array(s, "s"), np.float32)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"s must be a non-empty 1-D array of scales, got shape {s.shape}")
    bad = np.flatnonzero(~np.isfinite(s) | (s <= 0))       # inf here: overflow of the float32 cast
    if bad.size:
        raise ValueError(f"s[{int(bad[0])}] = {float(s[bad[0]])} in float32: scales must be "
                         "finite and > 0")
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


__all__ = ["activation_scale", "scale_from_alpha", "scaled_fake_quantize", "awq_search_scale",
           "AWQScaleResult", "fold_scales", "FoldResult"]
