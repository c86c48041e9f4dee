"""Entropy calibration math: per-group histograms and the divergence of a clipping window.

These are the pieces of TensorRT's entropy calibration [1]_ that
:class:`refquant.calibration.observers.KLObserver` searches over. For a window of ``t`` histogram bins
and ``L`` quantization levels:

* ``P``: the window's counts, with the counts left and right of it (the clipped outliers)
  folded into its first and last bin;
* ``Q``: the window's own counts merged into ``L`` consecutive chunks (bin ``k`` belongs to
  chunk ``floor(k L / t)``) and spread back evenly over the chunk's bins where ``P > 0``;
* both normalized, bins with ``P > 0 = Q`` given the probability ``eps``, and
  :math:`D_{KL}(P \\| Q) = \\sum_k P_k \\log(P_k / Q_k)`.

:func:`kl_window` states this directly (``O(t)`` per group); :func:`kl_window_prefix`
computes the same value from prefix sums in ``O(L)`` per group and is what the search uses.

Symbols
-------
====  ===========================================================================
B     number of histogram bins; counts ``[*G, B]`` (``*G``: the parameter groups)
t     window width in bins; ``start`` ``[*G]`` its first bin
L     number of quantization levels (chunks)
T     total count of a group
P, Q  reference and quantized distributions over the window
====  ===========================================================================

References
----------
.. [1] S. Migacz, "8-bit Inference with TensorRT", GPU Technology Conference (GTC), 2017.
"""

from __future__ import annotations

import numpy as np


def histograms(v: np.ndarray, lo: np.ndarray, hi: np.ndarray, bins: int):
    """Counts of ``v`` ``[*G, m]`` (NaN-padded) in ``bins`` equal bins over ``[lo, hi]`` ``[*G]``.

    Bin ``j`` is ``[lo + j w, lo + (j+1) w)`` with ``w = (hi - lo) / bins``; ``hi`` itself
    falls into the last bin. Groups with ``hi == lo`` get ``w = 1`` (all members in bin 0).
    Returns ``(counts int64 [*G, bins], w float64 [*G])``.
    """
    w = np.where(hi > lo, (hi - lo) / bins, 1.0)                      # [*G]
    valid = ~np.isnan(v)
    j = np.floor((np.where(valid, v, 0.0) - lo[..., None]) / w[..., None])
    j = np.clip(j, 0, bins - 1).astype(np.int64)                      # [*G, m]
    n_groups = int(np.prod(lo.shape))
    flat = np.arange(n_groups).reshape(lo.shape)[..., None] * bins + j
    counts = np.bincount(flat[valid], minlength=n_groups * bins)
    return counts.reshape(lo.shape + (bins,)), w


def kl_window(counts, cum, start, t, levels, eps):
    """``KL(P || Q)`` of every group for the window of ``t`` bins starting at bin ``start``.

    ``counts`` is ``[*G, B]``, ``cum`` its cumulative sums with a leading 0 ``[*G, B+1]``,
    ``start`` ``[*G]`` int. P is the window with the counts left of
    it added to its first bin and those right of it to its last bin (the clipped outliers);
    Q merges the window's own counts into ``levels`` consecutive chunks (bin ``k`` of the
    window belongs to chunk ``floor(k levels / t)``) and spreads each chunk's count evenly
    over the bins of the chunk where P is nonzero. Both are normalized; bins where P > 0 but
    Q = 0 get Q = ``eps`` before Q is normalized again.
    """
    k = np.arange(t)
    window = np.take_along_axis(counts, start[..., None] + k, axis=-1).astype(np.float64)
    total = cum[..., -1].astype(np.float64)
    left = np.take_along_axis(cum, start[..., None], axis=-1)[..., 0]
    right = total - np.take_along_axis(cum, (start + t)[..., None], axis=-1)[..., 0]
    P = window.copy()                                                 # [*G, t]
    P[..., 0] += left
    P[..., -1] += right
    chunk = k * levels // t                                           # [t] chunk of each bin
    first = np.flatnonzero(np.diff(chunk, prepend=-1))                # [levels] first bin of each
    support = P > 0
    chunk_count = np.add.reduceat(window, first, axis=-1)             # [*G, levels]
    chunk_nnz = np.add.reduceat(support.astype(np.int64), first, axis=-1)
    Q = np.where(support, (chunk_count / np.maximum(chunk_nnz, 1))[..., chunk], 0.0)
    p = P / total[..., None]
    q_sum = Q.sum(axis=-1, keepdims=True)
    q = Q / np.where(q_sum > 0, q_sum, 1.0)                           # all 0 if the window is empty
    q = np.where(support & (q == 0), eps, q)
    q = q / q.sum(axis=-1, keepdims=True)
    ratio = np.divide(p, q, out=np.ones_like(p), where=support)       # p, q > 0 on the support
    return np.sum(p * np.log(ratio), axis=-1)


def xlogx(v):
    v = np.asarray(v, np.float64)
    return v * np.log(np.where(v > 0, v, 1.0))                         # 0 log 0 = 0


def prefix_sums(counts):
    """Cumulative sums with a leading 0 along the bins of ``counts`` ``[*G, B]``: of the counts
    (int64), of the indicator ``n > 0`` (int64) and of ``n log n`` (float64)."""
    def cumsum0(a):
        return np.concatenate([np.zeros(a.shape[:-1] + (1,), a.dtype), np.cumsum(a, axis=-1)], -1)
    return cumsum0(counts), cumsum0((counts > 0).astype(np.int64)), cumsum0(xlogx(counts))


def kl_window_prefix(counts, sums, start, t, levels, eps):
    """The divergence of :func:`kl_window`, in ``O(levels)`` per group from prefix sums.

    Inside a chunk ``j`` every bin of the support of P gets the same ``q_j``, so with ``M_j``
    the mass of P in the chunk and ``T`` the total count,

    .. math::

        D_{KL}(P \\| Q) = \\frac{1}{T}\\Big(\\sum_k P_k \\log P_k - \\sum_j M_j \\log q_j\\Big)
                         - \\log T .

    ``sum_k P_k log P_k`` is the prefix sum of ``n log n`` over the window with its two end
    bins corrected for the folded-in outliers; only those end bins can have ``P > 0 = Q``
    (they get ``eps``). Equal to :func:`kl_window` up to rounding (tested).
    """
    cum, nonzero, nlogn = sums

    def at(a, idx):
        return np.take_along_axis(a, idx[..., None], axis=-1)[..., 0]

    T = cum[..., -1].astype(np.float64)                               # [*G]
    f = -(-np.arange(levels + 1) * t // levels)                       # [L+1] chunk starts, f_L = t
    edges = start[..., None] + f                                      # [*G, L+1]
    c = np.diff(np.take_along_axis(cum, edges, axis=-1), axis=-1).astype(np.float64)  # [*G, L]
    nnz = np.diff(np.take_along_axis(nonzero, edges, axis=-1), axis=-1)
    left = at(cum, start).astype(np.float64)
    right = T - at(cum, start + t)
    n_first = at(counts, start).astype(np.float64)
    n_last = at(counts, start + t - 1).astype(np.float64)
    nnz[..., 0] += (n_first == 0) & (left > 0)         # end bins holding only outliers
    nnz[..., -1] += (n_last == 0) & (right > 0)
    M = c.copy()                                                      # [*G, L] mass of P per chunk
    M[..., 0] += left
    M[..., -1] += right
    own = c.sum(axis=-1)                                              # [*G] the window's counts
    n_eps = np.sum(np.where(c == 0, nnz, 0), axis=-1)                 # support bins with Q = 0
    norm = np.where(own > 0, 1.0, 0.0) + eps * n_eps
    q = np.where(c > 0, c / np.maximum(nnz, 1) / np.where(own > 0, own, 1.0)[..., None], eps)
    q = q / norm[..., None]
    sum_PlogP = (at(nlogn, start + t) - at(nlogn, start) - xlogx(n_first) - xlogx(n_last)
                 + xlogx(n_first + left) + xlogx(n_last + right))
    cross = np.sum(np.where(M > 0, M * np.log(np.where(M > 0, q, 1.0)), 0.0), axis=-1)
    return (sum_PlogP - cross) / T - np.log(T)
