"""Load Llama checkpoints into a :class:`~refquant.models.llama.LlamaModel` with float32 weights.

Two formats, both read through the file-format toolkit of :mod:`refquant.models` (the same
parsers and checks as ``refquant inspect``):

- **GGUF** (llama.cpp): the container is parsed and checked by
  :func:`refquant.models.gguffile.read_gguf` (memory-mapped); the configuration comes from the
  ``llama.*`` metadata and is cross-checked against the tensor table
  (:mod:`refquant.models.config_checks`); every tensor is dequantized to float32 when it is read
  (:func:`refquant.models.gguffile.dequantize`: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, the
  k-quants and the other types ``gguf.quants`` implements). llama.cpp's converter permutes the
  rows of ``attn_q``/``attn_k``; :func:`refquant.models.gguf_hf.unpermute_qk` undoes it, so
  weights are in the Hugging Face "rotate half" layout whatever the source.
- **Hugging Face directories**: ``config.json`` with ``model.safetensors`` or a sharded
  ``model.safetensors.index.json``, in F32, F16 or BF16, headers checked by
  :func:`refquant.models.layout.scan_safetensors` and each tensor read lazily by
  :func:`refquant.models.layout.read_safetensors_tensor` (BF16 widened by
  :func:`refquant.schemes.casts.from_bf16_bits`). Torch ``.bin`` files are never read: they are
  pickles.

Every tensor is checked when it is read: finite values (a NaN or Inf in a stored weight, scale
or norm raises :class:`~refquant.models.errors.CorruptCheckpoint` naming the file and tensor),
the shape and a type fit for its role, at a byte range that the header scan has checked.

Weights are lazy: ``model.weights`` (:class:`LazyWeights`) reads and dequantizes a tensor on first
access and keeps its float32 array as the ``cache`` argument says: ``True`` every one (until
:meth:`LazyWeights.drop_cache`), ``False`` none, or an integer budget in bytes (kept in the
order read until the budget is full; the commands use :data:`INFERENCE_CACHE_BYTES`), so a large
model can be streamed block by block with bounded memory. :meth:`LazyWeights.stored` gives a
tensor in its stored float dtype (float16 stays float16), never cached, for writers that copy
tensors unchanged.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Callable, Iterator, MutableMapping

import numpy as np

from refquant.models.errors import ModelFormatError, field, read_json_object
from refquant.models.llama import LlamaConfig, LlamaModel


#: the float32 cache budget of ``refquant quantize``, ``eval`` and ``generate`` (bytes): the whole
#: bundled model fits; of a 7B model the embedding and the first few blocks do
INFERENCE_CACHE_BYTES = 2 << 30


class LazyWeights(MutableMapping):
    """Name -> float32 array, each read on first access by a loader function.

    ``loaders[name]()`` returns the array of ``name`` from the file as stored (float16, float32,
    or float32 dequantized/widened from other types); ``weights[name]`` gives it as float32.
    Assigned arrays (``weights[name] = W``) replace the file's tensor (same shape, finite floats,
    stored as float32); ``del weights[name]`` drops an assigned array and reverts to the file.

    ``cache``: ``True`` keeps every float32 array read, ``False`` none, an integer ``n >= 0``
    keeps arrays in the order they are read while their total stays within ``n`` bytes and
    reads the others again at every access. A forward pass cycles through the blocks in order,
    so this keeps the first blocks (a fraction budget/size of the reads is saved), where evicting
    the least recently used array would save none; the memory held never exceeds the budget.
    """

    def __init__(self, loaders: dict[str, Callable[[], np.ndarray]],
                 shapes: dict[str, tuple[int, ...]], *, source, cache: bool | int = True):
        if not isinstance(cache, (bool, int)) or (not isinstance(cache, bool) and cache < 0):
            raise ValueError(f"cache must be True, False or a byte budget >= 0, got {cache!r}")
        self._loaders = dict(loaders)
        self._shapes = dict(shapes)
        self._cache: dict[str, np.ndarray] = {}
        self._assigned: dict[str, np.ndarray] = {}
        self.source = source
        self.cache = cache

    def _read(self, name: str) -> np.ndarray:
        if name not in self._loaders:
            raise KeyError(name)
        w = self._loaders[name]()
        if w.shape != self._shapes[name]:
            raise ModelFormatError(f"{self.source}: tensor {name!r} has shape {w.shape}, "
                                   f"expected {self._shapes[name]}")
        return w

    def __getitem__(self, name: str) -> np.ndarray:
        w = self._assigned.get(name)
        if w is None:
            w = self._cache.get(name)
        if w is None:
            w = np.ascontiguousarray(self._read(name), dtype=np.float32)
            w.flags.writeable = False
            if self._fits(w.nbytes):
                self._cache[name] = w
        return w

    def _fits(self, nbytes: int) -> bool:
        if isinstance(self.cache, bool):
            return self.cache
        return self.cached_bytes() + nbytes <= self.cache

    def stored(self, name: str) -> np.ndarray:
        """``name`` in its stored float dtype (float16 or float32; other stored types are
        dequantized or widened to float32), read-only and never cached; an assigned weight is
        returned as assigned (float32)."""
        w = self._assigned.get(name)
        if w is None:
            w = self._read(name)
            if w.dtype not in (np.float16, np.float32):
                w = w.astype(np.float32)
            w.flags.writeable = False
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

    def cached_bytes(self) -> int:
        """Bytes of the float32 arrays held by the cache (assigned weights not counted)."""
        return sum(w.nbytes for w in self._cache.values())

    def drop_cache(self, names=None) -> None:
        """Forget the cached float32 arrays (all, or ``names``); assigned weights stay."""
        if names is None:
            self._cache.clear()
        else:
            for name in names:
                self._cache.pop(name, None)


def load_model(path=None, *, cache: bool | int = True) -> LlamaModel:
    """Load a Llama model from a GGUF file or a Hugging Face directory.

    Parameters
    ----------
    path : str or path-like, optional
        A ``.gguf`` file, or a directory with ``config.json`` and safetensors. ``None`` loads the
        bundled SmolLM2-135M-Instruct Q4_1 GGUF (``refquant.models.resources.bundled_model_path()``).
    cache : bool or int
        Keep each tensor once it has been read and dequantized (``True``), none (``False``), or
        those that fit a budget in bytes (see :class:`LazyWeights`).

    Returns
    -------
    LlamaModel
        With lazy float32 ``weights``, the checkpoint's own ``tokenizer`` and ``source``.

    Raises
    ------
    ModelFormatError
        Unsupported architecture or tensor type, a missing or unused tensor, metadata that
        disagrees with the tensors; :class:`~refquant.models.errors.CorruptCheckpoint` (a
        subclass) for a truncated or malformed file, and, when a tensor is read, for NaN/Inf.
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

def _load_gguf(path: pathlib.Path, *, cache: bool | int) -> LlamaModel:
    from refquant.models.gguffile import read_gguf
    from refquant.models.tokenizer import tokenizer_from_gguf

    f = read_gguf(path)
    config, tensors = gguf_model_tensors(f)

    def loader(name: str, t) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            from refquant.models.gguf_hf import qk_heads, unpermute_qk
            from refquant.models.gguffile import dequantize

            W = dequantize(t, path)                    # float32, own memory, finite
            heads = qk_heads(name, config.n_heads, config.n_kv_heads)
            return W if heads is None else unpermute_qk(W, heads)
        return load

    loaders = {name: loader(name, t) for name, t in tensors.items()}
    weights = LazyWeights(loaders, config.weight_shapes(), source=path, cache=cache)
    tokenizer = tokenizer_from_gguf(f.metadata, path)
    return LlamaModel(config=config, weights=weights, tokenizer=tokenizer, source=path)


def gguf_model_tensors(f) -> tuple[LlamaConfig, dict]:
    """The configuration of a parsed Llama GGUF file (:class:`~refquant.models.gguffile.GGUFFile`)
    and its tensor for every weight name, cross-checked
    (:func:`refquant.models.config_checks.match_tensors`); ``refquant inspect`` runs the same."""
    from refquant.models import config_checks
    from refquant.models.gguf_hf import gguf_name, hf_name
    from refquant.models.gguffile import FLOAT_TYPES

    config = config_checks.gguf_config(f.metadata, {n: t.shape for n, t in f.tensors.items()},
                                       f.path)
    stored = {(hf_name(n) or n): (n, t.shape, t.type_name) for n, t in f.tensors.items()}
    config_checks.match_tensors(config, stored, f.path, keys=config_checks.GGUF_KEYS,
                                file_name=gguf_name, float_types=FLOAT_TYPES,
                                matrix_types=_dequantizable())
    return config, {name: f.tensors[stored[name][0]] for name in config.weight_shapes()}


def _dequantizable() -> frozenset:
    """Names of the GGML tensor types that can be read as float weights: the float types and
    those ``gguf.quants.dequantize`` implements."""
    import gguf
    import gguf.quants as q

    from refquant.models.gguffile import FLOAT_TYPES

    traits = getattr(q, "_type_traits", None)
    T = gguf.GGMLQuantizationType
    if traits is None:      # private table gone: types are then checked when a tensor is read
        return frozenset(t.name for t in T if t.name not in ("I8", "I16", "I32", "I64"))
    return frozenset(FLOAT_TYPES) | {t.name for t in T if t in traits}


# ------------------------------------------------------------------------- Hugging Face

_HF_DTYPES = ("F32", "F16", "BF16")
# stored but never used by the model: rotary tables some exporters keep
_HF_IGNORED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")


def _hf_files(directory: pathlib.Path) -> list[pathlib.Path]:
    """The safetensors files of a Hugging Face directory, from the index if there is one."""
    index = directory / "model.safetensors.index.json"
    single = directory / "model.safetensors"
    if index.is_file():
        weight_map = field(read_json_object(index), "weight_map", dict, index)
        bad = [k for k, v in weight_map.items() if not isinstance(v, str) or "/" in v]
        if bad:
            raise ModelFormatError(f"{index}: weight_map[{bad[0]!r}] must be a file name, got "
                                   f"{weight_map[bad[0]]!r}")
        files = sorted({directory / v for v in weight_map.values()})
        missing = [p.name for p in files if not p.is_file()]
        if missing:
            raise ModelFormatError(f"{index}: shard(s) {missing} are missing")
        return files
    if single.is_file():
        return [single]
    raise ModelFormatError(f"{directory}: neither model.safetensors nor "
                           "model.safetensors.index.json (torch .bin pickles are not read)")


def _load_hf(directory: pathlib.Path, *, cache: bool | int) -> LlamaModel:
    from refquant.models import config_checks
    from refquant.models.layout import read_safetensors_tensor, scan_safetensors
    from refquant.models.tokenizer import tokenizer_from_hf

    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise ModelFormatError(f"{directory}: no config.json")
    cfg = read_json_object(cfg_path)
    config = config_checks.hf_config(cfg, cfg_path)
    entries = {}                           # tensor name in the file -> (file, span)
    for file in _hf_files(directory):
        for span in scan_safetensors(file):
            if span.name in entries:
                raise ModelFormatError(f"{file}: tensor {span.name!r} is also in "
                                       f"{entries[span.name][0].name}")
            entries[span.name] = (file, span)
    stored = {k.removeprefix("model."): (k, s.shape, s.type_name) for k, (_, s) in entries.items()}
    ignore = [k for k in entries if _HF_IGNORED.search(k)]
    if config.tied_embeddings:
        ignore.append("lm_head.weight")     # some exporters store the tied head as well
    config_checks.match_tensors(config, stored, directory, keys=config_checks.HF_KEYS,
                                file_name=_hf_key, float_types=_HF_DTYPES,
                                matrix_types=_HF_DTYPES, ignore=ignore)

    def loader(key: str) -> Callable[[], np.ndarray]:
        file, span = entries[key]
        return lambda: read_safetensors_tensor(file, span)     # F16, F32; BF16 widened to F32

    shapes = config.weight_shapes()
    loaders = {name: loader(stored[name][0]) for name in shapes}
    weights = LazyWeights(loaders, shapes, source=directory, cache=cache)
    tokenizer = tokenizer_from_hf(directory, cfg)
    return LlamaModel(config=config, weights=weights, tokenizer=tokenizer, source=directory)


def _hf_key(name: str) -> str:
    """The Hugging Face tensor name of a refquant weight name."""
    return name if name.startswith("lm_head") else "model." + name


def save_hf(model: LlamaModel, directory, *, dtype: str = "F32") -> pathlib.Path:
    """Write ``model`` as a Hugging Face Llama directory.

    ``config.json`` (``LlamaForCausalLM``), ``model.safetensors`` (``model.``-prefixed names, Q/K
    in the Hugging Face rotary layout, ``dtype`` ``"F32"`` or ``"F16"``) and ``tokenizer.json``
    when the model has a tokenizer. Loading the directory back with :func:`load_model` or with
    ``transformers.LlamaForCausalLM.from_pretrained`` gives the same model.
    """
    from safetensors.numpy import save_file

    from refquant.models.config_checks import hf_config_json

    if dtype not in ("F32", "F16"):
        raise ValueError(f"dtype must be 'F32' or 'F16', got {dtype!r}")
    np_dtype = np.float32 if dtype == "F32" else np.float16
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    c = model.config
    tok = model.tokenizer
    cfg = hf_config_json(c) | {"torch_dtype": "float32" if dtype == "F32" else "float16"}
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
