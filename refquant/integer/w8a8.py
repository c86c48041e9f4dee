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
x    [T, K] float32   the flattened activations of one linear call (T tokens)
q_x  [T, K] int8      their codes, s_x [T] per-token scales
W    [N, K] float32   the layer's weight (out, in); q_w [N, K] int8, s_w [N]
acc  [T, N] int32     ``q_x q_w^T`` from :func:`refquant.int8_matmul`
"""

from __future__ import annotations

import numpy as np

from refquant.kernels import int8_matmul

Q_MAX = 127


def quantize_rows_int8(x) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 codes per row: ``s = max|x_row| / 127`` (1 for a zero row), ``q = rint(x/s)``.

    ``x`` float [R, K] -> ``(q int8 [R, K], s float32 [R])``; NaN/Inf raise ``ValueError``.
    """
    x = np.asarray(x, np.float32)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("x contains NaN or Inf")
    amax = np.abs(x).max(axis=1)                                           # [R]
    s = np.where(amax > 0, amax / np.float32(Q_MAX), np.float32(1.0)).astype(np.float32)
    q = np.clip(np.rint(x / s[:, None]), -Q_MAX, Q_MAX).astype(np.int8)    # [R, K]
    return q, s


def w8a8_matmul(x, q_wT, s_w, *, backend: str = "auto") -> np.ndarray:
    """``y = x W^T`` with per-token int8 ``x`` and per-channel int8 ``W`` (given as ``q_w^T``).

    ``x`` float32 [T, K], ``q_wT`` int8 [K, N] (the transposed codes), ``s_w`` float32 [N].
    Returns float32 [T, N] ``= s_x[:, None] * s_w[None, :] * (q_x @ q_w^T)``.
    """
    q_x, s_x = quantize_rows_int8(x)                                       # [T, K], [T]
    acc = int8_matmul(q_x, q_wT, backend=backend)                          # [T, N] int32
    return acc.astype(np.float32) * s_x[:, None] * np.asarray(s_w, np.float32)[None, :]


def w8a8_linear(model, *, backend: str = "auto", skip=()):
    """A ``linear(name, x)`` for :func:`refquant.models.llama.forward` running W8A8.

    Weights are quantized per output channel on first use of each layer and kept (int8, a
    quarter of the float memory). Layers whose name is in ``skip`` stay float32.
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
