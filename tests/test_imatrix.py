"""llama.cpp's importance matrix: the accumulator, the collection through the model, the files.

Oracles: scalar loops written here (sums of squares token by token, the RMSNorm of the
embedding), llama.cpp's file layouts written byte by byte with ``struct`` from
``tools/imatrix/imatrix.cpp`` (``save_imatrix_legacy``) and the GGUF specification, and
llama-quantize's ``value / count`` rule (``tools/quantize/quantize.cpp``).
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from helpers_model import tiny_config, tiny_weights, write_tiny_gguf
from refquant.algorithms.imatrix import MIN_TOKENS, Imatrix, ImatrixEntry, accumulate, importance
from refquant.formats.imatrix_file import ImatrixFileError, read_imatrix, write_imatrix


def _scalar_sums(rows):
    K = len(rows[0])
    S, A = [0.0] * K, [0.0] * K
    for r in rows:
        for j in range(K):
            S[j] += float(r[j]) * float(r[j])
            A[j] += float(r[j])
    return S, A


def test_accumulate_matches_scalar_loop():
    """Oracle: a scalar loop over tokens and columns (S = sum x^2, A = sum x, c = tokens)."""
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((n, 7)).astype(np.float32) for n in (16, 40, 3, 20)]
    e = None
    for x in xs:
        e = accumulate(e, x)
    counted = [r for x in xs if len(x) >= MIN_TOKENS for r in x]      # the 3-row product is skipped
    S, A = _scalar_sums(counted)
    np.testing.assert_allclose(e.in_sum2[0], S, rtol=1e-12)
    np.testing.assert_allclose(e.in_sum[0], A, rtol=1e-12, atol=1e-12)
    assert e.counts.tolist() == [len(counted)] == [76]
    np.testing.assert_allclose(importance(e), np.float32(np.array(S) / 76), rtol=1e-7)


def test_accumulate_is_pure_and_checks():
    """The input entry is unchanged; bad shapes and overflowing sums raise naming the value."""
    x = np.ones((16, 4), np.float32)
    e1 = accumulate(None, x)
    e2 = accumulate(e1, 2 * x)
    assert e1.in_sum2.tolist() == [[16.0] * 4] and e2.in_sum2.tolist() == [[80.0] * 4]
    assert accumulate(None, x[:15]) is None
    with pytest.raises(ValueError, match="5 columns"):
        accumulate(e1, np.ones((16, 5), np.float32))
    with pytest.raises(ValueError, match="column 2 is not finite"):
        accumulate(None, np.where(np.arange(4) == 2, np.inf, 1.0)[None].repeat(16, 0))


def test_importance_zero_count_is_one():
    """llama-quantize: an expert with count 0 gets weights 1 (quantize.cpp load_imatrix)."""
    e = ImatrixEntry(in_sum2=np.array([[4.0, 8.0], [3.0, 3.0]]), counts=np.array([2, 0]))
    assert importance(e).tolist() == [2.0, 4.0, 1.0, 1.0]


def test_collect_imatrix_block0_matches_rmsnorm_of_embedding(tmp_path):
    """Oracle: the inputs of q/k/v of block 0 are RMSNorm(embedding) computed here in float64;
    q, k and v get equal entries counted once per token, as llama-imatrix does."""
    from refquant import load_model
    from refquant.pipeline.imatrix import collect_imatrix

    cfg = tiny_config()
    W = tiny_weights(cfg)
    model = load_model(write_tiny_gguf(tmp_path / "m.gguf", cfg, W))
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (3, 8))
    im = collect_imatrix(model, tokens, batch_size=3)
    assert len(im.entries) == 7 * cfg.n_layers and (im.chunk_count, im.chunk_size) == (3, 8)
    x = W["embed_tokens.weight"][tokens.reshape(-1)].astype(np.float64)      # [24, d]
    g = W["layers.0.input_layernorm.weight"].astype(np.float64)
    h = x / np.sqrt((x * x).mean(axis=1, keepdims=True) + cfg.norm_eps) * g
    want = (h * h).sum(axis=0)
    for lin in ("attn_q", "attn_k", "attn_v"):
        e = im.entries[f"blk.0.{lin}.weight"]
        np.testing.assert_allclose(e.in_sum2[0], want, rtol=1e-5)
        assert e.counts.tolist() == [24]
    assert im.entries["blk.1.ffn_down.weight"].n_columns == cfg.d_ff
    # in chunks of 2 sequences the last product has 8 tokens: not counted (llama.cpp's < 16 rule)
    im2 = collect_imatrix(model, tokens, batch_size=2)
    assert im2.entries["blk.0.attn_q.weight"].counts.tolist() == [16]
    np.testing.assert_allclose(im2.entries["blk.0.attn_q.weight"].in_sum2[0],
                               (h[:16] * h[:16]).sum(axis=0), rtol=1e-5)
    with pytest.raises(ValueError, match="fewer than the 16"):
        collect_imatrix(model, tokens[:, :4], batch_size=2)


def _entry(rng, K=6, n=32):
    return accumulate(None, rng.standard_normal((n, K)).astype(np.float32))


def test_gguf_round_trip(tmp_path):
    """Written with gguf's writer, read by refquant's GGUF parser: float32 sums, counts,
    metadata back exactly (the sums are stored as float32, as llama.cpp stores them)."""
    rng = np.random.default_rng(2)
    im = Imatrix({"blk.0.attn_q.weight": _entry(rng), "blk.0.ffn_down.weight": _entry(rng, 12)},
                 chunk_count=4, chunk_size=8, datasets=("wiki.txt",))
    back = read_imatrix(write_imatrix(tmp_path / "i.gguf", im))
    assert (back.chunk_count, back.chunk_size, back.datasets) == (4, 8, ("wiki.txt",))
    for name, e in im.entries.items():
        b = back.entries[name]
        assert np.array_equal(b.in_sum2, e.in_sum2.astype(np.float32))
        assert np.array_equal(b.in_sum, e.in_sum.astype(np.float32))
        assert b.counts.tolist() == e.counts.tolist()
    import gguf
    r = gguf.GGUFReader(tmp_path / "i.gguf")          # the gguf package reads it too
    assert "general.architecture" not in r.fields
    assert [t.name for t in r.tensors][:2] == ["blk.0.attn_q.weight.in_sum2",
                                                "blk.0.attn_q.weight.counts"]


def test_dat_round_trip(tmp_path):
    """The .dat stores S / c * ncall; read back, llama-quantize's value / ncall is S / c again
    (to float32 rounding of one multiply and one divide)."""
    rng = np.random.default_rng(3)
    im = Imatrix({"blk.0.attn_q.weight": _entry(rng, n=40),
                  "blk.2.attn_v.weight": ImatrixEntry(np.zeros((1, 6)), np.array([0]))},
                 chunk_count=5, chunk_size=8, datasets=("a.txt", "b.txt"))
    back = read_imatrix(write_imatrix(tmp_path / "i.dat", im, legacy=True))
    assert list(back.entries) == ["blk.0.attn_q.weight"]      # no data: skipped, as llama.cpp does
    assert back.entries["blk.0.attn_q.weight"].counts.tolist() == [5]     # ceil(40 / 8)
    np.testing.assert_allclose(back.importance("blk.0.attn_q.weight"),
                               im.importance("blk.0.attn_q.weight"), rtol=3e-7)
    assert (back.chunk_count, back.datasets) == (5, ("b.txt",))
    with pytest.raises(ValueError, match="chunk_size > 0"):
        write_imatrix(tmp_path / "x.dat", Imatrix(im.entries), legacy=True)


def _gguf_string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<Q", len(raw)) + raw


def _hand_gguf(path, S, c, *, meta=True, counts_type=0):
    """A GGUF imatrix file byte by byte (spec: docs/gguf.md): 3 or 0 keys, 2 F32 tensors."""
    kv = b""
    n_kv = 0
    if meta:
        kv += _gguf_string("imatrix.datasets") + struct.pack("<IIQ", 9, 8, 1) + _gguf_string("t.txt")
        kv += _gguf_string("imatrix.chunk_count") + struct.pack("<II", 4, 2)
        kv += _gguf_string("imatrix.chunk_size") + struct.pack("<II", 4, 512)
        n_kv = 3
    S, c = np.asarray(S, "<f4"), np.asarray(c, "<f2" if counts_type == 1 else "<f4")
    ti = _gguf_string("blk.0.attn_k.weight.in_sum2") + struct.pack("<IQQIQ", 2, S.size, 1, 0, 0)
    off = -(-S.nbytes // 32) * 32
    ti += _gguf_string("blk.0.attn_k.weight.counts") + struct.pack("<IQQIQ", 2, 1, 1, counts_type, off)
    head = b"GGUF" + struct.pack("<IQQ", 3, 2, n_kv) + kv + ti
    head += b"\0" * (-len(head) % 32)
    body = S.tobytes() + b"\0" * (off - S.nbytes) + c.tobytes()
    path.write_bytes(head + body + b"\0" * (-len(body) % 32))
    return path


def test_hand_built_gguf_file(tmp_path):
    """Oracle: a file laid out by hand from the GGUF spec and llama.cpp's tensor names."""
    im = read_imatrix(_hand_gguf(tmp_path / "h.gguf", [2.0, 8.0, 0.5, 0.0], [4.0]))
    assert (im.chunk_count, im.chunk_size, im.datasets) == (2, 512, ("t.txt",))
    e = im.entries["blk.0.attn_k.weight"]
    assert e.in_sum is None and e.counts.tolist() == [4]
    assert im.importance("blk.0.attn_k.weight").tolist() == [0.5, 2.0, 0.125, 0.0]


def test_hand_built_dat_file(tmp_path):
    """Oracle: save_imatrix_legacy's layout by hand; importance = value / ncall."""
    name = b"blk.3.ffn_up.weight"
    raw = struct.pack("<ii", 1, len(name)) + name + struct.pack("<ii", 2, 3)
    raw += np.array([2.0, 4.0, 1.0], "<f4").tobytes() + struct.pack("<ii", 7, 3) + b"x.t"
    im = read_imatrix(tmp_path.joinpath("h.dat").write_bytes(raw) and tmp_path / "h.dat")
    assert im.importance("blk.3.ffn_up.weight").tolist() == [1.0, 2.0, 0.5]
    assert (im.chunk_count, im.datasets) == (7, ("x.t",))


@pytest.mark.parametrize("S, c, match", [
    ([1.0, -2.0, 0.0, 0.0], [4.0], "in_sum2 must be finite and >= 0; element 1 is -2.0"),
    ([1.0, np.nan, 0.0, 0.0], [4.0], "element 1 is nan"),
    ([1.0, 1.0, 1.0, np.inf], [4.0], "element 3 is inf"),
    ([1.0, 1.0, 1.0, 1.0], [-1.0], "counts must be finite and >= 0"),
])
def test_bad_values_name_file_and_tensor(tmp_path, S, c, match):
    """Negative or non-finite sums or counts: an error naming the file and the tensor."""
    p = _hand_gguf(tmp_path / "bad.gguf", S, c)
    with pytest.raises(ImatrixFileError, match=match) as err:
        read_imatrix(p)
    assert str(p) in str(err.value) and "blk.0.attn_k.weight" in str(err.value)


def test_bad_structure(tmp_path):
    """Missing metadata (llama-quantize refuses it too), a non-F32 counts tensor, a truncated
    .dat: errors naming the file (and the tensor where there is one)."""
    with pytest.raises(ImatrixFileError, match="metadata .*imatrix.datasets.* missing"):
        read_imatrix(_hand_gguf(tmp_path / "a.gguf", [1.0] * 4, [1.0], meta=False))
    with pytest.raises(ImatrixFileError, match="'blk.0.attn_k.weight.counts' is F16"):
        read_imatrix(_hand_gguf(tmp_path / "b.gguf", [1.0] * 4, [1.0], counts_type=1))
    name = b"blk.0.attn_q.weight"
    raw = struct.pack("<ii", 1, len(name)) + name + struct.pack("<ii", 1, 4) + b"\0" * 8
    p = tmp_path / "t.dat"
    p.write_bytes(raw)
    with pytest.raises(ImatrixFileError, match="truncated .* values of tensor 'blk.0.attn_q.weight'"):
        read_imatrix(p)
