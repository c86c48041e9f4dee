"""GPTQ onto the GGML block grids: an ordinary GGUF tensor whose codes GPTQ chose.

llama.cpp stores a weight row (one output channel, ``d_col`` inputs) as blocks of 32 or 256
values, each block a small header (float16 scales, 4-8-bit sub-block scales and minimums) and
integer codes. :func:`gptq_ggml` keeps that storage exactly and lets GPTQ [1]_ pick the codes:

1. **Fix the grid.** The type's own quantizer (bit-exact to ggml's C, with the imatrix if one
   is given) runs on the original ``W``; its header fields -- ``d``, ``dmin``, the 6-bit scales
   and minimums, IQ4_XS's block scales -- are stored as they are, and the *rule* its codes were
   rounded with is kept (``refquant.formats.ggml._gptq_grids``).
2. **GPTQ over the columns.** :func:`refquant.algorithms.gptq.gptq` with that grid (its
   ``grid`` hook) rounds each error-updated column ``w_j`` with the type's rule, clamped to the
   code range (the feedback can push a weight past it), and feeds the error forward,

   .. math::

       q_j = \\operatorname{dec}(\\operatorname{rule}(w_j)), \\quad
       e_j = \\frac{w_j - q_j}{[H^{-1}]_{jj}}, \\quad
       w_k \\leftarrow w_k - e_j\\,[H^{-1}]_{jk} \\quad (k > j),

   where ``dec`` is the type's own decoder of the stored header and code (what llama.cpp
   computes: a table of every code's value per sub-block, built with the type's
   ``dequantize_rows``), ``H = 2 X X^T / n`` the Hessian of the layer's inputs and ``H^{-1}``
   its upper Cholesky factor as in Algorithm 1. This minimizes ``||(W - W_hat) X||_F^2`` greedily
   with ``W_hat`` restricted to the block format's grid.
3. **Pack** the header and GPTQ's codes into the type's bytes; ``w_hat`` is the type's decoder of
   those bytes, equal to GPTQ's ``q`` (tested against ggml's C ``dequantize_row_*``).

Where every code of a (sub-)block decodes to the same value (a zero scale), the quantizer's
code is kept: the value cannot change, and ``H = I`` stays byte-identical there.

Symbols
-------
=========  ===================  ================================================================
W          [d_row, d_col]       the weights (out, in); a GGUF row is one output channel
H          [d_col, d_col]       the Hessian ``2 X X^T / n`` of the layer inputs ``X`` [d_col, n]
w_j, q_j   [d_row]              column ``j`` as GPTQ reaches it, and its decoded grid value
d, dmin    per (super-)block    the stored float16 scales; ``s_j, m_j`` the sub-block codes
id         per block            the float32 ``1/d`` the quantizer rounded with (not float16)
iscale     per block            the winning candidate of an imatrix search (and its ``m_b``)
=========  ===================  ================================================================

The rule per type (codes as stored)
-----------------------------------
===========  ====================================================================================
type         stored code of ``x`` (``fl32`` rounds to float32; then clamped to the code range)
===========  ====================================================================================
Q8_0         ``roundf(fl32(x id))`` in -127..127 (the imatrix is ignored, as by ggml)
Q4_0         ``trunc(fl32(x id) + 8.5)``; imatrix: ``nearest_int(iscale x) + 8``
Q4_1         ``trunc(fl32((x - min) id) + 0.5)``; imatrix: ``nearest_int(iscale (x - m_b))``
Q5_0, Q5_1   as Q4_0 and Q4_1 with 16.5 (offset 16) and the code range 0..31
Q2_K         ``nearest_int((x + dmin m_j) / (d s_j))`` in 0..3, from the stored header
Q3_K         ``nearest_int(x / (d (s_j - 32))) + 4``, -4..3 before the offset
Q4_K, Q5_K   ``nearest_int((x + dmin m_j) / (d s_j))`` in 0..15 and 0..31
Q6_K         ``nearest_int(x / (d s_j)) + 32``, -32..31 before the offset
IQ4_NL       ``best_index(x / d_b)``, ``d_b`` the float32 block scale of the search
IQ4_XS       ``best_index(x / fl32(d l_b))``, ``d`` in float32, ``l_b`` the 6-bit block code
===========  ====================================================================================

The K-quant and IQ rules are the same with and without an importance matrix (it changes only
the header the search finds). ``id`` and ``min`` are the float32 values the codes were computed
with, *not* the float16 ones stored; the imatrix searches' ``iscale`` and ``m_b`` are the
candidate that won the search (``make_qx_quants`` / ``make_qkx3_quants`` of
``refquant.formats.ggml._search`` report it), not ``1 / fp16(d)``. Every rule is therefore exactly the arithmetic with which the type's
quantizer computed its stored codes from the original weights.

Why ``H = I`` gives ggml's bytes
--------------------------------
With ``H = I`` (any damping) ``H^{-1}`` is diagonal, so no error moves between columns: each
column is rounded from its original value, with the rule its quantizer used for that value,
and the header is the quantizer's. The bytes are then the quantizer's bytes, i.e. ggml's C
``ggml_quantize_chunk`` (tested for every type, with and without an imatrix, with and
without ``act_order``, on random rows, stress tensors and a SmolLM2 weight slice).

Rows of ``d_col`` not a multiple of the type's block (576 for the K-quants) are refused, as by
:func:`refquant.formats.ggml.quantize`; llama.cpp writes such tensors in a 32-block fallback
type (e.g. IQ4_NL, Q5_0, Q8_0), which is the caller's choice. MXFP4 and NVFP4 have their own
GPTQ in :mod:`refquant.algorithms.gptq_mx`.

References
----------
.. [1] E. Frantar, S. Ashkboos, T. Hoefler, D. Alistarh, "GPTQ: Accurate Post-Training
       Quantization for Generative Pre-trained Transformers", ICLR 2023, arXiv:2210.17323.
.. [2] G. Gerganov, I. Kawrakow et al., llama.cpp, ``ggml/src/ggml-quants.c`` (the quantizers
       whose rounding each rule reproduces).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refquant.algorithms.gptq import GPTQResult, gptq
from refquant.formats.ggml._gptq_grids import GRID_TYPES, GridType, Rule, rule_codes
from refquant.formats.ggml._registry import TYPES, check_imatrix, finite_rows
from refquant.schemes.numerics import as_float_array


@dataclass(frozen=True)
class GGMLGPTQResult:
    """The result of :func:`gptq_ggml`.

    Attributes
    ----------
    data : numpy.ndarray of uint8, shape ``[d_row, d_col // block_size * type_size]``
        The GGUF bytes, each row laid out as :func:`refquant.formats.ggml.quantize` lays it.
    w_hat : numpy.ndarray of float32, shape ``[d_row, d_col]``
        ``refquant.formats.ggml.dequantize(data, fmt)``: what llama.cpp computes.
    loss : float
        GPTQ's ``1/2 tr((W - W_hat)(H + lambda I)(W - W_hat)^T)``.
    fmt : str
    perm : numpy.ndarray of int64, shape ``[d_col]``
        The processing order.
    gptq : GPTQResult
        The underlying result (``codes`` as stored, ``damp``, ``damp_retries``; ``qparams`` None).
    """

    data: np.ndarray
    w_hat: np.ndarray
    loss: float
    fmt: str
    perm: np.ndarray
    gptq: GPTQResult


class BlockGrid:
    """A GGML type's grid fixed on weights ``x`` (float32 ``[n_rows, K]``): the quantizer's
    bytes ``data0``, the :class:`~refquant.formats.ggml._gptq_grids.Rule` and the quantizer's
    codes ``q0`` ``[n_rows, K]``. ``round(w, c)`` is the column step of :func:`refquant.gptq`'s
    ``grid``; ``pack(codes)`` the bytes of the fixed header with GPTQ's codes.

    The decoded value of every stored code is looked up in a table per block of the type
    (``table[r, k, c - code_min]`` for sub-block ``k`` of the block in row ``r``, built with
    the type's own decoder when the block's first column is reached and dropped after its last,
    so without ``act_order`` one block's table is held at a time); ``keep[r, k]`` marks the
    sub-blocks where every code decodes alike (a zero scale), which keep ``q0``.
    """

    def __init__(self, x: np.ndarray, gt: GridType, imatrix):
        self.gt, self.code_dtype = gt, gt.code_dtype
        self.data0, self.rule = gt.fix(x, imatrix)
        self.q0 = gt.codes_of(self.data0).astype(np.int16)                 # [n_rows, K]
        t = TYPES[gt.name]
        self._block, self._bytes = t.block_size, t.type_size
        self._rows = np.arange(x.shape[0])
        self._tables = {}            # block -> [table, keep, columns of the block not yet rounded]

    def _block_table(self, blk: int) -> list:
        """``[table, keep, left]`` of block ``blk`` (built on first use)."""
        if blk not in self._tables:
            data = np.ascontiguousarray(self.data0[:, blk * self._bytes:(blk + 1) * self._bytes])
            table = _decode_table(self.gt, data, (len(data), self._block))  # [n_rows, n_sub, n_codes]
            keep = np.all(table == table[..., :1], axis=-1)                 # [n_rows, n_sub]
            self._tables[blk] = [table, keep, self._block]
        return self._tables[blk]

    def round(self, w: np.ndarray, c: int):
        """Codes (``code_dtype`` ``[n_rows]``) and decoded values (float32) of column ``c``'s
        current weights ``w`` ``[n_rows]``: the type's rule, clamped, on float32 ``w``."""
        entry = self._block_table(c // self._block)
        table, keep = entry[0], entry[1]
        k = (c % self._block) // self.gt.sub                                # sub-block in the block
        code = rule_codes(np.asarray(w, np.float32), self.rule, c // self.gt.sub)
        code = np.where(keep[:, k], self.q0[:, c], code)
        q = table[self._rows, k, code - self.gt.code_min]
        entry[2] -= 1
        if entry[2] == 0:                                                   # the block is done
            del self._tables[c // self._block]
        return code.astype(self.code_dtype), q

    def pack(self, codes: np.ndarray) -> np.ndarray:
        """The GGUF bytes of the fixed header with ``codes`` ``[n_rows, K]``."""
        return np.ascontiguousarray(self.gt.with_codes(self.data0, np.asarray(codes)))


def _decode_table(gt: GridType, data0: np.ndarray, shape) -> np.ndarray:
    """float32 ``[n_rows, K // sub, n_codes]``: the type's decoder applied to the header of
    ``data0`` with every stored code in turn (``sub`` codes per pass, one per position)."""
    n_rows, K = shape
    n_sub, sub = K // gt.sub, gt.sub
    table = np.empty((n_rows, n_sub, gt.n_codes), np.float32)
    pos = np.arange(K) % sub                                                # [K]
    for start in range(0, gt.n_codes, sub):
        n = min(sub, gt.n_codes - start)
        q = np.broadcast_to(gt.code_min + start + np.minimum(pos, n - 1), (n_rows, K))
        dec = TYPES[gt.name].dequantize_rows(gt.with_codes(data0, q))       # [n_rows, K]
        table[:, :, start:start + n] = dec.reshape(n_rows, n_sub, sub)[:, :, :n]
    return table


def gptq_ggml(W, H, fmt: str, *, imatrix=None, act_order: bool = False, damp: float = 0.01,
              block_size: int = 128, dtype=np.float32) -> GGMLGPTQResult:
    """GPTQ of ``W`` onto the grid of GGML block type ``fmt`` (module docstring).

    Parameters
    ----------
    W : array_like of float, shape ``[d_row, d_col]``
        Weights (out_features, in_features), read as float32; blocks run along ``d_col``,
        a positive multiple of the type's block size (32 or 256). Finite.
    H : array_like of float, shape ``[d_col, d_col]``
        The Hessian ``2 X X^T / n`` of the layer's inputs (:func:`refquant.algorithms.gptq.hessian`).
    fmt : str
        One of ``sorted(GRID_TYPES)``: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K,
        Q6_K, IQ4_NL, IQ4_XS.
    imatrix : array_like of float, shape ``[d_col]``, optional
        llama.cpp's importance matrix: fixes the grid as ``llama-quantize`` with ``--imatrix``.
    act_order, damp, block_size, dtype
        As :func:`refquant.algorithms.gptq.gptq` (``block_size`` is its lazy batch).

    Returns
    -------
    GGMLGPTQResult

    Examples
    --------
    >>> import numpy as np
    >>> from refquant.formats import ggml
    >>> W = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    >>> res = ggml.gptq_ggml(W, np.eye(64), "Q4_0")
    >>> bool(np.array_equal(res.data, ggml.quantize(W, "Q4_0")))     # H = I: the plain bytes
    True
    """
    if fmt not in GRID_TYPES:
        hint = " (MXFP4/NVFP4: refquant.algorithms.gptq_mx)" if fmt in ("MXFP4", "NVFP4") else ""
        raise ValueError(f"gptq_ggml has no grid for GGML block type {fmt!r}{hint}; "
                         f"choose from {sorted(GRID_TYPES)}")
    t = TYPES[fmt]
    x = finite_rows(as_float_array(W, "W"), fmt, t.block_size)
    if x.ndim != 2:
        raise ValueError(f"W must be a 2-D weight matrix [d_row, d_col], got shape {x.shape}")
    grid = BlockGrid(x, GRID_TYPES[fmt], check_imatrix(imatrix, x.shape[1], fmt))
    res = gptq(x, H, grid=grid, block_size=block_size, damp=damp, act_order=act_order,
               dtype=dtype)
    data = grid.pack(res.codes)
    return GGMLGPTQResult(data=data, w_hat=t.dequantize_rows(data), loss=res.loss, fmt=fmt,
                          perm=res.perm, gptq=res)


__all__ = ["GGMLGPTQResult", "BlockGrid", "gptq_ggml", "Rule"]
