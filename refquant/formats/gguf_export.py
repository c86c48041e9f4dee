"""Whole GGUF files that llama.cpp runs: metadata, tokenizer, tensor names, Q/K rows, the mix.

:class:`GGUFExporter` writes a Llama as ``llama-quantize`` would, with the ``gguf`` package's
``GGUFWriter``, streamed tensor by tensor:

1. the *plan*: every weight's llama.cpp name (:func:`refquant.models.gguf_hf.gguf_name`), shape
   and GGML type (:func:`refquant.formats.gguf_mix.tensor_types`: the mix's rules and the
   fallback for rows that are not a multiple of 256) is fixed first; a type that
   :mod:`refquant.formats.ggml` does not have is refused before anything is written;
2. the header, the metadata and the tensor table go to ``OUT.partial``;
3. each tensor's bytes are written as soon as they are made (:meth:`GGUFExporter.write`), in the
   plan's order: Q and K rows permuted back to llama.cpp's interleaved rotary order
   (:func:`refquant.models.gguf_hf.permute_qk`; refquant's weights are always in the Hugging Face
   order), quantized by :func:`refquant.formats.ggml.quantize` with the tensor's importance
   vector when one is given; the SHA-256 of each tensor's bytes is kept, nothing else;
4. :meth:`GGUFExporter.close` re-reads the file through refquant's GGUF parser and loader
   (:func:`refquant.models.gguffile.read_gguf`, the model cross-checks): every tensor's name,
   type, shape and bytes (by hash) and the configuration must come back, and only then is the
   file renamed to ``OUT``.

Metadata: from a GGUF source every key is copied with its type (as the GGUF parser read it),
as ``llama-quantize`` does, and ``general.file_type`` / ``general.quantization_version`` are set;
from a Hugging Face source the ``llama.*`` keys come from the configuration and the tokenizer
from ``tokenizer.json`` (:func:`tokenizer_metadata`: byte-level BPE only).

References
----------
.. [1] ggml-org/llama.cpp, ``src/llama-quant.cpp`` (``llama_model_quantize_impl``: the KV copy,
       the file type, the per-tensor loop) and ``convert_hf_to_gguf.py`` (``LlamaModel``: keys,
       names, ``permute``, ``_set_vocab_gpt2``).
.. [2] GGUF file format specification, ``docs/gguf.md`` in the ggml repository.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib

import numpy as np

from refquant.formats.gguf_mix import MIXES, file_type, resolve_mix, tensor_types
from refquant.models.gguf_hf import gguf_name, permute_qk, qk_heads

QUANTIZATION_VERSION = 2                 # GGML_QNT_VERSION
_SKIP_KEYS = ("general.architecture", "general.file_type", "general.quantization_version",
              "general.alignment")


class GGUFExportError(RuntimeError):
    """The written file does not read back as written (names the tensor or key)."""


@dataclasses.dataclass(frozen=True)
class PlannedTensor:
    """One tensor of the file: refquant name, llama.cpp name, NumPy shape, GGML type."""

    name: str
    gguf_name: str
    shape: tuple
    type_name: str


def plan_tensors(config, mix: str, *, has_imatrix: bool = False, pure: bool = False
                 ) -> list[PlannedTensor]:
    """The tensors of ``config``'s Llama in file order, each with the type ``llama-quantize``
    gives it in ``mix`` (the tied head is not stored)."""
    shapes = {n: s for n, s in config.weight_shapes().items()}
    names = {n: gguf_name(n) for n in shapes}
    types = tensor_types({names[n]: s for n, s in shapes.items()}, mix,
                         n_layers=config.n_layers, n_gqa=config.n_heads // config.n_kv_heads,
                         has_imatrix=has_imatrix, pure=pure)
    return [PlannedTensor(n, names[n], tuple(s), types[names[n]]) for n, s in shapes.items()]


def require_types(plan: list[PlannedTensor], mix: str) -> None:
    """ValueError naming the block types of ``plan`` that :mod:`refquant.formats.ggml` does not
    have (yet), and the tensors that need them."""
    from refquant.formats.ggml import TYPES

    missing: dict[str, list[str]] = {}
    for t in plan:
        if t.type_name not in ("F32", "F16") and t.type_name not in TYPES:
            missing.setdefault(t.type_name, []).append(t.gguf_name)
    if missing:
        what = "; ".join(f"{k} (for {len(v)} tensors, e.g. {v[0]})" for k, v in missing.items())
        raise ValueError(f"GGUF type {mix}: refquant.formats.ggml has no block type {what}; "
                         f"available: {sorted(TYPES)}")


def importance_for(imatrix, t: PlannedTensor, source) -> np.ndarray | None:
    """The importance vector of tensor ``t`` from ``imatrix`` (None without an entry, as
    ``llama-quantize`` quantizes such a tensor without one); ValueError naming the file and
    tensor when its length is not the row length."""
    if imatrix is None or t.gguf_name not in imatrix.entries:
        return None
    w = imatrix.importance(t.gguf_name)
    if w.shape != (t.shape[-1],):
        raise ValueError(f"{source}: imatrix entry {t.gguf_name!r} has {w.size} values; the "
                         f"tensor's rows have {t.shape[-1]} (shape {t.shape})")
    return w


def file_row_order(A: np.ndarray, t: PlannedTensor, config) -> np.ndarray:
    """The rows of ``A`` (weights, or bytes ``[rows, row_bytes]``: a GGML block runs along a row,
    so the two commute) in the file's order: Q and K rows from Hugging Face halves to llama.cpp's
    rotary pairs, every other tensor as it is."""
    heads = qk_heads(t.name, config.n_heads, config.n_kv_heads)
    return A if heads is None else permute_qk(A, heads)


def tensor_bytes(W: np.ndarray, t: PlannedTensor, config, imatrix_row=None) -> np.ndarray:
    """The stored bytes (uint8, ``[rows, row_bytes]``, or ``[n_bytes]`` for a vector) of the
    float weight ``W`` (refquant's Hugging Face row order) as tensor ``t`` of the file."""
    from refquant.formats import ggml

    W = file_row_order(np.asarray(W, np.float32), t, config)
    if t.type_name == "F32":
        return np.ascontiguousarray(W).view(np.uint8).reshape(*W.shape[:-1], -1)
    if t.type_name == "F16":
        return np.ascontiguousarray(W.astype(np.float16)).view(np.uint8).reshape(*W.shape[:-1], -1)
    return ggml.quantize(W, t.type_name, imatrix=imatrix_row)


def tokenizer_metadata(tokenizer) -> dict:
    """``tokenizer.ggml.*`` keys of a byte-level BPE tokenizer (the ``tokenizers`` backend of a
    :class:`refquant.models.tokenizer.Tokenizer`), as ``convert_hf_to_gguf.py`` writes them:
    tokens in id order, merges ``"a b"``, types 1 (normal), 3 (special added token: control),
    4 (other added token: user-defined), the pre-tokenizer by its structure."""
    spec = json.loads(tokenizer.backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise ValueError("only byte-level BPE tokenizers (GGUF 'gpt2') can be exported, got "
                         f"model type {model.get('type')!r}")
    vocab = dict(model["vocab"])
    types = {}
    for tok in spec.get("added_tokens") or []:
        vocab[tok["content"]] = tok["id"]
        types[tok["id"]] = 3 if tok.get("special") else 4
    n = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(n)]
    for s, i in vocab.items():
        tokens[i] = s
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": _pre_name(spec),
            "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": merges,
            "tokenizer.ggml.token_type": [types.get(i, 1) for i in range(n)]}
    probe = tokenizer.backend.encode("a", add_special_tokens=True).ids
    meta["tokenizer.ggml.add_bos_token"] = bool(tokenizer.bos_id is not None and probe
                                                and probe[0] == tokenizer.bos_id)
    if tokenizer.bos_id is not None:
        meta["tokenizer.ggml.bos_token_id"] = int(tokenizer.bos_id)
    if tokenizer.eos_id is not None:
        meta["tokenizer.ggml.eos_token_id"] = int(tokenizer.eos_id)
    return meta


def _pre_name(spec: dict) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` of a ``tokenizer.json`` pre-tokenizer (the three that
    refquant's GGUF tokenizer builds; anything else is refused)."""
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        return "llama-bpe"
    raise ValueError(f"pre-tokenizer {kinds} has no known llama.cpp name (tokenizer.ggml.pre)")


def _architecture_keys(c, name: str) -> list[tuple]:
    """The ``llama.*`` keys of configuration ``c``, as ``convert_hf_to_gguf.py`` types them."""
    import gguf

    V = gguf.GGUFValueType
    out = [("general.name", name, V.STRING, None),
           ("llama.context_length", c.max_seq_len, V.UINT32, None),
           ("llama.embedding_length", c.d_model, V.UINT32, None),
           ("llama.block_count", c.n_layers, V.UINT32, None),
           ("llama.feed_forward_length", c.d_ff, V.UINT32, None),
           ("llama.rope.dimension_count", c.head_dim, V.UINT32, None),
           ("llama.attention.head_count", c.n_heads, V.UINT32, None),
           ("llama.attention.head_count_kv", c.n_kv_heads, V.UINT32, None),
           ("llama.attention.layer_norm_rms_epsilon", c.norm_eps, V.FLOAT32, None),
           ("llama.rope.freq_base", c.rope_theta, V.FLOAT32, None),
           ("llama.vocab_size", c.vocab_size, V.UINT32, None)]
    if c.head_dim * c.n_heads != c.d_model:
        out += [("llama.attention.key_length", c.head_dim, V.UINT32, None),
                ("llama.attention.value_length", c.head_dim, V.UINT32, None)]
    return out


def model_metadata(model, mix: str) -> list[tuple]:
    """``(key, value, GGUFValueType, element type or None)`` for every key of the file except
    ``general.architecture`` (the writer adds it).

    The ``llama.*`` architecture keys always come from ``model.config`` (what is written); from
    a GGUF source every other key is copied with its type, from a Hugging Face source the
    tokenizer keys come from its ``tokenizer.json``.
    """
    import gguf

    V = gguf.GGUFValueType
    source = pathlib.Path(model.source)
    arch = _architecture_keys(model.config, source.stem)
    out = []
    if source.is_file():                                 # GGUF: copy every key, typed
        from refquant.models.gguffile import read_gguf

        f = read_gguf(source)
        arch = [k for k in arch if k[0] != "general.name" or "general.name" not in f.metadata]
        own = {k[0] for k in arch}
        for key, value in f.metadata.items():
            if key in _SKIP_KEYS or key in own:
                continue
            vtype, etype = f.metadata_types[key]
            out.append((key, value, V(vtype), None if etype is None else V(etype)))
    else:
        if model.tokenizer is None:
            raise ValueError(f"{source}: no tokenizer.json; a GGUF file needs the tokenizer")
        types = {"tokenizer.ggml.tokens": (V.ARRAY, V.STRING),
                 "tokenizer.ggml.merges": (V.ARRAY, V.STRING),
                 "tokenizer.ggml.token_type": (V.ARRAY, V.INT32),
                 "tokenizer.ggml.add_bos_token": (V.BOOL, None)}
        for k, v in tokenizer_metadata(model.tokenizer).items():
            out.append((k, v, *types.get(k, (V.STRING if isinstance(v, str) else V.UINT32, None))))
    out = arch + out
    out += [("general.file_type", file_type(mix), V.UINT32, None),
            ("general.quantization_version", QUANTIZATION_VERSION, V.UINT32, None)]
    return out


class GGUFExporter:
    """Write one GGUF file tensor by tensor (see the module docstring for the order of steps).

    Parameters
    ----------
    path : path
        The file to write; it appears only after :meth:`close` has verified it.
    model : LlamaModel
        Its configuration, tokenizer and source (for the metadata).
    mix : str
        A name of :data:`refquant.formats.gguf_mix.MIXES` (or an alias).
    has_imatrix, pure : bool
        Passed to the mix rules.
    """

    def __init__(self, path, model, mix: str, *, has_imatrix: bool = False, pure: bool = False):
        import gguf

        self.mix = resolve_mix(mix)
        self.path = pathlib.Path(path)
        self.config = model.config
        self.plan = plan_tensors(model.config, self.mix, has_imatrix=has_imatrix, pure=pure)
        require_types(self.plan, self.mix)
        self.metadata = model_metadata(model, self.mix)
        self._tmp = self.path.with_name(self.path.name + ".partial")
        self._next = 0
        self._hashes: dict[str, str] = {}
        self._writer = w = gguf.GGUFWriter(str(self._tmp), "llama")
        for key, value, vtype, sub in self.metadata:
            w.add_key_value(key, value, vtype, sub_type=sub)
        for t in self.plan:
            nbytes = int(np.prod(t.shape)) * _bytes_per_value(t.type_name)
            qtype = gguf.GGMLQuantizationType[t.type_name]
            w.add_tensor_info(t.gguf_name, t.shape, np.dtype(np.float32), int(nbytes),
                              raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()

    @property
    def pending(self) -> list[PlannedTensor]:
        """The tensors still to write, in order."""
        return self.plan[self._next:]

    def write(self, name: str, data: np.ndarray) -> None:
        """Append the bytes of the next planned tensor (refquant name ``name``)."""
        if self._next >= len(self.plan) or self.plan[self._next].name != name:
            want = self.plan[self._next].name if self._next < len(self.plan) else "nothing"
            raise GGUFExportError(f"{self.path}: expected {want} next, got {name}")
        data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
        self._writer.write_tensor_data(data)
        self._hashes[self.plan[self._next].gguf_name] = hashlib.sha256(data).hexdigest()
        self._next += 1

    def close(self) -> pathlib.Path:
        """Finish the file, verify it by re-reading (:class:`GGUFExportError` otherwise), and
        rename it to its final name."""
        try:
            if self.pending:
                raise GGUFExportError(f"{self.path}: {len(self.pending)} tensors not written, "
                                      f"first {self.pending[0].name}")
            self._writer.close()
            _verify(self._tmp, self.plan, self._hashes, self.metadata, self.config, self.path)
            os.replace(self._tmp, self.path)
        finally:
            self._writer.close()
            self._tmp.unlink(missing_ok=True)
        return self.path

    def abort(self) -> None:
        """Stop and remove the partial file."""
        self._writer.close()
        self._tmp.unlink(missing_ok=True)


def _bytes_per_value(type_name: str) -> float:
    from refquant.formats import ggml

    if type_name in ("F32", "F16"):
        return {"F32": 4, "F16": 2}[type_name]
    t = ggml.block_type(type_name)
    return t.type_size / t.block_size


def _verify(tmp, plan, hashes, metadata, config, final) -> None:
    """Re-read ``tmp``: every planned tensor with its type, shape and bytes, every key, and the
    model configuration (through the loader's cross-checks)."""
    from refquant.models.gguffile import read_gguf
    from refquant.models.loaders import gguf_model_tensors

    f = read_gguf(tmp)
    for t in plan:
        got = f.tensors.get(t.gguf_name)
        if got is None or got.type_name != t.type_name or got.shape != t.shape:
            raise GGUFExportError(f"{final}: tensor {t.gguf_name} reads back as "
                                  f"{None if got is None else (got.type_name, got.shape)}, "
                                  f"written as {(t.type_name, t.shape)}")
        if hashlib.sha256(np.asarray(got.data)).hexdigest() != hashes[t.gguf_name]:
            raise GGUFExportError(f"{final}: tensor {t.gguf_name}: bytes differ on re-reading")
    for key, value, _, _ in metadata:
        back = f.metadata.get(key)
        same = back == value or (isinstance(value, float) and np.float32(value) == np.float32(back))
        if not same:
            raise GGUFExportError(f"{final}: metadata {key!r} reads back as {back!r:.80}")
    back_config, _ = gguf_model_tensors(f)
    want = dataclasses.replace(config, norm_eps=float(np.float32(config.norm_eps)),
                               rope_theta=float(np.float32(config.rope_theta)))
    if back_config != want:
        raise GGUFExportError(f"{final}: configuration reads back as {back_config}, not {want}")


def export_gguf(model, path, mix: str, *, imatrix=None, pure: bool = False,
                imatrix_source="imatrix") -> pathlib.Path:
    """Quantize ``model`` round-to-nearest as ``llama-quantize`` does (its mix, its ggml
    quantizers, the importance matrix where given) and write the GGUF file ``path``.

    Tensors are read, quantized and written one at a time; those this call read into the
    model's cache are dropped again after each, so memory stays at one tensor. Every importance
    vector is checked against its tensor before anything is written (ValueError naming
    ``imatrix_source`` and the tensor). Returns the verified file's path.
    """
    plan = plan_tensors(model.config, resolve_mix(mix), has_imatrix=imatrix is not None, pure=pure)
    rows = {t.name: importance_for(imatrix, t, imatrix_source) for t in plan}
    exporter = GGUFExporter(path, model, mix, has_imatrix=imatrix is not None, pure=pure)
    weights = model.weights
    keep = set(weights.cached_names()) if hasattr(weights, "cached_names") else None
    try:
        for t in exporter.plan:
            exporter.write(t.name, tensor_bytes(weights[t.name], t, model.config, rows[t.name]))
            if keep is not None and t.name not in keep:
                weights.drop_cache([t.name])
    except BaseException:
        exporter.abort()
        raise
    return exporter.close()


__all__ = ["GGUFExporter", "GGUFExportError", "PlannedTensor", "plan_tensors", "require_types",
           "importance_for", "file_row_order", "tensor_bytes", "tokenizer_metadata", "model_metadata",
           "export_gguf", "MIXES"]
