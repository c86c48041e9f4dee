"""A :class:`~refquant.models.llama.LlamaConfig` from a checkpoint's metadata, cross-checked
against the tensors the checkpoint stores.

The GGUF loader (``llama.*`` metadata), the Hugging Face loader (``config.json``) and ``refquant
inspect`` build the configuration here and then match it against the file's tensor table, so a
file whose metadata and tensors disagree is rejected with a
:class:`~refquant.models.errors.ModelFormatError` naming the key or tensor, never loaded as a
smaller or different model.

Checks
------
* every value has its JSON/GGUF type (:func:`refquant.models.errors.field`) and lies within the
  plausibility bounds of :data:`BOUNDS`;
* the block count agrees with the blocks stored: blocks ``0 .. L-1`` and no other;
* the head counts agree with the tensor shapes: ``H h_d`` rows in ``attn_q``, ``H_kv h_d`` in
  ``attn_k`` (``h_d`` = ``key_length``/``head_dim``, or ``d / H``);
* every tensor the configuration needs exists, with its shape and a type fit for its role
  (a norm in a float type, a matrix in a float or a block-quantized type, never an integer type);
* every tensor stored is used by the configuration.
"""

from __future__ import annotations

import re

from refquant.models.errors import ModelFormatError, field
from refquant.models.llama import LlamaConfig

# LlamaConfig field -> (lowest, highest) plausible value, inclusive
BOUNDS = {
    "n_layers": (1, 4096), "d_model": (1, 2**17), "n_heads": (1, 2**12), "n_kv_heads": (1, 2**12),
    "d_ff": (1, 2**20), "vocab_size": (1, 2**21), "head_dim": (2, 2**12),
    "norm_eps": (1e-12, 1e-2), "rope_theta": (1e2, 1e10), "max_seq_len": (1, 2**24),
}
GGUF_ARCH = "llama"
# LlamaConfig field -> its GGUF metadata key
GGUF_KEYS = {k: f"{GGUF_ARCH}.{v}" for k, v in {
    "n_layers": "block_count", "d_model": "embedding_length", "n_heads": "attention.head_count",
    "n_kv_heads": "attention.head_count_kv", "d_ff": "feed_forward_length",
    "vocab_size": "vocab_size", "norm_eps": "attention.layer_norm_rms_epsilon",
    "rope_theta": "rope.freq_base", "head_dim": "attention.key_length",
    "max_seq_len": "context_length"}.items()}
HF_KEYS = {"n_layers": "num_hidden_layers", "d_model": "hidden_size",
           "n_heads": "num_attention_heads", "n_kv_heads": "num_key_value_heads",
           "d_ff": "intermediate_size", "vocab_size": "vocab_size", "norm_eps": "rms_norm_eps",
           "rope_theta": "rope_theta", "head_dim": "head_dim",
           "max_seq_len": "max_position_embeddings"}
_BLOCK = re.compile(r"^(?:model\.)?(?:layers|blk)\.(\d+)\.")


def _config(values: dict, where, keys: dict) -> LlamaConfig:
    """``LlamaConfig(**values)``; its ``ValueError`` becomes a :class:`ModelFormatError` naming
    the file and the keys the values came from."""
    try:
        return LlamaConfig(**values)
    except ValueError as exc:
        raise ModelFormatError(f"{where}: inconsistent configuration ({exc}; from the keys "
                               f"{', '.join(keys[k] for k in values if k in keys)})") from exc


def _values(obj: dict, where, keys: dict, defaults: dict) -> dict:
    """Every :data:`BOUNDS` field from ``obj[keys[field]]``, typed and bounded (``null`` only
    where the default is ``None``)."""
    values = {}
    for name, key in keys.items():
        kind = float if name in ("norm_eps", "rope_theta") else int
        lo, hi = BOUNDS[name]
        kw = {"default": defaults[name], "nullable": defaults[name] is None} \
            if name in defaults else {}
        values[name] = field(obj, key, kind, where, lo=lo, hi=hi, error=ModelFormatError, **kw)
    if values["n_kv_heads"] is None:
        values["n_kv_heads"] = values["n_heads"]
    return values


def gguf_config(meta: dict, shapes: dict, path) -> LlamaConfig:
    """The configuration of a Llama GGUF file from its ``llama.*`` metadata.

    ``shapes`` maps the file's tensor names to shapes (for the defaults: ``vocab_size`` from
    ``token_embd``, ``tied_embeddings`` when there is no ``output.weight``).
    """
    arch = field(meta, "general.architecture", str, path, error=ModelFormatError)
    if arch != GGUF_ARCH:
        raise ModelFormatError(f"{path}: unsupported architecture general.architecture="
                               f"{arch!r} (only {GGUF_ARCH!r})")
    scaling = field(meta, "llama.rope.scaling.type", str, path, default="none")
    if scaling != "none":
        raise ModelFormatError(f"{path}: rope scaling {scaling!r} not supported")
    if "rope_freqs.weight" in shapes:
        raise ModelFormatError(f"{path}: tensor 'rope_freqs.weight' (Llama 3 rope scaling) is "
                               "not supported")
    if "token_embd.weight" not in shapes:
        raise ModelFormatError(f"{path}: tensor 'token_embd.weight' missing")
    values = _values(meta, path, GGUF_KEYS, {
        "vocab_size": shapes["token_embd.weight"][0], "rope_theta": 10000.0,
        "max_seq_len": 2048, "head_dim": None, "n_kv_heads": None})
    values["tied_embeddings"] = "output.weight" not in shapes
    config = _config(values, path, GGUF_KEYS)
    rope_dim = field(meta, "llama.rope.dimension_count", int, path, default=config.head_dim,
                     error=ModelFormatError)
    if rope_dim != config.head_dim:
        raise ModelFormatError(f"{path}: partial rotary (llama.rope.dimension_count={rope_dim}, "
                               f"head_dim={config.head_dim}) not supported")
    return config


def hf_config(cfg: dict, path) -> LlamaConfig:
    """The configuration of a Hugging Face Llama ``config.json`` (already parsed, an object)."""
    archs = field(cfg, "architectures", list, path, default=[], nullable=True)
    model_type = field(cfg, "model_type", str, path, default=None, nullable=True)
    if model_type != "llama" and "LlamaForCausalLM" not in archs:
        raise ModelFormatError(f"{path}: unsupported architecture model_type={model_type!r} "
                               f"architectures={archs!r} (only llama)")
    rope = field(cfg, "rope_parameters", dict, path, default={}, nullable=True)
    scaling = field(cfg, "rope_scaling", dict, path, default=None, nullable=True)
    if scaling or field(rope, "rope_type", str, f"{path}: rope_parameters",
                        default="default") != "default":
        raise ModelFormatError(f"{path}: rope scaling {scaling or rope!r} not supported")
    for key in ("attention_bias", "mlp_bias"):
        if field(cfg, key, bool, path, default=False, nullable=True):
            raise ModelFormatError(f"{path}: {key}=true not supported")
    if "rope_theta" in rope:
        cfg = {**cfg, "rope_theta": rope["rope_theta"]}
    values = _values(cfg, path, HF_KEYS, {"n_kv_heads": None, "norm_eps": 1e-6,
                                           "rope_theta": 10000.0, "head_dim": None,
                                           "max_seq_len": 2048})
    values["tied_embeddings"] = field(cfg, "tie_word_embeddings", bool, path, default=False)
    return _config(values, path, HF_KEYS)


def hf_config_json(config: LlamaConfig) -> dict:
    """The Hugging Face ``config.json`` object of ``config`` (``LlamaForCausalLM``): every
    :data:`HF_KEYS` field, the tied-embedding flag and the fixed Llama choices (SiLU, no biases);
    the inverse of :func:`hf_config`, which reads it back to ``config``."""
    out = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    out.update({key: getattr(config, name) for name, key in HF_KEYS.items()})
    out.update(tie_word_embeddings=config.tied_embeddings, hidden_act="silu",
               attention_bias=False, mlp_bias=False)
    return out


def match_tensors(config: LlamaConfig, stored: dict, path, *, keys: dict, file_name,
                  float_types, matrix_types, ignore=()) -> None:
    """Check ``stored`` (refquant name -> ``(name in the file, shape, type name)``) against
    ``config`` (see the module docstring).

    ``keys`` maps the config fields to the metadata keys named in messages, ``file_name(name)``
    gives the name a missing tensor would have in the file; norms may have ``float_types``,
    matrices ``matrix_types``; the file names in ``ignore`` may be stored without being used.
    """
    L = config.n_layers
    blocks = sorted({int(m.group(1)) for m in map(_BLOCK.match, (s[0] for s in stored.values()))
                     if m})
    if blocks and blocks != list(range(L)):
        extra = [b for b in blocks if b >= L]
        raise ModelFormatError(
            f"{path}: {keys['n_layers']}={L}, but the file stores blocks {blocks[0]}..{blocks[-1]}"
            + (f" ({len(blocks)} blocks; missing {sorted(set(range(L)) - set(blocks))[:5]})"
               if not extra else f": the tensors of blocks {extra[0]}..{extra[-1]} would be "
               "ignored"))
    _check_heads(config, stored, path, keys)
    expected = config.weight_shapes()
    for name, shape in expected.items():
        if name not in stored:
            raise ModelFormatError(f"{path}: tensor {file_name(name)!r} (for "
                                   f"{name!r}) missing")
        stored_name, got, type_name = stored[name]
        if tuple(got) != shape:
            raise ModelFormatError(f"{path}: tensor {stored_name!r} has shape {tuple(got)}, "
                                   f"expected {shape}")
        allowed = float_types if len(shape) == 1 else matrix_types
        if type_name not in allowed:
            role = "a norm" if len(shape) == 1 else "a weight matrix"
            raise ModelFormatError(f"{path}: tensor {stored_name!r} ({role}) has type {type_name}, "
                                   f"which refquant cannot read as one (supported: "
                                   f"{', '.join(sorted(allowed))})")
    unused = sorted(s[0] for n, s in stored.items() if n not in expected and s[0] not in ignore)
    if unused:
        raise ModelFormatError(f"{path}: {len(unused)} tensor(s) not used by the configuration: "
                               f"{', '.join(map(repr, unused[:6]))}"
                               f"{' ...' if len(unused) > 6 else ''}")


def _check_heads(config: LlamaConfig, stored: dict, path, keys: dict) -> None:
    """``H h_d`` rows of the first Q weight and ``H_kv h_d`` of the first K weight."""
    hd = config.head_dim
    for proj, field_name in (("q_proj", "n_heads"), ("k_proj", "n_kv_heads")):
        entry = stored.get(f"layers.0.self_attn.{proj}.weight")
        heads = getattr(config, field_name)
        if entry is not None and len(entry[1]) == 2 and entry[1][0] != heads * hd:
            raise ModelFormatError(
                f"{path}: {keys[field_name]}={heads} heads of dimension {hd} give {heads * hd} "
                f"rows, but tensor {entry[0]!r} has {entry[1][0]}: the head counts disagree "
                "with the tensor shapes")


__all__ = ["BOUNDS", "GGUF_KEYS", "HF_KEYS", "gguf_config", "hf_config", "hf_config_json",
           "match_tensors"]
