"""One quantized linear layer of a GPTQ checkpoint and the four tensors that store it.

The layout of each tensor and the two zero-point conventions are documented in
:mod:`refquant.formats.gptq`; this module holds the conversions, all pure functions:
:func:`layer_from_quantized` (refquant codes and parameters -> :class:`PackedLayer`),
:func:`pack_layer` / :func:`unpack_layer` (:class:`PackedLayer` <-> ``qweight, qzeros, scales,
g_idx``), :func:`dequantize_layer`, and :func:`split_tensors`, which sorts the tensors of a file
into layers and float tensors and checks that each has a dtype fit for its role.

Dequantization (:func:`dequantize_layer`, in float32):

.. math:: \\hat W_{n,k} = \\mathrm{fp32}(s_{g(k),\\,n}) \\, (q_{n,k} - z_{g(k),\\,n}),
          \\qquad g(k) = \\texttt{g\\_idx}[k]

A layer is *symmetric* as stored (:func:`is_symmetric`, the ``sym`` of ``quantize_config.json``)
when every zero point is :math:`z = 2^{b-1}`: a symmetric refquant spec (signed codes, zero 0)
is stored as codes :math:`+ 2^{b-1}` with that zero point.

Symbols
-------
=============  =====================================================
``N, K``       outputs and inputs of the layer (weight ``[N, K]``)
``b``          bits per code
``G``          groups along ``K`` (``g_idx[k]`` is the group of input ``k``)
``q, s, z``    codes ``[N, K]``, scales ``[G, N]``, zero points ``[G, N]``
=============  =====================================================
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refquant.models.errors import CheckpointError
from refquant.schemes.numerics import check_positive_int
from refquant.schemes.packing import PACK_BITS, pack, unpack
from refquant.schemes.spec import QParams, QuantSpec, n_groups
from refquant.schemes.spec import g_idx as group_index

CHECKPOINT_FORMATS = ("gptq", "gptq_v2")
QUANT_KEYS = ("qweight", "qzeros", "scales", "g_idx")
FLOAT_DTYPES = (np.float16, np.float32, np.float64)


class GPTQCheckpointError(CheckpointError):
    """A GPTQ checkpoint is incomplete, inconsistent, malformed, or does not round-trip."""


@dataclass(frozen=True)
class PackedLayer:
    """One quantized linear layer in unpacked form: what a checkpoint stores, as arrays.

    Attributes
    ----------
    codes : uint8 [N, K]      unsigned codes in ``[0, 2^bits - 1]``
    scales : float16 [G, N]
    zeros : int32 [G, N]      zero points (the value itself, whatever the file convention)
    g_idx : int32 [K]
    bits : int
    group_size : int          -1 for one group per output channel
    """

    codes: np.ndarray
    scales: np.ndarray
    zeros: np.ndarray
    g_idx: np.ndarray
    bits: int
    group_size: int

    def dequantize(self) -> np.ndarray:
        """``W_hat [N, K]`` float32 (:func:`dequantize_layer`)."""
        return dequantize_layer(self)


def is_symmetric(layer: PackedLayer) -> bool:
    """True if every zero point is ``2^(b-1)``: the stored layer is symmetric."""
    return bool(np.all(layer.zeros == 2 ** (layer.bits - 1)))


def dequantize_layer(layer: PackedLayer) -> np.ndarray:
    """``W_hat[n, k] = float32(scales[g_idx[k], n]) * (codes[n, k] - zeros[g_idx[k], n])``.

    In place on one ``[N, K]`` float32 array (the difference of two integers below 2^24 is exact
    in float32, so the result is the same product), with one ``[N, K]`` temporary at a time."""
    W = layer.codes.astype(np.float32)                                  # [N, K]
    W -= layer.zeros.T.astype(np.float32)[:, layer.g_idx]               # q - z, exact
    W *= layer.scales.T.astype(np.float32)[:, layer.g_idx]              # s (q - z)
    return W


def layer_from_quantized(codes, qparams: QParams, spec: QuantSpec, g_idx=None) -> PackedLayer:
    """Convert refquant codes and parameters (weight ``[N, K]``) to the stored form.

    ``g_idx`` is the group of every input column (default ``k // group_size``; pass the
    ``g_idx`` of a :class:`refquant.algorithms.gptq.GPTQResult` for act-order results). Scales
    are rounded to float16 (round to nearest even): the stored model dequantizes with those, not
    the float32 scales.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be 2-D [out, in], got shape {codes.shape}")
    if spec.bits not in PACK_BITS:
        raise ValueError(f"the GPTQ format stores bits in {PACK_BITS}, got {spec.bits}")
    N, K = codes.shape
    if spec.granularity == "group":
        G, group_size = n_groups(K, spec.group_size), spec.group_size
        scale, zero = qparams.scale, qparams.zero_point                  # [N, G]
        if g_idx is None:
            g_idx = group_index(K, spec.group_size)
    elif spec.granularity == "channel" and spec.axis in (0, -2):
        G, group_size = 1, -1
        scale, zero = qparams.scale[:, None], qparams.zero_point[:, None]
        g_idx = np.zeros(K, np.int32)
    else:
        raise ValueError("the GPTQ format stores per-output-channel or per-group parameters, got "
                         f"granularity={spec.granularity!r} axis={spec.axis}")
    g_idx = np.asarray(g_idx).astype(np.int32)
    if scale.shape != (N, G) or g_idx.shape != (K,) or g_idx.min() < 0 or g_idx.max() >= G:
        raise ValueError(f"parameters {scale.shape} / g_idx {g_idx.shape} do not fit codes {codes.shape}")
    offset = 2 ** (spec.bits - 1) if spec.symmetric else 0
    ucodes = (codes.astype(np.int32) + offset).astype(np.uint8)
    zeros = (zero.astype(np.int32) + offset).T.copy()                   # [G, N]
    scales16 = scale.T.astype(np.float16)                               # [G, N]
    if not np.all(np.isfinite(scales16)) or np.any(scales16 <= 0):
        raise ValueError("a scale overflows or underflows float16; cannot store it in this format")
    return PackedLayer(ucodes, scales16, zeros, g_idx, spec.bits, group_size)


def pack_layer(layer: PackedLayer, checkpoint_format: str = "gptq") -> dict[str, np.ndarray]:
    """The four tensors ``qweight, qzeros, scales, g_idx`` of one layer (names without prefix)."""
    if checkpoint_format not in CHECKPOINT_FORMATS:
        raise ValueError(f"checkpoint_format must be one of {CHECKPOINT_FORMATS}, got {checkpoint_format!r}")
    b = layer.bits
    stored_zeros = layer.zeros if checkpoint_format == "gptq_v2" else (layer.zeros - 1) % (2**b)
    return {
        "qweight": np.ascontiguousarray(pack(layer.codes, b, "int32").T),       # [K b/32, N]
        "qzeros": pack(stored_zeros.astype(np.uint8), b, "int32"),             # [G, N b/32]
        "scales": np.ascontiguousarray(layer.scales.astype(np.float16)),        # [G, N]
        "g_idx": layer.g_idx.astype(np.int32),                                  # [K]
    }


def check_layer_tensors(meta: dict, bits: int, group_size: int, name: str = "layer"
                        ) -> tuple[int, int]:
    """Check the dtypes and shapes of one layer's four tensors against ``bits``: ``(N, K)``.

    ``meta``: key (``"qweight"``, ...) -> ``(dtype, shape)``, from the arrays or from a file's
    header alone (what :func:`refquant.formats.gptq.load_quantized_model` checks before it
    reads any value). Raises :class:`GPTQCheckpointError` naming the layer and tensor.
    """
    if bits not in PACK_BITS:
        raise GPTQCheckpointError(f"{name}: bits must be one of {PACK_BITS}, got {bits!r}")
    for key, dtype in (("qweight", np.int32), ("qzeros", np.int32), ("scales", np.float16), ("g_idx", np.int32)):
        if key not in meta:
            raise GPTQCheckpointError(f"{name}: missing tensor {key!r}")
        if np.dtype(meta[key][0]) != dtype:
            raise GPTQCheckpointError(f"{name}.{key}: expected dtype {np.dtype(dtype)}, got {np.dtype(meta[key][0])}")
    (_, qweight), (_, qzeros), (_, scales), (_, g_idx) = (meta[k] for k in QUANT_KEYS)
    if len(scales) != 2 or len(qweight) != 2 or len(qzeros) != 2 or len(g_idx) != 1:
        raise GPTQCheckpointError(f"{name}: wrong tensor ranks")
    G, N = scales
    K = g_idx[0]
    if tuple(qweight) != (-(-K * bits // 32), N):
        raise GPTQCheckpointError(f"{name}.qweight: shape {tuple(qweight)}, expected {(-(-K * bits // 32), N)} "
                              f"for {K} inputs, {N} outputs at {bits} bits")
    if tuple(qzeros) != (G, -(-N * bits // 32)):
        raise GPTQCheckpointError(f"{name}.qzeros: shape {tuple(qzeros)}, expected {(G, -(-N * bits // 32))}")
    if K == 0:
        raise GPTQCheckpointError(f"{name}.g_idx: values must lie in [0, {G - 1}]")
    if group_size != -1:
        check_positive_int(group_size, "group_size")
    return N, K


def unpack_layer(tensors: dict, bits: int, group_size: int, checkpoint_format: str = "gptq",
                 name: str = "layer") -> PackedLayer:
    """Inverse of :func:`pack_layer`; checks every shape and dtype against ``bits``
    (:func:`check_layer_tensors`) and the values of ``g_idx`` and ``scales``."""
    if checkpoint_format not in CHECKPOINT_FORMATS:
        raise GPTQCheckpointError(f"checkpoint_format must be one of {CHECKPOINT_FORMATS}, got {checkpoint_format!r}")
    N, K = check_layer_tensors({k: (t.dtype, t.shape) for k, t in tensors.items()}, bits,
                               group_size, name)
    qweight, qzeros, scales, g_idx = (tensors[k] for k in ("qweight", "qzeros", "scales", "g_idx"))
    G = scales.shape[0]
    if g_idx.min() < 0 or g_idx.max() >= G:
        raise GPTQCheckpointError(f"{name}.g_idx: values must lie in [0, {G - 1}]")
    if not np.all(np.isfinite(scales)):
        raise GPTQCheckpointError(f"{name}.scales: contains NaN or Inf")
    codes = unpack(np.ascontiguousarray(qweight.T), bits, K)                    # [N, K]
    stored = unpack(qzeros, bits, N).astype(np.int32)                          # [G, N]
    zeros = stored if checkpoint_format == "gptq_v2" else (stored + 1) % (2**bits)
    return PackedLayer(codes, scales.copy(), zeros, g_idx.astype(np.int32), bits, group_size)


class V1ZeroPointWarning(UserWarning):
    """A ``checkpoint_format: "gptq"`` (v1) layer holds zero points equal to 0 (see
    :func:`v1_zero_point_note`)."""


def v1_zero_points(layer: PackedLayer) -> int:
    """How many zero points of ``layer`` are 0: v1 stores each as :math:`2^b - 1`
    (``(0 - 1) mod 2^b``), which several peer readers decode wrongly."""
    return int(np.count_nonzero(layer.zeros == 0))


def v1_zero_point_note(name: str, count: int, bits: int) -> str:
    """The one message, for the writer's :class:`V1ZeroPointWarning` and ``refquant inspect``,
    about ``count`` zero points equal to 0 in v1 layer ``name``.

    Read as refquant, GPTQModel's and AutoGPTQ's CPU unpacking do (``(stored + 1) mod 2^b``) they
    are exact. But AutoGPTQ's ``qlinear_cuda`` adds 1 without the modulo (zero :math:`2^b`, one
    scale step off), and GPTQModel's v1 -> v2 conversion at kernel load adds 1 to every field of
    a packed word at once (at 2, 4 and 8 bits), so a stored :math:`2^b - 1` carries into the next
    output channel's zero point. ``gptq_v2`` stores the zero point itself and has neither problem.
    """
    return (f"{name}: {count} zero point(s) equal to 0, stored as {2**bits - 1} in the v1 "
            f"'gptq' format: AutoGPTQ's qlinear_cuda reads them as {2**bits}, and GPTQModel's "
            "v1->v2 conversion carries into the next zero point of the word; export with "
            "checkpoint_format 'gptq_v2' (refquant quantize --format gptq_v2) for those readers")


def hf_name(name: str) -> str:
    """refquant weight name (``layers.0.mlp.up_proj``) -> Hugging Face (``model.layers...``)."""
    return name if name.startswith("lm_head") else "model." + name


def rq_name(name: str) -> str:
    """Hugging Face name -> refquant name (without ``model.``)."""
    return name.removeprefix("model.")


def layer_prefixes(names) -> list[str]:
    """The stored layers among tensor names: every prefix with a ``.qweight``, sorted."""
    return sorted({k[: -len(".qweight")] for k in names if k.endswith(".qweight")})


def layer_bits(per_layer: dict, config: dict, name: str) -> tuple[int, int]:
    """``(bits, group_size)`` of refquant layer ``name``: its own settings in ``per_layer``, else
    the global ``config``'s (4 and 128 if neither says)."""
    lc = per_layer.get(name, {})
    return (lc.get("bits", config.get("bits", 4)),
            lc.get("group_size", config.get("group_size", 128)))


def float_tensor_names(names, dtypes: dict, files: dict | None = None) -> list[str]:
    """The tensor names (Hugging Face) that are not part of a stored layer (nor a layer's
    ``bias``); each must have a float dtype (``dtypes``: name -> NumPy dtype), else
    :class:`GPTQCheckpointError` naming the file (``files``: name -> file) and tensor."""
    files = files or {}
    quant_keys = {f"{p}.{k}" for p in layer_prefixes(names) for k in QUANT_KEYS + ("bias",)}
    out = []
    for k in names:
        if k in quant_keys:
            continue
        if np.dtype(dtypes[k]).type not in FLOAT_DTYPES:
            raise GPTQCheckpointError(f"{files.get(k, 'checkpoint')}: tensor {k!r} has dtype {np.dtype(dtypes[k])}; a "
                                      "tensor that is not part of a quantized layer must be a float tensor")
        out.append(k)
    return out


def split_tensors(raw: dict, per_layer: dict, config: dict, fmt: str, files: dict | None = None,
                  *, keep_dtype: bool = False):
    """Stored tensors (Hugging Face names -> arrays) -> ``(layers, float_tensors)`` with refquant
    names; every layer's bits and group size from ``per_layer`` (refquant name -> settings) or
    the global ``config``.

    A layer is every prefix with a ``.qweight``; its four tensors are checked by
    :func:`unpack_layer`. Every other tensor must be a float tensor (returned as float32, or as
    stored with ``keep_dtype``): an integer tensor there (a dtype changed in a header, a stray
    ``qzeros``) raises :class:`GPTQCheckpointError` naming the file (``files``: tensor name ->
    file) and tensor.
    """
    files = files or {}
    layers = {}
    for prefix in layer_prefixes(raw):
        name = rq_name(prefix)
        bits, gs = layer_bits(per_layer, config, name)
        where = f"{files[prefix + '.qweight']}: {prefix}" if prefix + ".qweight" in files else prefix
        layers[name] = unpack_layer({k: raw[f"{prefix}.{k}"] for k in QUANT_KEYS if f"{prefix}.{k}" in raw},
                                    bits, gs, fmt, where)
    float_tensors = {}
    for k in float_tensor_names(list(raw), {k: v.dtype for k, v in raw.items()}, files):
        float_tensors[rq_name(k)] = raw[k] if keep_dtype else raw[k].astype(np.float32)
    return layers, float_tensors


__all__ = ["PackedLayer", "GPTQCheckpointError", "CHECKPOINT_FORMATS", "is_symmetric", "layer_from_quantized",
           "pack_layer", "unpack_layer", "check_layer_tensors", "dequantize_layer", "split_tensors",
           "layer_prefixes", "layer_bits", "float_tensor_names", "hf_name", "rq_name",
           "V1ZeroPointWarning", "v1_zero_points", "v1_zero_point_note"]
