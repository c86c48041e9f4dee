"""Recipes: how each linear layer is quantized, what that stores, and mixed precision.

A recipe maps every block linear (``layers.{i}.mlp.down_proj`` ...) to a :class:`LayerSetting`
(method, bits, group size, GPTQ options) through :mod:`fnmatch` patterns, first match wins
(:func:`resolve_recipe`). :func:`layer_bits` counts what the GPTQ checkpoint format stores for one
linear, :func:`recipe_size` for the whole model.

Mixed precision: the sensitivity of layer ``l`` (in block ``i``) is measured on the calibration
tokens with the float model: the block's output error when *only* that layer is
round-to-nearest quantized with the low setting, relative to what the block adds to its input,

.. math::

    \\sigma_l = \\frac{\\lVert B_i(X_i; \\hat W_l) - B_i(X_i) \\rVert_F^2}
                     {\\lVert B_i(X_i) - X_i \\rVert_F^2},

where ``B_i`` is the block and ``X_i`` its (float) input. Normalizing by the block's own
contribution to the residual stream makes blocks comparable. RTN is used as a cheap proxy for
the error of any method (GPTQ and AWQ reduce it for every layer, roughly in proportion).

:func:`auto_recipe` starts from the low setting everywhere and upgrades layers to the high setting
in order of ``sigma_l`` per extra stored bit (the greedy solution of the knapsack) while the
average stays within the bits-per-weight budget.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from refquant.calibration.fake import fake_quantize
from refquant.models.llama import LINEAR_NAMES
from refquant.pipeline.blocks import block_batched, embed_batched, with_weights
from refquant.pipeline.weight_formats import WEIGHT_FORMATS, element_spec, layer_size_bits
from refquant.schemes.spec import QuantSpec

METHODS = ("rtn", "gptq", "awq", "float")
#: the ``fmt`` of a :class:`LayerSetting`, by method
FLOAT_FORMATS_RTN = tuple(n for n in WEIGHT_FORMATS if not n.startswith("int"))
FLOAT_FORMATS_GPTQ = ("mxfp6", "mxfp4", "nvfp4")


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
        GPTQ only (see :func:`refquant.algorithms.gptq.gptq`).
    fmt : str or None
        A float or microscaled weight format of
        :data:`refquant.pipeline.weight_formats.WEIGHT_FORMATS` (``"fp8"``, ``"fp8_b128"``,
        ``"mxfp6"``, ``"mxfp4"``, ``"nvfp4"``, ``"fp8_w8a8"``) instead of the integer grid; then
        ``bits``, ``group_size`` and ``symmetric`` play no part. RTN for every one; GPTQ
        (static block scales, :mod:`refquant.algorithms.gptq_mx`) for ``"mxfp6"``,
        ``"mxfp4"`` and ``"nvfp4"``.
    """

    method: str = "gptq"
    bits: int = 4
    group_size: int | None = 128
    symmetric: bool = False
    act_order: bool = False
    static_groups: bool = False
    fmt: str | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.fmt is not None:
            allowed = FLOAT_FORMATS_GPTQ if self.method == "gptq" else FLOAT_FORMATS_RTN
            if self.method not in ("rtn", "gptq") or self.fmt not in allowed:
                raise ValueError(f"fmt={self.fmt!r} with method {self.method!r}: RTN takes "
                                 f"{FLOAT_FORMATS_RTN}, GPTQ {FLOAT_FORMATS_GPTQ}")
        if self.method != "float":
            self.spec()                                                 # validates bits, group_size

    def spec(self) -> QuantSpec | None:
        """The :class:`QuantSpec` of this setting (``None`` for ``"float"``; for a ``fmt``, the
        :class:`refquant.FloatSpec` of :func:`refquant.pipeline.weight_formats.element_spec`)."""
        if self.method == "float":
            return None
        if self.fmt is not None:
            return element_spec(self.fmt)
        if self.group_size is None:
            return QuantSpec(bits=self.bits, symmetric=self.symmetric, granularity="channel", axis=0)
        return QuantSpec(bits=self.bits, symmetric=self.symmetric, granularity="group",
                         group_size=self.group_size)

    def label(self) -> str:
        if self.method == "float":
            return "float"
        if self.fmt is not None:
            return f"{self.method} {WEIGHT_FORMATS[self.fmt].label}" + \
                ("+act" if self.act_order else "")
        g = "ch" if self.group_size is None else f"g{self.group_size}"
        extra = ("+act" if self.act_order else "") + ("+static" if self.static_groups else "")
        return f"{self.method} W{self.bits} {g}{extra}"


FLOAT = LayerSetting(method="float")


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
    if setting.fmt is not None:                   # as the format stores it (refquant.size_report)
        return layer_size_bits(setting.fmt, (d_out, d_in))
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
        if any(base.endswith("." + lin) for lin in LINEAR_NAMES):
            n_lin += n
            bits += layer_bits(settings.get(base, FLOAT), *shape)
        else:
            other += n
    return RecipeSize(n_lin, bits, other, (bits + 16 * other) / 8)


# ---------------------------------------------------------------------------------------------
# Mixed precision


def layer_sensitivity(model, calib_tokens, low: LayerSetting, *, n_blocks: int | None = None,
                      batch_size: int = 8, progress: bool = False) -> dict[str, float]:
    """``sigma_l`` (module docstring) for every linear of the first ``n_blocks`` blocks.

    Parameters
    ----------
    model : LlamaModel
        Not modified.
    calib_tokens : array_like [B, T] int
    low : LayerSetting
        The setting whose round-to-nearest error is measured (not ``"float"``).
    n_blocks : int, optional
        Default: every block.
    batch_size : int
        Sequences per forward chunk.
    progress : bool
        Show a tqdm bar over the blocks.

    Returns
    -------
    dict
        ``{"layers.{i}.self_attn.q_proj": sigma, ...}``.
    """
    spec = low.spec()
    if spec is None:
        raise ValueError("the low setting must quantize (not 'float')")
    tokens = np.asarray(calib_tokens)
    if tokens.ndim != 2 or tokens.dtype.kind not in "iu":
        raise ValueError(f"calib_tokens must be a 2-D integer array, got shape {tokens.shape}")
    n_blocks = model.config.n_layers if n_blocks is None else int(n_blocks)
    X = embed_batched(model, tokens, batch_size)                        # [B, T, d]
    out = {}
    blocks = range(n_blocks)
    if progress:
        from tqdm.auto import tqdm
        blocks = tqdm(blocks, desc="sensitivity", unit="block")
    for i in blocks:
        Y = block_batched(model, i, X, batch_size)                      # [B, T, d]
        denom = float(np.sum((Y.astype(np.float64) - X) ** 2))
        for lin in LINEAR_NAMES:
            n = f"layers.{i}.{lin}.weight"
            Wq = fake_quantize(np.asarray(model.weights[n], np.float32), spec)
            Yl = block_batched(with_weights(model, {n: Wq}), i, X, batch_size)
            out[n[:-len(".weight")]] = float(np.sum((Yl.astype(np.float64) - Y) ** 2)) / max(denom, 1e-30)
        X = Y
    return out


def auto_recipe(model, sensitivity: Mapping[str, float], low: LayerSetting, high: LayerSetting,
                budget_bpw: float) -> list:
    """A recipe (list of ``(name, setting)`` ending with ``("*", low)``) whose block linears
    average at most ``budget_bpw`` stored bits per weight (:func:`layer_bits`), upgrading the
    layers with the largest sensitivity per extra bit to ``high``.

    Raises ``ValueError`` if even the all-``low`` recipe exceeds the budget.
    """
    shapes = {n: np.shape(model.weights[n + ".weight"]) for n in sensitivity}
    n_weights = sum(int(np.prod(s)) for s in shapes.values())
    base = sum(layer_bits(low, *s) for s in shapes.values())
    budget = budget_bpw * n_weights
    if base > budget:
        raise ValueError(f"budget {budget_bpw} bits/weight is below the low setting's "
                         f"{base / n_weights:.4f} bits/weight")
    extra = {n: layer_bits(high, *s) - layer_bits(low, *s) for n, s in shapes.items()}
    order = sorted(sensitivity, key=lambda n: -sensitivity[n] / max(extra[n], 1))
    used, upgraded = base, []
    for n in order:
        if extra[n] > 0 and used + extra[n] <= budget:
            upgraded.append(n)
            used += extra[n]
    return [(n, high) for n in sorted(upgraded)] + [("*", low)]


__all__ = ["LayerSetting", "FLOAT", "METHODS", "resolve_recipe", "layer_bits", "RecipeSize",
           "recipe_size", "layer_sensitivity", "auto_recipe"]
