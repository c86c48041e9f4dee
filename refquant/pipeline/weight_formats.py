"""Whole-model round-to-nearest in the floating-point and microscaled formats, and FP8 W8A8.

Every block linear (q, k, v, o, gate, up, down) of a Llama is replaced by its round-to-nearest
value in one named weight format (:data:`WEIGHT_FORMATS`); embeddings, norms and the head stay
float. ``"fp8_w8a8"`` also quantizes the *input* of every block linear, dynamically per token,
through the forward pass's pluggable linear (:func:`fp8_linear`): the numbers an FP8 tensor-core
GEMM sees (its float32 accumulation is simulated by the float32 matmul).

The formats
-----------

=============  ====================================================================  ==============
name           weights (RTN; the scale maps each group's amax onto the grid's max)   scales
=============  ====================================================================  ==============
``int8``       INT8 asymmetric, one scale per output channel (the demo's ``w8``)     fp16, 8b zero
``int4g128``   INT4 asymmetric, groups of 128 inputs (the demo's ``w4g128``)         fp16, 4b zero
``fp8``        FP8 E4M3 (:class:`refquant.FloatSpec`), one scale per output channel  float32
``fp8_b128``   FP8 E4M3, 128 x 128 blocks (DeepSeek-V3; edge blocks shorter)         float32
``mxfp6``      MXFP6 E2M3, blocks of 32 inputs, E8M0 scale (OCP MX)                  8 bits / 32
``mxfp4``      MXFP4 E2M1, blocks of 32 inputs, E8M0 scale                           8 bits / 32
``nvfp4``      NVFP4: E2M1, blocks of 16 inputs, E4M3 scale, float32 tensor scale    8 / 16 + 32
``fp8_w8a8``   ``fp8`` weights and E4M3 activations, one scale per token (dynamic)   float32
=============  ====================================================================  ==============

The 128 x 128 blocks follow DeepSeek-V3 [1]_, the MX formats the OCP specification [2]_.
Bits per weight are :func:`refquant.size_report`'s for each linear (codes, scales and zero
points as stored), summed over the block linears (:func:`format_bits_per_weight`).

References
----------
.. [1] DeepSeek-AI, "DeepSeek-V3 Technical Report", arXiv:2412.19437, 2024 (section 3.3).
.. [2] Open Compute Project, "OCP Microscaling Formats (MX) Specification", Version 1.0, 2023.
.. [3] P. Micikevicius et al., "FP8 Formats for Deep Learning", arXiv:2209.05433, 2022.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refquant.calibration.fake import fake_quantize
from refquant.calibration.observers import calibrate
from refquant.models.llama import LINEAR_NAMES
from refquant.pipeline.blocks import linear_names, with_weights
from refquant.schemes.float_quant import FloatSpec
from refquant.schemes.floats import from_float_bits
from refquant.schemes.mx import (MX_FORMATS, NVFP4_BLOCK, mx_dequantize, mx_quantize,
                                 nvfp4_dequantize, nvfp4_quantize)
from refquant.schemes.sizes import size_report
from refquant.schemes.spec import QParams, QuantSpec
from refquant.schemes.uniform import dequantize, quantize

_MX_BLOCK = 32                                               # mx_quantize's default, OCP's block


@dataclass(frozen=True)
class WeightFormat:
    """One row of the module's format table.

    Attributes
    ----------
    name, label : str
        Key of :data:`WEIGHT_FORMATS` and a description for tables.
    spec : QuantSpec, FloatSpec or str
        The weights' spec, or an MX format name (``"mxfp4"`` ...) or ``"nvfp4"``.
    act_spec : FloatSpec or None
        The dynamic activation spec of a W8A8 format (else None: weight-only).
    scale_bits, zero_bits : int or None
        Stored bits per scale / zero point for :func:`refquant.size_report` (None for the MX
        and NVFP4 formats, which fix their own).
    """

    name: str
    label: str
    spec: object
    act_spec: FloatSpec | None = None
    scale_bits: int | None = None
    zero_bits: int | None = None


_FP8_CH = FloatSpec("e4m3fn", granularity="channel", axis=0)
_FP8_TOKEN = FloatSpec("e4m3fn", granularity="token")

#: The weight formats of the module docstring's table, by name.
WEIGHT_FORMATS = {f.name: f for f in (
    WeightFormat("int8", "INT8 per-channel",
                 QuantSpec(bits=8, symmetric=False, granularity="channel", axis=0),
                 scale_bits=16, zero_bits=8),
    WeightFormat("int4g128", "INT4 g128", QuantSpec(bits=4, symmetric=False, granularity="group",
                                                      group_size=128),
                 scale_bits=16, zero_bits=4),
    WeightFormat("fp8", "FP8 E4M3 per-channel", _FP8_CH, scale_bits=32),
    WeightFormat("fp8_b128", "FP8 E4M3 128x128 blocks",
                 FloatSpec("e4m3fn", granularity="block", block_shape=(128, 128)), scale_bits=32),
    WeightFormat("mxfp6", "MXFP6 E2M3", "mxfp6_e2m3"),
    WeightFormat("mxfp4", "MXFP4", "mxfp4"),
    WeightFormat("nvfp4", "NVFP4", "nvfp4"),
    WeightFormat("fp8_w8a8", "W8A8 FP8 E4M3 (per-channel W, per-token A)", _FP8_CH,
                 act_spec=_FP8_TOKEN, scale_bits=32),
)}


def weight_format(name) -> WeightFormat:
    """The :class:`WeightFormat` named ``name``; ``ValueError`` naming it if unknown."""
    if not isinstance(name, str) or name not in WEIGHT_FORMATS:
        raise ValueError(f"unknown weight format {name!r}; expected one of {tuple(WEIGHT_FORMATS)}")
    return WEIGHT_FORMATS[name]


def element_spec(fmt):
    """The spec whose codes and ``QParams`` describe ``fmt``'s weights: the format's own
    QuantSpec / FloatSpec, or for MX and NVFP4 a :class:`refquant.FloatSpec` of their element
    format in groups of their block along the input dimension (its scales are the decoded
    block scales: the spec GPTQ with static block scales runs with,
    :mod:`refquant.algorithms.gptq_mx`)."""
    f = fmt if isinstance(fmt, WeightFormat) else weight_format(fmt)
    if f.spec == "nvfp4":
        return FloatSpec("e2m1fn", "group", axis=0, group_size=NVFP4_BLOCK)
    if isinstance(f.spec, str):
        return FloatSpec(MX_FORMATS[f.spec][0], "group", axis=0, group_size=_MX_BLOCK)
    return f.spec


def rtn_layer(W, fmt):
    """Round-to-nearest of one weight ``W [out, in]`` in ``fmt``: ``(codes, qparams, spec,
    w_hat)`` with ``spec`` = :func:`element_spec` and ``w_hat`` float32.

    QuantSpec / FloatSpec formats: min-max :func:`refquant.calibrate`, then
    :func:`refquant.quantize` / :func:`refquant.dequantize`. MX and NVFP4: the codes and scales of
    :func:`refquant.schemes.mx.mx_quantize` / :func:`~refquant.schemes.mx.nvfp4_quantize`
    (blocks along the input dimension, OCP scale rule), ``qparams`` the decoded block scales
    (``2^(E - 127)``; NVFP4 ``fl32(s_t E4M3(u))``) and ``w_hat`` their own dequantization.
    """
    f = fmt if isinstance(fmt, WeightFormat) else weight_format(fmt)
    W = np.asarray(W, np.float32)
    spec = element_spec(f)
    if f.spec == "nvfp4":
        nv = nvfp4_quantize(W, axis=-1)
        X = np.float32(nv.tensor_scale) * from_float_bits(nv.scales, "e4m3fn")
        return nv.codes, QParams(X.astype(np.float32)), spec, nvfp4_dequantize(nv)
    if isinstance(f.spec, str):
        mx = mx_quantize(W, f.spec, axis=-1)
        X = from_float_bits(mx.scales, "e8m0fnu")
        return mx.codes, QParams(X), spec, mx_dequantize(mx)
    qp = calibrate(W, spec)
    codes = quantize(W, qp, spec)
    return codes, qp, spec, dequantize(codes, qp, spec)


def rtn_weight(W, fmt) -> np.ndarray:
    """Round-to-nearest of one weight ``W [out, in]`` in the format ``fmt`` (name or
    :class:`WeightFormat`), float32, blocks and groups along the input dimension
    (:func:`rtn_layer`'s ``w_hat``).

    >>> W = np.array([[1.0, -0.3, 0.02, 6.0] * 8])                  # one row of 32
    >>> rtn_weight(W, "mxfp4")[0, :4].tolist()      # X = 1: E2M1's grid 0, 0.5, 1, 1.5, 2, 3 ...
    [1.0, -0.5, 0.0, 6.0]
    """
    return rtn_layer(W, fmt)[3]


def rtn_weights(model, fmt, *, n_blocks: int | None = None) -> dict:
    """``{weight name: float32 RTN weight}`` for every block linear of the first ``n_blocks``
    blocks (default all) of ``model``, in the format ``fmt``."""
    names = linear_names(_n_blocks(model, n_blocks))
    return {n + ".weight": rtn_weight(model.weights[n + ".weight"], fmt) for n in names}


def _n_blocks(model, n_blocks) -> int:
    L = model.config.n_layers
    if n_blocks is None:
        return L
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, (int, np.integer)) \
            or not 1 <= n_blocks <= L:
        raise ValueError(f"n_blocks must be an integer in [1, {L}], got {n_blocks!r}")
    return int(n_blocks)


def layer_size_bits(fmt, shape) -> int:
    """Bits stored for one linear of ``shape`` in ``fmt`` (:func:`refquant.size_report`)."""
    f = fmt if isinstance(fmt, WeightFormat) else weight_format(fmt)
    kw = {}
    if f.scale_bits is not None:
        kw["scale_bits"] = f.scale_bits
    if f.zero_bits is not None:
        kw["zero_bits"] = f.zero_bits
    r = size_report(tuple(shape), f.spec, **kw)
    return 8 * r.total_bytes


def format_bits_per_weight(model, fmt, *, n_blocks: int | None = None) -> float:
    """Average stored bits per weight over the block linears quantized in ``fmt`` (the first
    ``n_blocks`` blocks; the others count as float16)."""
    n = _n_blocks(model, n_blocks)
    bits = count = 0
    for i in range(model.config.n_layers):
        for lin in LINEAR_NAMES:
            shape = np.shape(model.weights[f"layers.{i}.{lin}.weight"])
            count += int(np.prod(shape))
            bits += layer_size_bits(fmt, shape) if i < n else 16 * int(np.prod(shape))
    return bits / count


def fp8_linear(model, act_spec: FloatSpec = _FP8_TOKEN):
    """The pluggable linear of W8A8: ``x_hat W^T`` with ``x_hat = fake_quantize(x, act_spec)``.

    ``x`` is every block linear's input ``[B, T, K]`` (the forward pass routes only block
    linears through ``linear``), quantized dynamically (its scales from ``x`` itself, one per
    token for the default per-token E4M3 spec); ``W`` is ``model.weights[name + ".weight"]``,
    so pass the model with its FP8 weights laid over (:func:`w8a8_model`).
    """
    def linear(name: str, x: np.ndarray) -> np.ndarray:
        W = model.weights[name + ".weight"]                  # [out, in] float32
        x_hat = fake_quantize(x, act_spec)                   # [B, T, in], dynamic scales
        y = x_hat.reshape(-1, x.shape[-1]) @ W.T             # [B*T, in] -> [B*T, out]
        return y.reshape(*x.shape[:-1], W.shape[0])
    return linear


def activation_linear(model, settings):
    """The linear that evaluates ``model`` under ``settings`` (layer name -> a setting with a
    ``fmt`` attribute, as :class:`refquant.pipeline.recipes.LayerSetting`): :func:`fp8_linear`
    where a setting's format quantizes activations (W8A8), else ``None`` (the float linear).
    Mixed activation specs raise ``ValueError``; the inputs of *every* block linear are then
    quantized, also of layers the settings keep in float."""
    acts = {WEIGHT_FORMATS[f].act_spec for f in (getattr(s, "fmt", None)
                                                 for s in settings.values()) if f is not None}
    acts.discard(None)
    if not acts:
        return None
    if len(acts) > 1:
        raise ValueError(f"settings quantize activations in more than one way: "
                         f"{sorted(map(str, acts))}")
    return fp8_linear(model, acts.pop())


def w8a8_model(model, fmt="fp8_w8a8", *, n_blocks: int | None = None):
    """``(model with RTN weights in fmt, its W8A8 linear)`` for :func:`refquant.perplexity`.

    Blocks past ``n_blocks`` keep float weights but their inputs are still quantized.
    """
    f = fmt if isinstance(fmt, WeightFormat) else weight_format(fmt)
    if f.act_spec is None:
        raise ValueError(f"{f.name!r} is weight-only; W8A8 formats: "
                         f"{tuple(n for n, g in WEIGHT_FORMATS.items() if g.act_spec)}")
    view = with_weights(model, rtn_weights(model, f, n_blocks=n_blocks))
    return view, fp8_linear(view, f.act_spec)


__all__ = ["WeightFormat", "WEIGHT_FORMATS", "weight_format", "element_spec", "rtn_layer",
           "rtn_weight", "rtn_weights",
           "layer_size_bits", "format_bits_per_weight", "fp8_linear", "activation_linear",
           "w8a8_model"]
