"""The Hugging Face files of a GPTQ checkpoint directory, so that transformers and GPTQModel read
it as it is.

:class:`~refquant.formats.gptq_writer.CheckpointWriter`, given the model, writes beside the
shards (all before ``quantize_config.json``, which stays the last file written):

==========================  =====================================================================
file                        content
==========================  =====================================================================
tokenizer files             Hugging Face source: copied (:data:`TOKENIZER_FILES`); GGUF source:
                            ``tokenizer.json`` and ``tokenizer_config.json`` built from the
                            ``tokenizer.ggml.*`` metadata (:meth:`Tokenizer.save
                            <refquant.models.tokenizer.Tokenizer.save>`)
``generation_config.json``  copied from a Hugging Face source, else the BOS/EOS/padding ids
``config.json``             the architecture as transformers' ``LlamaConfig`` reads it
                            (:func:`~refquant.models.config_checks.hf_config_json`; a Hugging
                            Face source's own file with those keys checked), the token ids, and
                            ``quantization_config`` (:func:`quantization_config`)
==========================  =====================================================================

``quantization_config`` has the keys transformers' ``GPTQConfig`` and GPTQModel's
``QuantizeConfig.from_quant_config`` read; the same keys head ``quantize_config.json``
(GPTQModel reads that file first):

=============================  ==============================================================
key                            value
=============================  ==============================================================
``quant_method``, ``method``   ``"gptq"`` (newer GPTQModel reads ``method``, older ones and
                               transformers ``quant_method``; refquant's own method,
                               RTN/GPTQ/AWQ, is stored as ``refquant_method``, never as
                               ``method``)
``bits``, ``group_size``       the most common setting of the quantized layers (-1: per
                               output channel)
``sym``, ``desc_act``          as quantized (``desc_act``: GPTQ's act-order; ``g_idx`` says
                               the rest)
``static_groups``              GPTQ's option
``true_sequential``            true
``act_group_aware``            false (refquant does not reorder within groups)
``damp_percent``               refquant's ``damp`` (the same fraction of mean(diag H)) where
                               it lies in (0, 1), the range both readers accept; it is always
                               in ``meta.damp``
``checkpoint_format``          ``"gptq"`` (v1: stores zero - 1) or ``"gptq_v2"`` (GPTQModel
                               only); ``format`` the same (transformers' newer name)
``pack_dtype``, ``lm_head``    ``"int32"``; false (the output head stays float)
``dynamic``                    GPTQModel's per-module overrides (first matching regex wins):
                               ``"+:^model\\.layers\\.3\\.mlp\\.down_proj$": {bits,
                               group_size, sym}`` for a layer quantized differently,
                               ``"-:..."`` for block linears kept in float (absent when there
                               are none)
``meta``                       ``quantizer: ["refquant:<version>"]``, ``damp``
=============================  ==============================================================

A directory whose ``config.json`` names refquant as the quantizer but has no
``quantize_config.json`` is an export interrupted before its last write, and the reader refuses
it (:func:`~refquant.formats.gptq_files.is_refquant_config`).

References
----------
.. [1] Hugging Face transformers, ``GPTQConfig`` (``utils/quantization_config.py``).
.. [2] ModelCloud/GPTQModel, ``gptqmodel/quantization/config.py`` (``QuantizeConfig``,
       ``dynamic_get``: ``+:`` / ``-:`` patterns matched with ``re.match``).
"""

from __future__ import annotations

import importlib.metadata
import pathlib
import re
import shutil

from refquant.formats.gptq_files import QUANTIZER, is_refquant_config, write_json_atomic
from refquant.formats.gptq_layers import GPTQCheckpointError, hf_name
from refquant.models.config_checks import hf_config, hf_config_json
from refquant.models.errors import read_json_object

MODEL_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model",
                   "chat_template.jinja", "chat_template.json")
HF_FILES = MODEL_FILES + TOKENIZER_FILES
_BLOCK = re.compile(r"^layers\.(\d+)\.")


def _version() -> str:
    try:
        return importlib.metadata.version("refquant")
    except importlib.metadata.PackageNotFoundError:      # a source tree that is not installed
        return "unknown"


def quantization_config(layer_meta: dict, *, checkpoint_format: str, desc_act: bool,
                        static_groups: bool, damp: float, float_linears=()) -> dict:
    """The ``quantization_config`` of a checkpoint (keys in the module docstring).

    Parameters
    ----------
    layer_meta : dict
        refquant layer name -> ``{"bits", "group_size", "sym"}`` of every quantized layer.
    float_linears : iterable of str
        refquant names (without ``.weight``) of block linears stored in float.
    """
    settings = [(m["bits"], m["group_size"], m["sym"]) for m in layer_meta.values()]
    bits, group_size, sym = max(set(settings), key=settings.count) if settings else (4, 128, False)
    out = {"quant_method": "gptq", "method": "gptq", "bits": int(bits), "group_size": int(group_size),
           "desc_act": bool(desc_act), "sym": bool(sym), "static_groups": bool(static_groups),
           "true_sequential": True, "act_group_aware": False}
    if 0 < damp < 1:
        out["damp_percent"] = float(damp)
    out.update(checkpoint_format=checkpoint_format, format=checkpoint_format, pack_dtype="int32",
               lm_head=False)
    dynamic = _dynamic(layer_meta, (bits, group_size, sym), float_linears)
    if dynamic:
        out["dynamic"] = dynamic
    out["meta"] = {"quantizer": [f"{QUANTIZER}:{_version()}"], "damp": float(damp)}
    return out


def _dynamic(layer_meta: dict, default: tuple, float_linears) -> dict:
    """GPTQModel's ``dynamic``: a ``+:`` override per layer whose setting is not ``default``, one
    ``-:`` pattern for the blocks with no quantized layer and one per other float linear."""
    dynamic = {}
    for name, m in sorted(layer_meta.items()):
        if (m["bits"], m["group_size"], m["sym"]) != default:
            dynamic[f"+:^{re.escape(hf_name(name))}$"] = {
                "bits": int(m["bits"]), "group_size": int(m["group_size"]), "sym": bool(m["sym"])}
    quantized_blocks = {int(b.group(1)) for b in map(_BLOCK.match, layer_meta) if b}
    whole, single = set(), []
    for name in sorted(float_linears):
        b = _BLOCK.match(name)
        if b and int(b.group(1)) not in quantized_blocks:
            whole.add(int(b.group(1)))
        else:
            single.append(name)
    if whole:
        dynamic[f"-:^model\\.layers\\.(?:{'|'.join(map(str, sorted(whole)))})\\."] = {}
    for name in single:
        dynamic[f"-:^{re.escape(hf_name(name))}$"] = {}
    return dynamic


def _source_dir(model) -> pathlib.Path | None:
    """The Hugging Face directory ``model`` was loaded from, or ``None`` (a GGUF file)."""
    source = pathlib.Path(model.source) if model.source is not None else None
    return source if source is not None and source.is_dir() else None


def model_config(model, qc: dict) -> dict:
    """``config.json``: the source's own (Hugging Face) or :func:`hf_config_json` (GGUF), the
    BOS/EOS/padding ids of the tokenizer, and ``quantization_config`` ``qc``."""
    source = _source_dir(model)
    cfg = read_json_object(source / "config.json") if source is not None else {}
    cfg = {k: v for k, v in cfg.items() if k != "quantization_config"} | hf_config_json(model.config)
    tok = model.tokenizer
    for kind in ("bos", "eos", "pad"):
        value = getattr(tok, f"{kind}_id", None) if tok is not None else None
        if value is not None and f"{kind}_token_id" not in cfg:
            cfg[f"{kind}_token_id"] = int(value)
    if hf_config(cfg, "config.json") != model.config:     # what transformers and refquant read
        raise GPTQCheckpointError(f"config.json would describe {hf_config(cfg, 'config.json')}, "
                                  f"not the model {model.config}")
    return cfg | {"quantization_config": qc}


def generation_config(model) -> dict:
    """``generation_config.json`` where the source has none: the tokenizer's special-token ids."""
    tok = model.tokenizer
    ids = {f"{k}_token_id": getattr(tok, f"{k}_id", None) for k in ("bos", "eos", "pad")}
    return {k: int(v) for k, v in ids.items() if v is not None}


def write_tokenizer_files(model, directory) -> list[str]:
    """Copy the source's tokenizer files, or build them from the GGUF metadata; the names."""
    directory = pathlib.Path(directory)
    tok, source = model.tokenizer, _source_dir(model)
    if tok is None:
        return []
    if source is not None and (source / "tokenizer_config.json").is_file():
        names = [n for n in TOKENIZER_FILES if (source / n).is_file()]
        for n in names:
            shutil.copyfile(source / n, directory / n)
        return names
    tok.save(directory)
    return ["tokenizer.json", "tokenizer_config.json"]


def write_model_files(directory, model, qc: dict) -> list[str]:
    """Write the tokenizer files, ``generation_config.json`` and, last of them,
    ``config.json`` (with ``quantization_config`` ``qc``) into ``directory``; the names."""
    directory = pathlib.Path(directory)
    cfg = model_config(model, qc)                        # checked before anything is written
    names = write_tokenizer_files(model, directory)
    source = _source_dir(model)
    if source is not None and (source / "generation_config.json").is_file():
        shutil.copyfile(source / "generation_config.json", directory / "generation_config.json")
    else:
        write_json_atomic(directory / "generation_config.json", generation_config(model))
    write_json_atomic(directory / "config.json", cfg)
    return names + ["generation_config.json", "config.json"]


__all__ = ["HF_FILES", "MODEL_FILES", "TOKENIZER_FILES", "QUANTIZER", "quantization_config",
           "is_refquant_config", "model_config", "generation_config", "write_tokenizer_files",
           "write_model_files"]
