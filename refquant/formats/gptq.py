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
------------------------------------------------------
* ``checkpoint_format: "gptq"`` (the original AutoGPTQ format, "v1", the default here):
  ``qzeros`` stores ``zero - 1``, reduced modulo ``2^b`` before packing (so zero 0 is stored as
  ``2^b - 1``, and the familiar symmetric 4-bit value 8 as 7: the ``0x77777777`` words). The
  reader adds 1 back, modulo ``2^b``. Some v1 readers add 1 *without* the modulo, so for them a
  zero point of exactly 0 cannot be represented (it reads as ``2^b``); a layer whose range starts at
  0 is the only case.
* ``checkpoint_format: "gptq_v2"`` (GPTQModel's later revision): ``qzeros`` stores ``zero`` as is.

A v1 export holding a zero point of 0 warns (:class:`V1ZeroPointWarning`, naming the layer and the
count) and ``refquant inspect`` reports it for any v1 checkpoint: AutoGPTQ's ``qlinear_cuda`` and
GPTQModel's v1 -> v2 conversion misread it (:func:`v1_zero_point_note`).

The convention is written to ``quantize_config.json`` as ``checkpoint_format``; the reader takes it
from there (a file without the key is v1, as AutoGPTQ assumes).

Per-layer settings
------------------
``quantize_config.json`` holds the global ``bits``, ``group_size`` (-1: one group per output
channel), ``desc_act``, ``sym``, ``static_groups``, ``damp_percent``, ``checkpoint_format`` and
``quant_method: "gptq"``; refquant adds ``refquant_layers``: layer name -> ``{"bits",
"group_size", "sym"}`` for every quantized layer, ``refquant_files`` (the shard manifest) and
``source_model`` (an absolute path). Tensors that are not quantized (embeddings, norms, layers
kept in float) are stored as ``<name>.weight`` in float32, or float16 where the writer is given
float16 (``refquant quantize`` copies every tensor it does not change in its source dtype:
float16 stays float16, float32 and BF16, which NumPy's safetensors writer lacks, are float32).
Given the model, the writer also
writes the Hugging Face files (``config.json`` with the same settings as its
``quantization_config``, the tokenizer, ``generation_config.json``:
:mod:`refquant.formats.gptq_hf`), so transformers and GPTQModel read the directory as it is.

Complete or rejected
--------------------
:func:`read_checkpoint` accepts a directory only if it is whole: every shard of the manifest
and of the index present and no other, each with the tensors listed for it, every layer of
``refquant_layers`` present with its four tensors, every float tensor of a float dtype and
finite, every JSON file of the right structure. :func:`load_quantized_model` also requires the
checkpoint to hold every weight of the model, and nothing else: no weight is ever taken from
the source model. :func:`read_checkpoint` reads everything at once;
:func:`load_quantized_model` makes every check that needs no tensor value when it opens the
directory and reads each layer (and checks its values) when the forward pass reaches it
(:func:`checkpoint_weights`). Writing (:class:`~refquant.formats.gptq_writer.CheckpointWriter`) is ordered
so that an interrupted export leaves no ``quantize_config.json``. Modules:
:mod:`~refquant.formats.gptq_layers` (one layer), :mod:`~refquant.formats.gptq_files` (the
files), :mod:`~refquant.formats.gptq_writer` (writing); this module reads and re-exports them.

References
----------
.. [1] E. Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
       Transformers", ICLR 2023, arXiv:2210.17323 (the packed format of its reference code,
       adopted by AutoGPTQ and Hugging Face transformers).
"""

from __future__ import annotations

import functools
import pathlib

import numpy as np

from refquant.formats.gptq_files import (CONFIG_FILE, INDEX_FILE, MANIFEST_KEY, WEIGHTS_FILE,
                                         read_index, read_quantize_config)
from refquant.formats.gptq_layers import (CHECKPOINT_FORMATS, QUANT_KEYS, GPTQCheckpointError,
                                          PackedLayer, V1ZeroPointWarning, check_layer_tensors,
                                          dequantize_layer, float_tensor_names, layer_bits,
                                          layer_from_quantized, layer_prefixes, pack_layer, rq_name,
                                          split_tensors, unpack_layer, v1_zero_point_note,
                                          v1_zero_points)
from refquant.formats.gptq_writer import CheckpointWriter, export_checkpoint
from refquant.models.errors import CheckpointError, read_json_object
from refquant.models.layout import ST_DTYPES, read_safetensors_tensor, scan_safetensors
from refquant.models.loaders import LazyWeights


def _shard_files(directory: pathlib.Path, config: dict, cfg_path, weight_map) -> list[pathlib.Path]:
    """The shards, checked against the manifest and the index: all present, none extra."""
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise GPTQCheckpointError(f"{directory} has no .safetensors file")
    names = {f.name for f in files}
    lists = [(config[MANIFEST_KEY], f"{cfg_path.name} ({MANIFEST_KEY})")]
    if weight_map is not None:
        lists.append((set(weight_map.values()), INDEX_FILE))
    for listed, what in lists:
        if listed is None:
            continue
        missing = sorted(set(listed) - names)
        if missing:
            raise GPTQCheckpointError(f"{directory}: shard(s) {missing} listed in {what} are missing "
                                      "(an incomplete checkpoint)")
        unlisted = sorted(names - set(listed))
        if unlisted:
            raise GPTQCheckpointError(f"{directory}: {unlisted} not listed in {what}")
    return files


def _checkpoint_spans(directory) -> tuple[dict, dict, pathlib.Path]:
    """``(config, spans, cfg_path)`` of a GPTQ checkpoint, from its JSON files and safetensors
    headers alone: ``spans`` maps every stored tensor (Hugging Face name) to ``(file,
    TensorSpan)``. Every check of "Complete or rejected" that needs no tensor value is made here:
    shards against manifest and index, each tensor in one shard and mapped to it, the tensor
    count of every shard, every layer of ``refquant_layers`` stored."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise GPTQCheckpointError(f"{directory} is not a directory")
    config, cfg_path = read_quantize_config(directory)
    weight_map = read_index(directory)
    spans: dict = {}
    for f in _shard_files(directory, config, cfg_path, weight_map):
        part = {span.name: span for span in scan_safetensors(f)}
        twice = sorted(set(part) & set(spans))
        if twice:
            raise GPTQCheckpointError(f"{f}: tensor {twice[0]!r} is also in {spans[twice[0]][0].name}")
        if weight_map is not None:
            wrong = sorted(k for k in part if weight_map.get(k) != f.name)
            if wrong:
                raise GPTQCheckpointError(f"{f}: tensor {wrong[0]!r} is not mapped to this shard in {INDEX_FILE}")
        expected = (config[MANIFEST_KEY] or {}).get(f.name)
        if expected is not None and expected != len(part):
            raise GPTQCheckpointError(f"{f}: {len(part)} tensors, {cfg_path.name} lists {expected}")
        spans.update({k: (f, span) for k, span in part.items()})
    if weight_map is not None:
        absent = sorted(set(weight_map) - set(spans))
        if absent:
            raise GPTQCheckpointError(f"{directory}: tensor {absent[0]!r} listed in {INDEX_FILE} is in no shard")
    stored = {rq_name(p) for p in layer_prefixes(spans)}
    lost = sorted(set(config["refquant_layers"]) - stored)
    if lost:
        raise GPTQCheckpointError(f"{directory}: {len(lost)} layer(s) listed in {cfg_path.name} "
                                  f"(refquant_layers) are not in any shard: {lost[:4]}")
    return config, spans, cfg_path


def read_checkpoint(directory, *, check_finite: bool = True
                    ) -> tuple[dict[str, PackedLayer], dict[str, np.ndarray], dict]:
    """Read a GPTQ checkpoint: ``(layers, float_tensors, quantize_config)`` with refquant names.

    Reads ``quantize_config.json`` (or the ``quantization_config`` of a Hugging Face
    ``config.json``) and every ``*.safetensors`` file in ``directory``, and rejects any directory
    that is not whole (see "Complete or rejected" above). ``check_finite=False`` (for
    ``refquant inspect``, which reports them) lets NaN/Inf float tensors through. Everything is
    read at once; :func:`load_quantized_model` reads a layer only when it is used.

    Raises
    ------
    CheckpointError
        :class:`GPTQCheckpointError` for a missing, extra or inconsistent part;
        :class:`~refquant.models.errors.CorruptCheckpoint` for damaged bytes, JSON or values.
        The message names the file and the tensor or key.
    """
    config, spans, _ = _checkpoint_spans(directory)
    raw = {k: read_safetensors_tensor(f, span, check_finite=check_finite)
           for k, (f, span) in spans.items()}
    layers, float_tensors = split_tensors(raw, config["refquant_layers"], config,
                                          config.get("checkpoint_format", "gptq"),
                                          {k: f for k, (f, _) in spans.items()})
    return layers, float_tensors, config


def checkpoint_weights(directory, *, cache: bool | int = True) -> tuple[LazyWeights, dict]:
    """The weights of a GPTQ checkpoint as a lazy mapping, and its ``quantize_config``.

    The directory is checked from its JSON files and headers (every check of
    :func:`read_checkpoint` that needs no value: the shards, the index, the tensor counts, each
    layer's four tensors with their dtypes and shapes, float dtypes elsewhere), and nothing
    else is read. A quantized layer is read from its shard, unpacked and dequantized
    (:func:`dequantize_layer`, float32) when its weight is first accessed; a float tensor is
    read as stored (float16 stays float16 for ``LazyWeights.stored``); values are checked
    then. ``cache`` as in :class:`~refquant.models.loaders.LazyWeights` (``False``: every
    access reads and dequantizes the layer again, so a forward pass holds one layer's float
    weights at a time). A kernel on the packed codes reads the layers themselves instead
    (:func:`checkpoint_layers`, used by :mod:`refquant.formats.gptq_linear`).
    """
    config, spans, _ = _checkpoint_spans(directory)
    files = {k: f for k, (f, _) in spans.items()}
    loaders, shapes = {}, {}
    for name, (read, shape) in _layer_readers(config, spans).items():
        loaders[name + ".weight"] = _dequantized(read)
        shapes[name + ".weight"] = shape
    dtypes = {k: _span_dtype(span) for k, (_, span) in spans.items()}
    for k in float_tensor_names(list(spans), dtypes, files):
        f, span = spans[k]
        loaders[rq_name(k)] = functools.partial(read_safetensors_tensor, f, span)
        shapes[rq_name(k)] = span.shape
    return LazyWeights(loaders, shapes, source=pathlib.Path(directory), cache=cache), config


def checkpoint_layers(directory) -> tuple[dict, dict]:
    """The quantized layers of a GPTQ checkpoint, unread: ``({name: read}, quantize_config)``.

    ``name`` is the refquant layer name (``"layers.0.mlp.up_proj"``); ``read()`` reads that
    layer's four tensors and returns its :class:`PackedLayer` (:func:`unpack_layer`: the zero
    points as values, whichever ``checkpoint_format``). The directory is checked as
    :func:`checkpoint_weights` checks it; nothing else is read until ``read`` is called.
    """
    config, spans, _ = _checkpoint_spans(directory)
    return {name: read for name, (read, _) in _layer_readers(config, spans).items()}, config


def _layer_readers(config: dict, spans: dict) -> dict:
    """``{refquant layer name: (read, (N, K))}`` for every stored layer, each layer's tensors
    checked from their headers (:func:`check_layer_tensors`); ``read()`` -> :class:`PackedLayer`."""
    fmt = config.get("checkpoint_format", "gptq")
    out = {}
    for prefix in layer_prefixes(spans):
        name = rq_name(prefix)
        bits, gs = layer_bits(config["refquant_layers"], config, name)
        parts = {k: spans[f"{prefix}.{k}"] for k in QUANT_KEYS if f"{prefix}.{k}" in spans}
        where = f"{spans[prefix + '.qweight'][0]}: {prefix}"
        N, K = check_layer_tensors({k: (ST_DTYPES[s.type_name], s.shape) for k, (_, s) in parts.items()},
                                   bits, gs, where)
        out[name] = (_layer_reader(parts, bits, gs, fmt, where), (N, K))
    return out


def _span_dtype(span) -> np.dtype:
    """The dtype a stored tensor is read as (BF16 widened to float32)."""
    return np.dtype(np.float32) if span.type_name == "BF16" else np.dtype(ST_DTYPES[span.type_name])


def _layer_reader(parts: dict, bits: int, group_size: int, fmt: str, where: str):
    """Read one layer's tensors (``parts``: key -> (file, span)) and unpack it."""
    def read() -> PackedLayer:
        tensors = {k: read_safetensors_tensor(f, span) for k, (f, span) in parts.items()}
        return unpack_layer(tensors, bits, group_size, fmt, where)
    return read


def _dequantized(read):
    """A loader of the float32 weight of the layer ``read()`` returns."""
    return lambda: dequantize_layer(read())


def load_weights(directory) -> tuple[dict[str, np.ndarray], dict]:
    """A model-interface weights mapping (refquant names -> float32 ``[out, in]``) from a GPTQ
    checkpoint: every quantized layer dequantized (:func:`dequantize_layer`), every float tensor
    as stored. Returns ``(weights, quantize_config)``. All at once; see
    :func:`checkpoint_weights` for a mapping that reads each layer when it is used."""
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
            qc = read_json_object(cfg).get("quantization_config")
        except CheckpointError:
            return False
        return isinstance(qc, dict) and qc.get("quant_method") == "gptq"
    return False


def check_complete(weights: dict, config, directory) -> None:
    """:class:`GPTQCheckpointError` unless ``weights`` holds exactly the weights of ``config``
    (a :class:`~refquant.models.llama.LlamaConfig`) with their shapes."""
    shapes = config.weight_shapes()
    missing = [n for n in shapes if n not in weights]
    if missing:
        raise GPTQCheckpointError(f"{directory}: {len(missing)} weight(s) of the model are not in the "
                                  f"checkpoint (nothing is taken from the source model): {missing[:4]}")
    extra = sorted(set(weights) - set(shapes))
    if extra:
        raise GPTQCheckpointError(f"{directory}: {len(extra)} tensor(s) are not weights of the model: "
                                  f"{extra[:4]}")
    for name, shape in shapes.items():
        # a lazy mapping knows its shapes without reading (LazyWeights.shape)
        got = weights.shape(name) if hasattr(weights, "shape") else weights[name].shape
        if got != shape:
            raise GPTQCheckpointError(f"{directory}: {name} has shape {got}, the "
                                      f"model needs {shape}")


def _base_from_directory(directory: pathlib.Path):
    """The configuration and tokenizer of a directory's own Hugging Face files (weights none)."""
    from refquant.models.config_checks import hf_config
    from refquant.models.llama import LlamaModel
    from refquant.models.tokenizer import tokenizer_from_hf

    cfg = read_json_object(directory / "config.json")
    return LlamaModel(config=hf_config(cfg, directory / "config.json"), weights={},
                      tokenizer=tokenizer_from_hf(directory, cfg), source=directory)


def load_quantized_model(directory, base_model=None, *, cache: bool | int = True):
    """A ``LlamaModel`` whose weights are all those of the GPTQ checkpoint in ``directory``.

    Only the configuration and tokenizer come from ``base_model`` (a loaded ``LlamaModel``), or
    else from the directory's own ``config.json`` and tokenizer files (as refquant's writer
    writes them, :mod:`refquant.formats.gptq_hf`), or else from the model recorded as
    ``source_model`` in ``quantize_config.json`` (loaded with
    :func:`refquant.models.loaders.load_model`). The checkpoint must hold every weight of that
    configuration (:func:`check_complete`): nothing is filled in from the base model.

    The weights are lazy (:func:`checkpoint_weights`): each layer is read and dequantized when
    the forward pass reaches it, and kept as ``cache`` says (``True``: every one, as read;
    ``False``: none; an integer: a budget in bytes).
    """
    import dataclasses

    weights, config = checkpoint_weights(directory, cache=cache)
    directory = pathlib.Path(directory)
    if base_model is None and (directory / "config.json").is_file():
        base_model = _base_from_directory(directory)
    if base_model is None:
        from refquant.models.loaders import load_model

        source = config.get("source_model")
        if not source:
            raise GPTQCheckpointError(f"{directory}: {CONFIG_FILE} has no source_model; pass base_model")
        if not pathlib.Path(source).exists():
            raise GPTQCheckpointError(f"{directory}: source_model {source!r} (the model the checkpoint "
                                      f"was made from, for its config and tokenizer) does not exist")
        base_model = load_model(source, cache=False)       # only its config and tokenizer
    check_complete(weights, base_model.config, directory)
    return dataclasses.replace(base_model, weights=weights, source=directory)


def load_any(path=None, *, cache: bool | int = True):
    """A model from a GGUF file, a Hugging Face directory or a GPTQ checkpoint directory
    (``None``: the bundled model); what ``refquant eval`` and ``refquant generate`` read, with a
    bounded ``cache`` (:data:`refquant.models.loaders.INFERENCE_CACHE_BYTES`).

    A directory with safetensors but neither ``config.json`` nor ``quantize_config.json`` is an
    unfinished GPTQ export (its config is written last) and raises :class:`GPTQCheckpointError`.
    """
    from refquant.models.loaders import load_model

    if path is not None and pathlib.Path(path).is_dir():
        d = pathlib.Path(path)
        if is_gptq_checkpoint(d):
            return load_quantized_model(d, cache=cache)
        if not (d / "config.json").exists() and any(d.glob("*.safetensors")):
            raise GPTQCheckpointError(f"{d}: safetensors without {CONFIG_FILE} or config.json: an "
                                      "unfinished export (the config is written last) or not a model")
    return load_model(path, cache=cache)


__all__ = ["PackedLayer", "CheckpointError", "GPTQCheckpointError", "layer_from_quantized",
           "pack_layer", "unpack_layer", "dequantize_layer", "export_checkpoint", "CheckpointWriter",
           "read_checkpoint", "checkpoint_weights", "checkpoint_layers", "load_weights", "is_gptq_checkpoint", "check_complete",
           "load_quantized_model", "load_any", "CHECKPOINT_FORMATS", "WEIGHTS_FILE", "CONFIG_FILE",
           "INDEX_FILE", "V1ZeroPointWarning", "v1_zero_points", "v1_zero_point_note"]
