"""Tests of refquant.formats.gptq: the packed layout checked against independent shift-and-mask
readers written here (as the AutoGPTQ kernels read it), both zero-point conventions, the export
round trip, and corrupt files."""

import json

import numpy as np
import pytest

import refquant as rq
from refquant.formats import gptq as fmt


def _naive_read(qweight, qzeros, scales, g_idx, bits, v1):
    """Shift-and-mask reader for 2/4/8 bits (codes never straddle a word): code k of output n is
    bits [b (k % (32/b)), ...) of qweight[k // (32/b), n]; zeros likewise along n."""
    per = 32 // bits
    mask = 2**bits - 1
    K, N = g_idx.shape[0], scales.shape[1]
    W = np.zeros((N, K))
    for n in range(N):
        for k in range(K):
            code = (int(qweight[k // per, n]) >> (bits * (k % per))) & mask
            g = int(g_idx[k])
            z = (int(qzeros[g, n // per]) >> (bits * (n % per))) & mask
            z = (z + 1) % 2**bits if v1 else z
            W[n, k] = float(np.float32(scales[g, n])) * (code - z)
    return W


def _quantized(bits=4, group_size=16, symmetric=False, shape=(10, 40), seed=0, act_order=False):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal(shape)
    X = rng.standard_normal((shape[1], 100))
    spec = rq.QuantSpec(bits=bits, symmetric=symmetric,
                        granularity="group" if group_size else "channel", group_size=group_size)
    return rq.gptq(W, 2 * X @ X.T / 100, spec, act_order=act_order), spec


def test_hand_packed_word():
    # one output, 8 inputs, codes 1..8, one group with zero point 8 and scale 0.5
    spec = rq.QuantSpec(bits=4, symmetric=False, granularity="group", group_size=8)
    codes = np.arange(1, 9, dtype=np.uint8)[None, :]
    qp = rq.QParams(np.array([[0.5]]), np.array([[8]]))
    layer = fmt.layer_from_quantized(codes, qp, spec)
    t1 = fmt.pack_layer(layer, "gptq")
    expected = sum(c << (4 * k) for k, c in enumerate(range(1, 9)))     # 0x87654321
    assert t1["qweight"].shape == (1, 1)
    assert int(t1["qweight"][0, 0]) & 0xFFFFFFFF == expected == 0x87654321
    assert int(t1["qzeros"][0, 0]) & 0xFFFFFFFF == 0x7                 # zero - 1 = 7 (v1)
    t2 = fmt.pack_layer(layer, "gptq_v2")
    assert int(t2["qzeros"][0, 0]) & 0xFFFFFFFF == 0x8                 # zero as is (v2)
    np.testing.assert_array_equal(fmt.dequantize_layer(layer), 0.5 * (np.arange(1, 9) - 8.0)[None, :])


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("checkpoint_format", ["gptq", "gptq_v2"])
@pytest.mark.parametrize("act_order", [False, True])
def test_layout_matches_shift_and_mask_reader(bits, checkpoint_format, act_order):
    res, spec = _quantized(bits=bits, shape=(16, 48), act_order=act_order)
    layer = fmt.layer_from_quantized(res.codes, res.qparams, spec, res.g_idx)
    t = fmt.pack_layer(layer, checkpoint_format)
    naive = _naive_read(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], bits, checkpoint_format == "gptq")
    np.testing.assert_array_equal(fmt.dequantize_layer(layer), naive.astype(np.float32))
    back = fmt.unpack_layer(t, bits, 16, checkpoint_format)
    np.testing.assert_array_equal(fmt.dequantize_layer(back), naive.astype(np.float32))
    # the float16 scales are the only change from GPTQ's own w_hat
    np.testing.assert_allclose(naive, res.w_hat, rtol=0, atol=np.abs(res.w_hat).max() * 2**-10)


def test_three_bit_words_cross_boundaries():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 8, size=(3, 64)).astype(np.uint8)
    spec = rq.QuantSpec(bits=3, symmetric=False, granularity="group", group_size=32)
    qp = rq.QParams(np.ones((3, 2)), np.full((3, 2), 4))
    t = fmt.pack_layer(fmt.layer_from_quantized(codes, qp, spec))
    assert t["qweight"].shape == (6, 3)                                 # 64 codes * 3 bits = 6 words
    for n in range(3):
        stream = 0
        for w in range(6):
            stream |= (int(t["qweight"][w, n]) & 0xFFFFFFFF) << (32 * w)
        got = [(stream >> (3 * k)) & 7 for k in range(64)]
        assert got == codes[n].tolist()
    np.testing.assert_array_equal(fmt.unpack_layer(t, 3, 32).codes, codes)


def test_symmetric_spec_stored_unsigned():
    res, spec = _quantized(bits=4, symmetric=True)
    layer = fmt.layer_from_quantized(res.codes, res.qparams, spec)
    assert layer.codes.min() >= 0 and layer.codes.max() <= 15
    np.testing.assert_array_equal(layer.zeros, 8)
    expected = (res.qparams.scale.astype(np.float16).astype(np.float32)[:, np.arange(40) // 16]
                * res.codes.astype(np.float32))
    np.testing.assert_array_equal(fmt.dequantize_layer(layer), expected)


def test_zero_point_zero_survives_v1_modulo():
    spec = rq.QuantSpec(bits=4, symmetric=False, granularity="group", group_size=8)
    layer = fmt.layer_from_quantized(np.full((8, 8), 3, np.uint8), rq.QParams(np.ones((8, 1)), np.zeros((8, 1))), spec)
    t = fmt.pack_layer(layer, "gptq")
    assert int(t["qzeros"][0, 0]) & 0xFFFFFFFF == 0xFFFFFFFF          # zero - 1 = -1 -> 15 in every nibble
    np.testing.assert_array_equal(fmt.unpack_layer(t, 4, 8, "gptq").zeros, 0)


@pytest.mark.parametrize("checkpoint_format", ["gptq", "gptq_v2"])
def test_export_and_load(tmp_path, checkpoint_format):
    r1, s1 = _quantized(bits=4, group_size=16, seed=2)
    r2, s2 = _quantized(bits=8, group_size=None, seed=3)
    layers = {"layers.0.self_attn.q_proj": fmt.layer_from_quantized(r1.codes, r1.qparams, s1),
              "layers.0.mlp.down_proj": fmt.layer_from_quantized(r2.codes, r2.qparams, s2)}
    floats = {"embed_tokens.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
              "layers.0.input_layernorm.weight": np.ones(4, np.float32)}
    out = fmt.export_checkpoint(tmp_path / "ckpt", layers, floats, checkpoint_format=checkpoint_format)
    cfg = json.loads((out / "quantize_config.json").read_text())
    assert cfg["checkpoint_format"] == checkpoint_format and cfg["quant_method"] == "gptq"
    assert cfg["refquant_layers"]["layers.0.mlp.down_proj"] == {"bits": 8, "group_size": -1, "sym": False}
    assert cfg["sym"] is False and cfg["refquant_files"] == {"model.safetensors": 10}
    weights, _ = fmt.load_weights(out)
    assert set(weights) == {"layers.0.self_attn.q_proj.weight", "layers.0.mlp.down_proj.weight",
                            "embed_tokens.weight", "layers.0.input_layernorm.weight"}
    np.testing.assert_allclose(weights["layers.0.self_attn.q_proj.weight"], r1.w_hat,
                               atol=np.abs(r1.w_hat).max() * 2**-10, rtol=0)
    np.testing.assert_array_equal(weights["embed_tokens.weight"], floats["embed_tokens.weight"])
    assert fmt.is_gptq_checkpoint(out)


def test_reading_with_the_wrong_convention_shifts_zeros(tmp_path):
    """The classic bug: a v2 file read as v1 adds 1 to every zero point."""
    r, s = _quantized(seed=4)
    layer = fmt.layer_from_quantized(r.codes, r.qparams, s)
    t = fmt.pack_layer(layer, "gptq_v2")
    wrong = fmt.unpack_layer(t, 4, 16, "gptq")
    np.testing.assert_array_equal(wrong.zeros, (layer.zeros + 1) % 16)


def test_corrupt_checkpoints(tmp_path):
    r, s = _quantized(seed=5)
    layers = {"layers.0.mlp.up_proj": fmt.layer_from_quantized(r.codes, r.qparams, s)}
    out = fmt.export_checkpoint(tmp_path / "c", layers, {})
    data = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(fmt.CheckpointError, match=r"model.safetensors: tensor '.*' .* is truncated"):
        fmt.read_checkpoint(out)
    (out / "model.safetensors").write_bytes(data)
    cfg = json.loads((out / "quantize_config.json").read_text())
    (out / "quantize_config.json").write_text(json.dumps({**cfg, "checkpoint_format": "gptq_v9"}))
    with pytest.raises(fmt.CheckpointError, match="gptq_v9"):
        fmt.read_checkpoint(out)
    (out / "quantize_config.json").write_text(json.dumps({**cfg, "refquant_layers": {"layers.0.mlp.up_proj": {"bits": 8, "group_size": 16}}}))
    with pytest.raises(fmt.CheckpointError, match="qweight: shape"):
        fmt.read_checkpoint(out)
    with pytest.raises(fmt.CheckpointError, match="not a directory"):
        fmt.read_checkpoint(tmp_path / "missing")


def test_bad_layer_input():
    spec5 = rq.QuantSpec(bits=5, symmetric=False, granularity="channel")
    with pytest.raises(ValueError, match="bits"):
        fmt.layer_from_quantized(np.zeros((2, 4), np.uint8), rq.QParams(np.ones(2), np.zeros(2)), spec5)
    spec = rq.QuantSpec(bits=4, symmetric=False, granularity="tensor")
    with pytest.raises(ValueError, match="per-output-channel or per-group"):
        fmt.layer_from_quantized(np.zeros((2, 4), np.uint8), rq.QParams(1.0, 0), spec)
    with pytest.raises(ValueError, match="checkpoint_format"):
        fmt.pack_layer(fmt.PackedLayer(np.zeros((1, 8), np.uint8), np.ones((1, 1), np.float16),
                                       np.zeros((1, 1), np.int32), np.zeros(8, np.int32), 4, 8), "v3")


def test_writer_shards_index_and_their_checks(tmp_path):
    """CheckpointWriter: one verified shard per write, HF-style names and index; the reader
    refuses a missing shard, a shard not in the index, and a tensor stored twice."""
    r1, s1 = _quantized(bits=4, group_size=16, seed=6)
    r2, s2 = _quantized(bits=3, group_size=16, seed=7)
    w = fmt.CheckpointWriter(tmp_path / "s", checkpoint_format="gptq_v2")
    w.write({"layers.0.mlp.up_proj": fmt.layer_from_quantized(r1.codes, r1.qparams, s1)},
            {"layers.0.input_layernorm.weight": np.ones(4, np.float32)})
    w.write({"layers.1.mlp.up_proj": fmt.layer_from_quantized(r2.codes, r2.qparams, s2)}, {})
    w.write({}, {"embed_tokens.weight": np.zeros((3, 4), np.float32)})
    out = w.close()
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert shards == [f"model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["weight_map"]["model.layers.1.mlp.up_proj.qweight"] == shards[1]
    assert index["weight_map"]["model.embed_tokens.weight"] == shards[2]
    cfg = json.loads((out / "quantize_config.json").read_text())
    assert cfg["refquant_layers"]["layers.1.mlp.up_proj"] == {"bits": 3, "group_size": 16, "sym": False}
    layers, floats, _ = fmt.read_checkpoint(out)
    np.testing.assert_array_equal(layers["layers.1.mlp.up_proj"].codes, r2.codes)
    assert set(floats) == {"layers.0.input_layernorm.weight", "embed_tokens.weight"}
    with pytest.raises(fmt.CheckpointError, match="closed"):
        w.write({}, {})
    with pytest.raises(fmt.CheckpointError, match="already holds"):
        fmt.CheckpointWriter(out)                       # stale shards would mix into a new export

    (out / shards[1]).rename(tmp_path / "aside.safetensors")
    with pytest.raises(fmt.CheckpointError, match="missing"):
        fmt.read_checkpoint(out)
    (tmp_path / "aside.safetensors").rename(out / shards[1])
    (out / "extra.safetensors").write_bytes((out / shards[1]).read_bytes())
    with pytest.raises(fmt.CheckpointError, match="not listed"):
        fmt.read_checkpoint(out)
    (out / "extra.safetensors").unlink()
    (out / shards[2]).write_bytes((out / shards[0]).read_bytes())   # shard 1's tensors twice
    with pytest.raises(fmt.CheckpointError, match=r"tensor .* is also in model-00001-of-00003.safetensors"):
        fmt.read_checkpoint(out)
