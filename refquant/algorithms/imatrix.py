"""llama.cpp's importance matrix: per input column of a linear, the mean of :math:`x^2`.

llama.cpp's ``llama-imatrix`` tool [1]_ runs the model on calibration text and, for every
matrix product ``y = W x`` of a block (``blk.*``; ``output.weight`` only with
``--process-output``), accumulates over the tokens :math:`t` that reach it

.. math:: S_j = \\sum_t x_{tj}^2, \\qquad A_j = \\sum_t x_{tj}, \\qquad c = \\#\\{t\\}

(``in_sum2``, ``in_sum``, ``counts`` in its file). ``llama-quantize`` [2]_ then hands the
quantizer of that weight the importance

.. math:: w_j = S_j / c \\qquad (w_j = 1 \\text{ where } c = 0)

one non-negative weight per input column ``j``, the :math:`E[x_j^2]` that makes the weighted
rounding error :math:`\\sum_j w_j (W_{ij} - \\hat W_{ij})^2` an estimate of the output error
:math:`E\\,\\|(W - \\hat W) x\\|^2` when the columns of ``x`` are uncorrelated.

Symbols
-------
========  ===============================  =========================================
symbol    meaning                          shape
========  ===============================  =========================================
``x``     inputs of one linear             ``[n_tokens, K]`` (any leading axes)
``K``     input features of the weight     ``W [N, K]``
``S``     sum of squares (``in_sum2``)     ``[n_mat, K]`` float64 (``n_mat = 1``)
``A``     sum (``in_sum``)                 ``[n_mat, K]`` float64
``c``     tokens counted (``counts``)      ``[n_mat]`` int64
========  ===============================  =========================================

What the tool counts, and what this module does the same way:

* a token is counted once per matrix product it passes through (``counts += n_rows``); the
  three products q, k, v see the same input and get three entries with equal values;
* a product of fewer than :data:`MIN_TOKENS` (16) tokens is ignored (``collect_imatrix``: "why
  are small batches ignored (<16 tokens)?"): single-token generation steps never count;
* a mixture-of-experts weight (``GGML_OP_MUL_MAT_ID``) has one row of ``S`` and one count per
  expert (``n_mat`` > 1), each expert counting only the tokens routed to it. The Llama models
  refquant runs are dense, so :func:`accumulate` implements ``n_mat = 1``; the file format
  (:mod:`refquant.formats.imatrix_file`) keeps ``n_mat`` rows so that MoE files are read
  faithfully;
* llama.cpp adds in float32 (``std::vector<float>``), one token at a time; refquant sums in
  float64 (the file stores float32 either way), so the two agree to float32 rounding of the
  sums on the same activations, not bit for bit;
* the tool aborts on a non-finite sum; :func:`accumulate` raises ``ValueError`` naming the
  column instead.

The pass over the calibration text through the model's pluggable linear is
:func:`refquant.pipeline.imatrix.collect_imatrix` (only ``pipeline/`` knows the model).

References
----------
.. [1] ggml-org/llama.cpp, ``tools/imatrix/imatrix.cpp`` (``IMatrixCollector::collect_imatrix``,
       ``save_imatrix``).
.. [2] ggml-org/llama.cpp, ``tools/quantize/quantize.cpp`` (``load_imatrix``: values = sums /
       count, 1 for a zero count) and ``common/imatrix-loader.cpp``.

Examples
--------
>>> import numpy as np
>>> e = accumulate(None, np.ones((16, 3), np.float32) * [1, 2, 0])
>>> e.counts.tolist(), importance(e).tolist()
([16], [1.0, 4.0, 0.0])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: llama.cpp's collector ignores matrix products of fewer tokens than this
MIN_TOKENS = 16


@dataclass(frozen=True)
class ImatrixEntry:
    """The statistics of one weight.

    Attributes
    ----------
    in_sum2 : numpy.ndarray of float64, shape ``[n_mat, K]``
        :math:`S`, the sum of squared inputs per column (per expert).
    counts : numpy.ndarray of int64, shape ``[n_mat]``
        :math:`c`, the tokens counted (per expert).
    in_sum : numpy.ndarray of float64, shape ``[n_mat, K]``, or None
        :math:`A`, the sum of inputs (written by current llama.cpp, absent in older files).
    """

    in_sum2: np.ndarray
    counts: np.ndarray
    in_sum: np.ndarray | None = None

    @property
    def n_columns(self) -> int:
        """``K``: input columns of the weight (per expert)."""
        return int(self.in_sum2.shape[-1])


@dataclass(frozen=True)
class Imatrix:
    """A whole importance matrix, as llama.cpp's imatrix file holds it.

    Attributes
    ----------
    entries : dict
        llama.cpp tensor name (``"blk.0.attn_q.weight"``) -> :class:`ImatrixEntry`.
    chunk_count : int
        Calibration chunks (sequences) processed (``imatrix.chunk_count``).
    chunk_size : int
        Tokens per chunk (``imatrix.chunk_size``; 0 when unknown, as in a ``.dat`` file).
    datasets : tuple of str
        Where the calibration text came from (``imatrix.datasets``).
    """

    entries: dict
    chunk_count: int = 0
    chunk_size: int = 0
    datasets: tuple = ()

    def importance(self, name: str) -> np.ndarray | None:
        """:func:`importance` of the entry ``name``, or None when the matrix has none."""
        entry = self.entries.get(name)
        return None if entry is None else importance(entry)


def accumulate(entry: ImatrixEntry | None, x, *, min_tokens: int = MIN_TOKENS) -> ImatrixEntry:
    """Add the inputs ``x`` of one matrix product to ``entry`` (a new entry; ``None`` starts one).

    Parameters
    ----------
    entry : ImatrixEntry or None
        The statistics so far (dense: ``n_mat = 1``), or None for the first product.
    x : array_like of float, shape ``[..., K]``
        The inputs of the product, one row per token.
    min_tokens : int
        Products of fewer rows are ignored, as llama.cpp ignores them (default 16).

    Returns
    -------
    ImatrixEntry
        :math:`S + \\sum_t x_t^2`, :math:`A + \\sum_t x_t`, :math:`c + n_t` (``entry`` itself
        when ``x`` has fewer than ``min_tokens`` rows).

    Raises
    ------
    ValueError
        ``x`` not float, a column count different from ``entry``'s, or a non-finite sum
        (naming the column).
    """
    x = np.asarray(x)
    if x.dtype.kind != "f" or x.ndim < 1:
        raise ValueError(f"x must be a float array [..., K], got dtype {x.dtype}, shape {x.shape}")
    X = x.reshape(-1, x.shape[-1]).astype(np.float64)            # [n_t, K]
    if entry is not None and (entry.in_sum2.shape[0] != 1 or entry.n_columns != X.shape[1]):
        raise ValueError(f"x has {X.shape[1]} columns; the entry holds {entry.in_sum2.shape} "
                         "(a dense entry of one row per weight)")
    if X.shape[0] < min_tokens:
        return entry
    S = np.einsum("tj,tj->j", X, X)[None]                        # [1, K]
    A = X.sum(axis=0)[None]                                      # [1, K]
    if entry is not None:
        S = S + entry.in_sum2
        A = A + (entry.in_sum if entry.in_sum is not None else 0.0)
    bad = ~np.isfinite(S[0]) | ~np.isfinite(A[0])
    if np.any(bad):
        j = int(np.argmax(bad))
        raise ValueError(f"importance matrix sum of column {j} is not finite ({S[0, j]!r}): "
                         "the activations overflow")
    c = np.array([X.shape[0]], np.int64) + (entry.counts if entry is not None else 0)
    return ImatrixEntry(in_sum2=S, counts=c, in_sum=A)


def importance(entry: ImatrixEntry) -> np.ndarray:
    """The weights ``llama-quantize`` hands the quantizer: float32 :math:`S / c` per row of
    ``entry`` (flattened to ``[n_mat K]``), 1 for an expert with ``c = 0``."""
    c = entry.counts.astype(np.float64)[:, None]                  # [n_mat, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(c > 0, entry.in_sum2 / np.where(c > 0, c, 1.0), 1.0)
    return w.astype(np.float32).reshape(-1)


__all__ = ["MIN_TOKENS", "ImatrixEntry", "Imatrix", "accumulate", "importance"]
