"""Sequential, block-by-block quantization of a whole Llama (RTN, GPTQ, AWQ, mixed precision).

The procedure of GPTQ [1]_ and AWQ [2]_ for a decoder stack: the calibration tokens are
embedded once; then for each block ``i`` in turn

1. *collect Hessians*: the block runs on its calibration input ``X_i`` (the output of the blocks
   before it, *already quantized*), and a wrapping ``linear`` accumulates the Hessian
   ``H = 2 X^T X / n`` of the input of every linear (q, k, v share one input, gate and up share
   one);
2. *quantize the block*: each of the seven linears (q, k, v, o, gate, up, down) is quantized as
   its recipe says (:mod:`refquant.pipeline.recipes`): RTN (min-max round-to-nearest, or
   round-to-nearest in a float or microscaled format of
   :mod:`refquant.pipeline.weight_formats`), GPTQ (:func:`refquant.algorithms.gptq.gptq`; for
   MXFP6/MXFP4/NVFP4 with static block scales, :mod:`refquant.algorithms.gptq_mx`), AWQ
   (:func:`refquant.pipeline.awq_block.awq_block`,
   which also folds its scales into the two RMSNorm weights and the v/up rows), or kept in float;
3. the block runs again with its quantized weights: ``X_{i+1}``;
4. *hand it to the sink* (streaming): the finished block goes to ``sink`` and the pipeline
   forgets it.

Embeddings, norms and the head stay in float. Nothing depends on a random seed: the result is a
deterministic function of the model, the calibration tokens and the recipe.

Peak memory
-----------
Measured, not modelled: ``benchmarks/scale_7b.py`` runs ``refquant quantize`` on a
Llama-2-7B-shaped model (hidden 4096, FFN 11008) and samples the process's resident set from
``/proc``; the README's scale table has the figures and the machine they were measured on.
:class:`QuantizeResult` records the ``tracemalloc`` peak of Python allocations when asked
(``track_memory=True``). What is held at once, streamed, none of it growing with the depth:

* the model's float32 weights of the current block (and the embedding), in the loader's
  bounded cache; each finished block is dropped from it (``refquant quantize`` opens the
  model with :data:`refquant.models.loaders.INFERENCE_CACHE_BYTES`);
* the calibration activations ``X_i`` and ``X_{i+1}`` (``2 n_tok d`` float32;
  :func:`~refquant.pipeline.blocks.block_batched` writes each chunk into ``X_{i+1}``, no
  third copy), plus one chunk's forward state: ``batch_size`` sequences (``refquant quantize
  --calib-batch``, default 8) of MLP activations ``[chunk, T, d_ff]`` and attention scores;
* the block's four float64 Hessians (``3 d^2 + d_ff^2``: the ``down_proj`` one, 11008^2, is
  ~1 GB at 7B) and the GPTQ work arrays of one linear: its float64 ``W``, ``Q`` and losses
  (``3 d_out d_in``) and the inverse-Hessian factor with a dampened copy of ``H``
  (``2 d_in^2``, again ~2 GB for ``down_proj``);
* the block's dequantized replacement weights (float32) and codes until the sink has them.

Without a sink every block's results are kept (float32 dequantized weights and codes).

References
----------
.. [1] E. Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
       Transformers", ICLR 2023, arXiv:2210.17323.
.. [2] J. Lin et al., "AWQ: Activation-aware Weight Quantization for On-Device LLM Compression
       and Acceleration", MLSys 2024, arXiv:2306.00978.
"""

from __future__ import annotations

import time
import tracemalloc
from dataclasses import dataclass, field

import numpy as np

from refquant.algorithms.gptq import HessianNotPositiveDefinite, gptq, hessian
from refquant.algorithms.gptq_mx import gptq_mx, gptq_nvfp4
from refquant.calibration.observers import calibrate
from refquant.models.llama import LINEAR_NAMES, block
from refquant.pipeline.awq_block import awq_block
from refquant.pipeline.blocks import (SHORT_NAMES, block_batched, block_tensor_names, chunks,
                                      embed_batched, linear_names, with_weights)
from refquant.pipeline.recipes import (FLOAT, METHODS, LayerSetting, RecipeSize, layer_bits,
                                       recipe_size, resolve_recipe)
from refquant.pipeline.weight_formats import WEIGHT_FORMATS, rtn_layer
from refquant.schemes.spec import QParams, QuantSpec, g_idx
from refquant.schemes.uniform import dequantize, quantize

LINEARS = LINEAR_NAMES
# the linear whose input is recorded for each linear (q/k/v and gate/up share their input)
_INPUT_OF = {"self_attn.q_proj": "self_attn.q_proj", "self_attn.k_proj": "self_attn.q_proj",
             "self_attn.v_proj": "self_attn.q_proj", "self_attn.o_proj": "self_attn.o_proj",
             "mlp.gate_proj": "mlp.gate_proj", "mlp.up_proj": "mlp.gate_proj",
             "mlp.down_proj": "mlp.down_proj"}


@dataclass
class QuantizedLayer:
    """One quantized linear: codes ``[out, in]``, parameters, the spec, ``g_idx`` (groups of the
    input columns, ``None`` for per-channel), the GPTQ loss (``None`` otherwise), and seconds.

    GPTQ only: ``damp`` is the dampening its Hessian was factored with and ``damp_retries`` how
    many times it was raised 10x for that (0: the requested ``damp`` held;
    :func:`refquant.algorithms.gptq.gptq`); ``None`` and 0 for the other methods.
    """

    setting: LayerSetting
    codes: np.ndarray
    qparams: QParams
    spec: QuantSpec
    g_idx: np.ndarray | None = None
    loss: float | None = None
    seconds: float = 0.0
    damp: float | None = None
    damp_retries: int = 0


@dataclass
class QuantizeResult:
    """Result of :func:`quantize_model`.

    Attributes
    ----------
    weights : dict[str, ndarray float32]
        Replacement weights: every quantized linear dequantized (and, for AWQ blocks, the
        folded RMSNorm weights and float linears). Lay them over the model's weights
        (:meth:`apply`).
    layers : dict[str, QuantizedLayer]
        Every quantized linear, by name (``layers.3.mlp.up_proj``).
    settings : dict[str, LayerSetting]
        The resolved recipe of every linear of the processed blocks.
    seconds : float
    block_seconds : list[float]
    peak_bytes : int or None
        ``tracemalloc`` peak during the run (``track_memory=True``), else None.
    n_blocks : int
    streamed : bool
        True when the blocks went to a ``sink`` (``weights`` and ``layers`` are then empty).
    damp_retries : dict[str, tuple[float, int]]
        The GPTQ linears whose Hessian could not be factored at the requested ``damp``:
        name -> (damp used, retries). Kept when streamed.
    """

    weights: dict
    layers: dict
    settings: dict
    seconds: float
    block_seconds: list = field(default_factory=list)
    peak_bytes: int | None = None
    n_blocks: int = 0
    streamed: bool = False
    damp_retries: dict = field(default_factory=dict)

    def apply(self, model):
        """The model with these weights laid over its own (the original is not modified)."""
        if self.streamed:
            raise ValueError("this result was streamed to a sink block by block and holds no weights; "
                             "load what the sink wrote (e.g. refquant.formats.gptq.load_quantized_model)")
        return with_weights(model, self.weights)


def quantize_model(model, calib_tokens, recipe, *, damp: float = 0.01, block_size: int = 128,
                   n_blocks: int | None = None, batch_size: int = 8, awq_kw: dict | None = None,
                   awq_max_seqs: int | None = None, progress: bool = False,
                   track_memory: bool = False, sink=None) -> QuantizeResult:
    """Quantize the linears of a Llama model block by block (see the module docstring).

    Parameters
    ----------
    model : LlamaModel
        Not modified.
    calib_tokens : array_like [B, T] int
        Calibration sequences. RTN and float linears do not read them: they are propagated
        through the blocks only as far as the last block with a GPTQ or AWQ linear.
    recipe : LayerSetting, or sequence / dict of (fnmatch pattern, LayerSetting or "float")
        See :func:`refquant.pipeline.recipes.resolve_recipe`.
    damp, block_size : GPTQ's dampening and lazy-batch size.
    n_blocks : int, optional
        Process only the first ``n_blocks`` blocks (the rest stay float); default all.
    batch_size : int
        Sequences per forward chunk (bounds the transient memory).
    awq_kw : dict, optional
        Extra keyword arguments for :func:`refquant.pipeline.awq_block.awq_block`.
    awq_max_seqs : int, optional
        AWQ's searches see only the first ``awq_max_seqs`` calibration sequences (its grid
        searches run ~40 block forwards each); the next block's input is computed on all.
    progress : bool
        Show a tqdm bar over the blocks (its postfix counts the linears whose damping was raised).
    track_memory : bool
        Record the ``tracemalloc`` peak (slows Python allocations slightly).
    sink : callable, optional
        Streaming: ``sink(i, layers, tensors)`` receives each finished block ``i`` -- its
        :class:`QuantizedLayer` s by name and its other tensors (``{name: float array}``: the
        RMSNorm weights, folded by AWQ, and any linear kept in float; float32 where the
        pipeline changed them, else as stored in the source, e.g. float16) -- once the next block's
        input has been computed. The pipeline then forgets the block: its results, and the model's
        cached float weights of the block where the weights mapping can drop them
        (:meth:`refquant.models.loaders.LazyWeights.drop_cache`), so memory does not grow with
        the number of blocks. The returned result then has ``streamed=True`` and no weights.
        :class:`refquant.formats.gptq.CheckpointWriter` writes such blocks to disk.

    Returns
    -------
    QuantizeResult

    Raises
    ------
    HessianNotPositiveDefinite
        (a ``ValueError``) where a GPTQ linear's Hessian cannot be factored at any damping tried;
        the message starts with the linear's name (``layers.3.mlp.down_proj: ...``) and its
        ``layer`` attribute holds it.
    """
    tokens = np.asarray(calib_tokens)
    if tokens.ndim != 2 or tokens.dtype.kind not in "iu" or tokens.size == 0:
        raise ValueError(f"calib_tokens must be a non-empty 2-D integer array [B, T], got "
                         f"shape {tokens.shape} dtype {tokens.dtype}")
    L = model.config.n_layers
    n_blocks = L if n_blocks is None else int(n_blocks)
    if not 1 <= n_blocks <= L:
        raise ValueError(f"n_blocks must be in [1, {L}], got {n_blocks}")
    settings = resolve_recipe(recipe, linear_names(n_blocks))
    if track_memory:
        tracemalloc.start()
    t_start = time.perf_counter()
    overrides: dict = {}
    view = with_weights(model, overrides)                       # sees every update to overrides
    layers: dict = {}
    retried: dict = {}
    block_seconds = []
    # RTN and float linears never read the calibration input: past the last block with a GPTQ
    # or AWQ linear it is not propagated (an RTN-only recipe runs no forward pass at all)
    calibrated = [i for i in range(n_blocks) if any(
        settings[f"layers.{i}.{lin}"].method in ("gptq", "awq") for lin in LINEAR_NAMES)]
    last_calibrated = calibrated[-1] if calibrated else -1
    try:
        X = embed_batched(view, tokens, batch_size) if calibrated else None   # [B, T, d]
        blocks = range(n_blocks)
        if progress:
            from tqdm.auto import tqdm
            blocks = tqdm(blocks, desc="quantize blocks", unit="block")
        for i in blocks:
            t0 = time.perf_counter()
            st = {lin: settings[f"layers.{i}.{lin}"] for lin in LINEAR_NAMES}
            weights, new_layers = _quantize_block(view, i, X, st, damp=damp, block_size=block_size,
                                                  batch_size=batch_size, awq_kw=awq_kw,
                                                  awq_max_seqs=awq_max_seqs)
            overrides.update(weights)
            layers.update(new_layers)
            retried.update({n: (ly.damp, ly.damp_retries) for n, ly in new_layers.items()
                            if ly.damp_retries})
            if progress and retried:
                blocks.set_postfix(damp_raised=len(retried))
            if i < last_calibrated:
                X = block_batched(view, i, X, batch_size)       # the next block's input
            if sink is not None:
                _to_sink(sink, i, model, view, overrides, layers)
            block_seconds.append(time.perf_counter() - t0)
        peak = tracemalloc.get_traced_memory()[1] if track_memory else None
    finally:
        if track_memory:
            tracemalloc.stop()
    return QuantizeResult(weights=dict(overrides), layers=layers, settings=settings,
                          seconds=time.perf_counter() - t_start, block_seconds=block_seconds,
                          peak_bytes=peak, n_blocks=n_blocks, streamed=sink is not None,
                          damp_retries=retried)


def _quantize_block(view, i: int, X: np.ndarray, st: dict, *, damp: float, block_size: int,
                    batch_size: int, awq_kw: dict | None, awq_max_seqs: int | None
                    ) -> tuple[dict, dict]:
    """Quantize block ``i`` of ``view`` on its calibration input ``X [B, T, d]`` as ``st``
    (linear path -> :class:`LayerSetting`) says: ``(replacement weights, QuantizedLayers)``, both
    keyed by full name. AWQ takes the whole block (or leaves linears float); RTN and GPTQ go
    linear by linear, GPTQ on the Hessians of the block's float inputs."""
    methods = {s.method for s in st.values()} - {"float"}
    if "awq" in methods and methods != {"awq"}:
        raise ValueError(f"block {i} mixes AWQ with {sorted(methods - {'awq'})}: AWQ's scale "
                         "folding needs the whole block; use AWQ or float for all its linears")
    if methods == {"awq"}:
        return _awq_block(view, i, X if awq_max_seqs is None else X[:awq_max_seqs], st, awq_kw)
    Hs = _collect_hessians(view, i, X, batch_size) if "gptq" in methods else {}
    weights, layers = {}, {}
    for lin, setting in st.items():
        if setting.method == "float":
            continue
        t1 = time.perf_counter()
        n = f"layers.{i}.{lin}"
        W = np.asarray(view.weights[n + ".weight"], np.float32)
        sp = setting.spec()
        if setting.method == "rtn" and setting.fmt is not None:    # float / microscaled grids
            codes, qp, sp, w_hat = rtn_layer(W, setting.fmt)
            layers[n] = QuantizedLayer(setting, codes, qp, sp, _group_index(W.shape[1], sp))
        elif setting.method == "rtn":
            qp = calibrate(W, sp)
            codes = quantize(W, qp, sp)
            w_hat = dequantize(codes, qp, sp)
            layers[n] = QuantizedLayer(setting, codes, qp, sp, _group_index(W.shape[1], sp))
        else:
            r = _gptq_layer(n, W, Hs[_INPUT_OF[lin]], sp, setting, damp, block_size)
            w_hat = r.w_hat
            layers[n] = QuantizedLayer(setting, r.codes, r.qparams, sp, r.g_idx, r.loss,
                                       damp=r.damp, damp_retries=r.damp_retries)
        layers[n].seconds = time.perf_counter() - t1
        weights[n + ".weight"] = w_hat
    return weights, layers


def _gptq_layer(name: str, W, H, spec: QuantSpec, setting: LayerSetting, damp: float,
                block_size: int):
    """:func:`refquant.algorithms.gptq.gptq` of the linear ``name``; a Hessian that cannot be
    factored re-raises :class:`HessianNotPositiveDefinite` with ``name`` in front of the
    message (which names the damping tried) and as the ``layer`` attribute."""
    try:
        if setting.fmt == "nvfp4":                 # static block scales: algorithms.gptq_mx
            return gptq_nvfp4(W, H, lazy_batch=block_size, damp=damp,
                              act_order=setting.act_order).gptq
        if setting.fmt is not None:
            return gptq_mx(W, H, WEIGHT_FORMATS[setting.fmt].spec, lazy_batch=block_size,
                           damp=damp, act_order=setting.act_order).gptq
        return gptq(W, H, spec, block_size=block_size, damp=damp, act_order=setting.act_order,
                    static_groups=setting.static_groups)
    except HessianNotPositiveDefinite as exc:
        raise _named_hessian_error(name, exc) from exc


def _named_hessian_error(name: str, exc: HessianNotPositiveDefinite) -> HessianNotPositiveDefinite:
    """``exc`` with the linear's ``name`` in front of its message and as its ``layer``."""
    named = HessianNotPositiveDefinite(exc.damps, exc.lambdas)
    named.args = (f"{name}: {exc}",)
    named.layer = name
    return named


def _group_index(in_features: int, spec: QuantSpec) -> np.ndarray | None:
    """``g_idx`` of a linear quantized in column order (None for per-channel parameters)."""
    return g_idx(in_features, spec.group_size) if spec.granularity == "group" else None


def _collect_hessians(view, i: int, X: np.ndarray, batch_size: int) -> dict:
    """``H = 2 X^T X / n`` (float64) of the inputs of block ``i``'s linears on ``X [B, T, d]``,
    keyed by the linear that records each shared input (``_INPUT_OF``), accumulated chunk by
    chunk (:func:`refquant.algorithms.gptq.hessian`). The block's output is not needed, so the
    last linear (down_proj, whose input is the last one recorded) returns zeros instead of its
    product: a fifth less work, the same Hessians."""
    recorded = {f"layers.{i}.{lin}": lin for lin in set(_INPUT_OF.values())}
    last = f"layers.{i}.{LINEAR_NAMES[-1]}"
    acc = {}

    def linear(name, x):
        W = view.weights[name + ".weight"]
        if name in recorded:
            key = recorded[name]
            acc[key] = hessian(x, *acc.get(key, (None, 0)))
        if name == last:                                        # its output feeds nothing here
            return np.zeros((*x.shape[:-1], W.shape[0]), np.float32)
        y = x.reshape(-1, x.shape[-1]) @ W.T                    # [B*T, in] -> [B*T, out]
        return y.reshape(*x.shape[:-1], W.shape[0])

    for s in chunks(len(X), batch_size):                        # outputs are not needed
        block(view, i, X[s], linear=linear)
    return {key: H for key, (H, _) in acc.items()}


def _awq_block(view, i: int, X: np.ndarray, st: dict, awq_kw: dict | None) -> tuple[dict, dict]:
    """AWQ on block ``i`` (:func:`refquant.pipeline.awq_block.awq_block`): the folded and
    quantized block's weights and its :class:`QuantizedLayer` s (linears set to AWQ only)."""
    specs = {short: st[lin].spec() for short, lin in SHORT_NAMES.items()}
    res = awq_block(view, i, X, specs, **(awq_kw or {}))
    weights = {k: np.asarray(v, np.float32) for k, v in res.weights.items()}
    layers = {}
    for lin, setting in st.items():
        if setting.method == "awq":
            n, sp = f"layers.{i}.{lin}", setting.spec()
            layers[n] = QuantizedLayer(setting, res.codes[n], res.qparams[n], sp,
                                       _group_index(res.codes[n].shape[1], sp))
    return weights, layers


def _to_sink(sink, i: int, model, view, overrides: dict, layers: dict) -> None:
    """Hand block ``i`` to ``sink``, then drop it from ``overrides``, ``layers`` and the model's cache."""
    prefix = f"layers.{i}."
    names = block_tensor_names(model.weights, i)
    block_layers = {n: ly for n, ly in layers.items() if n.startswith(prefix)}
    # a tensor the pipeline changed (AWQ's folded norms) in float32; the others as stored in the
    # source (float16 stays float16) where the weights mapping can say (LazyWeights.stored)
    stored = getattr(model.weights, "stored", None)
    tensors = {k: np.asarray(view.weights[k], np.float32) if k in overrides or stored is None
               else stored(k) for k in names if k[: -len(".weight")] not in block_layers}
    sink(i, block_layers, tensors)
    for k in names:
        overrides.pop(k, None)
    for n in block_layers:
        del layers[n]
    drop = getattr(model.weights, "drop_cache", None)
    if drop is not None:
        drop(names)


# the settings, names and sizes used with quantize_model, from the modules that define them
__all__ = ["quantize_model", "QuantizeResult", "QuantizedLayer", "LINEARS", "LayerSetting",
           "FLOAT", "METHODS", "resolve_recipe", "layer_bits", "recipe_size", "RecipeSize",
           "linear_names", "block_tensor_names", "with_weights"]
