"""Writing a GPTQ checkpoint, shard by shard, so that only a finished export can be read.

The order of the writes is what makes an interrupted export harmless
(:mod:`refquant.formats.gptq_files` lists the files):

1. refuse a directory that already holds shards, an index or a ``quantize_config.json``
   (a reader takes every shard of the directory, and a stale config would vouch for a
   partial set of new shards);
2. each :meth:`CheckpointWriter.write` stores one shard under a provisional name and verifies
   it by re-reading it through the checked reader;
3. :meth:`CheckpointWriter.close` renames the shards to their final names, writes the index,
   given the model the Hugging Face files (tokenizer, ``generation_config.json``, then
   ``config.json`` with its ``quantization_config``: :mod:`refquant.formats.gptq_hf`), and
   writes ``quantize_config.json`` *last*, through a temporary file and a rename
   (:func:`~refquant.formats.gptq_files.write_json_atomic`), with the manifest of every shard
   and its tensor count.

Before step 3 completes there is no ``quantize_config.json``, so neither ``refquant eval`` nor
``refquant inspect`` takes the directory for a checkpoint; after it, the manifest lets the
reader reject any shard that is later lost or added. ``source_model`` is stored as an absolute
path, so the checkpoint can be evaluated from any directory. A ``config.json`` that names
refquant as its quantizer without a ``quantize_config.json`` beside it is refused by the
reader, so the Hugging Face files never make an unfinished export readable.

In the v1 ``"gptq"`` format a zero point equal to 0 is stored as :math:`2^b - 1`, which some
peer readers misread (:func:`~refquant.formats.gptq_layers.v1_zero_point_note`): ``write``
then issues a :class:`~refquant.formats.gptq_layers.V1ZeroPointWarning` naming the layer and the
count, and ``CheckpointWriter.v1_zero_points`` collects them.
"""

from __future__ import annotations

import pathlib
import warnings

import numpy as np

from refquant.formats.gptq_files import (CONFIG_FILE, INDEX_FILE, MANIFEST_KEY, WEIGHTS_FILE,
                                         read_shard, write_json_atomic)
from refquant.formats.gptq_hf import HF_FILES, quantization_config, write_model_files
from refquant.formats.gptq_layers import (CHECKPOINT_FORMATS, GPTQCheckpointError, PackedLayer,
                                          V1ZeroPointWarning, dequantize_layer, hf_name,
                                          is_symmetric, pack_layer, split_tensors,
                                          v1_zero_point_note, v1_zero_points)


def export_checkpoint(directory, layers: dict[str, PackedLayer], float_tensors: dict[str, np.ndarray],
                      *, checkpoint_format: str = "gptq", desc_act: bool = False,
                      static_groups: bool = False, damp_percent: float = 0.01,
                      extra_config: dict | None = None, model=None) -> pathlib.Path:
    """Write ``model.safetensors`` + ``quantize_config.json`` (given ``model``, the Hugging Face
    files too) and verify them by re-reading.

    Parameters
    ----------
    directory : path
        Created if missing; must not hold a checkpoint (shards, index or config) already.
    layers : dict
        refquant layer name (``layers.3.mlp.down_proj``, without ``.weight``) -> :class:`PackedLayer`.
    float_tensors : dict
        refquant tensor name (``embed_tokens.weight``, ...) -> float array, stored as float16 if
        it is float16, else as float32 (a copied source tensor keeps its dtype).
    checkpoint_format : {"gptq", "gptq_v2"}
        Zero-point convention, see :mod:`refquant.formats.gptq`.
    model : LlamaModel, optional
        The model quantized (its ``config``, ``tokenizer`` and ``source`` are used): write
        ``config.json``, the tokenizer files and ``generation_config.json``
        (:mod:`refquant.formats.gptq_hf`), so transformers and GPTQModel read the directory.

    Returns
    -------
    pathlib.Path of the directory.

    Raises
    ------
    GPTQCheckpointError
        If re-importing does not give back every code, zero point, float16 scale, ``g_idx`` and
        hence the dequantized weight (:func:`dequantize_layer`) bit for bit, or any float tensor.

    See :class:`CheckpointWriter` to write a checkpoint block by block.
    """
    writer = CheckpointWriter(directory, checkpoint_format=checkpoint_format, desc_act=desc_act,
                              static_groups=static_groups, damp_percent=damp_percent,
                              extra_config=extra_config, model=model)
    writer.write(layers, float_tensors, filename=WEIGHTS_FILE)
    return writer.close()


class CheckpointWriter:
    """Write a GPTQ checkpoint in shards, e.g. one per block, so a model larger than memory can be
    exported while it is quantized (:func:`refquant.pipeline.blockwise.quantize_model`'s ``sink``).

    Each :meth:`write` stores one ``.safetensors`` shard and verifies it at once by re-reading it
    (codes, zero points, float16 scale bits, ``g_idx``, hence the dequantized weight, and every
    float tensor's dtype and bits; :class:`GPTQCheckpointError` otherwise), so only one shard is ever in
    memory. :meth:`close` names the shards ``model-00001-of-0000N.safetensors`` and writes
    ``model.safetensors.index.json`` (the Hugging Face ``weight_map``), given ``model`` the
    Hugging Face files (:mod:`refquant.formats.gptq_hf`) and, last, ``quantize_config.json``
    (the keys of :func:`~refquant.formats.gptq_hf.quantization_config`: global ``bits`` /
    ``group_size`` / ``sym``, the most common setting; every layer's own in
    ``refquant_layers``; the shard manifest). A single shard written as ``model.safetensors``
    gets no index. See the module docstring for why in this order.
    """

    def __init__(self, directory, *, checkpoint_format: str = "gptq", desc_act: bool = False,
                 static_groups: bool = False, damp_percent: float = 0.01, extra_config: dict | None = None,
                 model=None):
        if checkpoint_format not in CHECKPOINT_FORMATS:
            raise ValueError(f"checkpoint_format must be one of {CHECKPOINT_FORMATS}, got {checkpoint_format!r}")
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        old = sorted(p.name for p in self.directory.glob("*.safetensors"))
        mine = (CONFIG_FILE, INDEX_FILE, "config.json") + (HF_FILES if model is not None else ())
        old += [f for f in dict.fromkeys(mine) if (self.directory / f).exists()]
        if old:
            # a reader takes every shard in the directory, a stale config would vouch for them,
            # and no file of the user's is overwritten (or removed by a failed run)
            raise GPTQCheckpointError(f"{self.directory} already holds {old}; export into a new or "
                                      "empty directory")
        self.checkpoint_format = checkpoint_format
        self.desc_act, self.static_groups, self.damp_percent = desc_act, static_groups, damp_percent
        self.extra_config = dict(extra_config or {})
        if self.extra_config.get("source_model") is not None:
            self.extra_config["source_model"] = str(pathlib.Path(self.extra_config["source_model"]).absolute())
        self.model = model
        self._shards: list[tuple[str, list[str]]] = []      # file name, tensor names
        self._layer_meta: dict[str, dict] = {}              # name -> bits, group_size, sym
        self._float_linears: list[str] = []                 # block linears stored in float
        self.v1_zero_points: dict[str, int] = {}            # v1 layer -> zero points equal to 0
        self._total_bytes = 0
        self._closed = False

    def write(self, layers: dict[str, PackedLayer], float_tensors: dict[str, np.ndarray], *,
              filename: str | None = None) -> pathlib.Path:
        """Store ``layers`` and ``float_tensors`` (refquant names) as the next shard and verify it."""
        from safetensors.numpy import save_file

        if self._closed:
            raise GPTQCheckpointError("this CheckpointWriter is closed")
        tensors = {}
        for name, layer in layers.items():
            if name in self._layer_meta:
                raise GPTQCheckpointError(f"{name}: written twice")
            for key, t in pack_layer(layer, self.checkpoint_format).items():
                tensors[f"{hf_name(name)}.{key}"] = t
        for name, t in float_tensors.items():
            tensors[hf_name(name)] = _float_tensor(t)
        filename = filename or f"model-{len(self._shards) + 1:05d}.safetensors"
        path = self.directory / filename
        save_file(tensors, str(path), metadata={"format": "pt"})
        per_layer = {n: {"bits": ly.bits, "group_size": ly.group_size} for n, ly in layers.items()}
        back_layers, back_float = split_tensors(read_shard(path), per_layer, {}, self.checkpoint_format,
                                                keep_dtype=True)
        _verify_round_trip(layers, float_tensors, back_layers, back_float, path)
        self._float_linears += [n.removesuffix(".weight") for n, t in float_tensors.items()
                                if n.startswith("layers.") and np.ndim(t) == 2]
        if self.checkpoint_format == "gptq":
            for name, ly in layers.items():
                n0 = v1_zero_points(ly)
                if n0:
                    self.v1_zero_points[name] = n0
                    warnings.warn(v1_zero_point_note(name, n0, ly.bits), V1ZeroPointWarning,
                                  stacklevel=2)
        self._layer_meta.update({n: {"bits": int(ly.bits), "group_size": int(ly.group_size),
                                     "sym": is_symmetric(ly)} for n, ly in layers.items()})
        self._shards.append((filename, list(tensors)))
        self._total_bytes += sum(t.nbytes for t in tensors.values())
        return path

    @property
    def n_layers(self) -> int:
        """Quantized layers written so far."""
        return len(self._layer_meta)

    def close(self) -> pathlib.Path:
        """Name the shards, write the index, the Hugging Face files (given ``model``), then
        ``quantize_config.json``; returns the directory."""
        if self._closed:
            raise GPTQCheckpointError("this CheckpointWriter is already closed")
        if not self._shards:
            raise GPTQCheckpointError("no shard was written")
        self._closed = True
        n = len(self._shards)
        manifest = {}
        if n > 1 or self._shards[0][0] != WEIGHTS_FILE:
            weight_map = {}
            for k, (name, keys) in enumerate(self._shards, start=1):
                final = f"model-{k:05d}-of-{n:05d}.safetensors"
                (self.directory / name).rename(self.directory / final)
                weight_map.update({key: final for key in keys})
                manifest[final] = len(keys)
            index = {"metadata": {"total_size": self._total_bytes}, "weight_map": weight_map}
            write_json_atomic(self.directory / INDEX_FILE, index)
        else:
            manifest[WEIGHTS_FILE] = len(self._shards[0][1])
        qc = quantization_config(self._layer_meta, checkpoint_format=self.checkpoint_format,
                                 desc_act=self.desc_act, static_groups=self.static_groups,
                                 damp=self.damp_percent, float_linears=self._float_linears)
        if self.model is not None:
            write_model_files(self.directory, self.model, qc)
        config = qc | {"refquant_layers": dict(self._layer_meta)} | self.extra_config
        write_json_atomic(self.directory / CONFIG_FILE, config | {MANIFEST_KEY: manifest})
        return self.directory


def _verify_round_trip(layers, float_tensors, back_layers, back_float, where):
    """Raise :class:`GPTQCheckpointError` unless what was read back equals what was written, bit
    for bit."""
    for name, layer in layers.items():
        got = back_layers.get(name)
        if got is None:
            raise GPTQCheckpointError(f"{where}: {name} missing after re-import")
        for attr in ("codes", "zeros", "g_idx"):
            if not np.array_equal(getattr(got, attr), getattr(layer, attr)):
                raise GPTQCheckpointError(f"{where}: {name}.{attr}: re-imported values differ")
        if not np.array_equal(got.scales.view(np.uint16), layer.scales.astype(np.float16).view(np.uint16)):
            raise GPTQCheckpointError(f"{where}: {name}.scales: re-imported float16 bits differ")
        # dequantize_layer is a function of the four parts compared above: with float16 scales
        # the dequantized weights are then equal, and only other scales need the comparison
        if layer.scales.dtype != np.float16 and \
                not np.array_equal(dequantize_layer(got), dequantize_layer(layer)):
            raise GPTQCheckpointError(f"{where}: {name}: re-imported dequantized weight differs")
    for name, t in float_tensors.items():
        t = _float_tensor(t)
        back = back_float.get(name)
        if back is None or back.dtype != t.dtype or not np.array_equal(back, t):
            raise GPTQCheckpointError(f"{where}: {name}: re-imported float tensor differs")


def _float_tensor(t) -> np.ndarray:
    """A float tensor as stored: float16 stays float16, any other float type is float32."""
    t = np.asarray(t)
    dtype = np.float16 if t.dtype == np.float16 else np.float32
    return np.ascontiguousarray(t, dtype=dtype)


__all__ = ["CheckpointWriter", "export_checkpoint"]
