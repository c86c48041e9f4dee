"""The parts of AWQ's two grid searches that exist only for speed.

Each helper computes what a plain line of :mod:`refquant.algorithms.awq.scale` or
:mod:`refquant.algorithms.awq.clip` states, bit for bit, faster; its docstring names that line
and the test in ``tests/test_awq.py`` that pins it equal to the plain version.

Both searches quantize and dequantize a whole weight at every grid point (the scale search
``Q(W diag(s)) diag(s)^{-1}`` for each candidate ``alpha``, the clipping search each candidate
range), and the plain path (:func:`refquant.schemes.uniform.quantize` then
:func:`~refquant.schemes.uniform.dequantize`) makes about ten float64 passes over the weight with
its checks and the broadcast parameters: at the bundled model's shapes it costs ~4x the
candidate's matrix product on 512 tokens. Here one Numba loop does the same float64 operations
element by element (no ``fastmath``: IEEE division and ``rint``, the same order), so the
result is identical. The loops run over one group's columns at a time (no integer division
per element), which LLVM vectorizes.

The kernels are single-threaded on purpose: the searches alternate them with BLAS products
(the candidates' forwards), and after a parallel Numba region GNU OpenMP's workers keep
spinning for a while, taking the cores OpenBLAS's next product needs (and OpenBLAS's idle
threads do the same to Numba's). Measured on one AWQ block of the bundled model (2 cores,
W4 g128, 10 grid points): 1.9 s with ``parallel=True``, 1.2 s single-threaded.

Symbols: ``x`` [R, K] float32 the weight (already scaled by ``s`` for the scale search),
``s``, ``z`` [R, G] float64 the scale and zero point of each parameter group (G = 1 and
``gs = K`` for per-output-channel parameters), ``lo``, ``hi`` [R, G] the clamp range of the
authors' clipping rule, ``d`` [K] float32 the divisor of each column (``s_in`` of the scale
search, ones otherwise).
"""

from __future__ import annotations

import functools

import numpy as np

from refquant.calibration.fake import fake_quantize
from refquant.schemes.spec import QParams, QuantSpec
from refquant.schemes.uniform import qparams_from_range

_NJIT = dict(parallel=False, cache=True, fastmath=False, nogil=True)


@functools.lru_cache(maxsize=None)
def _qdq_kernel():
    """The Numba loop of :func:`_quantize_dequantize` (compiled on first call, cached)."""
    import numba

    from refquant.schemes.numerics import round_scalar_numba
    rnd = round_scalar_numba()

    @numba.njit(**_NJIT)
    def kernel(x, s, z, gs, qmin, qmax, away, clamp, lo, hi, d, out):
        R, K = x.shape
        for r in range(R):
            for g in range((K + gs - 1) // gs):             # group g: columns a .. b-1
                a = g * gs
                b = min(a + gs, K)
                sg, zg, lg, hg = s[r, g], z[r, g], lo[r, g], hi[r, g]
                for j in range(a, b):
                    v = np.float64(x[r, j])
                    if clamp:                               # np.clip(W, lo, hi), float64
                        v = min(max(v, lg), hg)
                    q = min(max(rnd(v / sg, away) + zg, qmin), qmax)   # _round_codes
                    out[r, j] = np.float32(sg * (q - zg)) / d[j]   # s (q - z), then / d
    return kernel


@functools.lru_cache(maxsize=None)
def _range_kernel():
    """The Numba loop of :func:`_minmax_qparams`: each group's ``min`` and ``max`` (compiled on
    first call, cached)."""
    import numba

    @numba.njit(**_NJIT)
    def kernel(x, gs, lo, hi):
        R, K = x.shape
        for r in range(R):
            for g in range((K + gs - 1) // gs):
                a = g * gs
                mn = x[r, a]
                mx = x[r, a]
                for j in range(a + 1, min(a + gs, K)):
                    mn = min(mn, x[r, j])
                    mx = max(mx, x[r, j])
                lo[r, g] = mn
                hi[r, g] = mx
    return kernel


def _group_shape(spec: QuantSpec, K: int):
    """``gs`` of the kernel for ``spec`` on ``K`` columns, or None where the kernel does not
    apply (granularities other than ``"group"`` and ``"channel"`` along axis 0)."""
    if spec.granularity == "group":
        return spec.group_size
    if spec.granularity == "channel" and spec.axis in (0, -2):
        return K
    return None


def _quantize_dequantize(x, qp: QParams, spec: QuantSpec, *, lo=None, hi=None, d=None):
    """``dequantize(quantize(x, qp, spec), qp, spec)`` (float32 [R, K]) for a group or
    per-output-channel ``spec`` on float32 ``x [R, K]``, in one pass; with ``lo``, ``hi``
    (float64 [R, G]) ``x`` is first clamped to its group's range (``np.clip`` in float64, as
    :func:`refquant.algorithms.awq.clip._quantize_in_range`); with ``d`` (float32 [K]) the result
    is divided by it in float32 (``fake_quantize(W s) / s``). The caller has checked ``x``,
    ``qp`` and ``spec`` (:func:`_group_shape` is not None). Pinned by
    ``test_fast_quantize_dequantize_is_the_plain_one``.
    """
    R, K = x.shape
    gs = _group_shape(spec, K)
    s = np.asarray(qp.scale, np.float64).reshape(R, -1)                     # [R, G]
    z = np.asarray(qp.zero_point, np.float64).reshape(R, -1)                # [R, G]
    clamp = lo is not None
    lo = np.ascontiguousarray(lo if clamp else s[:, :1], np.float64).reshape(R, -1)
    hi = np.ascontiguousarray(hi if clamp else s[:, :1], np.float64).reshape(R, -1)
    d = np.ones(K, np.float32) if d is None else np.ascontiguousarray(d, np.float32)
    out = np.empty((R, K), np.float32)
    _qdq_kernel()(np.ascontiguousarray(x, np.float32), s, z, gs, float(spec.qmin),
                  float(spec.qmax), spec.rounding == "half_away", clamp, lo, hi, d, out)
    return out


def _minmax_qparams(x, spec: QuantSpec) -> QParams:
    """``calibrate(x, spec, method="minmax")`` for a group or per-output-channel ``spec`` on
    float32 ``x [R, K]``: the same ``[min, max]`` of each group (one Numba pass over the finite
    ``x`` instead of the observer's NaN-padded view; symmetric specs ``+-max|x|``) through the one
    :func:`refquant.schemes.uniform.qparams_from_range`. Pinned by
    ``test_fast_scaled_fake_quantize_is_the_plain_one``.
    """
    R, K = x.shape
    gs = _group_shape(spec, K)
    lo = np.empty((R, -(-K // gs)), np.float32)                              # [R, G]
    hi = np.empty_like(lo)
    _range_kernel()(np.ascontiguousarray(x, np.float32), gs, lo, hi)
    lo, hi = lo.astype(np.float64), hi.astype(np.float64)
    if spec.symmetric:
        hi = np.maximum(np.abs(lo), np.abs(hi))
        lo = -hi
    if spec.granularity == "channel":
        lo, hi = lo[:, 0], hi[:, 0]                                          # [R]
    return qparams_from_range(lo, hi, spec)


def _scaled_fake_quantize(W, s_in, spec: QuantSpec):
    """:func:`refquant.algorithms.awq.scaled_fake_quantize` ``(W, s, spec, c)`` with
    ``s_in = s[c]`` (float32 [in]) and a checked float32 ``W [out, in]``: the same
    ``fake_quantize(W * s_in, spec) / s_in`` bit for bit, the min-max parameters from
    :func:`_minmax_qparams` and the rounding in one pass (:func:`_quantize_dequantize`).
    Specs the kernel does not cover take the plain path. Pinned by
    ``test_fast_scaled_fake_quantize_is_the_plain_one``.
    """
    Ws = W * s_in                                                            # [out, in] float32
    if _group_shape(spec, W.shape[1]) is None:
        return fake_quantize(Ws, spec) / s_in
    return _quantize_dequantize(Ws, _minmax_qparams(Ws, spec), spec, d=s_in)


def _fake_quantize(W, spec: QuantSpec):
    """``refquant.fake_quantize(W, spec)`` (min-max) of a checked float32 ``W [out, in]``, bit
    for bit, in one pass (:func:`_minmax_qparams`, :func:`_quantize_dequantize`); specs the
    kernel does not cover take the plain path. Pinned by
    ``test_fast_scaled_fake_quantize_is_the_plain_one``.
    """
    if _group_shape(spec, W.shape[1]) is None:
        return fake_quantize(W, spec)
    return _quantize_dequantize(W, _minmax_qparams(W, spec), spec)
