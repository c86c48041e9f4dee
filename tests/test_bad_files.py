"""No damaged file passes silently: every case of the reliability issue, each asserting the
exception type and that the message names the offending file, tensor, key or value.

Oracles: the damage itself, made here by patching bytes of good files at positions computed
by hand from the GGUF / safetensors layouts (the bundled SmolLM2 GGUF copied to ``tmp_path``, tiny
models written by the ``gguf`` and ``safetensors`` packages, a tiny GPTQ checkpoint written by
refquant's own writer), and what ggml's loader does with the same bytes (it rejects a tensor
whose offset is not the padded end of the previous one).
"""

from __future__ import annotations

import json
import os
import shutil
import struct

import numpy as np
import pytest

import refquant as rq
from refquant.cli import main
from refquant.formats import gptq
from refquant.formats.audit import audit_checkpoint
from refquant.models.errors import CheckpointError, CorruptCheckpoint, ModelFormatError
from refquant.models.gguffile import read_gguf
from refquant.models.resources import bundled_model_path

from helpers_model import tiny_config, tiny_weights, write_tiny_gguf, write_tiny_hf

pytest.importorskip("gguf", reason="GGUF files need the gguf package")

F16_NAN = b"\x00\x7e"                    # float16 0x7E00, a quiet NaN, little endian


# ------------------------------------------------------------------------------------- helpers

@pytest.fixture()
def bundled_copy(tmp_path):
    dst = tmp_path / "smollm2.gguf"
    shutil.copyfile(bundled_model_path(), dst)
    return dst


def _patch(path, pos: int, data: bytes):
    with open(path, "r+b") as f:
        f.seek(pos)
        f.write(data)


def _header_pos(path, key: str) -> int:
    """Byte just after a GGUF string ``key`` (a metadata key or a tensor name) in the header."""
    f = read_gguf(path)
    with open(path, "rb") as fh:
        head = fh.read(f.data_start)
    needle = struct.pack("<Q", len(key)) + key.encode()
    assert head.count(needle) == 1, key
    return head.index(needle) + len(needle)


def _tensor_info_pos(path, name: str) -> tuple[int, int]:
    """Byte positions of a tensor's u32 GGML type and u64 offset in its header entry:
    ``name | u32 n_dims | u64 dims[n_dims] | u32 type | u64 offset``."""
    pos = _header_pos(path, name)
    with open(path, "rb") as fh:
        fh.seek(pos)
        (n_dims,) = struct.unpack("<I", fh.read(4))
    type_pos = pos + 4 + 8 * n_dims
    return type_pos, type_pos + 4


def _read_u64(path, pos):
    with open(path, "rb") as fh:
        fh.seek(pos)
        return struct.unpack("<Q", fh.read(8))[0]


# --------------------------------------------------------------- GGUF: values (lazy, when read)

@pytest.mark.parametrize("tensor,offset,data,weight", [
    ("blk.3.attn_q.weight", 20 * 7, F16_NAN, "layers.3.self_attn.q_proj.weight"),   # block 7: d
    ("blk.3.attn_q.weight", 20 * 7 + 2, F16_NAN, "layers.3.self_attn.q_proj.weight"),  # m
    ("blk.3.attn_norm.weight", 4 * 5, struct.pack("<f", float("nan")), "layers.3.input_layernorm.weight"),
    ("blk.3.attn_norm.weight", 4 * 5, struct.pack("<f", float("inf")), "layers.3.input_layernorm.weight"),
])
def test_nan_in_bundled_scale_or_norm_raises_when_read(bundled_copy, tensor, offset, data, weight):
    """A NaN in a Q4_1 scale or minimum, a NaN/Inf in an F32 norm: the model still loads lazily,
    and reading that one weight raises naming the file and the tensor."""
    _patch(bundled_copy, read_gguf(bundled_copy).tensors[tensor].offset + offset, data)
    model = rq.load_model(bundled_copy)
    model.weights["layers.2.self_attn.q_proj.weight"]             # other tensors read fine
    with pytest.raises(CorruptCheckpoint, match=rf"smollm2.gguf: tensor '{tensor}' holds \d+ NaN or Inf"):
        model.weights[weight]


def test_eval_of_a_nan_scale_exits_2_naming_the_tensor(bundled_copy, capsys):
    _patch(bundled_copy, read_gguf(bundled_copy).tensors["blk.1.ffn_down.weight"].offset, F16_NAN)
    assert main(["eval", str(bundled_copy), "--tokens", "40", "--seq-len", "32"]) == 2
    out, err = capsys.readouterr()
    assert "smollm2.gguf: tensor 'blk.1.ffn_down.weight' holds 32 NaN" in err   # the whole block
    assert "perplexity:" not in out


def test_inspect_flags_a_nan_scale(tmp_path, capsys):
    """inspect reports values (exit 1, 'scales_finite' false) where load_model raises."""
    cfg = tiny_config()
    path = write_tiny_gguf(tmp_path / "q.gguf", cfg, tiny_weights(cfg), qtype="Q4_1")
    _patch(path, read_gguf(path).tensors["blk.0.ffn_up.weight"].offset, F16_NAN)
    assert main(["inspect", str(path)]) == 1
    out = capsys.readouterr().out
    assert "blk.0.ffn_up.weight" in out and "scales_finite" in out
    with pytest.raises(CorruptCheckpoint, match="q.gguf: tensor 'blk.0.ffn_up.weight'"):
        rq.load_model(path).weights["layers.0.mlp.up_proj.weight"]


# ------------------------------------------------------------- GGUF: layout (at load, and inspect)

def test_type_byte_q4_1_to_q4_0(bundled_copy, capsys):
    """Q4_0 blocks are 18 bytes, Q4_1 20: the next tensor no longer starts where this one ends."""
    type_pos, _ = _tensor_info_pos(bundled_copy, "blk.3.attn_q.weight")
    _patch(bundled_copy, type_pos, struct.pack("<I", 2))            # GGML_TYPE_Q4_0 = 2
    with pytest.raises(CorruptCheckpoint, match=r"smollm2.gguf: tensor '.*' .*expected .* at the end "
                       r"of tensor 'blk.3.attn_q.weight' \(Q4_0"):
        rq.load_model(bundled_copy)
    assert main(["inspect", str(bundled_copy)]) == 2
    assert "blk.3.attn_q.weight" in capsys.readouterr().err


@pytest.mark.parametrize("shift,message", [(32, r"has data offset \d+, expected \d+"),
                                           (1, r"data offset \d+ is not aligned to general.alignment=32")])
def test_tensor_offset_moved(bundled_copy, shift, message, capsys):
    _, off_pos = _tensor_info_pos(bundled_copy, "blk.5.ffn_gate.weight")
    _patch(bundled_copy, off_pos, struct.pack("<Q", _read_u64(bundled_copy, off_pos) + shift))
    with pytest.raises(CorruptCheckpoint, match=rf"smollm2.gguf: tensor 'blk.5.ffn_gate.weight' .*{message}"):
        rq.load_model(bundled_copy)
    assert main(["inspect", str(bundled_copy)]) == 2
    assert "blk.5.ffn_gate.weight" in capsys.readouterr().err


def test_last_tensor_type_changed_leaves_bytes_after_it(tmp_path):
    cfg = tiny_config()
    path = write_tiny_gguf(tmp_path / "m.gguf", cfg, tiny_weights(cfg), qtype="Q8_0")
    last = list(read_gguf(path).tensors)[-1]
    type_pos, _ = _tensor_info_pos(path, last)
    _patch(path, type_pos, struct.pack("<I", 2))                    # Q8_0 (34 B) -> Q4_0 (18 B)
    with pytest.raises(CorruptCheckpoint, match=rf"bytes follow the last tensor '{last}' \(Q4_0"):
        rq.load_model(path)


# --------------------------------------------------------------------------- GGUF: metadata

def test_block_count_lowered(bundled_copy, capsys):
    """30 -> 14 blocks: the tensors of blocks 14..29 would be ignored."""
    pos = _header_pos(bundled_copy, "llama.block_count")
    _patch(bundled_copy, pos + 4, struct.pack("<I", 14))            # after the u32 value type
    with pytest.raises(ModelFormatError, match=r"smollm2.gguf: llama.block_count=14, but the file stores "
                       r"blocks 0..29: the tensors of blocks 14..29 would be ignored"):
        rq.load_model(bundled_copy)
    assert main(["inspect", str(bundled_copy)]) == 2
    assert "llama.block_count=14" in capsys.readouterr().err


@pytest.mark.parametrize("key,fmt,value,message", [
    ("llama.attention.layer_norm_rms_epsilon", "<f", 3.4e33,
     r"llama.attention.layer_norm_rms_epsilon=3.4\d*e\+33 is outside the plausible range"),
    ("llama.rope.freq_base", "<f", 2.0**40, r"llama.rope.freq_base=1099511627776.0 is outside the plausible range"),
    ("llama.vocab_size", "<I", 2**31, r"llama.vocab_size=2147483648 is outside the plausible range"),
    ("llama.attention.head_count_kv", "<I", 9, r"llama.attention.head_count_kv=9 heads of dimension 64 "
     r"give 576 rows, but tensor 'blk.0.attn_k.weight' has 192"),
])
def test_implausible_or_inconsistent_metadata(bundled_copy, key, fmt, value, message):
    pos = _header_pos(bundled_copy, key)
    _patch(bundled_copy, pos + 4, struct.pack(fmt, value))
    with pytest.raises(ModelFormatError, match=rf"smollm2.gguf: {message}"):
        rq.load_model(bundled_copy)


def test_integer_type_for_a_norm(tmp_path):
    """F32 -> I32 (same size) for a norm: rejected by its role, at load."""
    cfg = tiny_config()
    path = write_tiny_gguf(tmp_path / "m.gguf", cfg, tiny_weights(cfg))
    type_pos, _ = _tensor_info_pos(path, "blk.1.ffn_norm.weight")
    _patch(path, type_pos, struct.pack("<I", 26))                   # GGML_TYPE_I32
    with pytest.raises(ModelFormatError, match=r"m.gguf: tensor 'blk.1.ffn_norm.weight' \(a norm\) has "
                       r"type I32"):
        rq.load_model(path)


# -------------------------------------------------------------- Hugging Face JSON and headers

@pytest.fixture()
def hf_dir(tmp_path):
    cfg = tiny_config()
    return write_tiny_hf(tmp_path / "hf", cfg, tiny_weights(cfg), shards=2)


def _edit_json(path, edit):
    value = json.loads(path.read_text())
    path.write_text(json.dumps(edit(value)))


@pytest.mark.parametrize("edit,error,message", [
    (lambda c: [c], CorruptCheckpoint, r"config.json: expected a JSON object, got list"),
    (lambda c: {**c, "num_hidden_layers": None}, ModelFormatError,
     r"config.json: 'num_hidden_layers' must be an integer, got None"),
    (lambda c: {**c, "hidden_size": "32"}, ModelFormatError,
     r"config.json: 'hidden_size' must be an integer, got '32'"),
    (lambda c: {**c, "rms_norm_eps": 3.4e33}, ModelFormatError,
     r"config.json: rms_norm_eps=3.4e\+33 is outside the plausible range"),
    (lambda c: {**c, "num_hidden_layers": 1}, ModelFormatError,
     r"num_hidden_layers=1, but the file stores blocks 0..1: the tensors of blocks 1..1 would be ignored"),
])
def test_hf_config_json(hf_dir, edit, error, message):
    _edit_json(hf_dir / "config.json", edit)
    with pytest.raises(error, match=message):
        rq.load_model(hf_dir)


def test_hf_index_without_weight_map(hf_dir):
    _edit_json(hf_dir / "model.safetensors.index.json", lambda i: {"metadata": {}})
    with pytest.raises(CorruptCheckpoint, match=r"model.safetensors.index.json: key 'weight_map' missing"):
        rq.load_model(hf_dir)


def _patch_st_header(file, old: bytes, new: bytes):
    """Replace bytes in a safetensors JSON header, keeping its length."""
    assert len(old) == len(new)
    raw = bytearray(file.read_bytes())
    n = struct.unpack("<Q", raw[:8])[0]
    head = bytes(raw[8:8 + n])
    assert head.count(old) == 1, old
    raw[8:8 + n] = head.replace(old, new)
    file.write_bytes(bytes(raw))


def _entry(name: str, dtype: str) -> bytes:
    """The start of a tensor's entry in a header written by safetensors (compact JSON)."""
    return f'"{name}":{{"dtype":"{dtype}"'.encode()


def test_hf_header_without_data_offsets(hf_dir):
    f = hf_dir / "model-00001-of-00002.safetensors"
    name = next(k for k in json.loads((hf_dir / "model.safetensors.index.json").read_text())["weight_map"].items()
                if k[1] == f.name)[0]
    raw = f.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    del header[name]["data_offsets"]
    h = json.dumps(header).encode()
    f.write_bytes(struct.pack("<Q", len(h)) + h + raw[8 + n:])
    with pytest.raises(CorruptCheckpoint, match=rf"{f.name}: tensor '{name}': header entry has no 'data_offsets'"):
        rq.load_model(hf_dir)


def test_hf_float_tensor_stored_as_int32(hf_dir):
    f = hf_dir / "model-00001-of-00002.safetensors"
    name = "model.embed_tokens.weight"
    if _entry(name, "F32") not in f.read_bytes():
        f = hf_dir / "model-00002-of-00002.safetensors"
    _patch_st_header(f, _entry(name, "F32"), _entry(name, "I32"))
    with pytest.raises(ModelFormatError, match=rf"tensor '{name}' \(a weight matrix\) has type I32"):
        rq.load_model(hf_dir)


def test_hf_nan_raises_when_read(tmp_path):
    cfg = tiny_config()
    W = tiny_weights(cfg)
    W["layers.1.mlp.down_proj.weight"][3, 4] = np.nan
    model = rq.load_model(write_tiny_hf(tmp_path / "hf", cfg, W))
    with pytest.raises(CorruptCheckpoint, match=r"model.safetensors: tensor 'model.layers.1.mlp.down_proj.weight' "
                       r"holds 1 NaN or Inf value\(s\), the first nan at index \(3, 4\)"):
        model.weights["layers.1.mlp.down_proj.weight"]


# ------------------------------------------------------------------------------ GPTQ checkpoints

def _write_gptq(tmp_path, name="ck", source=None, writer_cls=None):
    """A tiny model's RTN W4 g16 GPTQ checkpoint, one shard per block and one for the rest, as
    ``refquant quantize`` streams it; the source is a tiny GGUF written by the gguf package."""
    cfg = tiny_config()
    W = tiny_weights(cfg)
    src = source or write_tiny_gguf(tmp_path / "m.gguf", cfg, W)
    spec = rq.QuantSpec(bits=4, symmetric=False, granularity="group", group_size=16)
    writer = (writer_cls or gptq.CheckpointWriter)(tmp_path / name, extra_config={"source_model": str(src)})
    for i in range(cfg.n_layers):
        block = {k: w for k, w in W.items() if k.startswith(f"layers.{i}.")}
        layers, floats = {}, {}
        for k, w in block.items():
            if w.ndim == 2:
                qp = rq.calibrate(w, spec)
                layers[k.removesuffix(".weight")] = gptq.layer_from_quantized(rq.quantize(w, qp, spec), qp, spec)
            else:
                floats[k] = w
        writer.write(layers, floats)
    writer.write({}, {k: w for k, w in W.items() if not k.startswith("layers.")})
    return writer.close(), src


def _rejected(d, capsys, error=CheckpointError, match=""):
    """Every reader refuses ``d``: read_checkpoint, audit (inspect exit 2), eval (exit 2)."""
    if gptq.is_gptq_checkpoint(d):
        with pytest.raises(error, match=match):
            gptq.read_checkpoint(d)
    with pytest.raises((CheckpointError, ValueError)):
        audit_checkpoint(d)
    assert main(["inspect", str(d)]) == 2
    assert main(["eval", str(d), "--tokens", "40", "--seq-len", "16"]) == 2
    return capsys.readouterr().err


def test_good_gptq_checkpoint_is_accepted(tmp_path, capsys):
    d, src = _write_gptq(tmp_path)
    cfg = json.loads((d / "quantize_config.json").read_text())
    assert cfg["refquant_files"] == {"model-00001-of-00003.safetensors": 30,
                                     "model-00002-of-00003.safetensors": 30,
                                     "model-00003-of-00003.safetensors": 3}
    assert main(["inspect", str(d)]) == 0
    assert main(["eval", str(d), "--tokens", "40", "--seq-len", "16"]) == 0
    assert "perplexity:" in capsys.readouterr().out


def test_missing_block_shard(tmp_path, capsys):
    """Shard 2 (block 1) deleted and its entries removed from the index: the manifest in
    quantize_config.json still lists it. Without manifest and index, the model check refuses to
    fill the block from the source model."""
    d, _ = _write_gptq(tmp_path)
    gone = "model-00002-of-00003.safetensors"
    (d / gone).unlink()
    _edit_json(d / "model.safetensors.index.json",
               lambda i: {**i, "weight_map": {k: v for k, v in i["weight_map"].items() if v != gone}})
    err = _rejected(d, capsys, gptq.GPTQCheckpointError, rf"shard\(s\) \['{gone}'\] listed in quantize_config.json")
    assert gone in err
    (d / "model.safetensors.index.json").unlink()
    _edit_json(d / "quantize_config.json", lambda c: {k: v for k, v in c.items()
                                                      if k not in ("refquant_files", "refquant_layers")})
    with pytest.raises(gptq.GPTQCheckpointError, match=r"9 weight\(s\) of the model are not in the checkpoint "
                       r"\(nothing is taken from the source model\): \['layers.1.input_layernorm.weight'"):
        gptq.load_quantized_model(d)


def test_layer_listed_in_config_but_absent(tmp_path):
    d, _ = _write_gptq(tmp_path)
    _edit_json(d / "quantize_config.json", lambda c: {**c, "refquant_layers": {
        **c["refquant_layers"], "layers.7.mlp.up_proj": {"bits": 4, "group_size": 16}}})
    with pytest.raises(gptq.GPTQCheckpointError, match=r"1 layer\(s\) listed in quantize_config.json "
                       r"\(refquant_layers\) are not in any shard: \['layers.7.mlp.up_proj'\]"):
        gptq.read_checkpoint(d)


def test_nan_in_a_shard_float_tensor(tmp_path, capsys):
    d, _ = _write_gptq(tmp_path)
    f = d / "model-00003-of-00003.safetensors"
    span = next(s for s in gptq_spans(f) if s.name == "model.norm.weight")
    _patch(f, span.start + 8, struct.pack("<f", float("nan")))
    with pytest.raises(CorruptCheckpoint, match=r"model-00003-of-00003.safetensors: tensor 'model.norm.weight' holds 1 NaN"):
        gptq.read_checkpoint(d)
    assert main(["eval", str(d), "--tokens", "40", "--seq-len", "16"]) == 2
    assert "model.norm.weight" in capsys.readouterr().err
    assert main(["inspect", str(d), "--all"]) == 1                   # inspect reports it
    assert "norm.weight" in capsys.readouterr().out


def gptq_spans(f):
    from refquant.models.layout import scan_safetensors
    return scan_safetensors(f)


def test_float_tensor_dtype_changed_to_int32(tmp_path, capsys):
    d, _ = _write_gptq(tmp_path)
    f = d / "model-00003-of-00003.safetensors"
    _patch_st_header(f, _entry("model.norm.weight", "F32"), _entry("model.norm.weight", "I32"))
    err = _rejected(d, capsys, gptq.GPTQCheckpointError,
                    r"model-00003-of-00003.safetensors: tensor 'model.norm.weight' has dtype int32")
    assert "model.norm.weight" in err


def test_inspect_reports_the_stored_dtype(tmp_path):
    d, _ = _write_gptq(tmp_path)
    rep = audit_checkpoint(d)
    assert {t.stored_type for t in rep.tensors if t.group_size is None} == {"F32"}
    assert {t.stored_type for t in rep.tensors if t.group_size is not None} == {"GPTQ_4bit"}


@pytest.mark.parametrize("edit,message", [
    (lambda c: {**c, "bits": None}, r"quantize_config.json: 'bits' must be an integer, got None"),
    (lambda c: {**c, "group_size": "16"}, r"quantize_config.json: 'group_size' must be an integer, got '16'"),
    (lambda c: [c], r"quantize_config.json: expected a JSON object, got list"),
    (lambda c: {**c, "refquant_layers": {"layers.0.mlp.up_proj": 4}},
     r"quantize_config.json: refquant_layers\['layers.0.mlp.up_proj'\] must be an object, got 4"),
])
def test_malformed_quantize_config(tmp_path, capsys, edit, message):
    d, _ = _write_gptq(tmp_path)
    _edit_json(d / "quantize_config.json", edit)
    with pytest.raises(CheckpointError, match=message):
        gptq.read_checkpoint(d)
    assert main(["inspect", str(d)]) == 2                            # malformed input, not "inconsistent"
    assert "quantize_config.json" in capsys.readouterr().err


def test_gptq_index_without_weight_map(tmp_path):
    d, _ = _write_gptq(tmp_path)
    _edit_json(d / "model.safetensors.index.json", lambda i: {"metadata": {}})
    with pytest.raises(CorruptCheckpoint, match=r"model.safetensors.index.json: key 'weight_map' missing"):
        gptq.read_checkpoint(d)


def test_stale_config_is_refused(tmp_path):
    """A directory that holds a quantize_config.json (and nothing else) is refused at start."""
    d = tmp_path / "ck"
    d.mkdir()
    (d / "quantize_config.json").write_text("{}")
    with pytest.raises(gptq.GPTQCheckpointError, match=r"ck already holds \['quantize_config.json'\]"):
        gptq.CheckpointWriter(d)


class _Killed(Exception):
    """Stands for the process being killed at that point (nothing after it runs)."""


@pytest.mark.parametrize("point", ["second shard", "first rename", "last rename", "index", "config"])
def test_interrupted_export_is_never_accepted(tmp_path, monkeypatch, capsys, point):
    """An export interrupted at any of these points leaves a directory that no reader accepts."""
    import pathlib

    import safetensors.numpy

    counts = {"save": 0, "rename": 0, "replace": 0}
    save, rename, replace = safetensors.numpy.save_file, pathlib.Path.rename, os.replace

    def fake_save(*a, **k):
        counts["save"] += 1
        if point == "second shard" and counts["save"] == 2:
            save(*a, **k)
            raise _Killed                                # killed after the data, before verifying
        return save(*a, **k)

    def fake_rename(self, target):
        counts["rename"] += 1
        if (point, counts["rename"]) in (("first rename", 1), ("last rename", 3)):
            raise _Killed
        return rename(self, target)

    def fake_replace(a, b):
        counts["replace"] += 1
        if (point, counts["replace"]) in (("index", 1), ("config", 2)):
            raise _Killed                                # the temporary file is written
        return replace(a, b)

    monkeypatch.setattr(safetensors.numpy, "save_file", fake_save)
    monkeypatch.setattr(pathlib.Path, "rename", fake_rename)
    monkeypatch.setattr(os, "replace", fake_replace)
    with pytest.raises(_Killed):
        _write_gptq(tmp_path)
    monkeypatch.undo()
    d = tmp_path / "ck"
    assert not (d / "quantize_config.json").exists()
    err = _rejected(d, capsys)
    assert "unfinished export" in err
    with pytest.raises(gptq.GPTQCheckpointError, match="already holds"):   # and no new export mixes in
        gptq.CheckpointWriter(d)


def test_relative_source_model_is_stored_absolute(tmp_path, monkeypatch, capsys):
    cfg = tiny_config()
    write_tiny_gguf(tmp_path / "m.gguf", cfg, tiny_weights(cfg))
    monkeypatch.chdir(tmp_path)
    d, _ = _write_gptq(tmp_path, source="m.gguf")
    stored = json.loads((d / "quantize_config.json").read_text())["source_model"]
    assert stored == str(tmp_path / "m.gguf")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["eval", str(d), "--tokens", "40", "--seq-len", "16"]) == 0
    assert "perplexity:" in capsys.readouterr().out


def test_missing_source_model_is_named(tmp_path):
    d, src = _write_gptq(tmp_path)
    os.unlink(src)
    with pytest.raises(gptq.GPTQCheckpointError, match=r"source_model '.*m.gguf' .* does not exist"):
        gptq.load_quantized_model(d)


# ------------------------------------------------------------------------- errors and headers

def test_one_checkpoint_error_base():
    """Every reader's error is a CheckpointError; refquant.formats.gptq.CheckpointError is it."""
    from refquant import models

    assert gptq.CheckpointError is models.CheckpointError is CheckpointError
    for cls in (ModelFormatError, CorruptCheckpoint, gptq.GPTQCheckpointError):
        assert issubclass(cls, CheckpointError) and issubclass(cls, ValueError)


@pytest.mark.parametrize("offsets,message", [
    ([[0, 16], [8, 24]], r"tensor 'b' data begins at 8, expected 16 at the end of 'a' \(overlap\)"),
    ([[0, 16], [24, 40]], r"tensor 'b' data begins at 24, expected 16 at the end of 'a' \(gap\)"),
    ([[0, 16], [16, 32.0]], r"tensor 'b': 'data_offsets' must be two integers"),
])
def test_safetensors_tensors_must_tile_the_data(tmp_path, offsets, message):
    """Two F32 [4] tensors (16 bytes each) whose offsets overlap, leave a gap, or are not ints."""
    from refquant.models.layout import scan_safetensors

    header = json.dumps({"a": {"dtype": "F32", "shape": [4], "data_offsets": offsets[0]},
                         "b": {"dtype": "F32", "shape": [4], "data_offsets": offsets[1]}}).encode()
    end = int(max(o[1] for o in offsets))
    f = tmp_path / "t.safetensors"
    f.write_bytes(struct.pack("<Q", len(header)) + header + bytes(end))
    with pytest.raises(CorruptCheckpoint, match=rf"t.safetensors: {message}"):
        scan_safetensors(f)
