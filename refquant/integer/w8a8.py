"""W8A8: int8 weights and int8 activations for the Llama forward pass, through ``rq.int8_matmul``.

Each linear layer ``y = x W^T`` becomes

.. math::

    y_{tn} \\approx s_{x,t}\\, s_{w,n} \\sum_k q_{x,tk}\\, q_{w,nk},
    \\qquad q_w = \\operatorname{round}(W / s_w),\\; s_{w,n} = \\max_k |W_{nk}| / 127,
    \\qquad q_x = \\operatorname{round}(x / s_x),\\; s_{x,t} = \\max_k |x_{tk}| / 127,

with per-output-channel weight scales fixed once and per-token activation scales computed on
the fly ("dynamic" quantization; the W8A8 setting of e.g. LLM.int8() without its outlier
decomposition, Dettmers et al., NeurIPS 2022, arXiv:2208.07339, and SmoothQuant's per-token
baseline, Xiao et al., ICML 2023, arXiv:2211.10438). Codes are symmetric in [-127, 127]
(half-to-even rounding); the int32 sum is exact (``K <= 131071``) and is scaled once, in float32.

Symbols
-------
===  ==============  =======================================================
x    [T, K] float32  the flattened activations of one linear call (T tokens)
q_x  [T, K] int8     their codes, s_x [T] per-token scales
W    [N, K] float32  the layer's weight (out, in); q_w [N, K] int8, s_w [N]
acc  [T, N] int32    ``q_x q_w^T`` from :func:`refquant.int8_matmul`
===  ==============  =======================================================
"""

from __future__ import annotations

import functools

import numpy as np

from refquant.calibration.observers import calibrate
from refquant.integer.requant import use_numba
from refquant.kernels import int8_matmul
from refquant.schemes.spec import QuantSpec
from refquant.schemes.uniform import quantize

Q_MAX = 127
ROW_SPEC = QuantSpec(bits=8, symmetric=True, restricted=True, granularity="channel", axis=0)


def quantize_rows_int8(x) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 codes per row: ``s = max|x_row| / 127`` (1 for a zero row), ``q = round(x/s)``.

    This is :func:`refquant.calibrate` (min-max) and :func:`refquant.quantize` under
    :data:`ROW_SPEC` (restricted int8, one scale per row, half-to-even): the scale is stored as
    float32 and the codes come from the one rounding core.

    Parameters
    ----------
    x : array_like of float, [R, K]
        Finite; cast to float32 first.

    Returns
    -------
    q : numpy.ndarray of int8, [R, K], in ``[-127, 127]``
    s : numpy.ndarray of float32, [R]

    Examples
    --------
    >>> q, s = quantize_rows_int8([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]])
    >>> q.tolist(), s.tolist()
    ([[64, -127, 32], [0, 0, 0]], [0.015748031437397003, 1.0])
    """
    x = np.asarray(x, np.float32)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D, got shape {x.shape}")
    qp = calibrate(x, ROW_SPEC, method="minmax")                           # s [R]
    return quantize(x, qp, ROW_SPEC), qp.scale                             # [R, K] int8, [R]


@functools.lru_cache(maxsize=None)
def _rows_int8_numba():
    """The Numba ``rows(x, q, s) -> bool`` behind :func:`_quantize_rows_int8_fast`: for float32
    ``x[R, K]`` it writes ``s[r] = fl32(max(amax_r / 127, tiny))`` (1 for a zero row) and
    ``q[r, k] = clip(rint(x / s), -127, 127)``, all in float64 as :func:`refquant.quantize`
    computes them; returns False (and stops) at the first NaN or Inf."""
    import numba
    from refquant.schemes.numerics import round_scalar_numba
    rnd = round_scalar_numba()
    tiny = np.float64(np.finfo(np.float32).tiny)

    @numba.njit(cache=True, nogil=True, fastmath=False)
    def rows(x, q, s):
        R, K = x.shape
        for r in range(R):
            amax = 0.0
            for k in range(K):
                v = np.float64(x[r, k])
                if not np.isfinite(v):
                    return False
                amax = max(amax, abs(v))
            sr = np.float32(1.0) if amax == 0.0 else np.float32(max(amax / Q_MAX, tiny))
            s[r] = sr
            s64 = np.float64(sr)
            for k in range(K):
                q[r, k] = np.int8(min(Q_MAX, max(-Q_MAX, rnd(np.float64(x[r, k]) / s64, False))))
        return True

    return rows


def _quantize_rows_int8_fast(x) -> tuple[np.ndarray, np.ndarray]:
    """:func:`quantize_rows_int8` in one compiled pass over ``x`` (the per-token activations of
    every W8A8 call: the general calibrate-and-quantize path costs ~0.1 ms of checks and small
    reductions per call, more than the int8 product of a decoded token). Equal to it bit for
    bit (``tests/test_w8a8.py`` pins codes and scales on ties, zero rows and random rows); input
    that is not 2-D or holds NaN or Inf goes to :func:`quantize_rows_int8`, which raises its
    error."""
    x = np.asarray(x, np.float32)
    if x.ndim != 2:
        return quantize_rows_int8(x)                                       # raises: not 2-D
    q = np.empty(x.shape, np.int8)
    s = np.empty(x.shape[0], np.float32)
    if not _rows_int8_numba()(x, q, s):
        return quantize_rows_int8(x)                                       # raises on NaN/Inf
    return q, s


def w8a8_matmul(x, q_wT, s_w, *, backend: str = "auto") -> np.ndarray:
    """``y = x W^T`` with per-token int8 ``x`` and per-channel int8 ``W`` (given as ``q_w^T``).

    ``x`` float32 [T, K], ``q_wT`` int8 [K, N] (the transposed codes), ``s_w`` float32 [N].
    Returns float32 [T, N] ``= s_x[:, None] * s_w[None, :] * (q_x @ q_w^T)``.

    >>> q_w, s_w = quantize_rows_int8(np.eye(3))
    >>> y = w8a8_matmul(np.array([[1.0, -2.0, 0.5]], np.float32), q_w.T.copy(), s_w, backend="numpy")
    >>> np.round(y.astype(float), 3).tolist()       # 64 (2/127), -2, 32 (2/127)
    [[1.008, -2.0, 0.504]]
    """
    s_w = np.asarray(s_w)
    N = np.shape(q_wT)[-1]
    if s_w.dtype != np.float32 or s_w.shape != (N,):
        raise ValueError(f"s_w must be float32 of shape ({N},), got {s_w.dtype} {s_w.shape}")
    if not np.all(np.isfinite(s_w) & (s_w > 0)):
        raise ValueError(f"s_w must be finite and > 0, got "
                         f"{s_w[~(np.isfinite(s_w) & (s_w > 0))][0].item()!r}")
    quantize_x = _quantize_rows_int8_fast if use_numba(backend) else quantize_rows_int8
    q_x, s_x = quantize_x(x)                                               # [T, K], [T]
    acc = int8_matmul(q_x, q_wT, backend=backend)                          # [T, N] int32
    return acc.astype(np.float32) * s_x[:, None] * s_w[None, :]


def w8a8_linear(model, *, backend: str = "auto", skip=()):
    """A ``linear(name, x)`` for :func:`refquant.models.llama.forward` running W8A8.

    Weights are quantized per output channel on first use of each layer and kept (int8, a
    quarter of the float memory). Layers whose name is in ``skip`` stay float32. ``model``
    needs only a ``weights`` mapping ``name + ".weight" -> [N, K]``.

    >>> class Model:
    ...     weights = {"proj.weight": np.eye(3, dtype=np.float32)}
    >>> linear = w8a8_linear(Model(), backend="numpy")
    >>> y = linear("proj", np.array([[[1.0, -2.0, 0.5]]], np.float32))       # [1, 1, 3]
    >>> np.round(y.astype(float), 3).tolist()
    [[[1.008, -2.0, 0.504]]]
    """
    weights = model.weights
    cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def linear(name: str, x: np.ndarray) -> np.ndarray:
        W = None
        if name not in cache:
            W = weights[name + ".weight"]                                  # [N, K]
            if name in skip:
                cache[name] = (None, None)
            else:
                q_w, s_w = quantize_rows_int8(W)                           # [N, K], [N]
                cache[name] = (np.ascontiguousarray(q_w.T), s_w)           # [K, N], [N]
        q_wT, s_w = cache[name]
        x2 = x.reshape(-1, x.shape[-1])                                    # [T, K]
        if q_wT is None:
            W = weights[name + ".weight"] if W is None else W
            y = x2 @ W.T
        else:
            y = w8a8_matmul(x2, q_wT, s_w, backend=backend)                # [T, N]
        return y.reshape(*x.shape[:-1], y.shape[-1])

    return linear
