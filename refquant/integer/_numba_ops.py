"""Numba versions of the element-wise integer ops, equal bit for bit to their NumPy
specifications (speed only; the algorithms live in :mod:`refquant.integer.requant` and
:mod:`refquant.integer.ops_exp`):

=====================  =====================================================  ==================
kernel                 computes                                               pinned equal by
=====================  =====================================================  ==================
``rescale_rows``       :func:`refquant.integer.requant.rescale_rows` after     tests/test_int_ops.py
                       its checks (``a, e`` and the range of ``s`` given)      ``test_numba_*``
``softmax_rows``       :func:`refquant.integer.ops_exp.i_softmax` on          tests/test_int_ops.py
                       ``[R, S]`` rows with a per-row count of valid keys     ``test_numba_*``
=====================  =====================================================  ==================

Nothing is compiled at import; each kernel is built on first call (``cache=True``). Signed
``>>`` on int64 is the arithmetic shift in Numba, as in NumPy. Each kernel comes in two builds:
rows on the thread pool, and, below :data:`SERIAL_BELOW` elements (a decoded token's rows), the
same loop on the calling thread, where waking the pool would cost more than the work.
"""

from __future__ import annotations

import functools

import numpy as np

NJIT = dict(parallel=True, cache=True, fastmath=False, nogil=True)
SERIAL_BELOW = 2**15      # elements: fewer run on the calling thread (same arithmetic)


@functools.lru_cache(maxsize=None)
def _rescale_kernel(parallel: bool = True):
    import numba
    rows = numba.prange if parallel else range      # a closure value: cached apart

    @numba.njit(**dict(NJIT, parallel=parallel))
    def kernel(acc, a, e, M0, n, out):                  # acc [R, C], a, e [R], M0, n [C]
        R, C = acc.shape
        for t in rows(R):
            for c in range(C):
                p = np.int64(acc[t, c]) * a[t]
                s = 31 + n[c] - e[t]
                hi = M0[c] >> 16
                lo = M0[c] & 0xFFFF
                A = p * hi + (np.int64(1) << (s - 17))
                A += (p * lo) >> 16
                y = A >> (s - 16)
                if y > 2147483647:
                    y = 2147483647
                elif y < -2147483648:
                    y = -2147483648
                out[t, c] = y
    return kernel


def rescale_rows(acc, a, e, M0, n) -> np.ndarray:
    """int32 ``[R, C]``: the kernel of :func:`refquant.integer.requant.rescale_rows` on
    int32/int64 ``acc [R, C]``, ``a, e [R]`` int64, ``M0, n [C]`` int64 (checked by the caller:
    ``17 <= 31 + n - e <= 78``)."""
    out = np.empty(acc.shape, np.int32)
    _rescale_kernel(acc.size >= SERIAL_BELOW)(acc, a, e, M0, n, out)
    return out


@functools.lru_cache(maxsize=None)
def _softmax_kernel(parallel: bool = True):
    import numba
    rows = numba.prange if parallel else range      # a closure value: cached apart

    @numba.njit(**dict(NJIT, parallel=parallel))
    def kernel(z, n_valid, q_ln2, q_b, q_c, pmax, bits, out):   # z [R, S], n_valid [R]
        R, S = z.shape
        for t in rows(R):
            nv = n_valid[t]
            m = z[t, 0]
            for s in range(1, nv):
                if z[t, s] > m:
                    m = z[t, s]
            e = np.empty(nv, np.int64)
            total = np.int64(0)
            for s in range(nv):
                q = np.int64(z[t, s]) - m
                k = (-q) // q_ln2
                r = q + k * q_ln2
                L = (r + q_b) * (r + q_b) + q_c
                e[s] = L >> min(k, 62)
                total += e[s]
            if total < 1:
                total = 1
            Rc = ((np.int64(pmax) << bits) + (total >> 1)) // total
            half = np.int64(1) << (bits - 1)
            for s in range(nv):
                p = (e[s] * Rc + half) >> bits
                out[t, s] = min(max(p, 0), pmax)
            for s in range(nv, S):
                out[t, s] = 0
    return kernel


def softmax_rows(z, n_valid, q_ln2: int, q_b: int, q_c: int, pmax: int, bits: int) -> np.ndarray:
    """uint8 ``[R, S]``: :func:`refquant.integer.ops_exp.i_softmax` where row ``t`` sees its first
    ``n_valid[t] >= 1`` keys (the causal mask's prefix form), constants given by the caller."""
    out = np.empty(z.shape, np.uint8)
    _softmax_kernel(z.size >= SERIAL_BELOW)(z, n_valid, np.int64(q_ln2), np.int64(q_b),
                                           np.int64(q_c), pmax, bits, out)
    return out
