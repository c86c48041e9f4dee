"""Offline preparation of a Llama for the integer forward pass (:mod:`refquant.models.llama_int`):
the only place floats are used, once, before inference.

1. Weights: int8 per output channel (:func:`refquant.integer.w8a8.quantize_rows_int8`, min-max,
   half to even), or W4 group codes given by the caller (e.g. GPTQ's, ``w4=``); the embedding
   table int8 per row (also the head when tied); norm gains int16 codes of one scale
   ``s_g = max|g| / 32767``.
2. Static scales from calibration: the float forward pass on ``calib_tokens`` records, with the
   min-max observer of :mod:`refquant.calibration` (symmetric int8), the per-head ranges of the
   rotated keys (bounded by the pair norms ``sqrt(k_j^2 + k_{j+h/2}^2)``, which no rotation
   exceeds) and of the values: the int8 KV cache scales. With ``mode="static"`` also the
   per-tensor scales of the four linear inputs of each block (``attn_in``, ``mlp_in``, ``o_in``,
   ``down_in``).
3. Every ratio of scales becomes a fixed-point multiplier
   (:func:`refquant.integer.requant.quantize_multiplier_wide`): for a projection from an input of
   base ``beta`` to an output of scale ``S_y``, ``M_n = beta s_w,n / S_y``; the score multiplier
   ``beta_q s_k,h / (sqrt(h_d) 2^-16)``; the attention output ``s_v,h / (255 2^-16)``.
"""

from __future__ import annotations

import numpy as np

from refquant.calibration.observers import MinMaxObserver
from refquant.integer.ops_norm import P as NORM_P
from refquant.integer.ops_rope import rope_table_fixed
from refquant.integer.requant import quantize_multiplier_wide
from refquant.integer.w8a8 import quantize_rows_int8
from refquant.models.llama import LINEAR_NAMES, default_linear, hidden_states, rope_tables
from refquant.models.llama_int import (FRAC, MODES, S_LOGIT, S_X, STATIC_U, IntBlock, IntLlama,
                                       IntProj)
from refquant.schemes.spec import QuantSpec, g_idx
from refquant.schemes.uniform import _round_codes

G_QMAX = 2**15 - 1
PER_TENSOR = QuantSpec(bits=8, symmetric=True, restricted=True)
PER_HEAD = QuantSpec(bits=8, symmetric=True, restricted=True, granularity="channel", axis=0)
POINTS = {"attn_in": "self_attn.q_proj", "mlp_in": "mlp.gate_proj", "o_in": "self_attn.o_proj",
          "down_in": "mlp.down_proj"}


def _gain_codes(g) -> tuple[np.ndarray, float]:
    """int16 codes of a norm gain and their scale ``s_g = max|g| / 32767`` (1 for a zero gain)."""
    g = np.asarray(g, np.float64)
    s = float(np.abs(g).max()) / G_QMAX or 1.0
    return _round_codes(g, s, 0.0, -G_QMAX, G_QMAX, "half_even").astype(np.int16), s


def calibrate_ranges(model, calib_tokens, *, seq_len: int = 512) -> dict:
    """Static scales from the float model on ``calib_tokens`` (1-D ids), min-max observers.

    Returns ``{(i, point): S}`` for the linear inputs and ``{(i, "k"|"v"): s [H_kv]}``.
    """
    c = model.config
    obs: dict = {}
    weights_linear = default_linear(model)

    def observe(key, x, spec):
        obs.setdefault(key, MinMaxObserver(spec)).update(x)

    def linear(name, x):
        y = weights_linear(name, x)
        i, short = int(name.split(".")[1]), name.split(".", 2)[2]
        for point, target in POINTS.items():
            if short == target:
                observe((i, point), x.reshape(-1, x.shape[-1]), PER_TENSOR)
        if short in ("self_attn.k_proj", "self_attn.v_proj"):
            yh = y.reshape(-1, c.n_kv_heads, c.head_dim).transpose(1, 0, 2)   # [H_kv, N, h_d]
            if short == "self_attn.k_proj":
                half = c.head_dim // 2
                yh = np.sqrt(yh[..., :half] ** 2 + yh[..., half:] ** 2)       # rotation bound
            observe((i, short[10]), yh.reshape(c.n_kv_heads, -1), PER_HEAD)
        return y

    tokens = np.asarray(calib_tokens)
    n_win = max(len(tokens) // seq_len, 1)
    for w in range(n_win):
        hidden_states(model, tokens[None, w * seq_len:(w + 1) * seq_len], linear=linear)
    return {key: np.asarray(o.qparams().scale, np.float64) for key, o in obs.items()}


def _w4_proj(w4, beta, S_y):
    codes, scales, zeros, group_size = w4
    N, K = codes.shape
    gi = g_idx(K, group_size)
    cT = np.ascontiguousarray((codes.astype(np.int16) - zeros[:, gi]).T.astype(np.int8))
    s_n = np.asarray(scales, np.float64).max(axis=1)                         # [N]
    sigma = np.maximum(np.rint(2.0**15 * scales / s_n[:, None]), 1).astype(np.int64).T
    M0, n = quantize_multiplier_wide(beta * s_n / S_y)
    return IntProj(M0, n, cT=cT, sigma=np.ascontiguousarray(sigma), group_size=int(group_size))


def _proj(model, name, beta, S_y, w4):
    if w4 is not None and name in w4:
        return _w4_proj(w4[name], beta, S_y)
    q_w, s_w = quantize_rows_int8(model.weights[name + ".weight"])
    M0, n = quantize_multiplier_wide(beta * s_w.astype(np.float64) / S_y)
    return IntProj(M0, n, q_wT=np.ascontiguousarray(q_w.T))


def _block(model, i, ranges, mode, w4):
    c, p = model.config, f"layers.{i}."
    hd = c.head_dim
    g_attn, sg_attn = _gain_codes(model.weights[p + "input_layernorm.weight"])
    g_mlp, sg_mlp = _gain_codes(model.weights[p + "post_attention_layernorm.weight"])
    base = {"attn_in": sg_attn / (127 * 2.0**NORM_P), "mlp_in": sg_mlp / (127 * 2.0**NORM_P),
            "o_in": S_X / 127, "down_in": S_X / 127}                # dynamic bases
    act = {}
    if mode == "static":
        for point in POINTS:
            S_a = float(ranges[(i, point)])
            into = base[point] if point in ("attn_in", "mlp_in") else S_X   # (q, u) or int32
            act[point] = quantize_multiplier_wide(into / S_a)
            base[point] = S_a / STATIC_U                            # codes carry u = 2^16
    out_scale = {"q_proj": S_X, "k_proj": S_X, "v_proj": S_X, "o_proj": S_X,
                 "gate_proj": S_X, "up_proj": S_X, "down_proj": S_X}
    point_of = {"q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in", "o_proj": "o_in",
                "gate_proj": "mlp_in", "up_proj": "mlp_in", "down_proj": "down_in"}
    proj = {}
    for full in LINEAR_NAMES:
        short = full.split(".")[1]
        proj[short] = _proj(model, p + full, base[point_of[short]], out_scale[short], w4)
    s_k, s_v = ranges[(i, "k")], ranges[(i, "v")]                            # [H_kv]
    col = (-1, 1, 1)
    k_M = tuple(a.reshape(col) for a in quantize_multiplier_wide(S_X / s_k))
    v_M = tuple(a.reshape(col) for a in quantize_multiplier_wide(S_X / s_v))
    Ms = quantize_multiplier_wide((S_X / 127) * s_k / (np.sqrt(hd) * 2.0**-FRAC))
    Mo = quantize_multiplier_wide(s_v / (255 * 2.0**-FRAC))
    return IntBlock(g_attn, g_mlp, proj, k_M, v_M, Ms, Mo, act), {"s_g": (sg_attn, sg_mlp),
                                                                   "s_k": s_k, "s_v": s_v}


def prepare_integer(model, calib_tokens, *, mode: str = "dynamic", w4: dict | None = None,
                    seq_len: int = 512, max_len: int | None = None) -> IntLlama:
    """A :class:`IntLlama` from a float :class:`~refquant.models.llama.LlamaModel`.

    Parameters
    ----------
    model : LlamaModel (tied embeddings, or an ``lm_head.weight``)
    calib_tokens : 1-D int array, the calibration text (e.g.
        :func:`refquant.pipeline.data.calibration_tokens`), in windows of ``seq_len``
    mode : ``"dynamic"`` (per-token int8 activations from integer row maxima) or ``"static"``
        (per-tensor scales of the linear inputs from calibration)
    w4 : dict, optional
        Weight name (without ``.weight``) -> ``(codes, scales, zeros, group_size)`` with codes
        uint8 ``[N, K]``, scales and zeros ``[N, G]``: these projections run as W4 through the
        int8 kernel
    max_len : positions of the RoPE tables (default ``config.max_seq_len``)
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    c = model.config
    ranges = calibrate_ranges(model, calib_tokens, seq_len=seq_len)
    blocks, info = zip(*[_block(model, i, ranges, mode, w4) for i in range(c.n_layers)])
    E_q, s_e = quantize_rows_int8(model.weights["embed_tokens.weight"])     # [V, d], [V]
    M0_e, n_e = quantize_multiplier_wide(s_e.astype(np.float64) / S_X)
    g_final, sg_final = _gain_codes(model.weights["norm.weight"])
    beta = sg_final / (127 * 2.0**NORM_P)
    if c.tied_embeddings:
        M0, n = quantize_multiplier_wide(beta * s_e.astype(np.float64) / S_LOGIT)
        head = IntProj(M0, n, q_wT=np.ascontiguousarray(E_q.T))
    else:
        head = _proj(model, "lm_head", beta, S_LOGIT, None)
    cos, sin = rope_tables(0, max_len or c.max_seq_len, c.head_dim, float(c.rope_theta))
    cos_q, sin_q = rope_table_fixed(cos, sin)
    E = int(round(c.norm_eps / S_X**2))
    return IntLlama(c, mode, E_q, M0_e, n_e, list(blocks), g_final, head, cos_q, sin_q, E,
                    scales={"blocks": list(info), "ranges": ranges, "s_e": s_e},
                    tokenizer=model.tokenizer, source=model.source)


__all__ = ["calibrate_ranges", "prepare_integer"]
