"""AWQ on one Llama block: four scale searches, the folds, then the clipping search.

The recipe of Lin et al. [1]_ for a Llama block (as in the authors' code [2]_), built from the
matrix-level pieces of :mod:`refquant.algorithms.awq`:

===========  ======================  ========================  ========================
group        weights scaled          scale folded into         loss measured on
===========  ======================  ========================  ========================
``qkv``      q_proj, k_proj, v_proj  input_layernorm weight    block output (*)
``o``        o_proj                  v_proj rows               block output (*)
``gate_up``  gate_proj, up_proj      post_attention_layernorm  MLP output (down_proj's)
``down``     down_proj               up_proj rows              down_proj output
===========  ======================  ========================  ========================

(*) The reference implementation [2]_ measures the q/k/v loss on the attention output and the
o loss on o_proj's output (``attention_loss="module"`` here). The default here,
``attention_loss="block"``, measures both on the whole block's output (the MLP in float),
because the MLP can amplify attention errors. For the MLP groups the two coincide: with the
attention unchanged, the block's output changes exactly by the MLP's output change (the
residual stream is the same), so the cheaper MLP / down_proj output is used.

The steps, each a function below:

1. *record inputs*: the float block runs once; every linear's input ``X`` is kept;
2. *search scales*: each group's search runs on the original float block with only that
   group's weights replaced by their candidates ``Q(W diag(s)) diag(s)^{-1}``; the block's own
   forward pass (:func:`refquant.models.llama.block`, :func:`~refquant.models.llama.attention`,
   :func:`~refquant.models.llama.mlp`, through the pluggable ``linear``) computes the outputs;
3. *fold*: the four scales are folded together (the folds touch disjoint sides of each weight,
   so their order does not matter); the float block is unchanged up to float32 rounding;
4. *clip*: each linear of the folded block gets the clipping search
   :func:`refquant.algorithms.awq.awq_clip` on its (folded) calibration inputs, except q_proj
   and k_proj, whose error reaches the output through the softmax of ``q k^T`` and is not
   measured by the per-group objective (the reference skips them too); they get min-max ranges;
5. *quantize*: codes and parameters of every linear; the quantized block's output (the next
   block's input) and, for comparison, plain round-to-nearest's.

Grouped-query attention (SmolLM2: 9 query heads, 3 key/value heads): the ``o`` scale has one
entry per value channel (``n_kv_heads * head_dim``), shared by the query heads that read it
(see :func:`refquant.algorithms.awq.fold_scales`). The reference implementation skips the v -> o
scale when the shapes differ; here it is searched over the shared channels.

Symbols
-------
======  =============  ======================================================================
X_in    [B, T, d]      the block's calibration input
W_k     [out_k, in_k]  linear ``k`` of the block (``k`` a short name: ``"q_proj"`` ...)
X_k     [B, T, in_k]   its input in the float block
g1, g2  [d]            the input_layernorm and post_attention_layernorm weights
s       [C]            one group's scale (C = the group's input channels, or the shared value
                       channels for ``o``)
c       [n_heads h_d]  ``gqa_channel_map``: o_proj input ``j`` uses scale ``s[c_j]``
======  =============  ======================================================================

References
----------
.. [1] J. Lin et al., "AWQ: Activation-aware Weight Quantization for On-Device LLM Compression
       and Acceleration", MLSys 2024, arXiv:2306.00978.
.. [2] MIT HAN Lab, llm-awq, ``awq/quantize/auto_scale.py`` (``auto_scale_block``) and
       ``auto_clip.py`` (``auto_clip_block``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from refquant.algorithms.awq import (CLIP_RULES, WeightQuantizer, awq_clip, awq_search_scale,
                                     fold_scales)
from refquant.algorithms.awq._fast import _fake_quantize
from refquant.calibration.observers import calibrate
from refquant.models.llama import LlamaModel, attention, mlp
from refquant.pipeline._awq_forward import (block_after_attention, block_linear, block_out,
                                            record_inputs)
from refquant.pipeline.blocks import SHORT_NAMES, with_weights
from refquant.schemes.numerics import as_float_array
from refquant.schemes.uniform import dequantize, quantize
from refquant.schemes.spec import QuantSpec

NORMS = ("input_layernorm", "post_attention_layernorm")
# the four scale groups: the weights that share one scale, in search order
GROUPS = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",),
          "gate_up": ("gate_proj", "up_proj"), "down": ("down_proj",)}
_NOT_CLIPPED = ("q_proj", "k_proj")


@dataclass(frozen=True)
class AWQBlockResult:
    """Result of :func:`awq_block` for block ``i``.

    Attributes
    ----------
    weights : dict[str, ndarray float32]
        New values for ``model.weights`` (full names, e.g. ``"layers.3.mlp.up_proj.weight"``):
        the two folded RMSNorm weights and the seven linears, dequantized (or folded float where
        the spec is None). Assign all of them; the folded norms belong to the quantized linears.
    folded : dict[str, ndarray float32]
        The same names before quantization: the float block with the scales folded in (it
        computes the same function as the original block, up to float32 rounding).
    codes, qparams : dict[str, ...]
        Integer codes [out, in] and :class:`~refquant.schemes.spec.QParams` of every quantized linear,
        keyed by the linear name without ``.weight`` (``"layers.3.mlp.up_proj"``); the codes
        are those of the folded weight, ``weights[name + ".weight"] == dequantize(codes, qp)``.
        A :class:`~refquant.algorithms.awq.WeightQuantizer`'s linear: its stored form, None.
    column_scales : dict[str, ndarray [in] float32]
        The scale folded into the input columns of each linear (keyed like ``codes``; ones
        where its group was not searched): the folded weight is ``W diag(s)``.
    scales : dict[str, AWQScaleResult]
        The four scale searches: ``"qkv"``, ``"o"``, ``"gate_up"``, ``"down"`` (a group whose
        weights are all kept float is absent).
    clips : dict[str, AWQClipResult]
        The clipping search of each clipped linear (keyed like ``codes``).
    y : ndarray [B, T, d] float32
        The quantized block's output on ``X_in``: the next block's input.
    mse, mse_rtn : float
        Mean squared error of the block output vs the float block: this result, and plain
        round-to-nearest (min-max) of the original weights with the same specs.
    """

    weights: dict
    folded: dict
    codes: dict
    qparams: dict
    column_scales: dict
    scales: dict
    clips: dict
    y: np.ndarray
    mse: float
    mse_rtn: float


def gqa_channel_map(n_heads: int, n_kv_heads: int, head_dim: int) -> np.ndarray:
    """``c[h * head_dim + d] = (h // (n_heads / n_kv_heads)) * head_dim + d``: the value
    channel that input ``(h, d)`` of o_proj reads (query head ``h`` uses key/value head
    ``h // n_rep``, the Hugging Face ``repeat_kv`` convention)."""
    n_rep = n_heads // n_kv_heads
    h = np.arange(n_heads)[:, None]                                          # [n_heads, 1]
    d = np.arange(head_dim)[None, :]                                         # [1, head_dim]
    return ((h // n_rep) * head_dim + d).reshape(-1)                         # [n_heads*head_dim]


def awq_block(model, i: int, X_in, spec, *, n_grid: int = 20, clip="shrink",
              clip_grid: int = 20, max_shrink: float = 0.5, clip_tokens: int | None = None,
              fold_vo: bool = True, attention_loss: str = "block") -> AWQBlockResult:
    """AWQ for block ``i`` of a Llama model: scale search, folding, clipping, quantization.

    Parameters
    ----------
    model : LlamaModel
        Read only; the result holds the new weights (see :class:`AWQBlockResult`).
    i : int
        Block index.
    X_in : array_like [B, T, d] float
        The block's calibration input (in a sequential pipeline: the previous quantized block's
        output on the calibration tokens).
    spec : QuantSpec, WeightQuantizer, or mapping
        One spec for all seven linears, or ``{"q_proj": spec_or_None, ..., "down_proj": ...}``
        (all seven keys; ``None`` keeps that linear in float, its scale group still folds). A
        :class:`~refquant.algorithms.awq.WeightQuantizer` (e.g. a GGML block format's own
        quantizer) is the ``Q`` of both searches and of the final quantization; after the fold
        it is told the scale its weight's columns carry (:meth:`~refquant.algorithms.awq.quantizer.WeightQuantizer.folded`), so a
        quantizer weighting columns by an importance matrix uses ``w_j / s_j^2``.
    n_grid : int
        Grid points of ``alpha`` in [0, 1) (default 20).
    clip : {"shrink", "reference", None}
        The clipping search's range rule, :func:`refquant.algorithms.awq.awq_clip`'s ``rule``:
        ``"shrink"`` (default: both ends of ``[min, max]`` shrink, which gives the lower output
        error), ``"reference"`` (the authors' clamp at ``+-beta max|w|``), or None: no clipping
        search, min-max ranges. ``True`` and ``False`` mean ``"shrink"`` and None. q_proj and
        k_proj are never clipped.
    clip_grid, max_shrink, clip_tokens
        ``n_grid``, ``max_shrink`` and ``max_tokens`` of :func:`refquant.algorithms.awq.awq_clip`.
    fold_vo : bool
        Search and fold the v -> o scale (default True).
    attention_loss : {"block", "module"}
        Where the q/k/v and o losses are measured: the block output (default) or the attention
        / o_proj output as in the reference implementation (see the module docstring).

    Notes
    -----
    Cost: ``n_grid`` block forwards for the q/k/v search and ``n_grid`` (o_proj + MLP) forwards
    for the o search, which starts from the recorded o_proj input (with
    ``attention_loss="module"``: ``n_grid`` attention forwards and ``n_grid`` o_proj products),
    ``n_grid`` MLP forwards and ``n_grid`` down_proj products, ``7 n_grid`` fake quantizations
    (one-pass kernels, :mod:`refquant.algorithms.awq._fast`), 4 block forwards (the reference
    outputs of the searches are those recorded in the first), and the clipping search
    (``max_shrink * clip_grid`` quantizations of 5 linears, each error ``out * in * group_size``
    multiply-adds from the group second moments). The forwards scale with the number of tokens,
    the quantizations do not; at 512 tokens the matrix products are ~60% of the time.
    Memory: the block's weights and the inputs and outputs of its seven linears on ``X_in``.

    Returns
    -------
    AWQBlockResult
    """
    if not isinstance(model, LlamaModel):
        raise ValueError(f"model must be a LlamaModel, got {type(model).__name__}")
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0:
        raise ValueError(f"block index i must be a non-negative integer, got {i!r}")
    i = int(i)
    X_in = as_float_array(X_in, "X_in").astype(np.float32)
    if X_in.ndim != 3:
        raise ValueError(f"X_in must have shape [B, T, d], got {X_in.shape}")
    specs = _specs(spec)
    rule = _clip_rule(clip)
    if attention_loss not in ("block", "module"):
        raise ValueError(f"attention_loss must be 'block' or 'module', got {attention_loss!r}")
    W, norms = _block_weights(model, i)
    Y, X, Z = record_inputs(model, i, X_in, W)
    c_vo = _vo_channel_map(model.config, W) if fold_vo else None
    scales = _search_scales(model, i, X_in, W, (Y, X, Z), specs, n_grid, attention_loss, c_vo)
    Wf, norms_f = _fold(W, norms, scales, c_vo)
    col = _column_scales(W, scales, c_vo)
    _, Xf, _ = record_inputs(with_weights(model, norms_f), i, X_in, Wf)
    folded_specs = {k: sp.folded(col[k]) if isinstance(sp, WeightQuantizer) else sp
                    for k, sp in specs.items()}
    W_hat, codes, qparams, clips = _clip_and_quantize(
        Wf, Xf, folded_specs, rule,
        dict(n_grid=clip_grid, max_shrink=max_shrink, max_tokens=clip_tokens))
    names = {k: f"layers.{i}.{path}" for k, path in SHORT_NAMES.items()}
    y = block_out(with_weights(model, norms_f), i, X_in, W_hat)
    W_rtn = {k: W[k] if sp is None else sp(W[k]) if isinstance(sp, WeightQuantizer)
             else _fake_quantize(W[k], sp) for k, sp in specs.items()}      # = _rtn(W, sp)[2]
    y_rtn = block_out(model, i, X_in, W_rtn)
    return AWQBlockResult(
        weights={**norms_f, **{names[k] + ".weight": W_hat[k] for k in SHORT_NAMES}},
        folded={**norms_f, **{names[k] + ".weight": Wf[k] for k in SHORT_NAMES}},
        codes={names[k]: q for k, q in codes.items()},
        qparams={names[k]: qp for k, qp in qparams.items()},
        column_scales={names[k]: s for k, s in col.items()}, scales=scales,
        clips={names[k]: c for k, c in clips.items()}, y=np.asarray(y, np.float32),
        mse=_mse(y, Y), mse_rtn=_mse(y_rtn, Y))


def awq(model, i, X_in, spec, **kw):
    """AWQ on block ``i`` of a Llama model (``rq.awq``): the same as :func:`awq_block`."""
    return awq_block(model, i, X_in, spec, **kw)


# ---------------------------------------------------------------------------------------------
# arguments and the block's weights


def _specs(spec) -> dict:
    """One QuantSpec, WeightQuantizer or None per short linear name."""
    if isinstance(spec, (QuantSpec, WeightQuantizer)):
        return {k: spec for k in SHORT_NAMES}
    if isinstance(spec, Mapping):
        if set(spec) != set(SHORT_NAMES):
            raise ValueError(f"a spec mapping needs exactly the keys {sorted(SHORT_NAMES)}, "
                             f"got {sorted(spec)}")
        for k, sp in spec.items():
            if sp is not None and not isinstance(sp, (QuantSpec, WeightQuantizer)):
                raise ValueError(f"spec[{k!r}] must be a QuantSpec, a WeightQuantizer or None, "
                                 f"got {sp!r}")
        if all(sp is None for sp in spec.values()):
            raise ValueError("spec is None for every linear: nothing to quantize")
        return {k: spec[k] for k in SHORT_NAMES}
    raise ValueError(f"spec must be a QuantSpec, a WeightQuantizer or a mapping of linear "
                     f"names, got {spec!r}")


def _clip_rule(clip) -> str | None:
    """``clip`` as a rule of :func:`refquant.algorithms.awq.awq_clip`, or None (no search)."""
    if clip is True:
        return "shrink"
    if clip is None or clip is False:
        return None
    if clip not in CLIP_RULES:
        raise ValueError(f"clip must be one of {CLIP_RULES}, None, True or False, got {clip!r}")
    return clip


def _block_weights(model, i: int) -> tuple[dict, dict]:
    """``({short name: W float32 [out, in]}, {norm weight name: g float32 [d]})`` of block ``i``."""
    pre = f"layers.{i}."
    try:
        W = {k: np.asarray(model.weights[pre + path + ".weight"], np.float32)
             for k, path in SHORT_NAMES.items()}
        norms = {pre + n + ".weight": np.asarray(model.weights[pre + n + ".weight"], np.float32)
                 for n in NORMS}
    except KeyError as e:
        raise ValueError(f"model has no weight {e.args[0]!r} (block index i={i})") from None
    return W, norms


def _vo_channel_map(config, W: dict) -> np.ndarray:
    """The o_proj -> v_proj channel map of the config's heads, checked against the weights."""
    c = gqa_channel_map(config.n_heads, config.n_kv_heads, config.head_dim)
    if c.shape[0] != W["o_proj"].shape[1] or c.max() + 1 != W["v_proj"].shape[0]:
        raise ValueError(f"config heads give {c.shape[0]} o_proj inputs and {c.max() + 1} "
                         f"v_proj rows, the weights have {W['o_proj'].shape[1]} and "
                         f"{W['v_proj'].shape[0]}")
    return c


# ---------------------------------------------------------------------------------------------
# step 2: the four scale searches


def _search_scales(model, i, X_in, W, recorded, specs, n_grid, attention_loss, c_vo) -> dict:
    """``{group: AWQScaleResult}`` for the groups of :data:`GROUPS` with a quantized weight,
    each measured with only that group's weights replaced (see the module docstring).

    ``recorded = (Y, X, Z)`` from :func:`record_inputs` on the float block: the reference
    outputs are taken from it (the block output ``Y``, o_proj's and down_proj's outputs in
    ``Z``, which are the attention's and the MLP's), not recomputed; the o search starts from
    the recorded o_proj input, since only ``W_o`` changes (:func:`block_after_attention`).
    """
    Y, X, Z = recorded

    def block_loss(ws):                            # the block's output, q/k/v candidates
        return block_out(model, i, X_in, {**W, **dict(zip(GROUPS["qkv"], ws))})

    def o_block_loss(ws):                          # the block's output, an o_proj candidate
        return block_after_attention(model, i, X_in, X["o_proj"], {**W, "o_proj": ws[0]})

    def attention_loss_fn(ws):                     # the attention output (the reference's)
        cand = {**W, **dict(zip(GROUPS["qkv"], ws))}
        return attention(model, i, X["q_proj"], linear=block_linear(i, cand))

    def mlp_loss(ws):                              # the MLP output = the block's output change
        cand = {**W, **dict(zip(GROUPS["gate_up"], ws))}
        return mlp(model, i, X["gate_proj"], linear=block_linear(i, cand))

    module = attention_loss == "module"
    flat = {k: Z[k].reshape(-1, Z[k].shape[-1]) for k in ("o_proj", "down_proj")}   # [N, out]
    forward = {"qkv": (attention_loss_fn, Z["o_proj"]) if module else (block_loss, Y),
               "o": (None, flat["o_proj"]) if module else (o_block_loss, Y),  # None: o_proj's
               "gate_up": (mlp_loss, Z["down_proj"]),                        # own output
               "down": (None, flat["down_proj"])}                            # down_proj's output
    scales = {}
    for group, ks in GROUPS.items():
        if (group == "o" and c_vo is None) or all(specs[k] is None for k in ks):
            continue
        fn, ref = forward[group]
        x_g = X[ks[0]].reshape(-1, X[ks[0]].shape[-1])                       # [N, in]
        scales[group] = awq_search_scale([W[k] for k in ks], x_g, [specs[k] for k in ks],
                                         fn, n_grid, Y=ref,
                                         channel_map=c_vo if group == "o" else None)
    return scales


# ---------------------------------------------------------------------------------------------
# step 3: folding


def _fold(W: dict, norms: dict, scales: dict, c_vo) -> tuple[dict, dict]:
    """Fold every searched scale: ``(W_f, norms_f)``; the float block computes the same function.

    ``qkv`` into g1, ``o`` into v_proj's rows (through ``c_vo``), ``gate_up`` into g2, ``down``
    into up_proj's rows.
    """
    Wf = dict(W)
    (n1, g1), (n2, g2) = norms.items()
    if "qkv" in scales:
        f = fold_scales(scales["qkv"].s, g1, [Wf[k] for k in GROUPS["qkv"]])
        g1, (Wf["q_proj"], Wf["k_proj"], Wf["v_proj"]) = f.prev, f.weights
    if "o" in scales:
        f = fold_scales(scales["o"].s, Wf["v_proj"], [Wf["o_proj"]], channel_map=c_vo)
        Wf["v_proj"], (Wf["o_proj"],) = f.prev, f.weights
    if "gate_up" in scales:
        f = fold_scales(scales["gate_up"].s, g2, [Wf["gate_proj"], Wf["up_proj"]])
        g2, (Wf["gate_proj"], Wf["up_proj"]) = f.prev, f.weights
    if "down" in scales:
        f = fold_scales(scales["down"].s, Wf["up_proj"], [Wf["down_proj"]])
        Wf["up_proj"], (Wf["down_proj"],) = f.prev, f.weights
    return Wf, {n1: g1, n2: g2}


def _column_scales(W: dict, scales: dict, c_vo) -> dict:
    """``{short name: s_in [in] float32}``: the scale :func:`_fold` multiplies each linear's
    input columns by (ones where its group has none; the row folds leave columns alone)."""
    col = {k: np.ones(W[k].shape[1], np.float32) for k in SHORT_NAMES}
    for group, ks in GROUPS.items():
        if group in scales:
            s = np.asarray(scales[group].s, np.float32)
            for k in ks:
                col[k] = s[c_vo] if group == "o" else s
    return col


# ---------------------------------------------------------------------------------------------
# steps 4 and 5: clipping and quantization


def _rtn(W: np.ndarray, spec: QuantSpec):
    """Min-max round-to-nearest: ``(codes, qparams, W_hat)``."""
    qp = calibrate(W, spec, method="minmax")
    q = quantize(W, qp, spec)
    return q, qp, dequantize(q, qp, spec)


def _clip_and_quantize(Wf: dict, Xf: dict, specs: dict, rule: str | None, clip_kw: dict):
    """Each linear of the folded block with a spec: the clipping search (``rule``; not for
    q_proj and k_proj) or min-max (a WeightQuantizer: its own quantizer). Returns ``(W_hat,
    codes, qparams, clips)`` by short name; ``W_hat`` keeps the float linears as folded."""
    W_hat, codes, qparams, clips = dict(Wf), {}, {}, {}
    for k, sp in specs.items():
        if sp is None:
            continue
        if rule is not None and k not in _NOT_CLIPPED:
            c = awq_clip(Wf[k], Xf[k].reshape(-1, Wf[k].shape[1]), sp, rule=rule, **clip_kw)
            clips[k], codes[k], qparams[k] = c, c.codes, c.qparams
            W_hat[k] = c.w_hat                                  # dequantize(codes, qparams)
        elif isinstance(sp, WeightQuantizer):
            (codes[k], W_hat[k]), qparams[k] = sp.encode(Wf[k]), None
        else:
            codes[k], qparams[k], W_hat[k] = _rtn(Wf[k], sp)
    return W_hat, codes, qparams, clips


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b) ** 2))


__all__ = ["awq", "awq_block", "AWQBlockResult", "gqa_channel_map", "GROUPS"]
