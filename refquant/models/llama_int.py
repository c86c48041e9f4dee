"""The integer-only twin of the Llama forward pass (:mod:`refquant.models.llama`): every step
after the token ids runs on integer arrays through the ops of :mod:`refquant.integer`.

Model preparation (:func:`refquant.models.llama_int_prepare.prepare_integer`) is the only place
where floats meet the weights: it quantizes them, calibrates static scales and turns every
ratio of scales into a fixed-point multiplier. At run time (Jacob et al., CVPR 2018,
arXiv:1712.05877; I-BERT, Kim et al., ICML 2021, arXiv:2101.01321; I-LLM, Hu et al. 2024,
arXiv:2405.17849):

=====================  ====================================================================
residual stream        int32 codes of ``S_x = 2^-16``
embedding              int8 table, per-row scales, looked up into ``S_x``
                       (:func:`refquant.integer.ops_linear.embed_int8`)
RMSNorm                :func:`refquant.integer.ops_norm.i_rms_norm` -> per-token int8 ``(q, u)``
                       (``mode="static"``: then rescaled to a calibrated per-tensor scale)
q/k/v, gate/up         int8 matmul, int32 out at ``2^-16`` (:func:`~refquant.integer.ops_linear.linear_rows`)
RoPE                   Q30 tables, :func:`refquant.integer.ops_rope.i_rope`
queries                per-token-per-head int8 (dynamic); keys and values int8 of static
                       per-head scales: the int8 KV cache
attention              :func:`refquant.integer.ops_attention.i_attention` (integer softmax,
                       uint8 probabilities), out at ``2^-16``
o_proj, down_proj      per-token int8 inputs (dynamic row max, or static), int32 out at ``S_x``,
                       :func:`refquant.integer.requant.residual_add`
SwiGLU                 :func:`refquant.integer.ops_act.i_swiglu`, at ``2^-16``
head                   final RMSNorm, then the int8 embedding table as weight: int32 logits of
                       one static scale ``S_logit = 2^-16`` (:func:`logits_to_float` is the one
                       float step, for the probabilities)
=====================  ====================================================================

``float_ops`` swaps ops back to float64 one at a time for the ablation
(:mod:`refquant.models.llama_int_float`): the swapped op reads and writes the same integer
formats, so only its own arithmetic changes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from refquant.integer.ops_act import i_swiglu
from refquant.integer.ops_attention import i_attention
from refquant.integer.ops_linear import embed_int8, linear_rows, w4_linear_rows
from refquant.integer.ops_norm import i_rms_norm
from refquant.integer.ops_rope import i_rope
from refquant.integer.requant import dynamic_int8, rescale_rows, residual_add, static_int8
from refquant.models.llama import LlamaConfig, _check_tokens

FRAC = 16                 # every int32 activation (residual, q/k/v, gate/up, attention) at 2^-16
S_X = 2.0**-FRAC
S_LOGIT = 2.0**-FRAC
FLOAT_OPS = ("rms_norm", "rope", "softmax", "attention", "swiglu")
MODES = ("dynamic", "static")
_ONE = (np.int32(2**30), np.int32(-1))      # the multiplier 1 exactly: 2^30 2^-(31-1)
STATIC_U = 2**16          # static codes carry the row factor u = 2^16 (their base is S_a / 2^16)


@dataclasses.dataclass
class IntProj:
    """One projection: int8 ``q_wT [K, N]`` (or W4: ``cT [K, N]`` codes minus zeros, ``sigma
    [G, N]``, ``group_size``) and the output multipliers ``(M0, n) [N]`` from the input's base."""

    M0: np.ndarray
    n: np.ndarray
    q_wT: np.ndarray | None = None
    cT: np.ndarray | None = None
    sigma: np.ndarray | None = None
    group_size: int = 0

    def __call__(self, q, u, backend):
        if self.q_wT is not None:
            return linear_rows(q, u, self.q_wT, self.M0, self.n, backend=backend)
        return w4_linear_rows(q, u, self.cT, self.sigma, self.group_size, self.M0, self.n,
                              backend=backend)


@dataclasses.dataclass
class IntBlock:
    """Block ``i``: norm gains (int16 codes), projections, static K/V and activation multipliers.

    ``act`` maps an activation point (``"attn_in"``, ``"mlp_in"``, ``"o_in"``, ``"down_in"``) to
    the ``(M0, n)`` that brings it to its static int8 scale (``mode="static"`` only).
    ``k_M``, ``v_M``: ``(M0, n) [H_kv, 1, 1]``, int32 codes at ``2^-16`` -> int8 cache codes.
    ``Ms``, ``Mo``: the score and output multipliers of :func:`i_attention`.
    """

    g_attn: np.ndarray
    g_mlp: np.ndarray
    proj: dict[str, IntProj]
    k_M: tuple
    v_M: tuple
    Ms: tuple
    Mo: tuple
    act: dict[str, tuple]


@dataclasses.dataclass
class IntLlama:
    """A Llama prepared for integer-only inference
    (:func:`refquant.models.llama_int_prepare.prepare_integer`).

    ``E_q [V, d]`` int8 with ``(M0_e, n_e) [V]`` into ``S_x``; ``head`` the output projection
    (the same int8 table when tied); ``cos_q, sin_q [max_len, h_d/2]`` Q30 tables; ``E`` the
    RMSNorm epsilon in units of ``S_x^2``; ``scales`` the offline float scales, kept for the
    ablation and the docs only (the integer forward never reads them).
    """

    config: LlamaConfig
    mode: str
    E_q: np.ndarray
    M0_e: np.ndarray
    n_e: np.ndarray
    blocks: list[IntBlock]
    g_final: np.ndarray
    head: IntProj
    cos_q: np.ndarray
    sin_q: np.ndarray
    E: int
    scales: dict = dataclasses.field(default_factory=dict)
    tokenizer: Any = None
    source: Any = None


@dataclasses.dataclass
class IntKVCache:
    """int8 keys and values ``[B, H_kv, max_len, h_d]`` per layer, filled up to ``pos``."""

    k: list[np.ndarray]
    v: list[np.ndarray]
    pos: int = 0

    @classmethod
    def empty(cls, config: LlamaConfig, batch: int, max_len: int) -> "IntKVCache":
        shape = (batch, config.n_kv_heads, max_len, config.head_dim)
        return cls([np.zeros(shape, np.int8) for _ in range(config.n_layers)],
                   [np.zeros(shape, np.int8) for _ in range(config.n_layers)])


def _ops(float_ops):
    """The op table: integer ops, with the names in ``float_ops`` swapped for float64 ones."""
    ops = {"rms_norm": i_rms_norm, "rope": i_rope, "swiglu": i_swiglu, "softmax": i_attention,
           "attention": None}
    if float_ops:
        bad = sorted(set(float_ops) - set(FLOAT_OPS))
        if bad:
            raise ValueError(f"unknown float_ops {bad}; choose from {FLOAT_OPS}")
        from refquant.models import llama_int_float
        ops.update({name: getattr(llama_int_float, name) for name in float_ops})
    return ops


def _to_int8(model: IntLlama, ops, x, g_q, point: str, blk: IntBlock | None):
    """RMSNorm of the residual ``x`` into per-token int8 ``(q, u)`` (static: ``u = 2^16``)."""
    q, u = ops["rms_norm"](x, g_q, model.E)                      # [B, T, d], [B, T]
    if model.mode == "static" and blk is not None:
        q = np.clip(rescale_rows(q, u, *blk.act[point]), -127, 127).astype(np.int8)
        u = np.full_like(u, STATIC_U)
    return q, u


def _rows_int8(model: IntLlama, x, blk: IntBlock, point: str):
    """Per-token int8 codes of an int32 activation at ``2^-16`` (static: a calibrated scale)."""
    if model.mode == "static":
        return static_int8(x, *blk.act[point]), np.full(x.shape[:-1], STATIC_U, np.int64)
    return dynamic_int8(x)


def _attention(model: IntLlama, ops, i: int, x, cache, start_pos: int, backend: str):
    c, blk = model.config, model.blocks[i]
    B, T, d = x.shape
    H, H_kv, hd = c.n_heads, c.n_kv_heads, c.head_dim
    q8, u = _to_int8(model, ops, x, blk.g_attn, "attn_in", blk)
    q8, u = q8.reshape(B * T, d), u.reshape(B * T)
    heads = {}
    for name, n_h in (("q_proj", H), ("k_proj", H_kv), ("v_proj", H_kv)):
        y = blk.proj[name](q8, u, backend)                                   # [B*T, n_h*h_d]
        heads[name] = y.reshape(B, T, n_h, hd).transpose(0, 2, 1, 3)         # [B, n_h, T, h_d]
    S = start_pos + T
    cq, sq = model.cos_q[start_pos:S], model.sin_q[start_pos:S]              # [T, h_d/2]
    qh = ops["rope"](np.ascontiguousarray(heads["q_proj"]), cq, sq)          # [B, H, T, h_d]
    kh = ops["rope"](np.ascontiguousarray(heads["k_proj"]), cq, sq)          # [B, H_kv, T, h_d]
    k8 = static_int8(kh, *blk.k_M)                                           # int8 cache codes
    v8 = static_int8(heads["v_proj"], *blk.v_M)
    if cache is not None:
        if cache.k[i].shape[0] != B or S > cache.k[i].shape[2]:
            raise ValueError(f"KV cache of batch {cache.k[i].shape[0]} and length "
                             f"{cache.k[i].shape[2]} cannot hold batch {B} up to position {S}")
        cache.k[i][:, :, start_pos:S] = k8
        cache.v[i][:, :, start_pos:S] = v8
        k8, v8 = cache.k[i][:, :, :S], cache.v[i][:, :, :S]                  # [B, H_kv, S, h_d]
    elif start_pos:
        raise ValueError(f"start_pos={start_pos} needs a KV cache holding the earlier positions")
    r = H // H_kv
    if ops["attention"] is not None and cache is None:                      # ablation only
        o = ops["attention"](qh, kh, heads["v_proj"], start_pos)
    else:
        qq, uq = dynamic_int8(qh)                                # [B, H, T, h_d], [B, H, T]
        o = ops["softmax"](qq.reshape(B, H_kv, r, T, hd), uq.reshape(B, H_kv, r, T), k8, v8,
                           blk.Ms, blk.Mo, start_pos, FRAC, backend=backend)  # [B, H_kv, r, T, h_d]
    o = o.reshape(B, H, T, hd).transpose(0, 2, 1, 3).reshape(B * T, H * hd)  # [B*T, H*h_d]
    q8, u = _rows_int8(model, o, blk, "o_in")
    return blk.proj["o_proj"](q8, u, backend).reshape(B, T, d)               # int32 at S_x


def _mlp(model: IntLlama, ops, i: int, x, backend: str):
    blk = model.blocks[i]
    B, T, d = x.shape
    q8, u = _to_int8(model, ops, x, blk.g_mlp, "mlp_in", blk)
    q8, u = q8.reshape(B * T, d), u.reshape(B * T)
    g = blk.proj["gate_proj"](q8, u, backend)                                # [B*T, f] at 2^-16
    v = blk.proj["up_proj"](q8, u, backend)
    h = ops["swiglu"](g, v, FRAC)                                            # [B*T, f] int64
    h = np.clip(h, -(2**31), 2**31 - 1).astype(np.int32)
    q8, u = _rows_int8(model, h, blk, "down_in")
    return blk.proj["down_proj"](q8, u, backend).reshape(B, T, d)


def hidden_states_int(model: IntLlama, tokens, *, cache: IntKVCache | None = None,
                      backend: str = "auto", float_ops=()) -> np.ndarray:
    """Embedding and all blocks: ``tokens [B, T]`` -> residual ``[B, T, d]`` int32 at ``S_x``."""
    ops = _ops(float_ops)
    tokens = _check_tokens(model.config, tokens)
    start_pos = 0 if cache is None else cache.pos
    x = embed_int8(model.E_q, model.M0_e, model.n_e, tokens)                 # [B, T, d] int32
    for i in range(model.config.n_layers):
        a = _attention(model, ops, i, x, cache, start_pos, backend)
        x = residual_add(x, a, *_ONE)
        m = _mlp(model, ops, i, x, backend)
        x = residual_add(x, m, *_ONE)
    if cache is not None:
        cache.pos += x.shape[1]
    return x


def head_int(model: IntLlama, x, *, backend: str = "auto", float_ops=()) -> np.ndarray:
    """Final RMSNorm and the int8 head: residual ``[..., d]`` int32 -> logits ``[..., V]`` int32
    codes of scale ``S_logit``."""
    ops = _ops(float_ops)
    q8, u = _to_int8(model, ops, x, model.g_final, "final", None)
    shape = q8.shape[:-1]
    y = model.head(q8.reshape(-1, q8.shape[-1]), u.reshape(-1), backend)     # [N, V]
    return y.reshape(*shape, y.shape[-1])


def forward_int(model: IntLlama, tokens, *, cache: IntKVCache | None = None,
                backend: str = "auto", float_ops=()) -> np.ndarray:
    """Integer logits of every position: ``tokens [B, T]`` -> ``[B, T, V]`` int32 (``S_logit``)."""
    x = hidden_states_int(model, tokens, cache=cache, backend=backend, float_ops=float_ops)
    return head_int(model, x, backend=backend, float_ops=float_ops)


def logits_to_float(logits) -> np.ndarray:
    """The one float step: int32 logits codes -> float32 logits ``S_logit * codes``."""
    return np.asarray(logits, np.float32) * np.float32(S_LOGIT)


def generate_int(model: IntLlama, prompt_ids, n_new: int, *, backend: str = "auto",
                 stop_at_eos: bool = True) -> list[int]:
    """Greedy decoding on the integer model with an int8 KV cache (argmax of the int32 logits:
    no float at all)."""
    prompt = np.asarray(prompt_ids)
    if prompt.ndim != 1 or prompt.size == 0:
        raise ValueError(f"prompt_ids must be a non-empty 1-D sequence, got shape {prompt.shape}")
    if isinstance(n_new, bool) or not isinstance(n_new, (int, np.integer)) or n_new < 0:
        raise ValueError(f"n_new must be a non-negative integer, got {n_new!r}")
    eos = getattr(model.tokenizer, "eos_id", None) if stop_at_eos else None
    cache = IntKVCache.empty(model.config, 1, prompt.size + n_new)
    out: list[int] = []
    logits = forward_int(model, prompt[None, :], cache=cache, backend=backend)
    for _ in range(n_new):
        nxt = int(np.argmax(logits[0, -1]))
        out.append(nxt)
        if nxt == eos or len(out) == n_new:
            break
        logits = forward_int(model, np.array([[nxt]]), cache=cache, backend=backend)
    return out


__all__ = ["FRAC", "S_X", "S_LOGIT", "FLOAT_OPS", "MODES", "IntProj", "IntBlock", "IntLlama",
           "IntKVCache", "hidden_states_int", "head_int", "forward_int", "logits_to_float",
           "generate_int"]
