"""GPTQ on microscaled grids: GPTQ-MXFP4 (and MXFP8/MXFP6) and GPTQ-NVFP4.

The block scales are fixed before the pass (static), from the original weights, by the same
rules as round-to-nearest (:func:`refquant.schemes.mx.mx_quantize`,
:func:`~refquant.schemes.mx.nvfp4_quantize`); GPTQ then rounds one column at a time to the
element grid at those scales and feeds the error forward (:func:`refquant.gptq` with a
:class:`refquant.schemes.float_quant.FloatSpec` of groups along the input dimension and
``qparams`` = the decoded block scales). This is how recent LLM toolkits combine GPTQ with the
MX and NVFP4 formats: the scale is a storage format decided by the block's maxima, the codes
are what GPTQ optimizes.

=======  ===============================================================================
W        weights [d_row, d_col] (out_features, in_features); blocks run along d_col
H        the Hessian of the layer inputs [d_col, d_col], ``2 X X^T / n``
X_b      the decoded scale of block ``b``: ``2^(E_b - 127)`` (MX) or
         ``fl32(s_t E4M3(u_b))`` (NVFP4), float32, ``[d_row, d_col / k]``
=======  ===============================================================================

With ``H = I`` GPTQ is round-to-nearest on that grid, so the codes equal
:func:`~refquant.schemes.mx.mx_quantize`'s exactly (``x / X`` is exact for a power of two,
tested). For NVFP4 they equal :func:`~refquant.schemes.mx.nvfp4_quantize`'s except where the
float32 quotient ``x / (s_t u)`` of the latter (torchao's arithmetic) lands on an E2M1 tie that
the float64 quotient of GPTQ's column step does not (tested equal on the test data).

References
----------
.. [1] E. Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative
       Pre-trained Transformers", ICLR 2023, arXiv:2210.17323.
.. [2] Open Compute Project, "OCP Microscaling Formats (MX) Specification", v1.0, 2023.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refquant.algorithms.gptq import GPTQResult, gptq
from refquant.schemes.float_quant import FloatSpec
from refquant.schemes.floats import from_float_bits
from refquant.schemes.mx import (MX_FORMATS, NVFP4_BLOCK, MXArray, NVFP4Array, mx_quantize,
                                 nvfp4_quantize)
from refquant.schemes.numerics import as_float_array
from refquant.schemes.spec import QParams


@dataclass(frozen=True)
class MXGPTQResult:
    """The result of :func:`gptq_mx` / :func:`gptq_nvfp4`: the quantized tensor (an
    :class:`~refquant.schemes.mx.MXArray` or :class:`~refquant.schemes.mx.NVFP4Array`, blocks
    along the last axis) and the underlying :class:`refquant.algorithms.gptq.GPTQResult`
    (``w_hat``, ``loss``, ``perm``, ...)."""

    quantized: MXArray | NVFP4Array
    gptq: GPTQResult


def _weights(W) -> np.ndarray:
    W = as_float_array(W, "W")
    if W.ndim != 2:
        raise ValueError(f"W must be a 2-D weight matrix [d_row, d_col], got shape {W.shape}")
    return W


def gptq_mx(W, H, fmt: str = "mxfp4", *, block_size: int = 32, scale_rule: str = "ocp",
            lazy_batch: int = 128, damp: float = 0.01, act_order: bool = False,
            dtype=np.float32) -> MXGPTQResult:
    """GPTQ with static MX block scales (``fmt`` an MX float format, blocks of ``block_size``
    along the input dimension, scales by ``scale_rule``; see
    :func:`refquant.schemes.mx.mx_quantize`).

    ``lazy_batch``, ``damp``, ``act_order`` and ``dtype`` are :func:`refquant.gptq`'s
    ``block_size``, ``damp``, ``act_order`` and ``dtype``. ``mxint8`` is not a float grid:
    use a :class:`refquant.QuantSpec` with ``rq.gptq`` for it.

    Returns
    -------
    MXGPTQResult
        ``quantized``: an MXArray of ``W``'s shape (axis 1) with GPTQ's codes.
    """
    W = _weights(W)
    if fmt not in MX_FORMATS:
        raise ValueError(f"unknown MX format {fmt!r}; expected one of {tuple(MX_FORMATS)}")
    elem, _ = MX_FORMATS[fmt]
    if elem == "int8":
        raise ValueError("gptq_mx needs a float element format; mxint8 is an integer grid "
                         "(use rq.gptq with a QuantSpec)")
    rtn = mx_quantize(W, fmt, axis=-1, block_size=block_size, scale_rule=scale_rule)
    X = from_float_bits(rtn.scales, "e8m0fnu")                     # [d_row, d_col / k]
    spec = FloatSpec(elem, "group", axis=0, group_size=block_size)
    res = gptq(W, H, spec, block_size=lazy_batch, damp=damp, act_order=act_order,
               dtype=dtype, qparams=QParams(X))
    mx = MXArray(np.ascontiguousarray(res.codes, np.uint8), rtn.scales, fmt, rtn.shape, 1,
                 block_size, scale_rule)
    return MXGPTQResult(mx, res)


def gptq_nvfp4(W, H, *, tensor_scale=None, lazy_batch: int = 128, damp: float = 0.01,
               act_order: bool = False, dtype=np.float32) -> MXGPTQResult:
    """GPTQ with static NVFP4 scales (blocks of 16 along the input dimension, E4M3 block
    scales and the float32 tensor scale of :func:`refquant.schemes.mx.nvfp4_quantize`; each
    block's grid step is ``fl32(s_t E4M3(u))``). Other arguments as :func:`gptq_mx`.

    Returns
    -------
    MXGPTQResult
        ``quantized``: an NVFP4Array of ``W``'s shape (axis 1) with GPTQ's codes.
    """
    W = _weights(W)
    rtn = nvfp4_quantize(W, axis=-1, tensor_scale=tensor_scale)
    X = (np.float32(rtn.tensor_scale) * from_float_bits(rtn.scales, "e4m3fn")).astype(np.float32)
    spec = FloatSpec("e2m1fn", "group", axis=0, group_size=NVFP4_BLOCK)
    res = gptq(W, H, spec, block_size=lazy_batch, damp=damp, act_order=act_order,
               dtype=dtype, qparams=QParams(X))
    nv = NVFP4Array(np.ascontiguousarray(res.codes, np.uint8), rtn.scales, rtn.tensor_scale,
                    rtn.shape, 1)
    return MXGPTQResult(nv, res)


__all__ = ["MXGPTQResult", "gptq_mx", "gptq_nvfp4"]
