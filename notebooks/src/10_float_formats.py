# %% [markdown]
# # 10 · Floating-point and microscaled formats: FP8, FP6, FP4, MX and NVFP4
#
# An integer grid has one step size: fine for the bulk of a weight distribution, coarse for
# nothing. A *floating-point* grid has a step that grows with the magnitude, so its error is
# bounded relative to $|x|$, like the log-scale levels of notebook 03, but with several
# mantissa bits per binade. Current hardware computes in such formats: FP8 on H100/H200
# tensor cores, FP4 with a shared block scale on Blackwell (NVFP4) and in the OCP Microscaling
# (MX) formats that gpt-oss ships its experts in.
#
# **You will learn**
#
# - how a few bits split into sign, exponent and mantissa, and what each format's grid looks like;
# - the traps: E4M3FN has no infinity (448 is its largest value, not 240), FP6/FP4 have no specials;
# - why a low-bit float needs a *scale*, and how MX (a power-of-two scale per 32 values) and
#   NVFP4 (an FP8 scale per 16 values under a float32 tensor scale) choose it;
# - how FP8/FP4 compare with INT8/INT4 at equal bits per weight on the real SmolLM2 weights;
# - where ggml's MXFP4 rounds differently from the OCP rule, and what that costs.
#
# **You should know first:** notebooks 01 (scales, codes, bits per weight), 02 (per-group
# scales) and 03 (non-uniform grids).
#
# A code with sign $S$, exponent field $E$ ($e$ bits, bias $b$) and mantissa field $M$ ($m$ bits) is
#
# $$v = (-1)^S\, 2^{E - b} \left(1 + M / 2^m\right) \quad (E > 0), \qquad
#   v = (-1)^S\, 2^{1 - b}\, M / 2^m \quad (E = 0,\ \text{subnormal}).$$
#
# References: OCP 8-bit Floating Point Specification (OFP8) r1.0, 2023; Micikevicius et al.,
# *FP8 Formats for Deep Learning*, arXiv:2209.05433; OCP Microscaling Formats (MX) v1.0, 2023,
# and Rouhani et al., arXiv:2310.10537; NVIDIA, *NVFP4* (2025).

# %%
import numpy as np
import matplotlib.pyplot as plt
import refquant as rq
from refquant.formats import ggml

np.set_printoptions(precision=4, suppress=True, linewidth=110)
ELEMENTS = ["e4m3fn", "e5m2", "e2m3fn", "e3m2fn", "e2m1fn"]


def rel_error(W, W_hat):
    """Relative Frobenius error ||W - W_hat|| / ||W||."""
    return float(np.linalg.norm(W - W_hat) / np.linalg.norm(W))


def finite_values(fmt):
    """Every finite value of a format (all codes decoded, NaN/Inf codes skipped)."""
    f = rq.FLOAT_FORMATS[fmt]
    out = []
    for c in range(2 ** f.nbits):
        try:
            out.append(float(rq.from_float_bits(np.array([c], np.uint8), fmt)[0]))
        except ValueError:                                   # a NaN or Inf code
            pass
    return np.unique(out)


# %% [markdown]
# ## 1. The bit layouts
#
# Each row is one format, most significant bit on the left: sign (grey), exponent (blue),
# mantissa (orange). E8M0 is not an element format but the MX *scale*: eight exponent bits, no
# sign, no mantissa, no zero (its value is $2^{E - 127}$, code 0xFF is NaN).

# %%
colors = {"S": "0.6", "E": "tab:blue", "M": "tab:orange"}
fig, ax = plt.subplots(figsize=(8, 3.2))
for row, fmt in enumerate(ELEMENTS + ["e8m0fnu"]):
    f = rq.FLOAT_FORMATS[fmt]
    bits = "S" * int(f.signed) + "E" * f.ebits + "M" * f.mbits
    for i, kind in enumerate(bits):
        ax.add_patch(plt.Rectangle((i, -row - 0.4), 0.95, 0.8, color=colors[kind]))
        ax.text(i + 0.47, -row, kind, ha="center", va="center", color="white", fontsize=9)
    ax.text(-0.3, -row, f"{fmt}  (bias {f.bias})", ha="right", va="center")
ax.set_xlim(-3.5, 8.2)
ax.set_ylim(-5.7, 0.7)
ax.axis("off")
ax.set_title("sign / exponent / mantissa bits")
plt.show()

# %%
print(f"{'format':8} {'bits':>4} {'max normal':>11} {'min normal':>11} {'min subnormal':>14}  specials")
for fmt in ELEMENTS + ["e8m0fnu"]:
    f = rq.FLOAT_FORMATS[fmt]
    specials = {"ieee": "Inf and NaN", "all_ones": "NaN only", "none": "none"}[f.nan]
    print(f"{fmt:8} {f.nbits:4d} {f.max_normal:11.6g} {f.min_normal:11.6g} {f.min_subnormal:14.6g}  {specials}")

# %% [markdown]
# The traps, in code. E4M3FN spends its top exponent on numbers (256 ... 448) and keeps only
# S.1111.111 for NaN, so it has no infinity: `ml_dtypes` (and a non-saturating cast) turns
# everything that rounds above 448 into **NaN**. "E4M3 max 240" is the `fnuz` variant (bias 8)
# of other hardware. refquant saturates by default, as FP8 GEMM libraries do when quantizing.

# %%
print("500 -> e4m3fn, saturate=True :", hex(int(rq.float_bits([500.0], "e4m3fn")[0])))
print("500 -> e4m3fn, saturate=False:", hex(int(rq.float_bits([500.0], "e4m3fn", saturate=False)[0])), "(NaN)")
print("500 -> e5m2,   saturate=False:", hex(int(rq.float_bits([500.0], "e5m2", saturate=False)[0])),
      "=", rq.cast_float([500.0], "e5m2").tolist(), "(E5M2 has Inf, but 500 is in range)")
print("ties go to the even mantissa in e2m1fn:", rq.cast_float([0.25, 0.75, 1.25, 2.5, 5.0], "e2m1fn").tolist())

# %% [markdown]
# ## 2. The value grids on one axis
#
# The positive values of every format on a log axis, beside the integer grids of the same
# width scaled to the same maximum (INT8: $k \cdot 448/127$, INT4: $k \cdot 6/7$). A float grid
# has the same number of points in every binade (its relative step is constant, $2^{-m}$);
# the integer grid is uniform, so it is dense at the top and has nothing below its first step.

# %%
fig, ax = plt.subplots(figsize=(9, 3.6))
rows = [(fmt, finite_values(fmt)) for fmt in ELEMENTS]
rows += [("int8 (x 448/127)", np.arange(1, 128) * 448 / 127), ("int4 (x 6/7)", np.arange(1, 8) * 6 / 7)]
for i, (name, v) in enumerate(rows):
    v = v[v > 0]
    ax.plot(v, np.full(v.shape, -i), "|", ms=12)
    ax.text(1.3e-5, -i, f"{name} ({len(v)} > 0)", va="center", ha="right", fontsize=9)
ax.set_xscale("log")
ax.set_xlim(1e-5, 1e5)
ax.set_yticks([])
ax.set_xlabel("value (log scale)")
ax.set_title("positive values of each grid")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. FP8 and FP4 against INT8 and INT4 on real weights
#
# One layer of the bundled model (block 5's `down_proj`, 576 x 1536), each scheme at its bits
# per weight (`rq.size_report`, scales included). The float formats with a min-max scale are
# `rq.FloatSpec`; the microscaled ones are `rq.mx_quantize` and `rq.nvfp4_quantize`.

# %%
model = rq.load_model()
W = model.weights["layers.5.mlp.down_proj.weight"]
rows = []
int8 = rq.QuantSpec(bits=8, granularity="channel", axis=0)
fp8 = rq.FloatSpec("e4m3fn", "channel", axis=0)
rows.append(("INT8 per-channel", rq.size_report(W.shape, int8).bits_per_weight, rq.fake_quantize(W, int8)))
rows.append(("FP8 E4M3 per-channel", rq.size_report(W.shape, fp8).bits_per_weight, rq.fake_quantize(W, fp8)))
mx8 = rq.mx_dequantize(rq.mx_quantize(W, "mxfp8_e4m3"))
rows.append(("MXFP8 E4M3", rq.size_report(W.shape, "mxfp8_e4m3").bits_per_weight, mx8))
int4 = rq.QuantSpec(bits=4, symmetric=True, granularity="group", group_size=32, axis=0)
fp4 = rq.FloatSpec("e2m1fn", "group", axis=0, group_size=32)
rows.append(("INT4 sym g32 (fp16 scale)", rq.size_report(W.shape, int4, scale_bits=16).bits_per_weight,
             rq.fake_quantize(W, int4)))
rows.append(("FP4 E2M1 g32 (fp16 scale)", rq.size_report(W.shape, fp4, scale_bits=16).bits_per_weight,
             rq.fake_quantize(W, fp4)))
rows.append(("MXFP4 (E8M0 / 32)", rq.size_report(W.shape, "mxfp4").bits_per_weight,
             rq.mx_dequantize(rq.mx_quantize(W, "mxfp4"))))
rows.append(("NVFP4 (E4M3 / 16 + fp32)", rq.size_report(W.shape, "nvfp4").bits_per_weight,
             rq.nvfp4_dequantize(rq.nvfp4_quantize(W))))
print(f"{'scheme':28} {'bits/weight':>11} {'rel. error':>10}")
for name, bpw, W_hat in rows:
    print(f"{name:28} {bpw:11.4f} {rel_error(W, W_hat):10.4f}")

# %% [markdown]
# At 8 bits the uniform INT8 grid wins on weights, by a factor 3: a bell-shaped weight
# distribution under a per-channel scale does not need FP8's dynamic range, and INT8 keeps 4
# more bits of precision at the top of the range (FP8 pays off for activations and gradients,
# whose range is wide). At 4 bits with the same group of 32 and float16 scale, FP4 E2M1 and INT4
# are a tie on this layer: E2M1's levels (0, 0.5, 1, 1.5, 2, 3, 4, 6) crowd near zero where the
# weights are, but lose resolution at the top. MXFP4 is worse (its power-of-two scale wastes up
# to a factor 2 of range) for a quarter bit less; NVFP4's FP8 scale over 16 values beats both
# at 4.5 bits.

# %% [markdown]
# ## 4. The block scale at work
#
# One block of 32 weights. The OCP MX rule takes $X = 2^{\lfloor \log_2 \text{amax} \rfloor - 2}$
# for FP4 (2 is the exponent of its largest value, 6): the block's maximum then lands in
# $[4X, 8X)$, above the largest element $6X$, so the top values *clip*. The "rceil" rule
# (NVIDIA's and torchao's round-up) takes the smallest power of two with $\text{amax} \le 6X$:
# nothing clips, but the grid is up to twice as coarse.

# %%
block = W[0, 128:160]                                      # amax = 1.92 * 2^k
amax = float(np.abs(block).max())
ocp = rq.mx_quantize(block[None], "mxfp4")
rceil = rq.mx_quantize(block[None], "mxfp4", scale_rule="rceil")
nv = rq.nvfp4_quantize(block[None])
cases = [("MXFP4, scale_rule='ocp'", rq.from_float_bits(ocp.scales[0], "e8m0fnu"), rq.mx_dequantize(ocp)[0]),
         ("MXFP4, scale_rule='rceil'", rq.from_float_bits(rceil.scales[0], "e8m0fnu"), rq.mx_dequantize(rceil)[0]),
         ("NVFP4 (2 blocks of 16)", nv.tensor_scale * rq.from_float_bits(nv.scales[0], "e4m3fn"),
          rq.nvfp4_dequantize(nv)[0])]
fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), sharey=True)
for ax, (title, steps, x_hat) in zip(axes, cases):
    k = 32 // len(steps)                                       # values per scale
    for j, s in enumerate(steps):
        for g in finite_values("e2m1fn"):
            ax.hlines([g * s, -g * s], j * k - 0.5, (j + 1) * k - 0.5, color="0.85", lw=0.6)
    ax.plot(block, "o", ms=4, label="w")
    ax.plot(x_hat, "x", ms=5, label="w_hat")
    ax.set_title(f"{title}\nscale(s) " + ", ".join(f"{s:.2e}" for s in steps), fontsize=9)
    ax.set_xlabel("index in block")
    print(f"{title:28} max |w - w_hat| = {np.abs(block - x_hat).max():.2e}, "
          f"amax / (6 * largest scale) = {amax / (6 * steps.max()):.2f}")
axes[0].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ### ggml's MXFP4 is not quite OCP
#
# llama.cpp's GGML MXFP4 (type 39) stores the same E8M0 scale but chooses each code as the
# *first* nearest entry of its table, so an exact tie goes to the **smaller** magnitude
# (0.75 -> 0.5, 1.75 -> 1.5, 3.5 -> 3), where OCP and `ml_dtypes` round half to even
# (0.75 -> 1, 1.75 -> 2, 3.5 -> 4). Real weights, dequantized from Q4_1, sit on such ties more
# often than random numbers do. `refquant.formats.ggml` writes both: ggml's bytes (equal to its
# C quantizer) and the OCP rule in GGML's layout. Half the ties go each way, so the error barely
# moves; what changes is the bytes, which is what a bit-exactness test sees.

# %%
rows32 = W[:, :1536]
g_hat = ggml.dequantize(ggml.quantize(rows32, "MXFP4"), "MXFP4")
o_hat = ggml.dequantize(ggml.mxfp.quantize_mxfp4_ocp(rows32), "MXFP4")
differ = g_hat != o_hat
print(f"elements where ggml's and the OCP rule differ: {int(differ.sum())} of {differ.size} "
      f"({100 * differ.mean():.3f}%)")
print(f"relative error, ggml rule: {rel_error(rows32, g_hat):.6f}   OCP rule: {rel_error(rows32, o_hat):.6f}")

# %% [markdown]
# ### Exercise: the OCP scale and elements by hand
#
# For every block of 32 values of `Wx` (along the rows), compute the E8M0 scale code
# $E = \lfloor \log_2 \text{amax} \rfloor - 2 + 127$ with `np.frexp` (exact: `np.frexp(a)` gives
# $a = f \cdot 2^e$ with $\tfrac12 \le f < 1$, so $\lfloor \log_2 a \rfloor = e - 1$), then the
# elements `rq.cast_float(x / X, "e2m1fn")` (saturating, half to even) and the dequantized
# block $X \cdot$ element. The answer below works; the check compares it with `rq.mx_quantize`.

# %%
Wx = W[:8, :256].astype(np.float64)


def mxfp4_by_hand(x):
    blocks = x.reshape(x.shape[0], -1, 32)                              # [rows, n_blocks, 32]
    amax = np.abs(blocks).max(axis=-1)
    E = np.frexp(amax)[1] - 1 - 2                                       # floor(log2 amax) - emax
    X = np.ldexp(1.0, E)[..., None]
    elements = rq.cast_float(blocks / X, "e2m1fn")
    return (E + 127).astype(np.uint8), (elements * X).reshape(x.shape)


# %%
codes, x_hat = mxfp4_by_hand(Wx)
ref = rq.mx_quantize(Wx, "mxfp4")
ok = np.array_equal(codes, ref.scales) and np.array_equal(x_hat.astype(np.float32), rq.mx_dequantize(ref))
print("correct" if ok else f"not yet: {int((codes != ref.scales).sum())} scales differ, "
      f"worst element {np.abs(x_hat - rq.mx_dequantize(ref)).max():.3e}")

# %% [markdown]
# ## 5. The model
#
# The perplexity of the whole model under each format (weight-only FP8, MXFP6, MXFP4 and NVFP4
# with RTN and GPTQ, W8A8 FP8) is a longer run; its table is in the README's results section,
# not recomputed here. The same calls scale up: `rq.gptq_mx(W, H, "mxfp4")` and
# `rq.gptq_nvfp4(W, H)` run GPTQ with the block scales fixed, and with an identity Hessian they
# return exactly the round-to-nearest codes above.

# %% [markdown]
# ## What to try next
#
# - Repeat section 3 with `rq.FloatSpec("e4m3fn", "block", block_shape=(128, 128))` (DeepSeek-V3's
#   FP8 weights) and with per-token activations: which granularity does FP8 need?
# - Compare `"mxfp6_e2m3"` and `"mxfp6_e3m2"` on the same layer: where does a mantissa bit beat
#   an exponent bit?
# - Run `rq.gptq_mx` on one layer with a Hessian from calibration activations (notebook 06) and
#   measure how much of the MXFP4 error it removes.
# - Write the layer as GGML NVFP4 (`ggml.quantize(W, "NVFP4")`): it has no tensor scale, so
#   compare its error with `rq.nvfp4_quantize` and look at the scale bytes ggml writes for the
#   largest blocks (its UE4M3 encoder never writes 256 ... 416).
