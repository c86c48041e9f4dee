"""The Llama forward pass in NumPy, float32, with a pluggable linear layer.

Pure functions over a mapping of named weights, in the manner of picoGPT: every non-trivial
line carries its shape. The architecture is Llama (Touvron et al., "LLaMA: Open and Efficient
Foundation Language Models", arXiv:2302.13971): pre-norm blocks with RMSNorm (Zhang & Sennrich,
NeurIPS 2019, arXiv:1910.07467), rotary position embeddings (Su et al., "RoFormer",
arXiv:2104.09864) in the Hugging Face "rotate half" layout, grouped-query attention (Ainslie et
al., EMNLP 2023, arXiv:2305.13245) with a causal mask, and a SwiGLU MLP (Shazeer, "GLU Variants
Improve Transformer", arXiv:2002.05202).

Symbols and shapes
------------------
====================  ==========================================================
``B``, ``T``          batch size, number of new positions
``S``                 number of key positions (``start_pos + T`` with a KV cache)
``d``                 hidden size (``config.d_model``)
``H``, ``H_kv``       query heads, key/value heads; ``r = H / H_kv`` queries share a KV head
``h_d``               head dimension (``config.head_dim``)
``f``                 MLP width (``config.d_ff``)
``V``                 vocabulary size
``W``                 a weight matrix, ``(out, in)`` layout: a linear layer computes ``x @ W.T``
====================  ==========================================================

The linear protocol
-------------------
Every projection goes through ``linear(name, x)``, ``name`` being the weight name without
``.weight`` (``"layers.3.mlp.down_proj"``), ``x`` of shape ``[..., in]``, result ``[..., out]``.
The default multiplies by ``model.weights[name + ".weight"].T`` in float32; a fake-quantized,
weight-only int4 or int8 path passes its own callable, and a calibration pass can record inputs by
wrapping the default (:func:`default_linear`). The embedding and the output head are not linear
layers in this sense: :func:`embed` and :func:`head` read their weights directly.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, MutableMapping
from typing import Any

import numpy as np

Linear = Callable[[str, np.ndarray], np.ndarray]

QUERY_BLOCK = 128     # queries per causal attention block (skips most masked scores)
# the linear layers of block i, in the order the forward pass calls them: f"layers.{i}." + name
LINEAR_NAMES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Hyper-parameters of a Llama model.

    Parameters
    ----------
    n_layers : number of transformer blocks.
    d_model : hidden size ``d``.
    n_heads, n_kv_heads : query heads ``H`` and key/value heads ``H_kv`` (``H % H_kv == 0``).
    d_ff : MLP width ``f``.
    vocab_size : ``V``.
    norm_eps : RMSNorm epsilon.
    rope_theta : rotary base :math:`\\theta`.
    tied_embeddings : the output head reuses ``embed_tokens.weight``.
    head_dim : ``h_d``; ``None`` means ``d_model // n_heads``.
    max_seq_len : context length the model was trained for (informational).
    """

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    vocab_size: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tied_embeddings: bool = False
    head_dim: int | None = None
    max_seq_len: int = 2048

    def __post_init__(self):
        for name in ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff", "vocab_size",
                     "max_seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"LlamaConfig.{name} must be a positive integer, got {value!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of "
                             f"n_kv_heads={self.n_kv_heads}")
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ValueError(f"d_model={self.d_model} is not a multiple of "
                                 f"n_heads={self.n_heads}; give head_dim")
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
        if self.head_dim <= 0 or self.head_dim % 2:
            raise ValueError(f"head_dim must be a positive even integer, got {self.head_dim!r}")
        if not (np.isfinite(self.norm_eps) and self.norm_eps > 0):
            raise ValueError(f"norm_eps must be finite and > 0, got {self.norm_eps!r}")
        if not (np.isfinite(self.rope_theta) and self.rope_theta > 1):
            raise ValueError(f"rope_theta must be finite and > 1, got {self.rope_theta!r}")

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every weight name of this architecture and its shape (``(out, in)`` for matrices)."""
        d, f, hd = self.d_model, self.d_ff, self.head_dim
        shapes = {"embed_tokens.weight": (self.vocab_size, d)}
        for i in range(self.n_layers):
            p = f"layers.{i}."
            shapes.update({
                p + "input_layernorm.weight": (d,),
                p + "self_attn.q_proj.weight": (self.n_heads * hd, d),
                p + "self_attn.k_proj.weight": (self.n_kv_heads * hd, d),
                p + "self_attn.v_proj.weight": (self.n_kv_heads * hd, d),
                p + "self_attn.o_proj.weight": (d, self.n_heads * hd),
                p + "post_attention_layernorm.weight": (d,),
                p + "mlp.gate_proj.weight": (f, d),
                p + "mlp.up_proj.weight": (f, d),
                p + "mlp.down_proj.weight": (d, f),
            })
        shapes["norm.weight"] = (d,)
        if not self.tied_embeddings:
            shapes["lm_head.weight"] = (self.vocab_size, d)
        return shapes


@dataclasses.dataclass
class LlamaModel:
    """A Llama model: configuration, named float32 weights, tokenizer and where it came from.

    ``weights`` maps the Hugging Face names without the ``model.`` prefix (see
    :meth:`LlamaConfig.weight_shapes`) to float32 arrays; loaders give a lazy mapping that reads a
    tensor on first access. Assigning ``model.weights[name] = array`` replaces a weight.
    """

    config: LlamaConfig
    weights: MutableMapping[str, np.ndarray]
    tokenizer: Any = None
    source: Any = None


@dataclasses.dataclass
class KVCache:
    """Keys and values of the positions seen so far, per layer.

    ``k[i]``, ``v[i]``: ``[B, H_kv, max_len, h_d]`` float32, filled up to ``pos``.
    :func:`forward` reads and advances ``pos``; :func:`block` writes at ``start_pos``.
    """

    k: list[np.ndarray]
    v: list[np.ndarray]
    pos: int = 0

    @classmethod
    def empty(cls, config: LlamaConfig, batch: int, max_len: int) -> "KVCache":
        shape = (batch, config.n_kv_heads, max_len, config.head_dim)
        return cls([np.zeros(shape, np.float32) for _ in range(config.n_layers)],
                   [np.zeros(shape, np.float32) for _ in range(config.n_layers)])

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]


def default_linear(model: LlamaModel) -> Linear:
    """The float linear layer: ``x @ W.T`` with ``W = model.weights[name + ".weight"]``.

    ``x`` is flattened to 2-D so that NumPy hands one matrix product to BLAS.
    """
    weights = model.weights

    def linear(name: str, x: np.ndarray) -> np.ndarray:
        W = weights[name + ".weight"]                           # [out, in]
        y = x.reshape(-1, x.shape[-1]) @ W.T                    # [B*T, in] -> [B*T, out]
        return y.reshape(*x.shape[:-1], W.shape[0])             # [..., out]

    return linear


def rms_norm(x: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm: :math:`y = x / \\sqrt{\\operatorname{mean}(x^2) + \\epsilon} \\cdot g`.

    ``x``: ``[..., d]`` float32, ``g``: ``[d]``; returns a new ``[..., d]`` float32 array.
    """
    ms = np.einsum("...i,...i->...", x, x)[..., None] / np.float32(x.shape[-1])   # [..., 1]
    ms += np.float32(eps)
    y = x / np.sqrt(ms)                                         # [..., d]
    y *= g
    return y


@functools.lru_cache(maxsize=64)
def rope_tables(start_pos: int, T: int, head_dim: int, theta: float):
    """Rotary angles for positions ``start_pos .. start_pos+T-1``.

    .. math:: \\phi_{t,j} = t \\, \\theta^{-2j/h_d}, \\quad j = 0 .. h_d/2-1

    Returns ``(cos, sin)``, each ``[T, h_d/2]`` float32 (computed in float64, read-only).
    """
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # [h_d/2]
    phi = np.arange(start_pos, start_pos + T, dtype=np.float64)[:, None] * inv_freq    # [T, h_d/2]
    cos, sin = np.cos(phi).astype(np.float32), np.sin(phi).astype(np.float32)
    cos.flags.writeable = sin.flags.writeable = False
    return cos, sin


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate pairs ``(x_j, x_{j+h_d/2})`` by :math:`\\phi_{t,j}` (the "rotate half" layout).

    .. math:: y_j = x_j \\cos\\phi_j - x_{j+h_d/2} \\sin\\phi_j, \\quad
              y_{j+h_d/2} = x_{j+h_d/2} \\cos\\phi_j + x_j \\sin\\phi_j

    ``x``: ``[B, heads, T, h_d]``; ``cos``, ``sin``: ``[T, h_d/2]``.
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]                       # [B, heads, T, h_d/2] each
    y = np.empty_like(x)
    np.multiply(x1, cos, out=y[..., :half])
    y[..., :half] -= x2 * sin
    np.multiply(x2, cos, out=y[..., half:])
    y[..., half:] += x1 * sin
    return y


def softmax_(s: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis, in place: ``exp(s - max) / sum``."""
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return s


def embed(model: LlamaModel, tokens: np.ndarray) -> np.ndarray:
    """Token embedding lookup: ``tokens [B, T]`` int -> ``x [B, T, d]`` float32."""
    tokens = _check_tokens(model.config, tokens)
    return model.weights["embed_tokens.weight"][tokens]         # [V, d] -> [B, T, d]


def attention(model: LlamaModel, i: int, x: np.ndarray, *, linear: Linear,
              cache: KVCache | None = None, start_pos: int = 0) -> np.ndarray:
    """Causal grouped-query self-attention of block ``i`` on normalized ``x [B, T, d]``.

    .. math:: \\operatorname{softmax}\\big(Q K^\\top / \\sqrt{h_d} + M\\big) V,
              \\quad M_{ts} = -\\infty \\text{ for } s > \\text{start\\_pos} + t
    """
    c = model.config
    B, T, _ = x.shape
    H, H_kv, hd = c.n_heads, c.n_kv_heads, c.head_dim
    r = H // H_kv
    p = f"layers.{i}.self_attn."
    q = linear(p + "q_proj", x).reshape(B, T, H, hd).transpose(0, 2, 1, 3)      # [B, H, T, h_d]
    k = linear(p + "k_proj", x).reshape(B, T, H_kv, hd).transpose(0, 2, 1, 3)   # [B, H_kv, T, h_d]
    v = linear(p + "v_proj", x).reshape(B, T, H_kv, hd).transpose(0, 2, 1, 3)   # [B, H_kv, T, h_d]
    cos, sin = rope_tables(start_pos, T, hd, float(c.rope_theta))
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    S = start_pos + T
    if cache is not None:
        if cache.k[i].shape[0] != B or S > cache.max_len:
            raise ValueError(f"KV cache of batch {cache.k[i].shape[0]} and length "
                             f"{cache.max_len} cannot hold batch {B} up to position {S}")
        cache.k[i][:, :, start_pos:S] = k
        cache.v[i][:, :, start_pos:S] = v
        k, v = cache.k[i][:, :, :S], cache.v[i][:, :, :S]       # [B, H_kv, S, h_d]
    elif start_pos:
        raise ValueError(f"start_pos={start_pos} needs a KV cache holding the earlier positions")
    # query head j*r + m shares key/value head j: group the r query heads of each KV head
    q = q.reshape(B, H_kv, r, T, hd) * np.float32(1.0 / np.sqrt(hd))     # [B, H_kv, r, T, h_d]
    o = np.empty((B, H_kv, r, T, hd), np.float32)
    # causal blocks of queries: block [a, b) only needs the keys 0 .. start_pos + b - 1
    for a in range(0, T, QUERY_BLOCK):
        b = min(a + QUERY_BLOCK, T)
        n, S_b = b - a, start_pos + b
        qb = q[:, :, :, a:b].reshape(B, H_kv, r * n, hd)        # [B, H_kv, r*n, h_d]
        s = qb @ k[:, :, :S_b].transpose(0, 1, 3, 2)            # [B, H_kv, r*n, S_b]
        if n > 1:   # query start_pos+t (t in [a, b)) must not see keys after it
            t_pos = np.arange(start_pos + a, S_b)[:, None]      # [n, 1]
            s_pos = np.arange(start_pos + a, S_b)[None, :]      # [1, n]
            mask = np.where(s_pos > t_pos, np.float32(-np.inf), np.float32(0))     # [n, n]
            s.reshape(B, H_kv, r, n, S_b)[..., start_pos + a:] += mask
        softmax_(s)
        o[:, :, :, a:b] = (s @ v[:, :, :S_b]).reshape(B, H_kv, r, n, hd)
    o = o.reshape(B, H, T, hd).transpose(0, 2, 1, 3).reshape(B, T, H * hd)   # [B, T, H*h_d]
    return linear(p + "o_proj", o)                              # [B, T, d]


def mlp(model: LlamaModel, i: int, x: np.ndarray, *, linear: Linear) -> np.ndarray:
    """SwiGLU MLP of block ``i``, ``[B, T, d] -> [B, T, d]``:

    .. math:: W_{down}\\,(\\operatorname{SiLU}(W_{gate} x) \\odot W_{up} x)
    """
    p = f"layers.{i}.mlp."
    g = linear(p + "gate_proj", x)                              # [B, T, f]
    u = linear(p + "up_proj", x)                                # [B, T, f]
    e = np.negative(g)
    with np.errstate(over="ignore"):                            # exp(-g) = inf -> silu = -0
        np.exp(e, out=e)
    e += np.float32(1)
    h = np.divide(g, e, out=e)                                  # SiLU(g) = g / (1 + exp(-g))
    h *= u                        # (never written in place: g and u belong to the linear)
    return linear(p + "down_proj", h)                           # [B, T, f] -> [B, T, d]


def block(model: LlamaModel, i: int, x: np.ndarray, *, linear: Linear | None = None,
          cache: KVCache | None = None, start_pos: int = 0) -> np.ndarray:
    """Transformer block ``i``: ``x + attn(norm(x))``, then ``+ mlp(norm(.))``.

    ``x``: ``[B, T, d]`` float32 (not modified) -> ``[B, T, d]``.
    """
    if linear is None:
        linear = default_linear(model)
    w, eps = model.weights, model.config.norm_eps
    p = f"layers.{i}."
    a = rms_norm(x, w[p + "input_layernorm.weight"], eps)
    x = x + attention(model, i, a, linear=linear, cache=cache, start_pos=start_pos)
    m = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
    x += mlp(model, i, m, linear=linear)
    return x


def head_weight(model: LlamaModel) -> np.ndarray:
    """The output projection ``[V, d]``: ``lm_head.weight``, or the embedding when tied."""
    name = "embed_tokens.weight" if model.config.tied_embeddings else "lm_head.weight"
    return model.weights[name]


def head(model: LlamaModel, x: np.ndarray) -> np.ndarray:
    """Final RMSNorm and output projection: ``x [..., d]`` -> logits ``[..., V]`` float32."""
    y = rms_norm(x, model.weights["norm.weight"], model.config.norm_eps)
    W = head_weight(model)                                      # [V, d]
    logits = y.reshape(-1, y.shape[-1]) @ W.T                   # [N, d] -> [N, V]
    return logits.reshape(*x.shape[:-1], W.shape[0])


def hidden_states(model: LlamaModel, tokens: np.ndarray, *, linear: Linear | None = None,
                  cache: KVCache | None = None) -> np.ndarray:
    """Embedding and all blocks (no final norm): ``tokens [B, T]`` -> ``x [B, T, d]``.

    With a ``cache`` the tokens continue at position ``cache.pos``, which is then advanced.
    """
    if linear is None:
        linear = default_linear(model)
    start_pos = 0 if cache is None else cache.pos
    x = embed(model, tokens)                                    # [B, T, d]
    for i in range(model.config.n_layers):
        x = block(model, i, x, linear=linear, cache=cache, start_pos=start_pos)
    if cache is not None:
        cache.pos += x.shape[1]
    return x


def forward(model: LlamaModel, tokens: np.ndarray, *, linear: Linear | None = None,
            cache: KVCache | None = None) -> np.ndarray:
    """Logits of every position: ``tokens [B, T]`` int -> ``[B, T, V]`` float32."""
    return head(model, hidden_states(model, tokens, linear=linear, cache=cache))


def generate(model: LlamaModel, prompt_ids, n_new: int, *, linear: Linear | None = None,
             stop_at_eos: bool = True) -> list[int]:
    """Greedy decoding: the ``n_new`` (or fewer, at end of sequence) token ids after the prompt.

    The prompt runs once through the model filling a :class:`KVCache`; each new token then costs
    one single-position forward pass. Stops early at the tokenizer's ``eos_id`` if
    ``stop_at_eos``.
    """
    prompt = np.asarray(prompt_ids)
    if prompt.ndim != 1 or prompt.size == 0:
        raise ValueError(f"prompt_ids must be a non-empty 1-D sequence, got shape {prompt.shape}")
    if isinstance(n_new, bool) or not isinstance(n_new, (int, np.integer)) or n_new < 0:
        raise ValueError(f"n_new must be a non-negative integer, got {n_new!r}")
    eos = getattr(model.tokenizer, "eos_id", None) if stop_at_eos else None
    cache = KVCache.empty(model.config, 1, prompt.size + n_new)
    out: list[int] = []
    logits = forward(model, prompt[None, :], linear=linear, cache=cache)   # [1, T, V]
    for _ in range(n_new):
        nxt = int(np.argmax(logits[0, -1]))
        out.append(nxt)
        if nxt == eos or len(out) == n_new:
            break
        logits = forward(model, np.array([[nxt]]), linear=linear, cache=cache)  # [1, 1, V]
    return out


def _check_tokens(config: LlamaConfig, tokens) -> np.ndarray:
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] == 0:
        raise ValueError(f"tokens must be a [B, T] integer array with T >= 1, got shape "
                         f"{tokens.shape}")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must be integers, got dtype {tokens.dtype}")
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= config.vocab_size:
        raise ValueError(f"token id {lo if lo < 0 else hi} outside the vocabulary "
                         f"[0, {config.vocab_size})")
    return tokens
