"""Load Llama checkpoints into a :class:`~refquant.models.llama.LlamaModel` with float32 weights.

Two formats:

- **GGUF** (llama.cpp): the container is parsed by :mod:`refquant.models.gguffile` (memory-mapped;
  checked against ``gguf.GGUFReader``, which takes ~10x longer on a 49k-token vocabulary). The
  configuration comes from the ``llama.*`` metadata; every tensor is dequantized to float32 with
  ``gguf.quants.dequantize`` (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, the k-quants and the
  other types it implements). llama.cpp's converter permutes the rows of ``attn_q``/``attn_k``
  (per head, it interleaves the two rotary halves); :func:`unpermute_qk` undoes it, so weights
  are in the Hugging Face "rotate half" layout whatever the source.
- **Hugging Face directories**: ``config.json`` with ``model.safetensors`` or a sharded
  ``model.safetensors.index.json``, in F32, F16 or BF16 (BF16 widened to float32 in NumPy by
  shifting the 16 bits into the high half of a 32-bit word), read lazily per tensor with
  ``safetensors`` (numpy backend; BF16 tensors through a memory map of the same file, since NumPy
  has no bfloat16). Torch ``.bin`` files are never read: they are pickles.

Weights are lazy: ``model.weights`` (:class:`LazyWeights`) reads and dequantizes a tensor on first
access and keeps it (``cache=True``) until :meth:`LazyWeights.drop_cache`, so a large model can
be streamed block by block with bounded memory (``load_model(path, cache=False)``, or drop the
cache after each block).

Measured memory (bundled SmolLM2-135M Q4_1 GGUF, 98 MB file; peak RSS ``VmHWM`` of a fresh
Python process, ``tests/test_loaders.py::test_peak_memory_of_loading_bundled_model``):
``load_model()`` 75 MiB (it maps the file and reads the metadata and tokenizer only); after
reading every weight as float32 676 MiB (134.5M parameters = 513 MiB of float32, plus the
interpreter, NumPy and the tokenizer).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable, Iterator, MutableMapping

import numpy as np

from refquant.models import ModelFormatError
from refquant.models.llama import LlamaConfig, LlamaModel

GGUF_ARCH = "llama"

# GGUF tensor name (per block: "blk.{i}." + key) -> Hugging Face name without "model.";
# global tensors: Hugging Face name -> GGUF name
_GGUF_BLOCK = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GGUF_GLOBAL = {"embed_tokens": "token_embd", "norm": "output_norm", "lm_head": "output"}


class LazyWeights(MutableMapping):
    """Name -> float32 array, each read on first access by a loader function.

    ``loaders[name]()`` returns the float32 array of ``name`` from the file. Assigned arrays
    (``weights[name] = W``) replace the file's tensor (same shape, finite floats, stored as
    float32); ``del weights[name]`` drops an assigned array and reverts to the file.
    """

    def __init__(self, loaders: dict[str, Callable[[], np.ndarray]],
                 shapes: dict[str, tuple[int, ...]], *, source, cache: bool = True):
        self._loaders = dict(loaders)
        self._shapes = dict(shapes)
        self._cache: dict[str, np.ndarray] = {}
        self._assigned: dict[str, np.ndarray] = {}
        self.source = source
        self.cache = cache

    def __getitem__(self, name: str) -> np.ndarray:
        w = self._assigned.get(name)
        if w is None:
            w = self._cache.get(name)
        if w is None:
            if name not in self._loaders:
                raise KeyError(name)
            w = self._loaders[name]()
            if w.shape != self._shapes[name]:
                raise ModelFormatError(f"{self.source}: tensor {name!r} has shape {w.shape}, "
                                       f"expected {self._shapes[name]}")
            w.flags.writeable = False
            if self.cache:
                self._cache[name] = w
        return w

    def __setitem__(self, name: str, value) -> None:
        if name not in self._loaders:
            raise KeyError(f"{name!r} is not a weight of this model (known names follow "
                           "LlamaConfig.weight_shapes())")
        value = np.asarray(value)
        if not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"weight {name!r} must be a float array, got dtype {value.dtype}")
        if value.shape != self._shapes[name]:
            raise ValueError(f"weight {name!r} must have shape {self._shapes[name]}, "
                             f"got {value.shape}")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"weight {name!r} contains NaN or Inf")
        self._assigned[name] = np.ascontiguousarray(value, dtype=np.float32)

    def __delitem__(self, name: str) -> None:
        del self._assigned[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaders)

    def __len__(self) -> int:
        return len(self._loaders)

    def __contains__(self, name) -> bool:
        return name in self._loaders

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of ``name`` without reading it."""
        return self._shapes[name]

    def cached_names(self) -> frozenset:
        """Names whose float32 arrays are held in memory now (read and cached, or assigned)."""
        return frozenset(self._cache) | frozenset(self._assigned)

    def drop_cache(self, names=None) -> None:
        """Forget the cached float32 arrays (all, or ``names``); assigned weights stay."""
        if names is None:
            self._cache.clear()
        else:
            for name in names:
                self._cache.pop(name, None)


def load_model(path=None, *, cache: bool = True) -> LlamaModel:
    """Load a Llama model from a GGUF file or a Hugging Face directory.

    Parameters
    ----------
    path : str or path-like, optional
        A ``.gguf`` file, or a directory with ``config.json`` and safetensors. ``None`` loads the
        bundled SmolLM2-135M-Instruct Q4_1 GGUF (``refquant.models.resources.bundled_model_path()``).
    cache : bool
        Keep each tensor once it has been read and dequantized (see :class:`LazyWeights`).

    Returns
    -------
    LlamaModel
        With lazy float32 ``weights``, the checkpoint's own ``tokenizer`` and ``source``.

    Raises
    ------
    ModelFormatError
        Corrupt or truncated file, missing tensor, unsupported architecture or tensor type.
    """
    if path is None:
        from refquant.models.resources import bundled_model_path
        path = bundled_model_path()
    path = pathlib.Path(path)
    if path.is_dir():
        return _load_hf(path, cache=cache)
    if not path.is_file():
        raise FileNotFoundError(f"no model at {path}")
    if path.suffix.lower() == ".gguf":
        return _load_gguf(path, cache=cache)
    raise ModelFormatError(f"{path}: not a .gguf file or a Hugging Face directory (pickled "
                           "torch .bin checkpoints are never read)")


# --------------------------------------------------------------------------------------- GGUF

def unpermute_qk(W: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's rotary row permutation of a Q or K weight ``[n_heads*h_d, in]``.

    llama.cpp rotates adjacent pairs ``(2j, 2j+1)`` of a head; Hugging Face rotates
    ``(j, j + h_d/2)``. Its converter therefore stores, within each head, row ``2j`` = HF row ``j``
    and row ``2j+1`` = HF row ``j + h_d/2``. This returns the HF order.
    """
    out_dim = W.shape[0]
    hd = out_dim // n_heads
    # [n_heads, h_d/2, 2, in] (pairs) -> [n_heads, 2, h_d/2, in] (halves)
    return np.ascontiguousarray(
        W.reshape(n_heads, hd // 2, 2, *W.shape[1:]).swapaxes(1, 2).reshape(W.shape))


def _load_gguf(path: pathlib.Path, *, cache: bool) -> LlamaModel:
    from refquant.models.gguffile import dequantize, read_gguf

    f = read_gguf(path)
    meta, tensors = f.metadata, f.tensors

    def get(key, default=...):
        if key not in meta:
            if default is ...:
                raise ModelFormatError(f"{path}: metadata key {key!r} missing")
            return default
        return meta[key]

    arch = get("general.architecture")
    if arch != GGUF_ARCH:
        raise ModelFormatError(f"{path}: unsupported architecture general.architecture="
                               f"{arch!r} (only {GGUF_ARCH!r})")
    scaling = get("llama.rope.scaling.type", "none")
    if scaling != "none":
        raise ModelFormatError(f"{path}: rope scaling {scaling!r} not supported")
    if "rope_freqs.weight" in tensors:
        raise ModelFormatError(f"{path}: tensor 'rope_freqs.weight' (Llama 3 rope scaling) is "
                               "not supported")
    if "token_embd.weight" not in tensors:
        raise ModelFormatError(f"{path}: tensor 'token_embd.weight' missing")
    n_heads = int(get("llama.attention.head_count"))
    d = int(get("llama.embedding_length"))
    config = LlamaConfig(
        n_layers=int(get("llama.block_count")), d_model=d, n_heads=n_heads,
        n_kv_heads=int(get("llama.attention.head_count_kv", n_heads)),
        d_ff=int(get("llama.feed_forward_length")),
        vocab_size=int(get("llama.vocab_size", tensors["token_embd.weight"].shape[0])),
        norm_eps=float(get("llama.attention.layer_norm_rms_epsilon")),
        rope_theta=float(get("llama.rope.freq_base", 10000.0)),
        tied_embeddings="output.weight" not in tensors,
        head_dim=int(get("llama.attention.key_length", d // n_heads)),
        max_seq_len=int(get("llama.context_length", 2048)),
    )
    rope_dim = int(get("llama.rope.dimension_count", config.head_dim))
    if rope_dim != config.head_dim:
        raise ModelFormatError(f"{path}: partial rotary (llama.rope.dimension_count={rope_dim}, "
                               f"head_dim={config.head_dim}) not supported")

    def loader(hf_name: str, t) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            W = dequantize(t, path)                             # float32, own memory
            if hf_name.endswith("q_proj.weight"):
                W = unpermute_qk(W, config.n_heads)
            elif hf_name.endswith("k_proj.weight"):
                W = unpermute_qk(W, config.n_kv_heads)
            return W
        return load

    shapes = config.weight_shapes()
    supported = _dequantizable()
    loaders = {}
    for name in shapes:
        g = gguf_name(name)
        t = tensors.get(g)
        if t is None:
            raise ModelFormatError(f"{path}: tensor {g!r} (for {name!r}) missing")
        if t.shape != shapes[name]:
            raise ModelFormatError(f"{path}: tensor {g!r} has shape {t.shape}, expected "
                                   f"{shapes[name]}")
        if supported is not None and t.type_id not in supported:
            raise ModelFormatError(f"{path}: tensor {g!r} has type {_type_name(t.type_id)}, "
                                   "which gguf cannot dequantize")
        loaders[name] = loader(name, t)
    weights = LazyWeights(loaders, shapes, source=path, cache=cache)
    from refquant.models.tokenizer import tokenizer_from_gguf
    tokenizer = tokenizer_from_gguf(meta, path)
    return LlamaModel(config=config, weights=weights, tokenizer=tokenizer, source=path)


def gguf_name(hf_name: str) -> str:
    """The GGUF tensor name of a Hugging Face weight name (``layers.3.mlp.up_proj.weight`` ->
    ``blk.3.ffn_up.weight``)."""
    parts = hf_name.split(".")
    if parts[0] == "layers":
        sub = ".".join(parts[2:-1])
        key = next(k for k, v in _GGUF_BLOCK.items() if v == sub)
        return f"blk.{parts[1]}.{key}.weight"
    return _GGUF_GLOBAL[parts[0]] + ".weight"


def _type_name(type_id: int) -> str:
    import gguf
    return gguf.GGMLQuantizationType(type_id).name


def _dequantizable() -> frozenset | None:
    """Ids of the GGML tensor types ``gguf.quants.dequantize`` implements."""
    import gguf
    import gguf.quants as q
    traits = getattr(q, "_type_traits", None)
    if traits is None:      # private table gone: types are then checked when a tensor is read
        return None
    T = gguf.GGMLQuantizationType
    return frozenset({int(T.F32), int(T.F16)} | {int(t) for t in T if t in traits})


# ------------------------------------------------------------------------- Hugging Face

_HF_DTYPES = {"F32", "F16", "BF16"}


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32: the 16 bits become the high half of the word."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def _safetensors_header(file: pathlib.Path) -> tuple[dict, int]:
    with open(file, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ModelFormatError(f"{file}: truncated safetensors file (no header)")
        n = int.from_bytes(head, "little")
        if n <= 0 or n > os.path.getsize(file) - 8:
            raise ModelFormatError(f"{file}: corrupt safetensors header length {n}")
        try:
            header = json.loads(fh.read(n))
        except ValueError as exc:
            raise ModelFormatError(f"{file}: corrupt safetensors header ({exc})") from exc
    return header, 8 + n


def _load_hf(directory: pathlib.Path, *, cache: bool) -> LlamaModel:
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise ModelFormatError(f"{directory}: no config.json")
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as exc:
        raise ModelFormatError(f"{cfg_path}: not valid JSON ({exc})") from exc
    archs = cfg.get("architectures") or []
    if cfg.get("model_type") != "llama" and "LlamaForCausalLM" not in archs:
        raise ModelFormatError(f"{cfg_path}: unsupported architecture model_type="
                               f"{cfg.get('model_type')!r} architectures={archs!r} (only llama)")
    rope = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling")
    if scaling or rope.get("rope_type", "default") != "default":
        raise ModelFormatError(f"{cfg_path}: rope scaling {scaling or rope!r} not supported")
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key):
            raise ModelFormatError(f"{cfg_path}: {key}=true not supported")
    try:
        n_heads = int(cfg["num_attention_heads"])
        config = LlamaConfig(
            n_layers=int(cfg["num_hidden_layers"]), d_model=int(cfg["hidden_size"]),
            n_heads=n_heads, n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
            d_ff=int(cfg["intermediate_size"]), vocab_size=int(cfg["vocab_size"]),
            norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
            tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            head_dim=cfg.get("head_dim"),
            max_seq_len=int(cfg.get("max_position_embeddings", 2048)))
    except KeyError as exc:
        raise ModelFormatError(f"{cfg_path}: key {exc.args[0]!r} missing") from exc

    index = directory / "model.safetensors.index.json"
    single = directory / "model.safetensors"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = {name: directory / f for name, f in weight_map.items()}
    elif single.is_file():
        files = None
    else:
        raise ModelFormatError(f"{directory}: neither model.safetensors nor "
                               "model.safetensors.index.json (torch .bin pickles are not read)")
    entries = {}   # tensor name in file -> (file, header entry, data start)
    headers = {}
    for file in sorted(set(files.values())) if files else [single]:
        header, start = _safetensors_header(file)
        headers[file] = (header, start)
        size = os.path.getsize(file)
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["data_offsets"][1] + start > size:
                raise ModelFormatError(f"{file}: tensor {name!r} extends beyond the end of the "
                                       "file (truncated file)")
            entries[name] = (file, info, start)

    def loader(name: str, key: str) -> Callable[[], np.ndarray]:
        file, info, start = entries[key]

        def load() -> np.ndarray:
            shape = tuple(info["shape"])
            if info["dtype"] == "BF16":
                lo, hi = info["data_offsets"]
                bits = np.memmap(file, dtype="<u2", mode="r", offset=start + lo,
                                 shape=((hi - lo) // 2,))
                return bf16_to_float32(np.asarray(bits)).reshape(shape)
            from safetensors import safe_open
            with safe_open(file, framework="np") as fh:
                W = fh.get_tensor(key)
            return np.ascontiguousarray(W, dtype=np.float32)
        return load

    shapes = config.weight_shapes()
    loaders = {}
    for name in shapes:
        key = "model." + name if name != "lm_head.weight" else name
        if key not in entries and name in entries:
            key = name
        if key not in entries:
            raise ModelFormatError(f"{directory}: tensor {key!r} missing")
        file, info, _ = entries[key]
        if info["dtype"] not in _HF_DTYPES:
            raise ModelFormatError(f"{file}: tensor {key!r} has dtype {info['dtype']}; only "
                                   f"{sorted(_HF_DTYPES)} are supported")
        if tuple(info["shape"]) != shapes[name]:
            raise ModelFormatError(f"{file}: tensor {key!r} has shape {tuple(info['shape'])}, "
                                   f"expected {shapes[name]}")
        loaders[name] = loader(name, key)
    weights = LazyWeights(loaders, shapes, source=directory, cache=cache)
    from refquant.models.tokenizer import tokenizer_from_hf
    tokenizer = tokenizer_from_hf(directory, cfg)
    return LlamaModel(config=config, weights=weights, tokenizer=tokenizer, source=directory)


def save_hf(model: LlamaModel, directory, *, dtype: str = "F32") -> pathlib.Path:
    """Write ``model`` as a Hugging Face Llama directory.

    ``config.json`` (``LlamaForCausalLM``), ``model.safetensors`` (``model.``-prefixed names, Q/K
    in the Hugging Face rotary layout, ``dtype`` ``"F32"`` or ``"F16"``) and ``tokenizer.json``
    when the model has a tokenizer. Loading the directory back with :func:`load_model` or with
    ``transformers.LlamaForCausalLM.from_pretrained`` gives the same model.
    """
    from safetensors.numpy import save_file

    if dtype not in ("F32", "F16"):
        raise ValueError(f"dtype must be 'F32' or 'F16', got {dtype!r}")
    np_dtype = np.float32 if dtype == "F32" else np.float16
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    c = model.config
    tok = model.tokenizer
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": c.d_model, "intermediate_size": c.d_ff,
        "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads, "head_dim": c.head_dim,
        "vocab_size": c.vocab_size, "rms_norm_eps": c.norm_eps, "rope_theta": c.rope_theta,
        "tie_word_embeddings": c.tied_embeddings, "max_position_embeddings": c.max_seq_len,
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
        "torch_dtype": "float32" if dtype == "F32" else "float16",
    }
    if tok is not None:
        cfg["bos_token_id"], cfg["eos_token_id"] = tok.bos_id, tok.eos_id
    tensors = {}
    for name in c.weight_shapes():
        key = "model." + name if name != "lm_head.weight" else name
        tensors[key] = np.ascontiguousarray(model.weights[name], dtype=np_dtype)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    if tok is not None:
        tok.save(directory)
    return directory
