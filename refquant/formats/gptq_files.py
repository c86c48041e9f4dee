"""The files of a GPTQ checkpoint directory: reading them with every check, writing them atomically.

=====================================  ==========================================================
file                                   content
=====================================  ==========================================================
``quantize_config.json``               the settings (see :mod:`refquant.formats.gptq`), and from
                                       refquant's writer the manifest ``refquant_files``: shard
                                       file name -> number of tensors. Written *last*.
``model.safetensors.index.json``       Hugging Face index: ``weight_map`` tensor name -> shard
``config.json``, tokenizer files,      the Hugging Face files (:mod:`refquant.formats.gptq_hf`);
``generation_config.json``             a refquant ``config.json`` without a
                                       ``quantize_config.json`` is an unfinished export
``model.safetensors`` or
``model-0000k-of-0000n.safetensors``   the tensors
=====================================  ==========================================================

:func:`read_quantize_config` validates the structure and type of every key it uses
(:func:`refquant.models.errors.field`: a ``CheckpointError`` naming the file and key);
:func:`read_index` likewise; :func:`read_shard` reads one shard through the one safetensors
header reader (:func:`refquant.models.layout.scan_safetensors`). :func:`write_json_atomic` writes
a temporary file and renames it over the target (``os.replace``, atomic on POSIX), so a reader
sees the old file, the new file, or none, never a partial one.
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np

from refquant.formats.gptq_layers import CHECKPOINT_FORMATS, GPTQCheckpointError
from refquant.models.errors import field, read_json_object
from refquant.models.layout import read_safetensors_tensor, scan_safetensors
from refquant.schemes.packing import PACK_BITS

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "quantize_config.json"
INDEX_FILE = "model.safetensors.index.json"
MANIFEST_KEY = "refquant_files"
QUANTIZER = "refquant"          # meta.quantizer of refquant's quantization_config: "refquant:<version>"


def is_refquant_config(qc: dict) -> bool:
    """True if a ``quantization_config`` names refquant as its quantizer (``meta.quantizer``,
    GPTQModel's ``"tool:version"`` list)."""
    meta = qc.get("meta")
    quantizers = meta.get("quantizer") if isinstance(meta, dict) else None
    if isinstance(quantizers, str):
        quantizers = [quantizers]
    return isinstance(quantizers, list) and any(
        isinstance(q, str) and q.split(":")[0] == QUANTIZER for q in quantizers)


def _bits(obj: dict, where, default=None) -> int:
    kw = {} if default is None else {"default": default}
    bits = field(obj, "bits", int, where, **kw)
    if bits not in PACK_BITS:
        raise GPTQCheckpointError(f"{where}: bits={bits} is not one of {PACK_BITS}")
    return bits


def _group_size(obj: dict, where, default=None) -> int:
    kw = {} if default is None else {"default": default}
    gs = field(obj, "group_size", int, where, **kw)
    if gs != -1 and gs < 1:
        raise GPTQCheckpointError(f"{where}: group_size={gs} must be -1 or positive")
    return gs


def _layers(config: dict, where) -> dict:
    layers = field(config, "refquant_layers", dict, where, default={})
    out = {}
    for name, lc in layers.items():
        at = f"{where}: refquant_layers[{name!r}]"
        if not isinstance(lc, dict):
            raise GPTQCheckpointError(f"{at} must be an object, got {lc!r}")
        out[name] = {"bits": _bits(lc, at, config["bits"]),
                     "group_size": _group_size(lc, at, config["group_size"]),
                     "sym": field(lc, "sym", bool, at, default=config["sym"])}
    return out


def read_quantize_config(directory) -> tuple[dict, pathlib.Path]:
    """``(config, path)``: ``quantize_config.json``, or the ``quantization_config`` of a Hugging
    Face ``config.json``, with every key refquant uses validated and defaults filled in."""
    directory = pathlib.Path(directory)
    path = directory / CONFIG_FILE
    if path.is_file():
        raw = read_json_object(path)
    elif (directory / "config.json").is_file():
        path = directory / "config.json"
        raw = field(read_json_object(path), "quantization_config", dict, path,
                    error=GPTQCheckpointError)
        if is_refquant_config(raw):
            # refquant writes config.json before quantize_config.json, its last file
            raise GPTQCheckpointError(f"{directory}: config.json is refquant's but {CONFIG_FILE} "
                                      "is missing: an unfinished export (that file is written last)")
    else:
        raise GPTQCheckpointError(f"{directory} has no {CONFIG_FILE}")
    method = field(raw, "quant_method", str, path, default="gptq")
    if method != "gptq":
        raise GPTQCheckpointError(f"{path}: quant_method is {method!r}, not 'gptq'")
    config = dict(raw)
    fmt = field(raw, "checkpoint_format", str, path, default="gptq")
    if fmt not in CHECKPOINT_FORMATS:
        raise GPTQCheckpointError(f"{path}: unknown checkpoint_format {fmt!r}; known: "
                                  f"{CHECKPOINT_FORMATS}")
    if "checkpoint_format" in raw:               # absent: v1, and inspect detects it
        config["checkpoint_format"] = fmt
    config.update(bits=_bits(raw, path), group_size=_group_size(raw, path),
                  desc_act=field(raw, "desc_act", bool, path, default=False),
                  sym=field(raw, "sym", bool, path, default=False),
                  static_groups=field(raw, "static_groups", bool, path, default=False),
                  source_model=field(raw, "source_model", str, path, default=None))
    config["refquant_layers"] = _layers(config, path)
    manifest = field(raw, MANIFEST_KEY, dict, path, default=None)
    if manifest is not None:
        for name, n in manifest.items():
            field(manifest, name, int, f"{path}: {MANIFEST_KEY}", lo=0)
            if "/" in name or not name.endswith(".safetensors"):
                raise GPTQCheckpointError(f"{path}: {MANIFEST_KEY} lists {name!r}, not a shard "
                                          "file name")
    config[MANIFEST_KEY] = manifest
    return config, path


def read_index(directory) -> dict | None:
    """The ``weight_map`` (tensor name -> shard file name) of the index, or ``None``."""
    path = pathlib.Path(directory) / INDEX_FILE
    if not path.is_file():
        return None
    weight_map = field(read_json_object(path), "weight_map", dict, path)
    for key, value in weight_map.items():
        if not isinstance(value, str) or "/" in value:
            raise GPTQCheckpointError(f"{path}: weight_map[{key!r}] must be a shard file name, got "
                                      f"{value!r}")
    return weight_map


def read_shard(path, *, check_finite: bool = True) -> dict[str, np.ndarray]:
    """Every tensor of one shard (Hugging Face names), header and values checked
    (:func:`~refquant.models.layout.scan_safetensors`,
    :func:`~refquant.models.layout.read_safetensors_tensor`)."""
    return {span.name: read_safetensors_tensor(path, span, check_finite=check_finite)
            for span in scan_safetensors(path)}


def shard_dtypes(path) -> dict[str, str]:
    """Tensor name -> stored safetensors dtype (``"F32"``, ``"I32"``, ...) of one shard."""
    return {span.name: span.type_name for span in scan_safetensors(path)}


def write_json_atomic(path, obj) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and a rename: an interruption
    leaves either no ``path`` or a complete one."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


__all__ = ["WEIGHTS_FILE", "CONFIG_FILE", "INDEX_FILE", "MANIFEST_KEY", "QUANTIZER",
           "is_refquant_config", "read_quantize_config",
           "read_index", "read_shard", "shard_dtypes", "write_json_atomic"]
