"""GPTQ-style packed checkpoints (the AutoGPTQ / Hugging Face ``quant_method: gptq`` layout).

A directory holds ``model.safetensors`` (or shards ``model-00001-of-0000N.safetensors`` with the
Hugging Face ``model.safetensors.index.json``, as :class:`CheckpointWriter` writes them block by
block) and ``quantize_config.json``. For every quantized linear
layer ``P`` (Hugging Face name, e.g. ``model.layers.0.self_attn.q_proj``) with ``K`` inputs, ``N``
outputs, ``b`` bits and ``G`` groups:

===============  ===========================  ======================================================
tensor           dtype, shape                 content
===============  ===========================  ======================================================
``P.qweight``    int32 ``[ceil(K b/32), N]``  codes packed along the *input* dimension: column ``n``
                                              is ``pack(codes[n, :], b, "int32")`` (see
                                              :mod:`refquant.schemes.packing`: code ``k`` of a 4-bit row at
                                              bits ``4(k%8)..`` of word ``k//8``; 3-bit codes run
                                              across word boundaries, 32 codes per 3 words)
``P.qzeros``     int32 ``[G, ceil(N b/32)]``  zero points packed along the *output* dimension (the
                                              stored value depends on the convention, below)
``P.scales``     float16 ``[G, N]``           scales
``P.g_idx``      int32 ``[K]``                group of every input column (``k // group_size``
                                              unless ``desc_act`` with dynamic groups)
===============  ===========================  ======================================================

Dequantization (what :func:`dequantize_layer` computes, in float32)::

    W_hat[n, k] = float32(scales[g_idx[k], n]) * (codes[n, k] - zero[g_idx[k], n])

Codes are unsigned ``[0, 2^b - 1]``; a symmetric refquant spec (signed codes, zero 0) is stored
as codes ``+ 2^(b-1)`` with zero ``2^(b-1)`` (the same values).

Zero-point convention -- read this before mixing tools
-----------------------------------------------------
* ``checkpoint_format: "gptq"`` (the original AutoGPTQ format, "v1", the default here):
  ``qzeros`` stores ``zero - 1``, reduced modulo ``2^b`` before packing (so zero 0 is stored as
  ``2^b - 1``, and the familiar symmetric 4-bit value 8 as 7: the ``0x77777777`` words). The
  reader adds 1 back, modulo ``2^b``. Some v1 readers add 1 *without* the modulo, so for them a
  zero point of exactly 0 cannot be represented (it reads as ``2^b``); a layer whose range starts at
  0 is the only case.
* ``checkpoint_format: "gptq_v2"`` (GPTQModel's later revision): ``qzeros`` stores ``zero`` as is.

The convention is written to ``quantize_config.json`` as ``checkpoint_format``; the reader takes it
from there (a file without the key is v1, as AutoGPTQ assumes).

Per-layer settings
------------------
``quantize_config.json`` holds the global ``bits``, ``group_size`` (-1: one group per output
channel), ``desc_act``, ``sym``, ``static_groups``, ``damp_percent``, ``checkpoint_format`` and
``quant_method: "gptq"``; a mixed-precision checkpoint adds ``refquant_layers``: layer name ->
``{"bits", "group_size", "sym", "method"}`` for every quantized layer. Tensors that are not
quantized (embeddings, norms, layers kept in float) are stored as ``<name>.weight`` in float32.

References
----------
.. [1] E. Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
       Transformers", ICLR 2023, arXiv:2210.17323 (the packed format of its reference code,
       adopted by AutoGPTQ and Hugging Face transformers).
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass

import numpy as np

from refquant.schemes.numerics import check_positive_int
from refquant.schemes.packing import PACK_BITS, pack, unpack
from refquant.schemes.spec import QParams, QuantSpec, n_groups
from refquant.schemes.spec import g_idx as group_index

CHECKPOINT_FORMATS = ("gptq", "gptq_v2")
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "quantize_config.json"
INDEX_FILE = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A GPTQ checkpoint is malformed, truncated, or does not round-trip."""


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
        """``W_hat [N, K]`` float32, see the module docstring."""
        return dequantize_layer(self)


def dequantize_layer(layer: PackedLayer) -> np.ndarray:
    """``W_hat[n, k] = float32(scales[g_idx[k], n]) * (codes[n, k] - zeros[g_idx[k], n])``."""
    s = layer.scales.astype(np.float32)[layer.g_idx].T                  # [N, K]
    z = layer.zeros[layer.g_idx].T.astype(np.float32)                   # [N, K]
    return s * (layer.codes.astype(np.float32) - z)


def layer_from_quantized(codes, qparams: QParams, spec: QuantSpec, g_idx=None) -> PackedLayer:
    """Convert refquant codes and parameters (weight ``[N, K]``) to the stored form.

    ``g_idx`` is the group of every input column (default ``k // group_size``; pass
    :attr:`refquant.algorithms.gptq.GPTQResult.g_idx` for act-order results). Scales are rounded to float16
    (round to nearest even): the stored model dequantizes with those, not the float32 scales.
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


def unpack_layer(tensors: dict, bits: int, group_size: int, checkpoint_format: str = "gptq",
                 name: str = "layer") -> PackedLayer:
    """Inverse of :func:`pack_layer`; checks every shape and dtype against ``bits``."""
    if checkpoint_format not in CHECKPOINT_FORMATS:
        raise CheckpointError(f"checkpoint_format must be one of {CHECKPOINT_FORMATS}, got {checkpoint_format!r}")
    if bits not in PACK_BITS:
        raise CheckpointError(f"{name}: bits must be one of {PACK_BITS}, got {bits!r}")
    for key, dtype in (("qweight", np.int32), ("qzeros", np.int32), ("scales", np.float16), ("g_idx", np.int32)):
        if key not in tensors:
            raise CheckpointError(f"{name}: missing tensor {key!r}")
        if tensors[key].dtype != dtype:
            raise CheckpointError(f"{name}.{key}: expected dtype {np.dtype(dtype)}, got {tensors[key].dtype}")
    qweight, qzeros, scales, g_idx = (tensors[k] for k in ("qweight", "qzeros", "scales", "g_idx"))
    if scales.ndim != 2 or qweight.ndim != 2 or qzeros.ndim != 2 or g_idx.ndim != 1:
        raise CheckpointError(f"{name}: wrong tensor ranks")
    G, N = scales.shape
    K = g_idx.shape[0]
    if qweight.shape != (-(-K * bits // 32), N):
        raise CheckpointError(f"{name}.qweight: shape {qweight.shape}, expected {(-(-K * bits // 32), N)} "
                              f"for {K} inputs, {N} outputs at {bits} bits")
    if qzeros.shape != (G, -(-N * bits // 32)):
        raise CheckpointError(f"{name}.qzeros: shape {qzeros.shape}, expected {(G, -(-N * bits // 32))}")
    if K == 0 or g_idx.min() < 0 or g_idx.max() >= G:
        raise CheckpointError(f"{name}.g_idx: values must lie in [0, {G - 1}]")
    if group_size != -1:
        check_positive_int(group_size, "group_size")
    if not np.all(np.isfinite(scales)):
        raise CheckpointError(f"{name}.scales: contains NaN or Inf")
    codes = unpack(np.ascontiguousarray(qweight.T), bits, K)                    # [N, K]
    stored = unpack(qzeros, bits, N).astype(np.int32)                          # [G, N]
    zeros = stored if checkpoint_format == "gptq_v2" else (stored + 1) % (2**bits)
    return PackedLayer(codes, scales.copy(), zeros, g_idx.astype(np.int32), bits, group_size)


# ---------------------------------------------------------------------------------------------
# Whole checkpoints


def _hf_name(name: str) -> str:
    """refquant weight name (``layers.0.mlp.up_proj``) -> Hugging Face (``model.layers...``)."""
    return name if name.startswith("lm_head") else "model." + name


def _rq_name(name: str) -> str:
    return name[len("model."):] if name.startswith("model.") else name


def export_checkpoint(directory, layers: dict[str, PackedLayer], float_tensors: dict[str, np.ndarray],
                      *, checkpoint_format: str = "gptq", desc_act: bool = False,
                      static_groups: bool = False, damp_percent: float = 0.01,
                      extra_config: dict | None = None) -> pathlib.Path:
    """Write ``model.safetensors`` + ``quantize_config.json`` and verify them by re-reading.

    Parameters
    ----------
    directory : path
        Created if missing; must not hold ``.safetensors`` files already.
    layers : dict
        refquant layer name (``layers.3.mlp.down_proj``, without ``.weight``) -> :class:`PackedLayer`.
    float_tensors : dict
        refquant tensor name (``embed_tokens.weight``, ...) -> float array, stored as float32.
    checkpoint_format : {"gptq", "gptq_v2"}
        Zero-point convention, see the module docstring.

    Returns
    -------
    pathlib.Path of the directory.

    Raises
    ------
    CheckpointError
        If re-importing does not give back every code, zero point, float16 scale, ``g_idx`` and
        hence the dequantized weight (:func:`dequantize_layer`) bit for bit, or any float tensor.

    See :class:`CheckpointWriter` to write a checkpoint block by block.
    """
    writer = CheckpointWriter(directory, checkpoint_format=checkpoint_format, desc_act=desc_act,
                              static_groups=static_groups, damp_percent=damp_percent,
                              extra_config=extra_config)
    writer.write(layers, float_tensors, filename=WEIGHTS_FILE)
    return writer.close()


class CheckpointWriter:
    """Write a GPTQ checkpoint in shards, e.g. one per block, so a model larger than memory can be
    exported while it is quantized (:func:`refquant.pipeline.blockwise.quantize_model`'s ``sink``).

    Each :meth:`write` stores one ``.safetensors`` shard and verifies it at once by re-reading it
    (codes, zero points, float16 scale bits, ``g_idx``, the dequantized weight and every float
    tensor bit for bit; :class:`CheckpointError` otherwise), so only one shard is ever in memory.
    :meth:`close` names the shards ``model-00001-of-0000N.safetensors`` and writes
    ``model.safetensors.index.json`` (the Hugging Face ``weight_map``) and ``quantize_config.json``
    (global ``bits`` / ``group_size``: the most common setting; every layer's own in
    ``refquant_layers``). A single shard written as ``model.safetensors`` gets no index.
    """

    def __init__(self, directory, *, checkpoint_format: str = "gptq", desc_act: bool = False,
                 static_groups: bool = False, damp_percent: float = 0.01, extra_config: dict | None = None):
        if checkpoint_format not in CHECKPOINT_FORMATS:
            raise ValueError(f"checkpoint_format must be one of {CHECKPOINT_FORMATS}, got {checkpoint_format!r}")
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        old = sorted(p.name for p in self.directory.glob("*.safetensors"))
        if old:
            # a reader takes every shard in the directory: stale ones would mix into the model
            raise CheckpointError(f"{self.directory} already holds {old}; export into a new or empty directory")
        self.checkpoint_format = checkpoint_format
        self.desc_act, self.static_groups, self.damp_percent = desc_act, static_groups, damp_percent
        self.extra_config = dict(extra_config or {})
        self._shards: list[tuple[str, list[str]]] = []      # file name, tensor names
        self._layer_meta: dict[str, tuple[int, int]] = {}   # name -> (bits, group_size)
        self._total_bytes = 0
        self._closed = False

    def write(self, layers: dict[str, PackedLayer], float_tensors: dict[str, np.ndarray], *,
              filename: str | None = None) -> pathlib.Path:
        """Store ``layers`` and ``float_tensors`` (refquant names) as the next shard and verify it."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file, save_file

        if self._closed:
            raise CheckpointError("this CheckpointWriter is closed")
        tensors = {}
        for name, layer in layers.items():
            if name in self._layer_meta:
                raise CheckpointError(f"{name}: written twice")
            for key, t in pack_layer(layer, self.checkpoint_format).items():
                tensors[f"{_hf_name(name)}.{key}"] = t
        for name, t in float_tensors.items():
            tensors[_hf_name(name)] = np.ascontiguousarray(np.asarray(t, dtype=np.float32))
        filename = filename or f"model-{len(self._shards) + 1:05d}.safetensors"
        path = self.directory / filename
        save_file(tensors, str(path), metadata={"format": "pt"})
        try:
            raw = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: cannot read back the shard just written ({exc})") from exc
        per_layer = {n: {"bits": ly.bits, "group_size": ly.group_size} for n, ly in layers.items()}
        back_layers, back_float = _split_tensors(raw, per_layer, {}, self.checkpoint_format)
        _verify_round_trip(layers, float_tensors, back_layers, back_float, path)
        self._layer_meta.update({n: (int(ly.bits), int(ly.group_size)) for n, ly in layers.items()})
        self._shards.append((filename, list(tensors)))
        self._total_bytes += sum(t.nbytes for t in tensors.values())
        return path

    @property
    def n_layers(self) -> int:
        """Quantized layers written so far."""
        return len(self._layer_meta)

    def close(self) -> pathlib.Path:
        """Name the shards, write the index and ``quantize_config.json``; returns the directory."""
        if self._closed:
            raise CheckpointError("this CheckpointWriter is already closed")
        if not self._shards:
            raise CheckpointError("no shard was written")
        self._closed = True
        n = len(self._shards)
        if n > 1 or self._shards[0][0] != WEIGHTS_FILE:
            weight_map = {}
            for k, (name, keys) in enumerate(self._shards, start=1):
                final = f"model-{k:05d}-of-{n:05d}.safetensors"
                (self.directory / name).rename(self.directory / final)
                weight_map.update({key: final for key in keys})
            index = {"metadata": {"total_size": self._total_bytes}, "weight_map": weight_map}
            (self.directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        settings = list(self._layer_meta.values())
        bits, group_size = max(set(settings), key=settings.count) if settings else (4, 128)
        config = {
            "quant_method": "gptq", "bits": int(bits), "group_size": int(group_size),
            "desc_act": bool(self.desc_act), "static_groups": bool(self.static_groups), "sym": False,
            "damp_percent": float(self.damp_percent), "true_sequential": True,
            "checkpoint_format": self.checkpoint_format,
            "refquant_layers": {name: {"bits": b, "group_size": g} for name, (b, g) in self._layer_meta.items()},
        }
        config.update(self.extra_config)
        (self.directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        return self.directory


def _verify_round_trip(layers, float_tensors, back_layers, back_float, where):
    """Raise :class:`CheckpointError` unless what was read back equals what was written, bit for bit."""
    for name, layer in layers.items():
        got = back_layers.get(name)
        if got is None:
            raise CheckpointError(f"{where}: {name} missing after re-import")
        for field in ("codes", "zeros", "g_idx"):
            if not np.array_equal(getattr(got, field), getattr(layer, field)):
                raise CheckpointError(f"{where}: {name}.{field}: re-imported values differ")
        if not np.array_equal(got.scales.view(np.uint16), layer.scales.astype(np.float16).view(np.uint16)):
            raise CheckpointError(f"{where}: {name}.scales: re-imported float16 bits differ")
        if not np.array_equal(dequantize_layer(got), dequantize_layer(layer)):
            raise CheckpointError(f"{where}: {name}: re-imported dequantized weight differs")
    for name, t in float_tensors.items():
        if name not in back_float or not np.array_equal(back_float[name], np.asarray(t, dtype=np.float32)):
            raise CheckpointError(f"{where}: {name}: re-imported float tensor differs")


def _split_tensors(raw: dict, per_layer: dict, config: dict, fmt: str):
    """Stored tensors (Hugging Face names) -> ``(layers, float_tensors)`` with refquant names."""
    prefixes = sorted({k[: -len(".qweight")] for k in raw if k.endswith(".qweight")})
    layers = {}
    for prefix in prefixes:
        name = _rq_name(prefix)
        lc = per_layer.get(name, {})
        bits, gs = int(lc.get("bits", config.get("bits", 4))), int(lc.get("group_size", config.get("group_size", 128)))
        layers[name] = unpack_layer({k: raw.get(f"{prefix}.{k}") for k in ("qweight", "qzeros", "scales", "g_idx")
                                     if f"{prefix}.{k}" in raw}, bits, gs, fmt, name)
    quant_keys = {f"{p}.{k}" for p in prefixes for k in ("qweight", "qzeros", "scales", "g_idx", "bias")}
    float_tensors = {_rq_name(k): v.astype(np.float32) for k, v in raw.items() if k not in quant_keys}
    return layers, float_tensors


def read_checkpoint(directory) -> tuple[dict[str, PackedLayer], dict[str, np.ndarray], dict]:
    """Read a GPTQ checkpoint: ``(layers, float_tensors, quantize_config)`` with refquant names.

    Reads ``quantize_config.json`` (or the ``quantization_config`` of a Hugging Face
    ``config.json``) and every ``*.safetensors`` file in ``directory``.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory")
    cfg_path = directory / CONFIG_FILE
    if cfg_path.is_file():
        try:
            config = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{cfg_path}: not valid JSON ({exc})") from exc
    elif (directory / "config.json").is_file():
        config = json.loads((directory / "config.json").read_text()).get("quantization_config")
        if not config:
            raise CheckpointError(f"{directory}/config.json has no quantization_config")
    else:
        raise CheckpointError(f"{directory} has no {CONFIG_FILE}")
    if config.get("quant_method", "gptq") != "gptq":
        raise CheckpointError(f"quant_method is {config.get('quant_method')!r}, not 'gptq'")
    fmt = config.get("checkpoint_format", "gptq")
    if fmt not in CHECKPOINT_FORMATS:
        raise CheckpointError(f"unknown checkpoint_format {fmt!r}; known: {CHECKPOINT_FORMATS}")
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory} has no .safetensors file")
    weight_map = None
    if (directory / INDEX_FILE).is_file():
        try:
            weight_map = json.loads((directory / INDEX_FILE).read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{directory / INDEX_FILE}: no valid weight_map ({exc})") from exc
        listed = sorted(set(weight_map.values()))
        missing = [f for f in listed if not (directory / f).is_file()]
        if missing:
            raise CheckpointError(f"{directory}: shard(s) {missing} listed in {INDEX_FILE} are missing")
        unlisted = sorted({f.name for f in files} - set(listed))
        if unlisted:
            raise CheckpointError(f"{directory}: {unlisted} not listed in {INDEX_FILE}")
    raw = {}
    for f in files:
        try:
            part = load_file(str(f))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{f}: cannot read safetensors ({exc})") from exc
        twice = sorted(set(part) & set(raw))
        if twice:
            raise CheckpointError(f"{f}: tensor {twice[0]!r} is also in another shard")
        if weight_map is not None:
            wrong = sorted(k for k in part if weight_map.get(k) != f.name)
            if wrong:
                raise CheckpointError(f"{f}: tensor {wrong[0]!r} is not mapped to this shard in {INDEX_FILE}")
        raw.update(part)
    if weight_map is not None:
        absent = sorted(set(weight_map) - set(raw))
        if absent:
            raise CheckpointError(f"{directory}: tensor {absent[0]!r} listed in {INDEX_FILE} is in no shard")
    layers, float_tensors = _split_tensors(raw, config.get("refquant_layers", {}), config, fmt)
    return layers, float_tensors, config


def load_weights(directory) -> tuple[dict[str, np.ndarray], dict]:
    """A model-interface weights mapping (refquant names -> float32 ``[out, in]``) from a GPTQ
    checkpoint: every quantized layer dequantized (:func:`dequantize_layer`), every float tensor
    as stored. Returns ``(weights, quantize_config)``."""
    layers, float_tensors, config = read_checkpoint(directory)
    weights = dict(float_tensors)
    for name, layer in layers.items():
        weights[name + ".weight"] = dequantize_layer(layer)
    return weights, config


def is_gptq_checkpoint(directory) -> bool:
    """True if ``directory`` has a ``quantize_config.json`` or a GPTQ ``quantization_config``."""
    directory = pathlib.Path(directory)
    if (directory / CONFIG_FILE).is_file():
        return True
    cfg = directory / "config.json"
    if cfg.is_file():
        try:
            return (json.loads(cfg.read_text()).get("quantization_config") or {}).get("quant_method") == "gptq"
        except json.JSONDecodeError:
            return False
    return False


__all__ = ["PackedLayer", "CheckpointError", "layer_from_quantized", "pack_layer", "unpack_layer",
           "dequantize_layer", "export_checkpoint", "CheckpointWriter", "read_checkpoint", "load_weights",
           "is_gptq_checkpoint", "load_quantized_model", "CHECKPOINT_FORMATS"]


def load_quantized_model(directory, base_model=None):
    """A ``LlamaModel`` whose weights come from the GPTQ checkpoint in ``directory``.

    The config and tokenizer come from ``base_model`` (a loaded ``LlamaModel``), or else from the
    model recorded as ``source_model`` in ``quantize_config.json`` (loaded with
    :func:`refquant.load_model`); every weight in the checkpoint (dequantized linears, float
    tensors) replaces the base model's, which only supplies what the checkpoint lacks.
    """
    import dataclasses
    from collections import ChainMap

    weights, config = load_weights(directory)
    if base_model is None:
        from refquant.models.loaders import load_model

        source = config.get("source_model")
        if not source:
            raise CheckpointError(f"{directory}: quantize_config.json has no source_model; pass base_model")
        base_model = load_model(source)
    return dataclasses.replace(base_model, weights=ChainMap(weights, base_model.weights))
