"""The Hugging Face files of a GPTQ directory: ``config.json`` with its ``quantization_config``,
the tokenizer files and ``generation_config.json``.

Oracles: Hugging Face ``transformers`` itself (``AutoConfig``, ``AutoTokenizer``,
``GenerationConfig`` and ``GPTQConfig`` read the directory, CPU only), refquant's own tokenizer
for the token ids, and the hand-written expectations stated in each test.
"""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest

import refquant as rq
from helpers_model import tiny_config, tiny_vocab, tiny_weights, write_tiny_gguf, write_tiny_hf
from refquant.formats import gptq, gptq_files, gptq_hf, gptq_writer
from refquant.formats.audit import audit_checkpoint
from refquant.formats.gptq_layers import PackedLayer, V1ZeroPointWarning
from refquant.models.config_checks import hf_config, hf_config_json
from refquant.models.tokenizer import tokenizer_from_gguf

transformers = pytest.importorskip("transformers")

SENTENCES = ["The quick brown fox jumps over the lazy dog in 2024.",
             "  Zürich, 東京 and naïve café\tcosts $12.50\n\nOK?",
             "<|endoftext|>the an"]


def tiny_meta(**kw):
    tokens, merges, types = tiny_vocab(300)
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm",
            "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": merges,
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.bos_token_id": 0,
            "tokenizer.ggml.eos_token_id": 0}
    meta.update(kw)
    return meta


@pytest.mark.parametrize("kw", [{}, {"tied_embeddings": True, "head_dim": 16, "rope_theta": 5e5}])
def test_hf_config_json_round_trips_and_transformers_reads_it(tmp_path, kw):
    """hf_config(hf_config_json(c)) == c; transformers' LlamaConfig holds the same numbers."""
    c = tiny_config(**kw)
    obj = hf_config_json(c)
    assert hf_config(obj, "config.json") == c
    (tmp_path / "config.json").write_text(json.dumps(obj))
    t = transformers.AutoConfig.from_pretrained(tmp_path)
    assert type(t).__name__ == "LlamaConfig"
    assert (t.num_hidden_layers, t.hidden_size, t.num_attention_heads, t.num_key_value_heads,
            t.intermediate_size, t.vocab_size, t.head_dim, t.max_position_embeddings,
            t.tie_word_embeddings) == (c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.d_ff,
                                       c.vocab_size, c.head_dim, c.max_seq_len, c.tied_embeddings)
    rope = getattr(t, "rope_parameters", None) or {"rope_theta": t.rope_theta}
    assert rope["rope_theta"] == c.rope_theta and t.rms_norm_eps == c.norm_eps


def test_saved_gguf_tokenizer_has_special_tokens_and_chat_template(tmp_path):
    """tokenizer_config.json names the GGUF's BOS/EOS/UNK/PAD tokens and carries its chat
    template; an out-of-vocabulary padding id is left out (the file still loads)."""
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tok = tokenizer_from_gguf(tiny_meta(**{"tokenizer.ggml.unknown_token_id": 3,
                                           "tokenizer.ggml.padding_token_id": 257,
                                           "tokenizer.chat_template": template}), "tiny.gguf")
    tok.save(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert cfg["bos_token"] == cfg["eos_token"] == "<|endoftext|>"
    assert cfg["unk_token"] == tok.token(3) and cfg["pad_token"] == tok.token(257) == "th"
    assert cfg["chat_template"] == template
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf.apply_chat_template([{"role": "user", "content": "the"}], tokenize=False) == "the"
    off = tokenizer_from_gguf(tiny_meta(**{"tokenizer.ggml.padding_token_id": 300}), "tiny.gguf")
    assert off.pad_id is None


# ------------------------------------------------------------------------- whole directories

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _tiny_gguf_model(tmp_path):
    cfg = tiny_config()
    return rq.load_model(write_tiny_gguf(tmp_path / "tiny.gguf", cfg, tiny_weights(cfg)))


def _packed(model, blocks=None, group_size=16, bits=4):
    """RTN (min-max, asymmetric) PackedLayers of the linears of ``blocks`` (default all)."""
    spec = rq.QuantSpec(bits=bits, symmetric=False, granularity="group", group_size=group_size)
    layers = {}
    for i in range(model.config.n_layers) if blocks is None else blocks:
        for lin in LINEARS:
            W = model.weights[f"layers.{i}.{lin}.weight"]
            qp = rq.calibrate(W, spec)
            layers[f"layers.{i}.{lin}"] = gptq.layer_from_quantized(rq.quantize(W, qp, spec), qp, spec)
    return layers


def _float_rest(model, layers):
    return {k: model.weights[k] for k in model.config.weight_shapes() if k[:-len(".weight")] not in layers}


@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2"])
def test_gguf_source_gives_a_directory_transformers_reads(tmp_path, fmt):
    """From a GGUF source: AutoConfig gives a LlamaConfig with the model's numbers and a
    quantization_config that GPTQConfig accepts with the checkpoint's settings; AutoTokenizer
    encodes like refquant's tokenizer; GenerationConfig has the special ids; refquant still
    reads the directory whole."""
    model = _tiny_gguf_model(tmp_path)
    layers = _packed(model)
    out = gptq.export_checkpoint(tmp_path / "ckpt", layers, _float_rest(model, layers),
                                 checkpoint_format=fmt, model=model)
    assert {"config.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    cfg = transformers.AutoConfig.from_pretrained(out)
    c = model.config
    assert (type(cfg).__name__, cfg.num_hidden_layers, cfg.hidden_size, cfg.num_key_value_heads,
            cfg.vocab_size) == ("LlamaConfig", c.n_layers, c.d_model, c.n_kv_heads, c.vocab_size)
    qc = transformers.GPTQConfig.from_dict(cfg.quantization_config)
    assert (qc.bits, qc.group_size, qc.sym, qc.desc_act, qc.format) == (4, 16, False, False, fmt)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    for s in SENTENCES:
        assert tok.encode(s) == model.tokenizer.encode(s), s
    gen = transformers.GenerationConfig.from_pretrained(out)
    assert (gen.bos_token_id, gen.eos_token_id) == (0, 0)
    back = gptq.load_quantized_model(out)
    for name, ly in layers.items():
        np.testing.assert_array_equal(back.weights[name + ".weight"], gptq.dequantize_layer(ly))
    assert audit_checkpoint(out).n_inconsistent == 0


def test_bundled_tokenizer_through_transformers(tmp_path):
    """The bundled SmolLM2 tokenizer (GGUF metadata, ``smollm`` pre-tokenizer) written as
    Hugging Face files: transformers' AutoTokenizer gives refquant's ids on real text and the
    GGUF's chat template."""
    model = rq.load_model(None)
    names = gptq_hf.write_tokenizer_files(model, tmp_path)
    assert names == ["tokenizer.json", "tokenizer_config.json"]
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    from refquant.pipeline.data import load_articles

    texts = list(load_articles().values())[:20] + SENTENCES
    for s in texts:
        assert tok.encode(s) == model.tokenizer.encode(s), s[:60]
        assert tok.decode(model.tokenizer.encode(s)) == s
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat.endswith("<|im_start|>user\nhi<|im_end|>\n") and chat.startswith("<|im_start|>system")


def test_hf_source_files_are_copied(tmp_path):
    """From a Hugging Face source: the tokenizer files and generation_config.json are copied
    byte for byte; config.json keeps the source's own keys and gains quantization_config."""
    cfg = tiny_config()
    src = write_tiny_hf(tmp_path / "hf", cfg, tiny_weights(cfg))
    _tiny_gguf_model(tmp_path).tokenizer.save(src)
    (src / "generation_config.json").write_text('{"bos_token_id": 0, "eos_token_id": 0, "top_k": 7}\n')
    raw = json.loads((src / "config.json").read_text()) | {"initializer_range": 0.02}
    (src / "config.json").write_text(json.dumps(raw))
    model = rq.load_model(src)
    layers = _packed(model)
    out = gptq.export_checkpoint(tmp_path / "ckpt", layers, _float_rest(model, layers), model=model)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).read_bytes() == (src / name).read_bytes(), name
    written = json.loads((out / "config.json").read_text())
    assert written["initializer_range"] == 0.02 and written["quantization_config"]["bits"] == 4
    assert hf_config(written, "config.json") == model.config
    assert transformers.AutoConfig.from_pretrained(out).initializer_range == 0.02


def test_config_json_before_quantize_config_json_and_an_unfinished_export_is_refused(tmp_path, monkeypatch):
    """The Hugging Face files are written before quantize_config.json, which stays last; an
    export stopped just before that last write (config.json there, quantize_config.json not) is
    refused by every reader, naming the missing file."""
    model = _tiny_gguf_model(tmp_path)
    layers = _packed(model)
    order = []
    real = gptq_files.write_json_atomic

    def recording(path, obj):
        order.append(path.name)
        real(path, obj)

    real_tok = gptq_hf.write_tokenizer_files
    monkeypatch.setattr(gptq_writer, "write_json_atomic", recording)
    monkeypatch.setattr(gptq_hf, "write_json_atomic", recording)
    monkeypatch.setattr(gptq_hf, "write_tokenizer_files", lambda m, d: order.extend(real_tok(m, d)) or [])
    gptq.export_checkpoint(tmp_path / "a", layers, _float_rest(model, layers), model=model)
    assert order == ["tokenizer.json", "tokenizer_config.json", "generation_config.json",
                     "config.json", "quantize_config.json"]

    def stop_before_last(path, obj):
        if path.name == "quantize_config.json":
            raise KeyboardInterrupt
        real(path, obj)

    monkeypatch.setattr(gptq_writer, "write_json_atomic", stop_before_last)
    with pytest.raises(KeyboardInterrupt):
        gptq.export_checkpoint(tmp_path / "b", layers, _float_rest(model, layers), model=model)
    b = tmp_path / "b"
    assert (b / "config.json").is_file() and not (b / "quantize_config.json").exists()
    for read in (gptq.read_checkpoint, gptq.load_any, audit_checkpoint):
        with pytest.raises(gptq.GPTQCheckpointError, match="quantize_config.json is missing: an unfinished export"):
            read(b)


def test_writer_refuses_to_overwrite_hugging_face_files(tmp_path):
    model = _tiny_gguf_model(tmp_path)
    for name in ("config.json", "tokenizer.json"):
        d = tmp_path / name.split(".")[0]
        d.mkdir()
        (d / name).write_text("{}")
        with pytest.raises(gptq.GPTQCheckpointError, match=re.escape(f"['{name}']")):
            gptq.CheckpointWriter(d, model=model)


def _gptqmodel_dynamic_get(dynamic: dict, module: str):
    """GPTQModel's dynamic rule as documented (oracle written here): the first pattern that
    ``re.match``-es wins; ``-:`` skips the module, ``+:`` (or no prefix) gives its overrides."""
    for pattern, overrides in dynamic.items():
        if pattern.startswith("-:"):
            if re.match(pattern[2:], module):
                return False
        elif re.match(pattern.removeprefix("+:"), module):
            return overrides
    return None


def test_dynamic_describes_mixed_settings_and_float_linears(tmp_path):
    """Block 0 at 4 bits g16 except down_proj at 8 bits g32; block 1 left in float except its
    up_proj (4 bits): every quantized module gets its own setting, every float linear is
    skipped, and nothing outside the blocks matches; damp 0 (outside GPTQConfig's (0, 1)) is
    kept only in meta."""
    model = _tiny_gguf_model(tmp_path)
    layers = _packed(model, blocks=[0])
    layers["layers.0.mlp.down_proj"] = _packed(model, blocks=[0], group_size=32, bits=8)["layers.0.mlp.down_proj"]
    layers["layers.1.mlp.up_proj"] = _packed(model, blocks=[1])["layers.1.mlp.up_proj"]
    out = gptq.export_checkpoint(tmp_path / "ckpt", layers, _float_rest(model, layers), model=model,
                                 damp_percent=0.0)
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc == {k: v for k, v in json.loads((out / "quantize_config.json").read_text()).items() if k in qc}
    assert (qc["bits"], qc["group_size"], "damp_percent" in qc, qc["meta"]["damp"]) == (4, 16, False, 0.0)
    transformers.GPTQConfig.from_dict(qc)
    for i in range(2):
        for lin in LINEARS:
            name = f"layers.{i}.{lin}"
            got = _gptqmodel_dynamic_get(qc["dynamic"], "model." + name)
            if name not in layers:
                assert got is False, name
            elif name == "layers.0.mlp.down_proj":
                assert got == {"bits": 8, "group_size": 32, "sym": False}
            else:
                assert got is None, name            # the global setting
    for other in ("model.embed_tokens", "lm_head", "model.norm", "model.layers.10.mlp.up_proj"):
        assert _gptqmodel_dynamic_get(qc["dynamic"], other) is None


# ------------------------------------------------------------------- zero points of 0 in v1

def _layer_with_zero_points(n_zero=3, bits=4):
    """A 4-bit layer [16, 8], one group, zero points 0 in its first ``n_zero`` channels."""
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 2**bits, (16, 8)).astype(np.uint8)
    zeros = np.full((1, 16), 5, np.int32)
    zeros[0, :n_zero] = 0
    return PackedLayer(codes, np.full((1, 16), 0.5, np.float16), zeros, np.zeros(8, np.int32), bits, -1)


def test_the_peer_readers_misread_a_v1_zero_point_of_0():
    """Why the warning: v1 stores zero 0 as 15 (0xF); a reader that adds 1 without the modulo
    (as AutoGPTQ's qlinear_cuda does) gets 16, and adding 1 to every field of the word at once
    (as GPTQModel's v1->v2 conversion does: + 0x11111111) carries into the next channel's field.
    Oracles: both readers written here from those descriptions; the modulo reader is exact."""
    ly = _layer_with_zero_points(n_zero=1)
    word = int(gptq.pack_layer(ly, "gptq")["qzeros"][0, 0]) & 0xFFFFFFFF
    fields = [(word >> (4 * j)) & 0xF for j in range(8)]
    assert fields == [15, 4, 4, 4, 4, 4, 4, 4]
    assert [(f + 1) % 16 for f in fields] == [0, 5, 5, 5, 5, 5, 5, 5]       # refquant, exact
    assert [f + 1 for f in fields][0] == 16                                  # no modulo: off by one step
    added = (word + 0x11111111) & 0xFFFFFFFF
    assert [(added >> (4 * j)) & 0xF for j in range(8)] == [0, 6, 5, 5, 5, 5, 5, 5]   # channel 1 carried


def test_v1_export_warns_with_the_layer_and_count(tmp_path):
    """v1: a V1ZeroPointWarning naming the layer, the count and --format gptq_v2; writer
    records it. v2: no warning."""
    ly = _layer_with_zero_points(3)
    with pytest.warns(V1ZeroPointWarning, match=r"layers\.0\.mlp\.up_proj: 3 zero point\(s\) equal to 0, "
                      r"stored as 15 .*--format gptq_v2"):
        w = gptq.CheckpointWriter(tmp_path / "v1")
        w.write({"layers.0.mlp.up_proj": ly}, {})
    assert w.v1_zero_points == {"layers.0.mlp.up_proj": 3}
    w.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error", V1ZeroPointWarning)
        gptq.export_checkpoint(tmp_path / "v2", {"layers.0.mlp.up_proj": ly}, {},
                               checkpoint_format="gptq_v2")


def test_inspect_reports_v1_zero_points(tmp_path):
    """refquant inspect: a v1 checkpoint's layer with zero points of 0 is noted in the table
    and the report; the same layer in v2 is not."""
    from refquant.commands.inspect import format_table

    ly = _layer_with_zero_points(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", V1ZeroPointWarning)
        gptq.export_checkpoint(tmp_path / "v1", {"layers.0.mlp.up_proj": ly}, {})
    gptq.export_checkpoint(tmp_path / "v2", {"layers.0.mlp.up_proj": ly}, {}, checkpoint_format="gptq_v2")
    r1, r2 = audit_checkpoint(tmp_path / "v1"), audit_checkpoint(tmp_path / "v2")
    assert r1.tensors[0].info["v1_zero_points"] == 3 and r1.tensors[0].consistent
    table = format_table(r1)
    assert "3 v1 zero points of 0" in table
    assert "warning: layers.0.mlp.up_proj: 3 zero point(s) equal to 0" in table and "gptq_v2" in table
    assert "v1_zero_points" not in r2.tensors[0].info and "warning" not in format_table(r2)


def test_quantize_command_writes_the_directory_and_prints_the_v1_warning(tmp_path, capsys):
    """`refquant quantize` on a tiny GGUF whose up_proj weights are all positive (min-max RTN:
    every zero point 0): the progress output names the layer and the count, the summary points
    to --format gptq_v2, and transformers reads the directory."""
    from refquant.cli import main

    cfg = tiny_config()
    weights = tiny_weights(cfg)
    weights["layers.0.mlp.up_proj.weight"] = np.abs(weights["layers.0.mlp.up_proj.weight"])
    src = write_tiny_gguf(tmp_path / "tiny.gguf", cfg, weights)
    out = tmp_path / "out"
    assert main(["quantize", str(src), "--method", "rtn", "--group-size", "16", "--calib-tokens", "64",
                 "--seq-len", "16", "--no-progress", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    G = cfg.d_model // 16
    assert f"warning: layers.0.mlp.up_proj: {cfg.d_ff * G} zero point(s) equal to 0" in printed
    assert "re-export with --format gptq_v2" in printed
    stored = json.loads((out / "quantize_config.json").read_text())
    assert (stored["refquant_method"], stored["method"]) == ("rtn", "gptq")
    assert transformers.AutoConfig.from_pretrained(out).quantization_config["bits"] == 4
