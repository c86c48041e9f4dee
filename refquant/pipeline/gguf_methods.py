"""GPTQ and AWQ into GGUF: a whole model onto each tensor's planned GGML block format.

:func:`export_gguf_method` writes the same file as
:func:`refquant.formats.gguf_export.export_gguf` -- the mix's type for every tensor
(:func:`~refquant.formats.gguf_export.plan_tensors`: Q4_K_M gives some ffn_down Q6_K, rows of
576 fall back to Q5_0 ...), the metadata, the tokenizer, Q/K rows in llama.cpp's order, the
verification by re-reading -- but quantizes the block linears with calibration data, block by
block as :func:`refquant.pipeline.blockwise.quantize_model` does: the calibration tokens are
embedded once, each block's inputs are the outputs of the blocks before it *already
quantized* (as stored in the file), and the block's tensors are written as soon as it is done.
Each linear goes onto the grid of its own planned type, so the file is an ordinary GGUF that
llama.cpp runs:

``gptq``
    :func:`refquant.formats.ggml.gptq_grid.gptq_ggml` with the Hessian ``H = 2 X^T X / n`` of
    the linear's calibration input (q, k, v share one, gate and up share one): the block
    type's scales fixed first by its plain quantizer (with the tensor's importance vector when
    an imatrix is given), then GPTQ's column-by-column rounding with error feedback onto them.
``awq``
    :func:`refquant.pipeline.awq_block.awq_block` with the planned type's own quantizer
    (:func:`ggml_quantizer`: :func:`refquant.formats.ggml.quantize` then
    :func:`~refquant.formats.ggml.dequantize`, with the importance vector) as the ``Q`` of the
    scale search and of the clipping search; the scales are folded (into the two RMSNorm weights,
    stored F32 in the file, and v -> o, up -> down), then every linear is stored by the plain
    block quantizer. The importance vector follows the fold: the folded weight ``W diag(s)``
    sees the inputs ``x / s``, so its importance is :math:`w_j / s_j^2`
    (:mod:`refquant.algorithms.awq.quantizer`).

Tensors outside the blocks (the embedding, the output head, the final norm) and block linears
whose planned type is F16 or F32 are written exactly as ``export_gguf`` writes them (AWQ's
folded float weight for the latter).

Rows: GPTQ and AWQ work on refquant's Hugging Face row order; llama.cpp's Q and K rows are a
permutation of it (:func:`refquant.models.gguf_hf.permute_qk`). A GGML block runs along a row,
so quantizing and then permuting the rows of the bytes is exactly
:func:`~refquant.formats.gguf_export.tensor_bytes`'s permuting and then quantizing.

Memory: one block -- its float weights (dropped from the model's cache once written), the
calibration activations ``X_i`` and ``X_{i+1}``, the block's Hessians (GPTQ) or recorded
inputs (AWQ), and its stored bytes until they are written.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from refquant.algorithms.awq import WeightQuantizer
from refquant.algorithms.gptq import HessianNotPositiveDefinite
from refquant.formats.gguf_export import (GGUFExporter, file_row_order, importance_for,
                                          plan_tensors, tensor_bytes)
from refquant.formats.gguf_mix import resolve_mix
from refquant.models.llama import LINEAR_NAMES
from refquant.pipeline.awq_block import awq_block
from refquant.pipeline.blocks import SHORT_NAMES, block_batched, embed_batched, with_weights
from refquant.pipeline.blockwise import _INPUT_OF, _collect_hessians, _named_hessian_error

METHODS = ("gptq", "awq")
_FLOAT = ("F32", "F16")


@dataclasses.dataclass(frozen=True)
class BlockReport:
    """What :func:`export_gguf_method` hands ``progress`` after block ``block`` is written.

    ``loss``: GPTQ, the sum over the block's quantized linears of ``gptq_ggml``'s loss
    :math:`\\tfrac12 \\operatorname{tr}((W - \\hat W)(H + \\lambda I)(W - \\hat W)^\\top)`;
    AWQ, the mean squared error of the block's output against the float block on the
    calibration input, and ``loss_rtn`` the same with the plain block quantizer (None for
    GPTQ). ``types``: the block linears' GGML types, with counts.
    """

    block: int
    n_blocks: int
    method: str
    seconds: float
    types: dict
    loss: float
    loss_rtn: float | None = None


def ggml_quantizer(fmt: str, importance=None) -> WeightQuantizer:
    """GGML block type ``fmt``'s own quantizer as a :class:`WeightQuantizer` (GGUF bytes in, the
    decode out), weighting columns by ``importance`` ``[K]`` (llama.cpp's imatrix row, or None)
    divided by ``s^2`` for a weight whose columns carry ``s``. Its groups are the type's blocks
    (32 values, 256 for the K-quants and IQ4_XS), which ggml quantizes independently."""
    from refquant.formats import ggml

    block = ggml.block_type(fmt).block_size
    w = None if importance is None else np.asarray(importance, np.float64)

    def quantize(W, s):
        imx = None if w is None else (w / np.asarray(s, np.float64) ** 2).astype(np.float32)
        return ggml.quantize(W, fmt, imatrix=imx)

    return WeightQuantizer(quantize, lambda data: ggml.dequantize(data, fmt), block, fmt)


def export_gguf_method(model, path, mix: str, calib_tokens, *, method: str, imatrix=None,
                       pure: bool = False, act_order: bool = True, damp: float = 0.01,
                       block_size: int = 128, batch_size: int = 8, awq_kw: dict | None = None,
                       awq_max_seqs: int | None = None, imatrix_source="imatrix",
                       progress=None):
    """Quantize ``model``'s block linears with GPTQ or AWQ onto their planned GGML types and
    write the GGUF file ``path`` (see the module docstring).

    Parameters
    ----------
    model : LlamaModel
        Not modified.
    path : path
        The ``.gguf`` file; it appears only once written and verified.
    mix : str
        A llama-quantize type (:data:`refquant.formats.gguf_mix.MIXES`, case-insensitive).
    calib_tokens : array_like [B, T] int
        Calibration sequences.
    method : {"gptq", "awq"}
    imatrix : Imatrix, optional
        llama.cpp's importance matrix: each tensor's row goes to its quantizer, and the mix rules
        that depend on having one apply, as in ``export_gguf``.
    pure : bool
        ``llama-quantize --pure``.
    act_order, damp, block_size
        GPTQ's column order by decreasing ``diag H`` (default True), dampening and lazy-batch
        size.
    batch_size : int
        Calibration sequences per forward chunk.
    awq_kw : dict, optional
        Keyword arguments of :func:`refquant.pipeline.awq_block.awq_block` (``n_grid``,
        ``clip`` ...).
    awq_max_seqs : int, optional
        AWQ's searches see only the first ``awq_max_seqs`` sequences.
    imatrix_source : str
        Names the imatrix in messages.
    progress : callable, optional
        ``progress(BlockReport)`` after each block is written.

    Returns
    -------
    pathlib.Path
        The verified file.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    tokens = np.asarray(calib_tokens)
    if tokens.ndim != 2 or tokens.dtype.kind not in "iu" or tokens.size == 0:
        raise ValueError(f"calib_tokens must be a non-empty 2-D integer array [B, T], got "
                         f"shape {tokens.shape} dtype {tokens.dtype}")
    if progress is not None and not callable(progress):
        raise ValueError(f"progress must be callable or None, got {progress!r}")
    mix = resolve_mix(mix)
    has_imatrix = imatrix is not None
    plan = plan_tensors(model.config, mix, has_imatrix=has_imatrix, pure=pure)
    rows = {t.name: importance_for(imatrix, t, imatrix_source) for t in plan}
    planned = {t.name: t for t in plan}
    L = model.config.n_layers
    if all(planned[f"layers.{i}.{lin}.weight"].type_name in _FLOAT
           for i in range(L) for lin in LINEAR_NAMES):
        raise ValueError(f"GGUF type {mix} stores every block linear as a float type: "
                         f"--method {method} has nothing to quantize")
    exporter = GGUFExporter(path, model, mix, has_imatrix=has_imatrix, pure=pure)
    weights = model.weights
    keep = set(weights.cached_names()) if hasattr(weights, "cached_names") else None
    overrides: dict = {}
    view = with_weights(model, overrides)          # sees every quantized block written so far

    def write_plain(stop=None):              # pending tensors up to block `stop` (None: all)
        while exporter.pending and not (stop and exporter.pending[0].name.startswith(stop)):
            t = exporter.pending[0]
            exporter.write(t.name, tensor_bytes(view.weights[t.name], t, model.config,
                                                rows[t.name]))
            if keep is not None and t.name not in keep:
                weights.drop_cache([t.name])

    try:
        X = embed_batched(view, tokens, batch_size)                          # [B, T, d]
        write_plain("layers.0.")
        for i in range(L):
            t0 = time.perf_counter()
            block_planned = {lin: planned[f"layers.{i}.{lin}.weight"] for lin in LINEAR_NAMES}
            if method == "gptq":
                stored, w_hat, loss, loss_rtn = _gptq_block(
                    view, i, X, block_planned, rows, act_order=act_order, damp=damp,
                    block_size=block_size, batch_size=batch_size)
            else:
                stored, w_hat, loss, loss_rtn = _awq_block(
                    view, i, X if awq_max_seqs is None else X[:awq_max_seqs], block_planned,
                    rows, awq_kw or {})
            overrides.update(w_hat)
            X = block_batched(view, i, X, batch_size)                        # the next input
            prefix = f"layers.{i}."
            while exporter.pending and exporter.pending[0].name.startswith(prefix):
                t = exporter.pending[0]
                exporter.write(t.name, stored[t.name] if t.name in stored else tensor_bytes(
                    view.weights[t.name], t, model.config, rows[t.name]))
            for k in [k for k in overrides if k.startswith(prefix)]:
                del overrides[k]
            if keep is not None:
                weights.drop_cache([k for k in planned if k.startswith(prefix) and k not in keep])
            if progress is not None:
                types: dict = {}
                for t in block_planned.values():
                    types[t.type_name] = types.get(t.type_name, 0) + 1
                progress(BlockReport(i, L, method, time.perf_counter() - t0, types, loss,
                                     loss_rtn))
        write_plain()                                                        # the rest
    except BaseException:
        exporter.abort()
        raise
    return exporter.close()


def _float_tensor(W, t, config) -> tuple[np.ndarray, np.ndarray]:
    """``(bytes, values)`` of a block linear planned F16 or F32: ``tensor_bytes`` and the float32
    values the file holds."""
    W = np.asarray(W, np.float32)
    values = W.astype(np.float16).astype(np.float32) if t.type_name == "F16" else W
    return tensor_bytes(W, t, config), values


def _gptq_block(view, i, X, planned: dict, rows: dict, *, act_order, damp, block_size,
                batch_size):
    """GPTQ on every linear of block ``i`` onto its planned type: ``(stored bytes by tensor
    name, dequantized weights by tensor name, summed loss, None)``."""
    from refquant.formats.ggml.gptq_grid import gptq_ggml

    Hs = _collect_hessians(view, i, X, batch_size)
    stored, w_hat, loss = {}, {}, 0.0
    for lin, t in planned.items():
        W = np.asarray(view.weights[t.name], np.float32)
        if t.type_name in _FLOAT:
            stored[t.name], w_hat[t.name] = _float_tensor(W, t, view.config)
            continue
        try:
            r = gptq_ggml(W, Hs[_INPUT_OF[lin]], t.type_name, imatrix=rows[t.name],
                          act_order=act_order, damp=damp, block_size=block_size)
        except HessianNotPositiveDefinite as exc:
            raise _named_hessian_error(f"layers.{i}.{lin}", exc) from exc
        stored[t.name] = file_row_order(r.data, t, view.config)
        w_hat[t.name] = np.asarray(r.w_hat, np.float32)
        loss += float(r.loss)
    return stored, w_hat, loss, None


def _awq_block(view, i, X, planned: dict, rows: dict, awq_kw: dict):
    """AWQ on block ``i`` with each linear's planned type as its quantizer: ``(stored bytes,
    new weights -- the folded norms and the dequantized linears --, block output MSE, RTN's)``."""
    specs = {short: None if planned[lin].type_name in _FLOAT else
             ggml_quantizer(planned[lin].type_name, rows[planned[lin].name])
             for short, lin in SHORT_NAMES.items()}
    if all(sp is None for sp in specs.values()):                 # nothing to search
        stored, w_hat = _float_block(view, planned)
        return stored, w_hat, 0.0, 0.0
    res = awq_block(view, i, X, specs, **awq_kw)
    w_hat = {k: np.asarray(v, np.float32) for k, v in res.weights.items()}
    stored = {}
    for short, lin in SHORT_NAMES.items():
        t = planned[lin]
        if specs[short] is None:                                 # float: AWQ's folded weight
            stored[t.name], w_hat[t.name] = _float_tensor(res.weights[t.name], t, view.config)
        else:
            stored[t.name] = file_row_order(res.codes[f"layers.{i}.{lin}"], t, view.config)
    return stored, w_hat, res.mse, res.mse_rtn


def _float_block(view, planned: dict) -> tuple[dict, dict]:
    """``(bytes, values)`` of a block whose linears are all planned F16/F32 (as export_gguf
    writes them)."""
    out = {t.name: _float_tensor(view.weights[t.name], t, view.config) for t in planned.values()}
    return {k: v[0] for k, v in out.items()}, {k: v[1] for k, v in out.items()}


__all__ = ["export_gguf_method", "ggml_quantizer", "BlockReport", "METHODS"]
