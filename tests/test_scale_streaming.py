"""Memory that does not grow with depth (issue 17, "Scale"): bounded weight caches, tensors
copied in their source dtype, GPTQ layers read only when the forward pass reaches them.

Oracles: the stored dtypes are read back from the safetensors headers
(:func:`refquant.formats.gptq_files.shard_dtypes`) and the values compared with NumPy's own
float16 -> float32 cast of the source arrays; reads are counted by wrapping the one tensor reader.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers_model import tiny_config, tiny_weights, write_tiny_hf
from refquant.cli import main
from refquant.formats import gptq
from refquant.formats.gptq_files import shard_dtypes
from refquant.models.llama import block, embed
from refquant.models.loaders import LazyWeights, load_model
from refquant.pipeline.evaluate import perplexity

VOCAB = 49152          # the bundled tokenizer's


@pytest.fixture(scope="module")
def tokenizer():
    return load_model().tokenizer


def _hf_model(directory, tokenizer, n_layers=4, dtype="F16"):
    """A tiny random Llama in ``dtype`` with the bundled tokenizer (``tokenizer.json``)."""
    cfg = tiny_config(n_layers=n_layers, vocab_size=VOCAB, max_seq_len=256)
    w = tiny_weights(cfg)
    write_tiny_hf(directory, cfg, w, dtype=dtype)
    tokenizer.save(directory)
    return directory, cfg, w


def _block_of(name):
    return int(name.split(".")[1]) if name.startswith("layers.") else None


def test_byte_budget_cache_keeps_the_first_arrays_and_never_exceeds():
    """A budget of two 100-element float32 arrays keeps the first two read; the third is read
    at every access; stored() returns the loader's float16 as is and caches nothing."""
    reads = []
    src = {f"w{i}": np.full((100,), i, np.float16) for i in range(3)}

    def loader(n):
        return lambda: (reads.append(n), src[n])[1]
    lw = LazyWeights({n: loader(n) for n in src}, {n: (100,) for n in src}, source="t", cache=800)
    for _ in range(2):
        for n in src:
            assert lw[n].dtype == np.float32 and np.array_equal(lw[n], src[n].astype(np.float32))
    assert lw.cached_names() == {"w0", "w1"} and lw.cached_bytes() == 800
    assert reads.count("w0") == 1 and reads.count("w2") == 4
    s = lw.stored("w2")
    assert s.dtype == np.float16 and not s.flags.writeable and lw.cached_bytes() == 800
    with pytest.raises(ValueError, match="cache must be"):
        LazyWeights({}, {}, source="t", cache=-1)


def test_quantize_copies_untouched_tensors_in_the_source_dtype(tmp_path, tokenizer, capsys):
    """`refquant quantize --n-blocks 1` on a float16 source: the blocks after it, the
    embedding, the head and the quantized block's norms are stored as F16 with the source's
    bits; the checkpoint evaluates; --calib-batch is recorded."""
    src, cfg, w = _hf_model(tmp_path / "src", tokenizer)
    out = tmp_path / "q"
    assert main(["quantize", str(src), "-o", str(out), "--n-blocks", "1", "--calib-tokens", "64",
                 "--seq-len", "32", "--group-size", "16", "--calib-batch", "1",
                 "--no-progress"]) == 0
    dtypes = {}
    for f in out.glob("model-*.safetensors"):
        dtypes.update(shard_dtypes(f))
    untouched = [k for k in dtypes if not k.endswith(("qweight", "qzeros", "scales", "g_idx"))]
    assert "model.layers.3.mlp.down_proj.weight" in untouched
    assert "model.layers.0.input_layernorm.weight" in untouched
    assert {dtypes[k] for k in untouched} == {"F16"}
    assert {dtypes[k] for k in dtypes if k.endswith(".scales")} == {"F16"}
    assert {dtypes[k] for k in dtypes if k.endswith(".qweight")} == {"I32"}
    back = gptq.load_quantized_model(out)
    for name in ("embed_tokens.weight", "lm_head.weight", "layers.2.self_attn.q_proj.weight",
                 "norm.weight", "layers.0.post_attention_layernorm.weight"):
        assert back.weights.stored(name).dtype == np.float16
        assert np.array_equal(back.weights[name], w[name].astype(np.float16).astype(np.float32))
    qc = json.loads((out / "quantize_config.json").read_text())
    assert qc["calibration"]["batch"] == 1
    capsys.readouterr()
    assert main(["eval", str(out), "--tokens", "64", "--seq-len", "32"]) == 0
    assert "perplexity:" in capsys.readouterr().out


def test_gptq_reader_reads_a_layer_only_when_reached(tmp_path, tokenizer, monkeypatch):
    """Opening a checkpoint reads no tensor; block 0's forward pass reads block 0's layers and
    nothing of the others; with cache=False nothing stays in memory afterwards."""
    src, cfg, _ = _hf_model(tmp_path / "src", tokenizer)
    out = tmp_path / "q"
    assert main(["quantize", str(src), "-o", str(out), "--method", "rtn", "--calib-tokens", "32",
                 "--seq-len", "32", "--group-size", "16", "--no-progress"]) == 0
    reads = []
    real = gptq.read_safetensors_tensor

    def counting(path, span, **kw):
        reads.append(span.name)
        return real(path, span, **kw)
    monkeypatch.setattr(gptq, "read_safetensors_tensor", counting)
    model = gptq.load_quantized_model(out, cache=False)
    assert reads == []
    x = embed(model, np.arange(8)[None, :])
    block(model, 0, x)
    touched = {_block_of(n.removeprefix("model.")) for n in reads}
    assert touched == {None, 0}                       # the embedding and block 0 only
    assert any(n.endswith("mlp.down_proj.qweight") for n in reads)
    assert model.weights.cached_names() == frozenset()


def test_eval_cache_holds_a_bounded_number_of_blocks(tmp_path, tokenizer):
    """A perplexity pass over a 6-block float16 model with a budget of two blocks' float32
    weights (plus the embedding) leaves at most two blocks cached, however deep the model."""
    src, cfg, w = _hf_model(tmp_path / "src", tokenizer, n_layers=6)
    per_block = sum(4 * np.prod(s) for n, s in cfg.weight_shapes().items() if n.startswith("layers.0."))
    budget = int(4 * VOCAB * cfg.d_model + 2 * per_block)
    model = gptq.load_any(src, cache=budget)
    tokens = np.arange(200, 328)
    r = perplexity(model, tokens, seq_len=32)
    held = {_block_of(n) for n in model.weights.cached_names()} - {None}
    assert 1 <= len(held) <= 2 and model.weights.cached_bytes() <= budget
    full = perplexity(load_model(src), tokens, seq_len=32)
    assert r.nll == full.nll                         # same arithmetic, only re-reads


def test_eval_and_generate_open_models_with_a_bounded_cache(tmp_path, tokenizer, monkeypatch, capsys):
    """The commands pass the byte budget INFERENCE_CACHE_BYTES to the reader."""
    from refquant.models.loaders import INFERENCE_CACHE_BYTES

    src, _, _ = _hf_model(tmp_path / "src", tokenizer, n_layers=1)
    seen = []
    real = gptq.load_any

    def recording(path=None, **kw):
        seen.append(kw.get("cache"))
        return real(path, **kw)
    monkeypatch.setattr(gptq, "load_any", recording)
    assert main(["eval", str(src), "--tokens", "64", "--seq-len", "32"]) == 0
    assert main(["generate", "The", "--model", str(src), "--n-new", "2"]) == 0
    assert seen == [INFERENCE_CACHE_BYTES] * 2 and not isinstance(seen[0], bool)
