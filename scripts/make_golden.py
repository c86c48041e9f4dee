"""Write refquant's golden vectors (refquant/testing/golden/*.npz and PROVENANCE.md).

Usage:  python scripts/make_golden.py [OUT_DIR]        (default: refquant/testing/golden)

The expected values are computed HERE, one scalar at a time, with exact rational arithmetic
(``fractions.Fraction``): every floating-point step of the definition is an exact operation
followed by an explicit round-to-nearest-even onto the binary format the definition names
(binary64, binary32 or binary16; :func:`round_binary`). Nothing in this script imports
refquant: the golden values are an independent computation of the documented definitions,
not a recording of refquant's vectorized code. Inputs are drawn with NumPy's seeded generator
and stored as float32.

Definitions implemented (the documented ones):

* ``uniform``: min-max calibration + affine quantization, refquant.schemes.uniform's module docstring:
  per parameter group (tensor / channel along ``axis`` / groups of ``group_size`` along the last
  axis, the last group shorter), ``lo, hi`` = min, max; symmetric ``s = fl32(max(fl64(amax /
  q_max), 2^-126))``, ``z = 0``; asymmetric: ``lo = min(lo, 0)``, ``hi = max(hi, 0)``,
  ``s = fl32(max(fl64(fl64(hi - lo) / (q_max - q_min)), 2^-126))``,
  ``z = clamp(q_min - round(fl64(lo / s)), q_min, q_max)``; an empty range gives ``s = 1``;
  codes ``q = clamp(round(x / s) + z, q_min, q_max)`` with the EXACT quotient ``x / s`` and
  the spec's rounding; ``x_hat = fl32(s (q - z))``.
* ``ggml``: llama.cpp's reference quantizers (ggml-quants.c ``quantize_row_q{8_0,4_0,4_1}_ref``)
  with every float32 operation rounded to binary32 and the stored ``d``/``m`` rounded to
  binary16; see refquant/formats/ggml/legacy.py's docstring. Dequantization as ggml: fl32(d q),
  fl32(d (q - 8)), fl32(fl32(d q) + m).

For the uniform cases the script also checks that the float64 quotient ``fl64(x / s)`` rounds
to the same code as the exact one (so a float64 implementation of the definition is not
ambiguous on these inputs), and for the ggml cases it compares the bytes with the ``gguf``
package's quantizers (a third party) and records the result in PROVENANCE.md.
"""

from __future__ import annotations

import hashlib
import math
import pathlib
import sys
from fractions import Fraction

import numpy as np

GOLDEN_VERSION = 1
HALF = Fraction(1, 2)

# --- exact rounding onto binary formats ---------------------------------------------------------

FORMATS = {"binary64": (53, -1022), "binary32": (24, -126), "binary16": (11, -14)}


def round_binary(v: Fraction, fmt: str) -> Fraction:
    """Round the exact rational ``v`` to the nearest ``fmt`` number, ties to even (subnormals
    included; overflow raises)."""
    p, emin = FORMATS[fmt]
    if v == 0:
        return Fraction(0)
    a = abs(v)
    e = a.numerator.bit_length() - a.denominator.bit_length()     # 2^e <= a < 2^(e+2)
    if Fraction(2) ** e > a:
        e -= 1
    if Fraction(2) ** (e + 1) <= a:
        e += 1
    e = max(e, emin)
    ulp = Fraction(2) ** (e - p + 1)
    n = a / ulp
    k = math.floor(n)
    r = n - k
    if r > HALF or (r == HALF and k % 2 == 1):
        k += 1
    out = k * ulp
    emax = {"binary64": 1023, "binary32": 127, "binary16": 15}[fmt]
    if out >= Fraction(2) ** (emax + 1):
        raise OverflowError(f"{float(v)} overflows {fmt}")
    return out if v > 0 else -out


def fl64(v): return round_binary(Fraction(v), "binary64")
def fl32(v): return round_binary(Fraction(v), "binary32")
def fl16(v): return round_binary(Fraction(v), "binary16")


def round_int(v: Fraction, mode: str) -> int:
    """Round to an integer: ``half_even`` or ``half_away`` (exact on rationals)."""
    k = math.floor(v)
    r = v - k
    if r > HALF:
        return k + 1
    if r < HALF:
        return k
    if mode == "half_even":
        return k + (k % 2)
    if mode == "half_away":
        return k + 1 if v > 0 else k
    raise ValueError(mode)


# --- uniform oracle ------------------------------------------------------------------------------

def int_range(bits, symmetric, restricted):
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        return (-qmax if restricted else -qmax - 1), qmax
    return 0, 2 ** bits - 1


def group_index(idx, shape, spec):
    """The parameter-group index (a tuple) of element ``idx``."""
    if spec["granularity"] == "tensor":
        return ()
    if spec["granularity"] == "channel":
        return (idx[spec["axis"] % len(shape)],)
    return tuple(idx[:-1]) + (idx[-1] // spec["group_size"],)


def uniform_oracle(x: np.ndarray, spec: dict):
    qmin, qmax = int_range(spec["bits"], spec["symmetric"], spec["restricted"])
    members: dict = {}
    for idx in np.ndindex(x.shape):
        members.setdefault(group_index(idx, x.shape, spec), []).append(idx)
    keys = sorted(members)
    if spec["granularity"] == "tensor":
        pshape = ()
    elif spec["granularity"] == "channel":
        pshape = (x.shape[spec["axis"] % x.ndim],)
    else:
        pshape = x.shape[:-1] + (-(-x.shape[-1] // spec["group_size"]),)
    scale = np.zeros(pshape, np.float32)
    zero = np.zeros(pshape, np.int32)
    codes = np.zeros(x.shape, np.int32)
    deq = np.zeros(x.shape, np.float32)
    tiny = Fraction(2) ** -126
    for key in keys:
        vals = [Fraction(float(x[i])) for i in members[key]]
        lo, hi = min(vals), max(vals)
        if spec["symmetric"]:
            amax = max(abs(lo), abs(hi))
            s = Fraction(1) if amax == 0 else fl32(max(fl64(amax / qmax), tiny))
            z = 0
        else:
            lo, hi = min(lo, 0), max(hi, 0)
            width = fl64(hi - lo)
            s = Fraction(1) if width == 0 else fl32(max(fl64(width / (qmax - qmin)), tiny))
            z = min(max(qmin - round_int(fl64(lo / s), spec["rounding"]), qmin), qmax)
        scale[key] = float(s)
        zero[key] = z
        for i in members[key]:
            v = Fraction(float(x[i]))
            exact = round_int(v / s, spec["rounding"])
            if round_int(fl64(v / s), spec["rounding"]) != exact:
                raise RuntimeError(f"input {float(v)!r} at {i} is within float64 rounding of a "
                                   "tie; choose another seed")
            q = min(max(exact + z, qmin), qmax)
            codes[i] = q
            deq[i] = float(fl32(s * (q - z)))
    code_dtype = {True: np.int8, False: np.uint8}[spec["symmetric"]] if spec["bits"] <= 8 else \
        {True: np.int16, False: np.uint16}[spec["symmetric"]]
    return codes.astype(code_dtype), scale, zero, deq


# --- ggml oracle ---------------------------------------------------------------------------------

def f16_bytes(v: Fraction, negative_zero: bool = False) -> bytes:
    """Little-endian binary16 bits of ``v`` (already a binary16 number)."""
    h = np.array([float(v)], np.float16)
    if Fraction(float(h[0])) != v:
        raise AssertionError("not a binary16 number")
    if v == 0 and negative_zero:
        h = np.array([-0.0], np.float16)
    return h.astype("<f2").tobytes()


def trunc(v: Fraction) -> int:
    return math.floor(v) if v >= 0 else math.ceil(v)


def recip32(d: Fraction) -> Fraction:
    """id = fl32(1/d); 0 where d == 0 (C reference) or 1/d overflows binary32 (refquant's rule
    for the undefined case)."""
    if d == 0:
        return Fraction(0)
    try:
        return fl32(1 / d)
    except OverflowError:
        return Fraction(0)


def ggml_block_oracle(xs: list, fmt: str):
    """(bytes, d, m, codes, dequantized) of one block of 32 float32 values."""
    X = [Fraction(v) for v in xs]
    m16 = None
    neg_zero_d = False
    if fmt == "Q8_0":
        amax = max(abs(v) for v in X)
        d = fl32(amax / 127)
        inv = recip32(d)
        q = []
        for v in X:
            x0 = fl32(v * inv)
            a = abs(x0)
            c = math.floor(a) + (1 if a - math.floor(a) >= HALF else 0)   # roundf
            q.append(c if x0 >= 0 else -c)
        d16 = fl16(d)
        body = bytes(c & 0xFF for c in q)
        deq = [fl32(d16 * c) for c in q]
    elif fmt == "Q4_0":
        amax, vmax = Fraction(0), Fraction(0)
        for v in X:                                   # first largest |x| (strict <)
            if amax < abs(v):
                amax, vmax = abs(v), v
        d = fl32(vmax / -8)
        # all-zero block: d = x[0] / -8, so +0.0 gives -0.0 (gguf.quants, and the C reference
        # whose max starts at 0.0f); the golden inputs never start a zero block with -0.0
        inv = recip32(d)
        d16 = fl16(d)
        neg_zero_d = d16 == 0 and (vmax > 0 or (amax == 0 and math.copysign(1.0, xs[0]) > 0))
        q = [min(15, trunc(fl32(fl32(v * inv) + Fraction(17, 2)))) for v in X]
        body = bytes(q[j] | (q[j + 16] << 4) for j in range(16))
        deq = [fl32(d16 * (c - 8)) for c in q]
    else:
        lo, hi = min(X), max(X)
        d = fl32(fl32(hi - lo) / 15)
        inv = recip32(d)
        q = [min(15, trunc(fl32(fl32(fl32(v - lo) * inv) + HALF))) for v in X]
        d16, m16 = fl16(d), fl16(lo)
        body = bytes(q[j] | (q[j + 16] << 4) for j in range(16))
        deq = [fl32(fl32(d16 * c) + m16) for c in q]
    # a signed zero is kept: the sign of m is the sign of the block minimum (the golden inputs
    # never have -0.0 as a Q4_1 block minimum, where NumPy's min is free to pick either zero)
    m_bytes = f16_bytes(m16, m16 == 0 and lo < 0) if m16 is not None else b""
    raw = f16_bytes(d16, neg_zero_d) + m_bytes + body
    return raw, d16, m16, q, deq


def ggml_oracle(x: np.ndarray, fmt: str):
    rows, k = x.shape
    nb = k // 32
    raw, ds, ms, qs, deqs = [], [], [], [], []
    for r in range(rows):
        for b in range(nb):
            out = ggml_block_oracle([float(v) for v in x[r, 32 * b:32 * b + 32]], fmt)
            raw.append(out[0]); ds.append(float(out[1]))
            ms.append(float(out[2]) if out[2] is not None else 0.0)
            qs.append(out[3]); deqs.append([float(v) for v in out[4]])
    blocks = np.frombuffer(b"".join(raw), np.uint8).reshape(rows, -1)
    d = np.array(ds, np.float16).reshape(rows, nb)
    if fmt == "Q4_0":   # keep the signed zero of d from the bytes
        d = blocks.reshape(rows, nb, -1)[..., :2].copy().view("<f2")[..., 0].astype(np.float16)
    m = np.array(ms, np.float16).reshape(rows, nb) if fmt == "Q4_1" else None
    codes = np.array(qs, np.int8 if fmt == "Q8_0" else np.uint8).reshape(rows, nb, 32)
    deq = np.array(deqs, np.float32).reshape(rows, k)
    return blocks, d, m, codes, deq


# --- the cases -----------------------------------------------------------------------------------

def tie_input(rng, shape, spec):
    """Values on exact rounding ties (k + 1/2) s with power-of-two s per group, plus the
    elements that pin each group's min-max range (see refquant.testing.tie_tensor)."""
    qmin, qmax = int_range(spec["bits"], spec["symmetric"], spec["restricted"])
    x = np.zeros(shape, np.float64)
    seen: dict = {}
    for idx in np.ndindex(shape):
        key = group_index(idx, shape, spec)
        if key not in seen:
            s = 2.0 ** int(rng.integers(-8, 2))
            z = 0 if spec["symmetric"] else int(rng.integers(0, qmax - qmin + 1))
            seen[key] = [s, z, 0]
        s, z, n = seen[key]
        seen[key][2] += 1
        if spec["symmetric"]:
            x[idx] = qmax * s if n == 0 else (int(rng.integers(-qmax, qmax)) + 0.5) * s
        elif n == 0:
            x[idx] = -z * s
        elif n == 1:
            x[idx] = (qmax - qmin - z) * s
        else:
            x[idx] = (int(rng.integers(-z, qmax - qmin - z)) + 0.5) * s
    return x.astype(np.float32)


def uniform_cases(rng):
    def spec(bits, symmetric, granularity, axis=0, group_size=0, rounding="half_even", restricted=False):
        return dict(bits=bits, symmetric=symmetric, granularity=granularity, axis=axis,
                    group_size=group_size, rounding=rounding, restricted=restricted)

    heavy = lambda shape: np.clip(rng.standard_t(2, shape), -50, 50).astype(np.float32)  # noqa: E731
    normal = lambda shape: rng.standard_normal(shape).astype(np.float32)                # noqa: E731
    yield "uniform_int8_sym_tensor", spec(8, True, "tensor"), heavy((4, 64)), \
        "int8 symmetric, one scale for the tensor, half-to-even; heavy-tailed input (Student t, 2 dof)"
    yield "uniform_int8_sym_restricted_channel", spec(8, True, "channel", restricted=True), normal((6, 48)), \
        "int8 symmetric restricted [-127, 127], one scale per output channel (axis 0)"
    s = spec(4, True, "channel", axis=1, rounding="half_away")
    yield "uniform_int4_sym_channel_axis1_half_away_ties", s, tie_input(rng, (5, 40), s), \
        "int4 symmetric per input channel (axis 1), half away from zero, every value but the range-pinning ones on an exact tie"
    s = spec(4, False, "group", group_size=32)
    x = normal((4, 128))
    x[1, 32:64] = 0.0                                     # an all-zero group: s = 1, z = 0
    x[2, 64:96] = 0.75                                    # a constant group
    x[3, :32] = tie_input(rng, (1, 32), s)[0]             # a group of exact ties
    yield "uniform_int4_asym_group32", s, x, \
        "int4 asymmetric (integer zero point), groups of 32; includes an all-zero group, a constant group and a group of exact ties"
    s = spec(4, False, "group", group_size=128, rounding="half_away")
    yield "uniform_int4_asym_group128_short_last", s, heavy((3, 320)), \
        "int4 asymmetric, groups of 128 on rows of 320 (groups of 128, 128, 64), half away from zero"
    s = spec(3, False, "channel")
    yield "uniform_int3_asym_channel_ties", s, tie_input(rng, (6, 24), s), \
        "int3 asymmetric per output channel, exact ties (half-to-even)"
    s = spec(2, True, "group", group_size=16)
    yield "uniform_int2_sym_group16", s, normal((4, 64)), "int2 symmetric, groups of 16"
    s = spec(8, False, "tensor")
    x = (normal((4, 32)) * 1e-3).astype(np.float32)
    x[0, :4] = [1e-40, -1e-41, 0.0, 3e-39]                # float32 subnormals
    yield "uniform_int8_asym_tensor_small", s, x, \
        "int8 asymmetric per tensor on small values (1e-3) with float32 subnormals"
    s = spec(16, True, "channel")
    yield "uniform_int16_sym_channel", s, normal((3, 40)), "16-bit symmetric per output channel"


def ggml_input(rng, fmt):
    """8 blocks (4 rows x 64) that exercise the format's corner cases."""
    x = np.zeros((4, 64), np.float32)
    x[0, :32] = rng.standard_normal(32) * 0.05                       # plain weights
    x[0, 32:] = np.clip(rng.standard_t(2, 32), -20, 20)              # heavy tail
    # exact and near ties of the code grid: the block's scale is pinned to 1 by 127 / -8 / 0..15
    k = rng.integers(-14, 15, 32) / 2
    pin = {"Q8_0": 127.0, "Q4_0": -8.0, "Q4_1": 15.0}[fmt]
    lo = {"Q8_0": -16.0, "Q4_0": -8.0, "Q4_1": 0.0}[fmt]
    ties = np.clip(k, lo / 2 if fmt != "Q4_1" else 0.5, 7.0).astype(np.float32)
    ties[0] = pin
    if fmt == "Q4_1":
        ties[1] = 0.0
    x[1, :32] = ties
    near = ties.copy()
    near[2::3] = np.nextafter(near[2::3], np.float32(np.inf))
    near[3::3] = np.nextafter(near[3::3], np.float32(-np.inf))
    near[0] = pin
    if fmt == "Q4_1":
        near[1] = 0.0
    x[1, 32:] = near
    x[2, :32] = 0.0                                                   # all-zero block
    x[2, 32:] = rng.uniform(-1, 1, 32)
    x[2, 40] = 3.0                                                    # positive signed max (Q4_0: d < 0)
    x[3, :32] = rng.uniform(-1, 1, 32) * 1e-4                         # float16-subnormal scale
    x[3, 32:] = 0.375                                                 # constant block (Q4_1: d = 0)
    return x.astype(np.float32)


def content_digest(arrays: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(k.encode()); h.update(str(a.dtype).encode()); h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def build(out_dir: pathlib.Path) -> dict:
    """Compute every case and write the .npz files and PROVENANCE.md; return name -> digest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261127)
    digests, lines = {}, []
    for name, spec, x, what in uniform_cases(rng):
        codes, scale, zero, deq = uniform_oracle(x, spec)
        arrays = dict(scheme=np.str_("uniform"), version=np.int64(GOLDEN_VERSION), x=x,
                      codes=codes, scale=scale, zero_point=zero, dequantized=deq,
                      bits=np.int64(spec["bits"]), symmetric=np.bool_(spec["symmetric"]),
                      granularity=np.str_(spec["granularity"]), axis=np.int64(spec["axis"]),
                      group_size=np.int64(spec["group_size"]), rounding=np.str_(spec["rounding"]),
                      restricted=np.bool_(spec["restricted"]))
        np.savez(out_dir / f"{name}.npz", **arrays)
        digests[name] = content_digest(arrays)
        lines.append((name, what, "exact Fraction oracle of the uniform min-max definition", digests[name]))
    for fmt in ("Q8_0", "Q4_0", "Q4_1"):
        x = ggml_input(rng, fmt)
        blocks, d, m, codes, deq = ggml_oracle(x, fmt)
        third_party = "not checked (gguf not installed)"
        try:
            import gguf
        except ImportError:
            gguf = None
        if gguf is not None:
            ref = gguf.quants.quantize(x, getattr(gguf.GGMLQuantizationType, fmt))
            if not np.array_equal(ref, blocks):
                raise RuntimeError(f"{fmt}: the oracle differs from gguf.quants.quantize")
            third_party = f"bytes identical to gguf {_gguf_version()} `gguf.quants.quantize`"
        name = f"ggml_{fmt.lower()}"
        arrays = dict(scheme=np.str_("ggml"), version=np.int64(GOLDEN_VERSION), fmt=np.str_(fmt),
                      x=x, blocks=blocks, codes=codes, scale=d, dequantized=deq)
        if m is not None:
            arrays["zero_point"] = m
        np.savez(out_dir / f"{name}.npz", **arrays)
        digests[name] = content_digest(arrays)
        lines.append((name, f"{fmt}: 8 blocks (plain, heavy tail, exact ties, near ties, all zero, "
                            "positive signed max, float16-subnormal scale, constant)",
                      f"exact Fraction oracle of llama.cpp's reference quantizer; {third_party}",
                      digests[name]))
    write_provenance(out_dir, lines)
    return digests


def _gguf_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("gguf")
    except PackageNotFoundError:
        return "not installed"


def write_provenance(out_dir: pathlib.Path, lines) -> None:
    gguf_version = _gguf_version()
    text = [
        "# refquant golden vectors",
        "",
        f"Golden-set version: **{GOLDEN_VERSION}**. Written by `python scripts/make_golden.py` "
        f"(NumPy {np.__version__}, gguf {gguf_version} for the third-party check).",
        "",
        "## How the expected values were produced",
        "",
        "Every expected value (codes, scales, zero points, dequantized values, GGUF bytes) is computed "
        "by `scripts/make_golden.py`, one scalar at a time, in exact rational arithmetic "
        "(`fractions.Fraction`) with an explicit round-to-nearest-even onto binary64 / binary32 / "
        "binary16 exactly where the definition names that format. The script does not import refquant. "
        "Inputs are drawn from NumPy's seeded generator (seed 20261127) and stored as float32.",
        "",
        "* `uniform_*`: min-max calibration and affine quantization as defined in refquant.schemes.uniform "
        "(scale computed in float64 and stored as float32, empty range -> scale 1, codes = "
        "clamp(round(x/s) + z)). The quotient x/s is taken exactly; the script checks that a float64 "
        "quotient rounds to the same code for every input (no input is ambiguous).",
        "* `ggml_*`: llama.cpp's reference quantizers (`quantize_row_q8_0_ref`, `..._q4_0_ref`, "
        "`..._q4_1_ref` in ggml-quants.c), every float32 operation rounded to binary32 and the stored "
        "d / m to binary16; GGUF byte layout. Confirmed byte-identical to the `gguf` package's "
        "`gguf.quants.quantize` when the script ran.",
        "",
        "## Files (`.npz`, read with `numpy.load(path, allow_pickle=False)`)",
        "",
        "Common arrays: `scheme` ('uniform' or 'ggml'), `version`, `x` (float32 input), `codes`, "
        "`scale`, `zero_point`, `dequantized` (float32). Uniform cases add the spec fields `bits`, "
        "`symmetric`, `granularity`, `axis`, `group_size` (0 = none), `rounding`, `restricted`; "
        "`scale`/`zero_point` have the parameter shape (tensor: (), channel: (C,), group: "
        "rows x ceil(K / group_size)), `x_hat = scale * (codes - zero_point)`. GGML cases add `fmt` and "
        "`blocks` (the GGUF bytes, uint8 rows); `codes` are stored codes of shape (rows, blocks, 32) "
        "(int8 for Q8_0, nibbles 0..15 for Q4_0/Q4_1), `scale` is the float16 d, `zero_point` the "
        "float16 m (Q4_1 only).",
        "",
        "| case | what it covers | expected values from | content sha256 |",
        "|---|---|---|---|",
    ]
    for name, what, how, digest in lines:
        text.append(f"| `{name}` | {what} | {how} | `{digest[:16]}` |")
    text += [
        "",
        "The content digest is sha256 over (name, dtype, shape, bytes) of every array in sorted "
        "name order (the .npz container itself carries zip timestamps).",
        "",
        "## Versioning",
        "",
        "A change to any expected value (a definition changed, a bug fixed) bumps the golden-set "
        "version, regenerates every file with this script, and is announced in the changelog with the "
        "cases affected and why. Adding a case does not change existing files and keeps the version.",
        "",
    ]
    (out_dir / "PROVENANCE.md").write_text("\n".join(text))


if __name__ == "__main__":
    target = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else \
        pathlib.Path(__file__).resolve().parent.parent / "refquant" / "testing" / "golden"
    for name, digest in build(target).items():
        print(f"{name:50s} {digest[:16]}")
