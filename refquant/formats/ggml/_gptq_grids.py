"""The GGML block types as fixed column grids for GPTQ: each type's header, rounding rule and codes.

:func:`refquant.formats.ggml.gptq_grid.gptq_ggml` needs, for every supported block type, three
things that only the type's own module knows: the quantizer's bytes of the original weights
together with the *rule* its codes were rounded with (``fix``), the codes stored in a row
of bytes (``codes_of``), and the bytes with the codes replaced and the header kept
(``with_codes``). Each entry of :data:`GRID_TYPES` holds them; the rounding of a column under
a :class:`Rule` is :func:`rule_codes`. The formulas, and why they reproduce ggml's codes
exactly on the original weights, are tabulated in :mod:`refquant.formats.ggml.gptq_grid`.

Symbols: ``x`` float32 ``[n_rows, K]`` the weights (rows are GGUF rows), ``n_sub = K / sub``
the (sub-)blocks of a row that share one rule, ``a, b`` float32 ``[n_rows, n_sub]`` the rule's
multiplier (or divisor) and the value subtracted first, ``q`` int ``[n_rows, K]`` stored codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from refquant.formats.ggml import iq4, kquants, kquants_low, kquants_sym, legacy, q5
from refquant.formats.ggml._registry import TYPES
from refquant.formats.ggml._search import nearest_int
from refquant.schemes.numerics import round_to_int

_F32 = np.float32


class Rule(NamedTuple):
    """How one type rounds a value ``x`` of (sub-)block ``k`` to its stored code, with
    ``v = fl32(fl32(x - b_k) * a_k)`` (``kind="divide"``: ``fl32(fl32(x - b_k) / a_k)``):

    ============  ===============================================================
    kind          stored code
    ============  ===============================================================
    ``trunc``     ``clamp(trunc(fl32(v + off)), lo, hi)`` (Q4_0, Q4_1, Q5_0, Q5_1)
    ``roundf``    ``clamp(roundf(v), lo, hi)``, half away from zero (Q8_0)
    ``nearest``   ``nearest_int(clamp(v, lo, hi)) + off`` (imatrix searches)
    ``divide``    ``nearest_int(clamp(v, lo, hi)) + off`` (the K-quants)
    ``iq4``       ``best_index(v)``, the nearest of the 16 levels (IQ4_NL, IQ4_XS)
    ============  ===============================================================
    """

    kind: str
    a: np.ndarray
    b: np.ndarray
    lo: int
    hi: int
    off: float


def rule_codes(x: np.ndarray, rule: Rule, k: int) -> np.ndarray:
    """Stored codes (int64 ``[n_rows]``) of the float32 column ``x`` ``[n_rows]`` of
    (sub-)block ``k`` under ``rule`` (the table of :class:`Rule`)."""
    a, b = rule.a[:, k], rule.b[:, k]
    with np.errstate(all="ignore"):                       # zero-scale blocks: masked by the caller
        t = (x - b).astype(_F32)
        v = ((t / a) if rule.kind == "divide" else (t * a)).astype(_F32)
        if rule.kind == "trunc":
            return np.clip(legacy._trunc_offset(v, rule.off), rule.lo, rule.hi).astype(np.int64)
        if rule.kind == "roundf":
            return np.clip(round_to_int(v, "half_away"), rule.lo, rule.hi).astype(np.int64)
        if rule.kind == "iq4":
            return iq4.best_index(v).astype(np.int64)
        v = np.clip(v, _F32(rule.lo), _F32(rule.hi)).astype(_F32)
        return nearest_int(v).astype(np.int64) + int(rule.off)


@dataclass(frozen=True)
class GridType:
    """One block type as a GPTQ grid: ``sub`` values per (sub-)block sharing a rule, the stored
    codes ``code_min ... code_min + n_codes - 1`` (dtype ``code_dtype``), and the functions
    ``fix(x, imatrix) -> (data0, Rule)``, ``codes_of(data) -> q`` and ``with_codes(data0, q)
    -> data`` (module docstring)."""

    name: str
    sub: int
    code_min: int
    n_codes: int
    code_dtype: type
    fix: Callable
    codes_of: Callable
    with_codes: Callable


def _per_row(v, n_rows):
    """``v`` [..] -> float32 ``[n_rows, -1]`` (the (sub-)blocks of each row, in row order)."""
    return np.ascontiguousarray(np.asarray(v, _F32).reshape(n_rows, -1))


def _zeros_like(v):
    return np.zeros(np.shape(v), _F32)


# --- Q8_0, Q4_0, Q4_1 (legacy) and Q5_0, Q5_1 ----------------------------------------------

#: name -> (rule without an imatrix, rule with one) as (kind, lo, hi, off)
_BLOCK32 = {"Q8_0": (("roundf", -127, 127, 0), ("roundf", -127, 127, 0)),
            "Q4_0": (("trunc", 0, 15, 8.5), ("nearest", -8, 7, 8)),
            "Q4_1": (("trunc", 0, 15, 0.5), ("nearest", 0, 15, 0)),
            "Q5_0": (("trunc", 0, 31, 16.5), ("nearest", -16, 15, 16)),
            "Q5_1": (("trunc", 0, 31, 0.5), ("nearest", 0, 31, 0))}


def _rule32(fmt, imatrix, a, b, n_rows):
    kind, lo, hi, off = _BLOCK32[fmt][imatrix is not None]
    return Rule(kind, _per_row(a, n_rows), _per_row(b, n_rows), lo, hi, off)


def _fix_legacy(fmt):
    def fix(x, imatrix):
        blocks, a, b = legacy.quantize_blocks_rule(x, fmt, imatrix)
        return legacy.pack_blocks(blocks), _rule32(fmt, imatrix, a, b, len(x))

    def with_codes(data0, q):
        f = legacy.unpack_blocks(data0, fmt)
        qb = q.reshape(len(q), -1, legacy.QK).astype(np.int8 if fmt == "Q8_0" else np.uint8)
        return legacy.pack_blocks(legacy.GGMLBlocks(fmt, f.d, f.m, qb))

    return fix, lambda data: legacy.unpack_blocks(data, fmt).q.reshape(len(data), -1), with_codes


def _fix_q5(fmt):
    def fix(x, imatrix):
        d, m, q, a, b = q5.quantize_q5_blocks_rule(x, fmt, imatrix)
        return q5.pack_q5(d, m, q), _rule32(fmt, imatrix, a, b, len(x))

    def with_codes(data0, q):
        d, m, _ = q5.unpack_q5(data0, fmt)
        return q5.pack_q5(d, m, q.reshape(len(q), -1, q5.QK5).astype(np.uint8))

    return fix, lambda data: q5.unpack_q5(data, fmt)[2].reshape(len(data), -1), with_codes


# --- the K-quants: the rule is read from the stored header ----------------------------------

def _sb(data, size):
    """Rows of bytes -> super-blocks ``[N, size]``."""
    return np.ascontiguousarray(data).reshape(-1, size)


def _fix_kq(fmt):
    nmax, size = kquants.KQ_FORMATS[fmt][:2]

    def fix(x, imatrix):
        data0 = TYPES[fmt].quantize_rows(x, imatrix)
        d, dmin, sc, mn, _ = kquants.unpack_kq(_sb(data0, size), fmt)
        dj = (d.astype(_F32)[:, None] * sc.astype(_F32)).astype(_F32)        # [N, 8]
        mj = (dmin.astype(_F32)[:, None] * mn.astype(_F32)).astype(_F32)
        return data0, Rule("divide", _per_row(dj, len(x)), _per_row(-mj, len(x)), 0, nmax, 0)

    def with_codes(data0, q):
        d, dmin, sc, mn, _ = kquants.unpack_kq(_sb(data0, size), fmt)
        return kquants.pack_kq(fmt, d, dmin, sc, mn,
                               q.reshape(-1, 256).astype(np.uint8)).reshape(len(data0), -1)

    return fix, lambda data: kquants.unpack_kq(_sb(data, size), fmt)[4].reshape(len(data), -1), \
        with_codes


def _fix_q6_k(x, imatrix):
    data0 = TYPES["Q6_K"].quantize_rows(x, imatrix)
    d, sc, _ = kquants_sym.unpack_q6_k(_sb(data0, 210))
    dj = (d.astype(_F32)[:, None] * sc.astype(_F32)).astype(_F32)            # [N, 16]
    return data0, Rule("divide", _per_row(dj, len(x)), _zeros_like(_per_row(dj, len(x))),
                       -32, 31, 32)


def _with_codes_q6_k(data0, q):
    d, sc, _ = kquants_sym.unpack_q6_k(_sb(data0, 210))
    return kquants_sym.pack_q6_k(d, sc, q.reshape(-1, 256).astype(np.uint8)).reshape(len(data0), -1)


def _f16_at(raw, o):
    """The float16 at byte offset ``o`` of each super-block, as float32 ``[N, 1]``."""
    return np.ascontiguousarray(raw[:, o:o + 2]).view("<f2").astype(_F32)


def _fix_q2_k(x, imatrix):
    data0 = TYPES["Q2_K"].quantize_rows(x, imatrix)
    raw = _sb(data0, 84)
    sc = raw[:, :16]
    d = (_f16_at(raw, 80) * (sc & 0xF).astype(_F32)).astype(_F32)            # [N, 16]
    dm = (_f16_at(raw, 82) * (sc >> 4).astype(_F32)).astype(_F32)
    return data0, Rule("divide", _per_row(d, len(x)), _per_row(-dm, len(x)), 0, 3, 0)


def _with_codes_q2_k(data0, q):
    raw = _sb(data0, 84).copy()
    raw[:, 16:80] = kquants_low._pack_2bit(q.reshape(-1, 256))
    return raw.reshape(len(data0), -1)


def _fix_q3_k(x, imatrix):
    data0 = TYPES["Q3_K"].quantize_rows(x, imatrix)
    raw = _sb(data0, 110)
    ls = kquants_low._unpack_q3_scales(raw[:, 96:108]).astype(np.int32)
    d = (_f16_at(raw, 108) * (ls - 32).astype(_F32)).astype(_F32)            # [N, 16]
    return data0, Rule("divide", _per_row(d, len(x)), _zeros_like(_per_row(d, len(x))), -4, 3, 4)


def _with_codes_q3_k(data0, q):
    raw = _sb(data0, 110).copy()
    raw[:, :96] = kquants_low.q3_k_code_bytes(q.reshape(-1, 256))
    return raw.reshape(len(data0), -1)


# --- IQ4_NL, IQ4_XS: the float32 block scales of the quantizer ------------------------------

def _fix_iq4_nl(x, imatrix):
    xs, w = iq4._super_blocks(x, imatrix, iq4.QK4_NL)                       # [N, 32]
    a = iq4._inverse(iq4.block_scales(xs, w))                               # [N]
    return iq4.quantize_iq4_nl(x, imatrix), Rule("iq4", _per_row(a, len(x)),
                                                 _zeros_like(_per_row(a, len(x))), 0, 15, 0)


def _with_codes_iq4_nl(data0, q):
    raw = _sb(data0, 18).copy()
    raw[:, 2:] = iq4._pack_codes(q.reshape(-1, 32))
    return raw.reshape(len(data0), -1)


def _fix_iq4_xs(x, imatrix):
    _, _, dl = iq4.iq4_xs_scales(x, imatrix)                                # [N, 8]
    a = iq4._inverse(dl)
    return iq4.quantize_iq4_xs(x, imatrix), Rule("iq4", _per_row(a, len(x)),
                                                 _zeros_like(_per_row(a, len(x))), 0, 15, 0)


def _with_codes_iq4_xs(data0, q):
    raw = _sb(data0, 136).copy()
    raw[:, 8:] = iq4._pack_codes(q.reshape(-1, 8, 32)).reshape(-1, 128)
    return raw.reshape(len(data0), -1)


def _codes_iq4(size, o):
    return lambda data: iq4._unpack_codes(
        _sb(data, size)[:, o:].reshape(-1, (size - o) // 16, 16)).reshape(len(data), -1)


def _grid_types() -> dict[str, GridType]:
    g = {}
    for fmt in ("Q8_0", "Q4_0", "Q4_1"):
        g[fmt] = GridType(fmt, 32, -127 if fmt == "Q8_0" else 0, 255 if fmt == "Q8_0" else 16,
                          np.int8 if fmt == "Q8_0" else np.uint8, *_fix_legacy(fmt))
    for fmt in ("Q5_0", "Q5_1"):
        g[fmt] = GridType(fmt, 32, 0, 32, np.uint8, *_fix_q5(fmt))
    for fmt in ("Q4_K", "Q5_K"):
        g[fmt] = GridType(fmt, 32, 0, kquants.KQ_FORMATS[fmt][0] + 1, np.uint8, *_fix_kq(fmt))
    g["Q6_K"] = GridType("Q6_K", 16, 0, 64, np.uint8, _fix_q6_k,
                         lambda data: kquants_sym.unpack_q6_k(_sb(data, 210))[2].reshape(len(data), -1),
                         _with_codes_q6_k)
    g["Q2_K"] = GridType("Q2_K", 16, 0, 4, np.uint8, _fix_q2_k,
                         lambda data: kquants_low._unpack_2bit(_sb(data, 84)[:, 16:80]).reshape(len(data), -1),
                         _with_codes_q2_k)
    g["Q3_K"] = GridType("Q3_K", 16, 0, 8, np.uint8, _fix_q3_k,
                         lambda data: kquants_low.q3_k_codes(_sb(data, 110)).reshape(len(data), -1),
                         _with_codes_q3_k)
    g["IQ4_NL"] = GridType("IQ4_NL", 32, 0, 16, np.uint8, _fix_iq4_nl, _codes_iq4(18, 2),
                           _with_codes_iq4_nl)
    g["IQ4_XS"] = GridType("IQ4_XS", 32, 0, 16, np.uint8, _fix_iq4_xs, _codes_iq4(136, 8),
                           _with_codes_iq4_xs)
    return g


#: block type name -> GridType, the types GPTQ can round onto
GRID_TYPES: dict[str, GridType] = _grid_types()

__all__ = ["Rule", "rule_codes", "GridType", "GRID_TYPES"]
