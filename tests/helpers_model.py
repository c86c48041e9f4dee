"""Tiny random Llama checkpoints for fast tests, written with the ``gguf`` and ``safetensors``
packages (not with refquant's exporter), plus a tiny byte-level BPE vocabulary.

The GGUF writer applies llama.cpp's rotary row permutation to Q and K itself
(:func:`llamacpp_permute`, written from the converter's description: within each head, the rows
of the first and second rotary half are interleaved), so that the loader's un-permutation is
checked against an independent forward permutation.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from refquant.models.llama import LlamaConfig


def tiny_config(**kw) -> LlamaConfig:
    base = dict(n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_ff=64, vocab_size=300,
                tied_embeddings=False, max_seq_len=64,
                norm_eps=float(np.float32(1e-5)), rope_theta=10000.0)  # float32, as in GGUF
    base.update(kw)
    return LlamaConfig(**base)


def tiny_weights(config: LlamaConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights; norms around 1, matrices ~ N(0, 1/in)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in config.weight_shapes().items():
        if len(shape) == 1:
            out[name] = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            out[name] = (rng.standard_normal(shape) / np.sqrt(shape[1])).astype(np.float32)
    return out


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + \
        list(range(0xAE, 0xFF + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def tiny_vocab(vocab_size: int = 300):
    """(tokens, merges, token_types): <|endoftext|> (control) then the 256 byte symbols, then
    merges t+h, th+e, Ġ+the, Ġ+a, a+n (best first), then filler tokens up to ``vocab_size``."""
    sym = bytes_to_unicode()
    tokens = ["<|endoftext|>"] + [sym[b] for b in range(256)]
    merges = ["t h", "th e", "Ġ the", "Ġ a", "a n"]
    for m in merges:
        tokens.append(m.replace(" ", ""))
    while len(tokens) < vocab_size:
        tokens.append(f"<filler{len(tokens)}>")
    types = [3] + [1] * (len(tokens) - 1)
    return tokens, merges, types


def llamacpp_permute(W: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's Q/K permutation: per head, HF row j -> row 2j, row j + h_d/2 -> row 2j+1."""
    hd = W.shape[0] // n_heads
    out = np.empty_like(W)
    for h in range(n_heads):
        for j in range(hd // 2):
            out[h * hd + 2 * j] = W[h * hd + j]
            out[h * hd + 2 * j + 1] = W[h * hd + hd // 2 + j]
    return out


_GGUF_NAMES = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def hf_to_gguf_name(name: str) -> str:
    parts = name.split(".")
    if parts[0] == "layers":
        return f"blk.{parts[1]}.{_GGUF_NAMES['.'.join(parts[2:-1])]}.weight"
    return {"embed_tokens": "token_embd", "norm": "output_norm", "lm_head": "output"}[parts[0]] \
        + ".weight"


def write_tiny_gguf(path, config: LlamaConfig, weights: dict[str, np.ndarray], *,
                    qtype="F32", arch="llama", tokenizer_model="gpt2", pre="smollm",
                    skip=(), types=None) -> pathlib.Path:
    """Write a GGUF with ``gguf.GGUFWriter``. Matrices are stored as ``qtype`` (name of a
    ``gguf.GGMLQuantizationType``; quantized with ``gguf.quants.quantize``), norms as F32;
    ``types`` overrides the type per HF name; names in ``skip`` are left out."""
    import gguf

    path = pathlib.Path(path)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(config.n_layers)
    w.add_context_length(config.max_seq_len)
    w.add_embedding_length(config.d_model)
    w.add_feed_forward_length(config.d_ff)
    w.add_head_count(config.n_heads)
    w.add_head_count_kv(config.n_kv_heads)
    w.add_layer_norm_rms_eps(config.norm_eps)
    w.add_rope_freq_base(config.rope_theta)
    w.add_rope_dimension_count(config.head_dim)
    w.add_vocab_size(config.vocab_size)
    tokens, merges, ttypes = tiny_vocab(config.vocab_size)
    w.add_tokenizer_model(tokenizer_model)
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types(ttypes)
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_add_bos_token(False)
    for name, W in weights.items():
        if name in skip:
            continue
        W = np.asarray(W, np.float32)
        if name.endswith("q_proj.weight"):
            W = llamacpp_permute(W, config.n_heads)
        elif name.endswith("k_proj.weight"):
            W = llamacpp_permute(W, config.n_kv_heads)
        t = (types or {}).get(name, qtype if W.ndim == 2 else "F32")
        q = gguf.GGMLQuantizationType[t]
        if q == gguf.GGMLQuantizationType.F32:
            w.add_tensor(hf_to_gguf_name(name), W)
        elif q == gguf.GGMLQuantizationType.F16:
            w.add_tensor(hf_to_gguf_name(name), W.astype(np.float16))
        else:
            data = gguf.quants.quantize(W, q)
            w.add_tensor(hf_to_gguf_name(name), data, raw_shape=data.shape, raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_tiny_hf(directory, config: LlamaConfig, weights: dict[str, np.ndarray], *,
                  dtype="F32", shards: int = 1) -> pathlib.Path:
    """Write config.json and safetensors (``model.`` prefixes) with ``safetensors.numpy``; F16
    casts with NumPy; BF16 is written by hand (safetensors' numpy API has no bfloat16): the high
    16 bits of each float32, which is exact for values that are bfloat16 numbers."""
    from safetensors.numpy import save_file

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
           "hidden_size": config.d_model, "intermediate_size": config.d_ff,
           "num_hidden_layers": config.n_layers, "num_attention_heads": config.n_heads,
           "num_key_value_heads": config.n_kv_heads, "vocab_size": config.vocab_size,
           "rms_norm_eps": config.norm_eps, "rope_theta": config.rope_theta,
           "tie_word_embeddings": config.tied_embeddings,
           "max_position_embeddings": config.max_seq_len, "bos_token_id": 0, "eos_token_id": 0}
    (directory / "config.json").write_text(json.dumps(cfg))
    named = {("model." + n if n != "lm_head.weight" else n): np.asarray(W, np.float32)
             for n, W in weights.items()}
    names = sorted(named)
    groups = [names[i::shards] for i in range(shards)]
    files = ["model.safetensors"] if shards == 1 else \
        [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    for file, group in zip(files, groups):
        part = {n: named[n] for n in group}
        if dtype == "BF16":
            write_bf16_safetensors(directory / file, part)
        else:
            np_dtype = np.float16 if dtype == "F16" else np.float32
            save_file({n: W.astype(np_dtype) for n, W in part.items()}, str(directory / file))
    if shards > 1:
        index = {"metadata": {}, "weight_map": {n: f for f, g in zip(files, groups) for n in g}}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return directory


def to_bf16_exact(W: np.ndarray) -> np.ndarray:
    """Round float32 values down to bfloat16 numbers (zero the low 16 bits)."""
    bits = np.asarray(W, np.float32).view(np.uint32) & np.uint32(0xFFFF0000)
    return bits.view(np.float32)


def write_bf16_safetensors(file, tensors: dict[str, np.ndarray]) -> None:
    """A safetensors file by hand: 8-byte header length, JSON header, raw little-endian data."""
    header, blobs, offset = {}, [], 0
    for name, W in tensors.items():
        raw = (np.asarray(W, np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(W.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(file, "wb") as fh:
        fh.write(len(h).to_bytes(8, "little"))
        fh.write(h)
        for b in blobs:
            fh.write(b)


def tiny_model(seed: int = 0, *, salient: int = 0, **config):
    """A :class:`refquant.models.llama.LlamaModel` of :func:`tiny_config` ``(**config)`` with
    :func:`tiny_weights`; ``salient`` random channels of every RMSNorm weight are multiplied by
    12 (the large-activation channels AWQ protects)."""
    from refquant.models.llama import LlamaModel

    cfg = tiny_config(**config)
    w = tiny_weights(cfg, seed)
    rng = np.random.default_rng(seed + 100)
    for name in w:
        if salient and name.endswith("layernorm.weight"):
            w[name][rng.choice(cfg.d_model, salient, replace=False)] *= 12.0
    return LlamaModel(cfg, w)
