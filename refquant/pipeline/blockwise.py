"""Sequential, block-by-block quantization of a whole Llama (RTN, GPTQ, AWQ, mixed precision).

The procedure of GPTQ [1]_ and AWQ [2]_ for a decoder stack: the calibration tokens are
embedded once; then for each block ``i`` in turn

1. the block runs on its calibration input ``X_i`` (the output of the blocks before it, *already
   quantized*), and a wrapping ``linear`` accumulates the Hessian ``H = 2 X X^T / n`` of the input
   of every linear (q, k, v share one input, gate and up share one);
2. each of the seven linears (q, k, v, o, gate, up, down) is quantized as its recipe says: RTN
   (min-max round-to-nearest), GPTQ (:func:`refquant.algorithms.gptq`), AWQ (:func:`refquant.algorithms.awq`, which
   also folds its scales into the two RMSNorm weights and the v/up rows), or kept in float;
3. the block runs again with its quantized weights: ``X_{i+1}``.

Embeddings, norms and the head stay in float. Nothing depends on a random seed: the result is a
deterministic function of the model, the calibration tokens and the recipe.

Peak memory
-----------
Besides the model's own weights (memory-mapped where the loader can; a block's float32 copies
are read when the block is processed) the pipeline holds

* the calibration activations, twice (``X_i`` and ``X_{i+1}``): ``2 n_tok d`` float32;
* one block's transient forward state for a chunk of ``batch_size`` sequences (the MLP
  activation ``[chunk, T, d_ff]`` and attention scores ``[chunk, heads, T, T]``);
* one block's four Hessians ``3 d^2 + d_ff^2`` float64 (``H`` of q/k/v, o, gate/up, down) and the
  GPTQ working copies of one weight (``W``, ``Q``, ``Losses``: ``3 d_out d_in`` float64);
* one block's weights: float32 as read, and dequantized (``2 x 4 P_block`` bytes);
* the quantized result: with a ``sink`` (streaming) only the current block's, which the sink
  writes out (``refquant quantize`` writes and verifies one checkpoint shard per block);
  without one, every block's (float32 dequantized weights and codes), and the model's cache
  keeps every block's float32 weights too.

so, streamed, ``peak ~ 8 n_tok d + 8 (3 d^2 + d_ff^2) + 24 max(d_out d_in) + 8 P_block +
4 B_chunk T (d_ff + h T) + 4 V d`` bytes (the last term the float32 embedding), independent of
the number of blocks. :class:`QuantizeResult` records the ``tracemalloc`` peak when asked
(``track_memory=True``).

Measured on the bundled SmolLM2-135M (30 blocks, ``d = 576``, ``d_ff = 1536``, ``V = 49152``),
GPTQ W3 g128 with act_order and static groups, 2048 calibration tokens (8 x 256,
``batch_size=8``), ``tracemalloc`` peak: **266 MB streamed** (a sink per block) against
**1,190 MB in memory** (the result, ~531 MB, plus the model's cached float32 block weights,
~425 MB). Of the streamed peak, the float32 embedding is 113 MB and the gguf dequantization of
it transient buffers of similar size; the formula's working part is ~9 MB of activations, 27 MB
of Hessians, 11 MB of GPTQ scratch, 28 MB of one block's weights and ~40 MB of one chunk's
forward temporaries. For a 7B Llama (``d = 4096``, ``d_ff = 11008``, ``V = 32000``,
``P_block = 202M``, 128 x 2048 calibration tokens, ``batch_size=1``) the formula gives ~8.6 GB of
activations + 1.4 GB of Hessians + 0.4 GB of GPTQ scratch + 1.6 GB of block weights + ~2 GB
of forward temporaries (attention scores ``32 x 2048^2`` float32 and their softmax) + 0.5 GB of
embedding: ~15 GB, within a 24 GiB machine (not run here:
no 7B checkpoint is bundled and none may be downloaded).

References
----------
.. [1] E. Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
       Transformers", ICLR 2023, arXiv:2210.17323.
.. [2] J. Lin et al., "AWQ: Activation-aware Weight Quantization for On-Device LLM Compression
       and Acceleration", MLSys 2024, arXiv:2306.00978.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import time
import tracemalloc
from collections import ChainMap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from refquant.calibration.observers import calibrate
from refquant.algorithms.gptq import gptq, hessian
from refquant.schemes.spec import QParams, QuantSpec
from refquant.schemes.uniform import dequantize, quantize

METHODS = ("rtn", "gptq", "awq", "float")
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
# the linear whose input is recorded for each linear (q/k/v and gate/up share their input)
_INPUT_OF = {"self_attn.q_proj": "self_attn.q_proj", "self_attn.k_proj": "self_attn.q_proj",
             "self_attn.v_proj": "self_attn.q_proj", "self_attn.o_proj": "self_attn.o_proj",
             "mlp.gate_proj": "mlp.gate_proj", "mlp.up_proj": "mlp.gate_proj",
             "mlp.down_proj": "mlp.down_proj"}


@dataclass(frozen=True)
class LayerSetting:
    """How to quantize one linear layer.

    Attributes
    ----------
    method : {"rtn", "gptq", "awq", "float"}
    bits : int
    group_size : int or None
        Groups along the input dimension; ``None`` = one scale per output channel.
    symmetric : bool
    act_order, static_groups : bool
        GPTQ only (see :func:`refquant.algorithms.gptq`).
    """

    method: str = "gptq"
    bits: int = 4
    group_size: int | None = 128
    symmetric: bool = False
    act_order: bool = False
    static_groups: bool = False

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.method != "float":
            self.spec()                                                 # validates bits, group_size

    def spec(self) -> QuantSpec | None:
        """The :class:`QuantSpec` of this setting (``None`` for ``"float"``)."""
        if self.method == "float":
            return None
        if self.group_size is None:
            return QuantSpec(bits=self.bits, symmetric=self.symmetric, granularity="channel", axis=0)
        return QuantSpec(bits=self.bits, symmetric=self.symmetric, granularity="group",
                         group_size=self.group_size)

    def label(self) -> str:
        if self.method == "float":
            return "float"
        g = "ch" if self.group_size is None else f"g{self.group_size}"
        extra = ("+act" if self.act_order else "") + ("+static" if self.static_groups else "")
        return f"{self.method} W{self.bits} {g}{extra}"


FLOAT = LayerSetting(method="float")


def linear_names(n_layers: int) -> list[str]:
    """Names of all quantizable linears: ``layers.{i}.self_attn.q_proj`` ... ``mlp.down_proj``."""
    return [f"layers.{i}.{lin}" for i in range(n_layers) for lin in LINEARS]


def resolve_recipe(recipe, names: Sequence[str]) -> dict[str, LayerSetting]:
    """Map every layer name to its :class:`LayerSetting`.

    ``recipe`` is a :class:`LayerSetting` (all layers), or a sequence of ``(pattern, setting)``
    pairs, or a dict ``{pattern: setting}`` (in order); patterns are :mod:`fnmatch` patterns on
    the layer name (``"layers.0.mlp.down_proj"``, ``"*.down_proj"``, ``"*"``), the *first* matching
    pattern wins, and a setting may be the string ``"float"``. A name that no pattern matches
    raises ``ValueError`` (end a recipe with ``("*", setting)`` to give a default).
    """
    if isinstance(recipe, LayerSetting):
        return {n: recipe for n in names}
    items = list(recipe.items()) if isinstance(recipe, Mapping) else list(recipe)
    rules = []
    for item in items:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
            raise ValueError(f"a recipe entry must be (pattern, setting), got {item!r}")
        pat, setting = item
        if setting == "float":
            setting = FLOAT
        if not isinstance(setting, LayerSetting):
            raise ValueError(f"recipe setting for {pat!r} must be a LayerSetting or 'float', got {setting!r}")
        rules.append((pat, setting))
    out = {}
    for n in names:
        for pat, setting in rules:
            if fnmatch.fnmatchcase(n, pat):
                out[n] = setting
                break
        else:
            raise ValueError(f"no recipe pattern matches layer {n!r}; patterns: {[p for p, _ in rules]}")
    return out


@dataclass
class QuantizedLayer:
    """One quantized linear: codes ``[out, in]``, parameters, the spec, ``g_idx`` (groups of the
    input columns, ``None`` for per-channel), the GPTQ loss (``None`` otherwise), and seconds."""

    setting: LayerSetting
    codes: np.ndarray
    qparams: QParams
    spec: QuantSpec
    g_idx: np.ndarray | None = None
    loss: float | None = None
    seconds: float = 0.0


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
    """

    weights: dict
    layers: dict
    settings: dict
    seconds: float
    block_seconds: list = field(default_factory=list)
    peak_bytes: int | None = None
    n_blocks: int = 0
    streamed: bool = False

    def apply(self, model):
        """The model with these weights laid over its own (the original is not modified)."""
        if self.streamed:
            raise ValueError("this result was streamed to a sink block by block and holds no weights; "
                             "load what the sink wrote (e.g. refquant.formats.gptq.load_quantized_model)")
        return with_weights(model, self.weights)


def with_weights(model, overrides: Mapping):
    """A shallow copy of a ``LlamaModel`` whose ``weights`` look up ``overrides`` first."""
    if not dataclasses.is_dataclass(model):
        raise ValueError(f"model must be a LlamaModel dataclass, got {type(model).__name__}")
    return dataclasses.replace(model, weights=ChainMap(overrides, model.weights))


def _n_layers(model) -> int:
    cfg = model.config
    for attr in ("n_layers", "num_hidden_layers", "n_layer"):
        if getattr(cfg, attr, None) is not None:
            return int(getattr(cfg, attr))
    raise ValueError("model.config has no n_layers / num_hidden_layers")


def _chunks(n: int, size: int):
    for a in range(0, n, size):
        yield slice(a, min(a + size, n))


def _rtn(W, spec):
    qp = calibrate(W, spec)
    return quantize(W, qp, spec), qp


def quantize_model(model, calib_tokens, recipe, *, damp: float = 0.01, block_size: int = 128,
                   n_blocks: int | None = None, batch_size: int = 8, awq_kw: dict | None = None,
                   awq_max_seqs: int | None = None,
                   progress: bool = False, track_memory: bool = False,
                   block_fn=None, embed_fn=None, sink=None) -> QuantizeResult:
    """Quantize the linears of a Llama model block by block (see the module docstring).

    Parameters
    ----------
    model : LlamaModel
        Not modified.
    calib_tokens : array_like [B, T] int
        Calibration sequences.
    recipe : LayerSetting, or sequence / dict of (fnmatch pattern, LayerSetting or "float")
        See :func:`resolve_recipe`.
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
        Show a tqdm bar over the blocks.
    track_memory : bool
        Record the ``tracemalloc`` peak (slows Python allocations slightly).
    block_fn, embed_fn : callable, optional
        ``block_fn(model, i, x, *, linear=None)`` and ``embed_fn(model, tokens)``; default
        :func:`refquant.models.llama.block` and :func:`refquant.models.llama.embed`.
    sink : callable, optional
        Streaming: ``sink(i, layers, tensors)`` receives each finished block ``i`` -- its
        :class:`QuantizedLayer` s by name and its other tensors (``{name: float32 array}``: the
        RMSNorm weights, folded by AWQ, and any linear kept in float) -- once the next block's
        input has been computed. The pipeline then forgets the block: its results, and the model's
        cached float weights of the block where the weights mapping can drop them
        (:meth:`refquant.models.loaders.LazyWeights.drop_cache`), so memory does not grow with
        the number of blocks. The returned result then has ``streamed=True`` and no weights.
        :class:`refquant.formats.gptq.CheckpointWriter` writes such blocks to disk.

    Returns
    -------
    QuantizeResult
    """
    if block_fn is None or embed_fn is None:
        from refquant.models import llama
    block = block_fn or llama.block
    embed = embed_fn or llama.embed
    tokens = np.asarray(calib_tokens)
    if tokens.ndim != 2 or tokens.dtype.kind not in "iu" or tokens.size == 0:
        raise ValueError(f"calib_tokens must be a non-empty 2-D integer array [B, T], got "
                         f"shape {tokens.shape} dtype {tokens.dtype}")
    L = _n_layers(model)
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
    block_seconds = []
    try:
        X = np.concatenate([embed(view, tokens[s]) for s in _chunks(len(tokens), batch_size)])  # [B, T, d]
        blocks = range(n_blocks)
        if progress:
            from tqdm.auto import tqdm
            blocks = tqdm(blocks, desc="quantize blocks", unit="block")
        for i in blocks:
            t0 = time.perf_counter()
            names = {lin: f"layers.{i}.{lin}" for lin in LINEARS}
            st = {lin: settings[n] for lin, n in names.items()}
            methods = {s.method for s in st.values()} - {"float"}
            if "awq" in methods and methods != {"awq"}:
                raise ValueError(f"block {i} mixes AWQ with {sorted(methods - {'awq'})}: AWQ's scale "
                                 "folding needs the whole block; use AWQ or float for all its linears")
            if methods == {"awq"}:
                from refquant.pipeline.awq_block import awq_block

                specs = {lin.split(".")[1]: st[lin].spec() for lin in LINEARS}
                X_awq = X if awq_max_seqs is None else X[:awq_max_seqs]
                res = awq_block(view, i, X_awq, specs, block_fn=block, **(awq_kw or {}))
                overrides.update({k: np.asarray(v, np.float32) for k, v in res.weights.items()})
                for lin, n in names.items():
                    if st[lin].method == "awq":
                        sp = st[lin].spec()
                        g = None if sp.granularity != "group" else (np.arange(res.codes[n].shape[1]) // sp.group_size).astype(np.int32)
                        layers[n] = QuantizedLayer(st[lin], res.codes[n], res.qparams[n], sp, g)
            elif methods:
                Hs = {}
                if "gptq" in methods:
                    recorded = {names[lin]: lin for lin in set(_INPUT_OF.values())}

                    def linear(name, x, _rec=recorded):
                        W = view.weights[name + ".weight"]
                        if name in _rec:
                            key = _rec[name]
                            Hs[key] = hessian(x, *Hs.get(key, (None, 0)))
                        y = x.reshape(-1, x.shape[-1]) @ W.T            # [B*T, in] -> [B*T, out]
                        return y.reshape(*x.shape[:-1], W.shape[0])
                    for s in _chunks(len(X), batch_size):
                        block(view, i, X[s], linear=linear)
                for lin, n in names.items():
                    s_ = st[lin]
                    if s_.method == "float":
                        continue
                    t1 = time.perf_counter()
                    W = np.asarray(view.weights[n + ".weight"], np.float32)
                    sp = s_.spec()
                    if s_.method == "rtn":
                        codes, qp = _rtn(W, sp)
                        g = None if sp.granularity != "group" else (np.arange(W.shape[1]) // sp.group_size).astype(np.int32)
                        w_hat = dequantize(codes, qp, sp)
                        layers[n] = QuantizedLayer(s_, codes, qp, sp, g)
                    else:
                        r = gptq(W, Hs[_INPUT_OF[lin]][0], sp, block_size=block_size, damp=damp,
                                 act_order=s_.act_order, static_groups=s_.static_groups)
                        codes, qp, w_hat = r.codes, r.qparams, r.w_hat
                        layers[n] = QuantizedLayer(s_, codes, qp, sp, r.g_idx, r.loss)
                    layers[n].seconds = time.perf_counter() - t1
                    overrides[n + ".weight"] = w_hat
                del Hs
            # the quantized block's output is the next block's input
            X = np.concatenate([block(view, i, X[s]) for s in _chunks(len(X), batch_size)])
            if sink is not None:
                _stream_block(sink, i, model, view, overrides, layers)
            block_seconds.append(time.perf_counter() - t0)
        peak = tracemalloc.get_traced_memory()[1] if track_memory else None
    finally:
        if track_memory:
            tracemalloc.stop()
    return QuantizeResult(weights=dict(overrides), layers=layers, settings=settings,
                          seconds=time.perf_counter() - t_start, block_seconds=block_seconds,
                          peak_bytes=peak, n_blocks=n_blocks, streamed=sink is not None)


def block_tensor_names(weights, i: int) -> list[str]:
    """The names in ``weights`` that belong to block ``i`` (``layers.{i}.*``)."""
    prefix = f"layers.{i}."
    return [k for k in weights if k.startswith(prefix)]


def _stream_block(sink, i: int, model, view, overrides: dict, layers: dict) -> None:
    """Hand block ``i`` to ``sink``, then drop it from ``overrides``, ``layers`` and the model's cache."""
    prefix = f"layers.{i}."
    names = block_tensor_names(model.weights, i)
    block_layers = {n: ly for n, ly in layers.items() if n.startswith(prefix)}
    tensors = {k: np.asarray(view.weights[k], np.float32) for k in names
               if k[: -len(".weight")] not in block_layers}
    sink(i, block_layers, tensors)
    for k in names:
        overrides.pop(k, None)
    for n in block_layers:
        del layers[n]
    drop = getattr(model.weights, "drop_cache", None)
    if drop is not None:
        drop(names)


# ---------------------------------------------------------------------------------------------
# Sizes: what a recipe really stores


def layer_bits(setting: LayerSetting, d_out: int, d_in: int) -> int:
    """Bits stored for one linear ``[d_out, d_in]`` in the GPTQ checkpoint format
    (:mod:`refquant.formats.gptq`): ``qweight`` (``ceil(d_in b / 32)`` int32 words per output),
    ``qzeros`` (``ceil(d_out b / 32)`` words per group), float16 ``scales`` (one per group and
    output) and int32 ``g_idx`` (one per input); a float layer is stored as float16.

    Examples
    --------
    >>> round(layer_bits(LayerSetting("gptq", 4, 128), 576, 576) / (576 * 576), 4)  # 4 + 5*(16+4)/576 + 32/576
    4.2292
    """
    if setting.method == "float":
        return 16 * d_out * d_in
    b = setting.bits
    G = 1 if setting.group_size is None else -(-d_in // setting.group_size)
    qweight = 32 * -(-d_in * b // 32) * d_out
    qzeros = 32 * -(-d_out * b // 32) * G
    return qweight + qzeros + 16 * G * d_out + 32 * d_in


@dataclass(frozen=True)
class RecipeSize:
    """Storage of a recipe: ``linear_bits`` over ``linear_weights`` block linears, and the whole
    model (other tensors -- embeddings, norms, head -- counted as float16)."""

    linear_weights: int
    linear_bits: int
    other_weights: int
    total_bytes: float

    @property
    def bits_per_weight(self) -> float:
        """Average stored bits per block-linear weight."""
        return self.linear_bits / self.linear_weights

    @property
    def total_mb(self) -> float:
        return self.total_bytes / 1e6


def recipe_size(model, settings: Mapping[str, LayerSetting]) -> RecipeSize:
    """Size of ``model`` stored with ``settings`` (layer name -> setting; layers not named are
    float16). Computed from the layer shapes, see :func:`layer_bits`."""
    n_lin = bits = other = 0
    for name in model.weights:
        shape = np.shape(model.weights[name])
        n = int(np.prod(shape))
        base = name[:-len(".weight")] if name.endswith(".weight") else name
        if any(base.endswith("." + lin) for lin in LINEARS):
            n_lin += n
            bits += layer_bits(settings.get(base, FLOAT), *shape)
        else:
            other += n
    return RecipeSize(n_lin, bits, other, (bits + 16 * other) / 8)


__all__ = ["LayerSetting", "FLOAT", "METHODS", "LINEARS", "linear_names", "resolve_recipe",
           "quantize_model", "QuantizeResult", "QuantizedLayer", "with_weights", "layer_bits",
           "recipe_size", "RecipeSize"]
