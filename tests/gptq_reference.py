"""An independent NumPy transcription of the authors' GPTQ, the oracle of tests/test_gptq.py.

Transcribed from IST-DASLab/gptq ``gptq.py`` (``GPTQ.fasterquant``) and ``quant.py``
(``Quantizer.find_params`` with ``perchannel=True, sym=False``, ``quantize``), with AutoGPTQ's
``auto_gptq/quantization/gptq.py`` for ``static_groups`` and the collected scales, zeros and
``g_idx``; written from scratch here in float64 NumPy (torch ops -> NumPy: ``torch.round`` is
half-to-even like ``np.rint``; ``torch.argsort(descending=True)`` -> a stable argsort of
``-diag H``, the same order when the diagonal has no ties). It uses nothing from refquant.

What it keeps of the reference, on purpose: the group parameters are found from the full
``W[:, j:j+groupsize]`` while the lazy block's columns are updated in the copy ``W1`` (so from
``W`` as it stood at the start of the block); the scale and zero point are float64
``(xmax - xmin) / maxq`` and ``round(-xmin / scale)``; the column is rounded against that
float64 scale.
"""

import numpy as np


def find_params(x, maxq):
    """``Quantizer.find_params(x, weight=True)`` for asymmetric per-row parameters of
    ``x`` [rows, k]: returns float64 ``(scale, zero)`` [rows]."""
    xmin = np.minimum(x.min(axis=1), 0.0)
    xmax = np.maximum(x.max(axis=1), 0.0)
    both_zero = (xmin == 0) & (xmax == 0)
    xmin[both_zero] = -1.0
    xmax[both_zero] = +1.0
    scale = (xmax - xmin) / maxq
    zero = np.rint(-xmin / scale)
    return scale, zero


def quantize_codes(x, scale, zero, maxq):
    """The integer code ``clamp(round(x / scale) + zero, 0, maxq)`` (before ``scale * (q - zero)``)."""
    return np.clip(np.rint(x / scale) + zero, 0, maxq)


def fasterquant(W, H, bits, groupsize=-1, blocksize=128, percdamp=0.01, actorder=False,
                static_groups=False):
    """GPTQ as the authors' code runs it, float64 throughout.

    Returns ``(codes, Q, scale, zero, g_idx)``: codes and dequantized weights [rows, columns]
    in the input order, the collected ``scale, zero`` [rows, n_groups] (one column without
    groups) and ``g_idx`` [columns] as AutoGPTQ returns them.
    """
    maxq = 2**bits - 1
    W = np.array(W, dtype=np.float64)
    H = np.array(H, dtype=np.float64)
    rows, columns = W.shape
    scale, zero = find_params(W, maxq)                 # per-channel, before the dead-input fix
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    scales, zeros, groups = [], [], []
    if static_groups:
        for i in range(0, columns, groupsize):
            groups.append(find_params(W[:, i:i + groupsize], maxq))
            scales.append(groups[-1][0])
            zeros.append(groups[-1][1])
    perm = np.arange(columns)
    if actorder:
        perm = np.argsort(-np.diag(H), kind="stable")
        W = W[:, perm]
        H = H[perm][:, perm]
    Q = np.zeros_like(W)
    codes = np.zeros_like(W)
    H[np.arange(columns), np.arange(columns)] += percdamp * np.mean(np.diag(H))
    L = np.linalg.cholesky(H)                          # cholesky, cholesky_inverse, cholesky(upper)
    Linv = np.linalg.inv(L)
    Hinv = np.linalg.cholesky(Linv.T @ Linv).T
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].copy()
        Err1 = np.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if groupsize != -1:
                if not static_groups:
                    if (i1 + i) % groupsize == 0:
                        scale, zero = find_params(W[:, i1 + i:i1 + i + groupsize], maxq)
                        scales.append(scale)
                        zeros.append(zero)
                else:
                    idx = perm[i1 + i] if actorder else i1 + i
                    scale, zero = groups[idx // groupsize]
            c = quantize_codes(w, scale, zero, maxq)
            q = scale * (c - zero)
            codes[:, i1 + i] = c
            Q[:, i1 + i] = q
            err1 = (w - q) / d
            W1[:, i:] -= np.outer(err1, Hinv1[i, i:])
            Err1[:, i] = err1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    gs = groupsize if groupsize != -1 else columns
    if static_groups and actorder:
        g_idx = perm // gs
    else:
        g_idx = np.arange(columns) // gs
    invperm = np.argsort(perm)
    if actorder:
        Q, codes, g_idx = Q[:, invperm], codes[:, invperm], g_idx[invperm]
    if not scales:
        scales, zeros = [scale], [zero]
    return codes.astype(np.int64), Q, np.stack(scales, axis=1), np.stack(zeros, axis=1), g_idx
