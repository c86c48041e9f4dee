"""GGUF and Hugging Face loaders: tiny checkpoints written by the gguf/safetensors packages
(tests/helpers_model.py), the bundled SmolLM2 GGUF, errors on broken files.

Oracles: the arrays written (exactly representable in the stored dtype), ``gguf.quants``'
own quantize/dequantize for quantized GGUF types, ``gguf.GGUFReader`` for the container parser,
and a loop-based llama.cpp permutation for the Q/K rows.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import refquant as rq
from refquant.models import CorruptCheckpoint, ModelFormatError
from refquant.models.gguffile import read_gguf
from refquant.models.llama import forward
from refquant.models.gguf_hf import permute_qk, unpermute_qk
from refquant.models.layout import read_safetensors_tensor, scan_safetensors
from refquant.models.loaders import LazyWeights, save_hf

from helpers_model import (llamacpp_permute, tiny_config, tiny_weights, to_bf16_exact,
                           write_tiny_gguf, write_tiny_hf)

gguf = pytest.importorskip("gguf", reason="the GGUF loader needs the gguf package")


@pytest.fixture(scope="module")
def bundled():
    return rq.load_model()


def _assert_weights(model, expected):
    assert set(model.weights) == set(expected)
    for name, W in expected.items():
        got = model.weights[name]
        assert got.dtype == np.float32 and got.shape == W.shape, name
        np.testing.assert_array_equal(got, W, err_msg=name)


@pytest.mark.parametrize("tied", [False, True])
def test_gguf_f32_roundtrip_undoes_qk_permutation(tmp_path, tied):
    cfg = tiny_config(tied_embeddings=tied)
    W = tiny_weights(cfg)
    model = rq.load_model(write_tiny_gguf(tmp_path / "m.gguf", cfg, W))
    assert model.config == cfg
    _assert_weights(model, W)


@pytest.mark.parametrize("qtype", ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_gguf_quantized_types_equal_gguf_dequantize(tmp_path, qtype):
    cfg = tiny_config()
    W = tiny_weights(cfg)
    model = rq.load_model(write_tiny_gguf(tmp_path / "m.gguf", cfg, W, qtype=qtype))
    q = gguf.GGMLQuantizationType[qtype]
    for name, w in W.items():
        if w.ndim == 1:                # norms are stored as F32
            expected = w
        elif qtype == "F16":           # elementwise: the row order does not matter
            expected = w.astype(np.float16).astype(np.float32)
        else:
            # gguf's own round trip of the llama.cpp-permuted rows, un-permuted by a loop
            stored = gguf.quants.dequantize(gguf.quants.quantize(_permute(name, w, cfg), q), q)
            expected = _unpermute_loop(name, np.asarray(stored, np.float32), cfg)
        np.testing.assert_array_equal(model.weights[name], expected, err_msg=name)


def _permute(name, w, cfg):
    if name.endswith("q_proj.weight"):
        return llamacpp_permute(w, cfg.n_heads)
    if name.endswith("k_proj.weight"):
        return llamacpp_permute(w, cfg.n_kv_heads)
    return w


def _unpermute_loop(name, w, cfg):
    heads = cfg.n_heads if name.endswith("q_proj.weight") else \
        cfg.n_kv_heads if name.endswith("k_proj.weight") else None
    if heads is None:
        return w
    hd = w.shape[0] // heads
    out = np.empty_like(w)
    for h in range(heads):
        for j in range(hd // 2):
            out[h * hd + j] = w[h * hd + 2 * j]
            out[h * hd + hd // 2 + j] = w[h * hd + 2 * j + 1]
    return out


@pytest.mark.parametrize("ktype,block_bytes,scale_bytes", [("Q4_K", 144, 4), ("Q6_K", 210, None)])
def test_gguf_kquant_tensor_equals_gguf_dequantize(tmp_path, ktype, block_bytes, scale_bytes):
    """gguf cannot quantize k-quants: store random blocks (with finite float16 scales) and check
    the loader returns gguf's dequantization in the right shape and row order."""
    cfg = tiny_config(d_model=256, n_heads=4, n_kv_heads=2, d_ff=256)
    W = tiny_weights(cfg)
    path = write_tiny_gguf(tmp_path / "m.gguf", cfg, W, skip={"layers.0.mlp.up_proj.weight"})
    # rewrite with the up projection as raw k-quant blocks
    rng = np.random.default_rng(1)
    rows, n_blocks = 256, 1
    raw = rng.integers(0, 256, (rows, n_blocks * block_bytes), dtype=np.uint8)
    scale = np.full(rows, 0.01, np.float16).view(np.uint8).reshape(rows, 2)
    if ktype == "Q4_K":    # d, dmin are the first two float16 of a block
        raw[:, 0:2] = scale
        raw[:, 2:4] = scale
    else:                  # Q6_K: d is the last float16 of a block
        raw[:, -2:] = scale
    q = gguf.GGMLQuantizationType[ktype]
    w = gguf.GGUFWriter(str(tmp_path / "k.gguf"), "llama")
    src = read_gguf(path)
    for key, value in src.metadata.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        _add_kv(w, key, value)
    for name, t in src.tensors.items():
        data = np.asarray(t.data)
        if t.type_id == int(gguf.GGMLQuantizationType.F32):
            w.add_tensor(name, data.view(np.float32).reshape(t.shape))
        else:
            w.add_tensor(name, data.reshape(t.shape[0], -1),
                         raw_dtype=gguf.GGMLQuantizationType(t.type_id))
    w.add_tensor("blk.0.ffn_up.weight", raw, raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    model = rq.load_model(tmp_path / "k.gguf")
    expected = gguf.quants.dequantize(raw, q).astype(np.float32).reshape(256, 256)
    np.testing.assert_array_equal(model.weights["layers.0.mlp.up_proj.weight"], expected)
    assert np.all(np.isfinite(expected))


def _add_kv(w, key, value):
    if isinstance(value, str):
        w.add_string(key, value)
    elif isinstance(value, bool):
        w.add_bool(key, value)
    elif isinstance(value, int):
        w.add_uint32(key, value)
    elif isinstance(value, float):
        w.add_float32(key, value)
    elif isinstance(value, list) and value and isinstance(value[0], str):
        w.add_array(key, value)
    elif isinstance(value, list):
        w.add_array(key, value)
    else:
        raise TypeError(key)


@pytest.mark.parametrize("dtype,shards,tied", [("F32", 1, False), ("F16", 1, True),
                                               ("BF16", 1, False), ("F32", 3, True),
                                               ("BF16", 2, True)])
def test_hf_directory(tmp_path, dtype, shards, tied):
    cfg = tiny_config(tied_embeddings=tied)
    W = tiny_weights(cfg)
    if dtype == "F16":
        W = {n: w.astype(np.float16).astype(np.float32) for n, w in W.items()}
    elif dtype == "BF16":
        W = {n: to_bf16_exact(w) for n, w in W.items()}
    d = write_tiny_hf(tmp_path / "hf", cfg, W, dtype=dtype, shards=shards)
    model = rq.load_model(d)
    assert model.config == cfg
    _assert_weights(model, W)


def test_gguf_and_hf_of_same_weights_give_identical_logits(tmp_path):
    cfg = tiny_config()
    W = tiny_weights(cfg)
    a = rq.load_model(write_tiny_gguf(tmp_path / "m.gguf", cfg, W))
    b = rq.load_model(write_tiny_hf(tmp_path / "hf", cfg, W))
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 9))
    np.testing.assert_array_equal(forward(a, tokens), forward(b, tokens))


def test_bundled_exported_to_hf_gives_identical_logits(bundled, tmp_path):
    d = save_hf(bundled, tmp_path / "smollm2")
    assert {p.name for p in d.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    hf = rq.load_model(d)
    assert hf.config == bundled.config
    text = "The capital of France is Paris. It has 2,165,423 inhabitants."
    ids = bundled.tokenizer.encode(text)
    assert hf.tokenizer.encode(text) == ids
    tokens = np.array([ids])
    np.testing.assert_array_equal(forward(hf, tokens), forward(bundled, tokens))


def test_bundled_config(bundled):
    c = bundled.config
    assert (c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.d_ff, c.vocab_size) == \
        (30, 576, 9, 3, 1536, 49152)
    assert c.tied_embeddings and c.rope_theta == 100000.0 and c.head_dim == 64
    assert "lm_head.weight" not in bundled.weights


def test_container_parser_matches_gguf_reader():
    """refquant's fast parser against gguf.GGUFReader: every metadata value, every tensor."""
    from refquant.models.resources import bundled_model_path
    path = bundled_model_path()
    ours = read_gguf(path)
    ref = gguf.GGUFReader(path)
    keys = [k for k in ref.fields if not k.startswith("GGUF.")]
    assert sorted(keys) == sorted(ours.metadata)
    for k in keys:
        assert ours.metadata[k] == ref.fields[k].contents(), k
    assert [t.name for t in ref.tensors] == list(ours.tensors)
    for t in ref.tensors:
        o = ours.tensors[t.name]
        assert o.type_id == int(t.tensor_type) and o.offset == t.data_offset
        assert o.shape == tuple(int(n) for n in t.shape[::-1])
        assert np.array_equal(np.asarray(o.data), np.asarray(t.data).view(np.uint8).ravel()), t.name


def test_unpermute_inverts_llamacpp_permutation():
    """Oracle: the converter's permutation written as a loop (helpers_model.llamacpp_permute)."""
    W = np.arange(3 * 8 * 5, dtype=np.float32).reshape(24, 5)
    np.testing.assert_array_equal(permute_qk(W, 3), llamacpp_permute(W, 3))
    np.testing.assert_array_equal(unpermute_qk(llamacpp_permute(W, 3), 3), W)


def _write_safetensors_by_hand(path, name, dtype, shape, payload: bytes):
    header = json.dumps({name: {"dtype": dtype, "shape": list(shape),
                                "data_offsets": [0, len(payload)]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + payload)
    return path


def test_bf16_tensor_by_hand(tmp_path):
    """A BF16 safetensors tensor written byte by byte here, values by hand: 0x3F80 = 1.0,
    0xC000 = -2.0, 0x3EAA -> 0x3EAA0000 = 0.33203125; the Inf pattern 0x7F80 raises naming the
    file and tensor."""
    bits = np.array([0x3F80, 0xC000, 0x3EAA, 0x0000], "<u2")
    f = _write_safetensors_by_hand(tmp_path / "b.safetensors", "w", "BF16", (2, 2), bits.tobytes())
    (span,) = scan_safetensors(f)
    got = read_safetensors_tensor(f, span)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.array([[1.0, -2.0], [0.33203125, 0.0]], np.float32))
    bits[1] = 0x7F80
    f = _write_safetensors_by_hand(tmp_path / "inf.safetensors", "w", "BF16", (4,), bits.tobytes())
    with pytest.raises(CorruptCheckpoint, match=r"inf.safetensors: tensor 'w' \(BF16\).*0x7f80"):
        read_safetensors_tensor(f, scan_safetensors(f)[0])


# ------------------------------------------------------------------------------ lazy weights

def test_lazy_weights_read_once_assign_and_revert():
    calls = []

    def load():
        calls.append(1)
        return np.ones((2, 3), np.float32)

    w = LazyWeights({"a.weight": load}, {"a.weight": (2, 3)}, source="mem")
    assert w["a.weight"].sum() == 6 and w["a.weight"].sum() == 6 and len(calls) == 1
    w.drop_cache()
    w["a.weight"]
    assert len(calls) == 2
    w["a.weight"] = np.zeros((2, 3), np.float64)
    assert w["a.weight"].dtype == np.float32 and w["a.weight"].sum() == 0
    del w["a.weight"]
    assert w["a.weight"].sum() == 6
    with pytest.raises(ValueError, match="shape"):
        w["a.weight"] = np.zeros((3, 2))
    with pytest.raises(ValueError, match="NaN"):
        w["a.weight"] = np.full((2, 3), np.nan)
    with pytest.raises(ValueError, match="dtype"):
        w["a.weight"] = np.zeros((2, 3), np.int32)
    with pytest.raises(KeyError, match="b.weight"):
        w["b.weight"] = np.zeros((2, 3))
    with pytest.raises(ValueError, match="read-only"):
        w["a.weight"][0, 0] = 5


def test_uncached_weights_are_reread(tmp_path):
    cfg = tiny_config()
    model = rq.load_model(write_tiny_gguf(tmp_path / "m.gguf", cfg, tiny_weights(cfg)), cache=False)
    a = model.weights["norm.weight"]
    assert a is not model.weights["norm.weight"]


# ------------------------------------------------------------------------------ errors

def _copy_tiny(tmp_path, **kw):
    cfg = tiny_config()
    return write_tiny_gguf(tmp_path / "m.gguf", cfg, tiny_weights(cfg), **kw)


def test_truncated_gguf(tmp_path):
    path = _copy_tiny(tmp_path)
    data = path.read_bytes()
    bad = tmp_path / "truncated.gguf"
    bad.write_bytes(data[:len(data) - 100])
    with pytest.raises(ModelFormatError, match=r"truncated.gguf.*tensor '.*'.*truncated"):
        rq.load_model(bad)
    bad.write_bytes(data[:200])       # inside the metadata
    with pytest.raises(ModelFormatError, match="truncated.gguf.*truncated"):
        rq.load_model(bad)


def test_corrupt_gguf_header(tmp_path):
    path = _copy_tiny(tmp_path)
    data = bytearray(path.read_bytes())
    data[0:4] = b"GGML"
    bad = tmp_path / "magic.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="magic.gguf.*magic"):
        rq.load_model(bad)
    data = bytearray(path.read_bytes())
    data[4:8] = (77).to_bytes(4, "little")
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="version 77"):
        rq.load_model(bad)
    data = bytearray(path.read_bytes())
    data[16:24] = (2**40).to_bytes(8, "little")     # key/value count
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="magic.gguf"):
        rq.load_model(bad)


def test_missing_tensor(tmp_path):
    path = _copy_tiny(tmp_path, skip={"layers.1.mlp.down_proj.weight"})
    with pytest.raises(ModelFormatError, match=r"m.gguf.*blk\.1\.ffn_down\.weight.*missing"):
        rq.load_model(path)


def test_unsupported_architecture(tmp_path):
    with pytest.raises(ModelFormatError, match="architecture.*'gpt2'"):
        rq.load_model(_copy_tiny(tmp_path, arch="gpt2"))
    cfg = tiny_config()
    d = write_tiny_hf(tmp_path / "hf", cfg, tiny_weights(cfg))
    c = json.loads((d / "config.json").read_text())
    c["model_type"], c["architectures"] = "mistral", ["MistralForCausalLM"]
    (d / "config.json").write_text(json.dumps(c))
    with pytest.raises(ModelFormatError, match="config.json.*mistral"):
        rq.load_model(d)


def test_unsupported_tensor_type(tmp_path):
    cfg = tiny_config()
    W = tiny_weights(cfg)
    path = write_tiny_gguf(tmp_path / "m.gguf", cfg, W, skip={"layers.0.mlp.gate_proj.weight"})
    src = read_gguf(path)
    w = gguf.GGUFWriter(str(tmp_path / "q81.gguf"), "llama")
    for key, value in src.metadata.items():
        if not key.startswith("GGUF.") and key != "general.architecture":
            _add_kv(w, key, value)
    for name, t in src.tensors.items():
        w.add_tensor(name, np.asarray(t.data).view(np.float32).reshape(t.shape))
    q = gguf.GGMLQuantizationType.Q8_1      # gguf has no dequantizer for Q8_1
    w.add_tensor("blk.0.ffn_gate.weight", np.zeros((64, 40), np.uint8), raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelFormatError, match=r"q81.gguf.*blk\.0\.ffn_gate\.weight.*Q8_1"):
        rq.load_model(tmp_path / "q81.gguf")


def test_hf_errors(tmp_path):
    cfg = tiny_config()
    W = tiny_weights(cfg)
    d = write_tiny_hf(tmp_path / "hf", cfg, W)
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:-64])
    with pytest.raises(ModelFormatError, match="model.safetensors.*truncated"):
        rq.load_model(d)
    f.write_bytes(b"\xff" * 8 + data[8:])
    with pytest.raises(ModelFormatError, match="model.safetensors.*header"):
        rq.load_model(d)
    W2 = dict(W)
    del W2["layers.0.self_attn.v_proj.weight"]
    d2 = write_tiny_hf(tmp_path / "hf2", cfg, W2)
    with pytest.raises(ModelFormatError,
                       match=r"model\.layers\.0\.self_attn\.v_proj\.weight.*missing"):
        rq.load_model(d2)
    (d2 / "model.safetensors").unlink()
    (d2 / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ModelFormatError, match="bin"):
        rq.load_model(d2)


def test_not_a_model(tmp_path):
    p = tmp_path / "weights.bin"
    p.write_bytes(b"\x80\x04")
    with pytest.raises(ModelFormatError, match="weights.bin"):
        rq.load_model(p)
    with pytest.raises(FileNotFoundError):
        rq.load_model(tmp_path / "nothing.gguf")


# VmHWM (the peak RSS of this process's address space) rather than getrusage's ru_maxrss,
# which a child forked from a large pytest process inherits from its parent.
PEAK_RSS = """
import refquant as rq

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024

m = rq.load_model()
a = hwm()
for name in m.weights:
    m.weights[name]
print(a, hwm())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_memory_of_loading_bundled_model():
    """Peak RSS in a fresh process: lazy load, then every weight dequantized to float32
    (135M parameters = 0.54 GB of float32). Bounds: the lazy load must not materialize the
    weights; the full model must stay under twice its float32 size plus the interpreter."""
    out = subprocess.run([sys.executable, "-c", PEAK_RSS], capture_output=True, text=True,
                         check=True).stdout.split()
    lazy_mib, full_mib = int(out[0]), int(out[1])
    print(f"peak RSS: load_model() {lazy_mib} MiB, all weights float32 {full_mib} MiB")
    assert lazy_mib < 400
    assert full_mib < 400 + 2 * 540
