# %% [markdown]
# # 01 · Uniform quantization from scratch
#
# Quantization stores a real number as a small integer code plus a few shared parameters. This
# notebook builds the most common scheme, *uniform affine* quantization, one piece at a time, first
# on arrays small enough to print and then on a real weight matrix of the bundled SmolLM2-135M
# language model.
#
# **You will learn**
#
# - what the scale $s$ and the zero point $z$ are, and how to compute them from a range;
# - how the rounding mode decides exact ties (half-to-even vs half-away-from-zero);
# - what clipping does, and why a smaller range can give a *smaller* error;
# - why the error is a sawtooth bounded by $s/2$, and how it shrinks with every extra bit;
# - how codes are packed into bytes, and what "bits per weight" really counts.
#
# **You should know first:** NumPy arrays and broadcasting, and that a float32 has a limited
# precision. No machine-learning background is needed.
#
# The scheme is the one of Jacob et al., *Quantization and Training of Neural Networks for
# Efficient Integer-Arithmetic-Only Inference* (CVPR 2018, arXiv:1712.05877), in the notation of
# Nagel et al., *A White Paper on Neural Network Quantization* (arXiv:2106.08295):
#
# $$q = \mathrm{clamp}\big(\mathrm{round}(x/s) + z,\ q_{min},\ q_{max}\big), \qquad \hat x = s\,(q - z)$$
#
# with $b$-bit codes $q \in [q_{min}, q_{max}]$: $[0, 2^b - 1]$ (unsigned, asymmetric) or
# $[-2^{b-1}, 2^{b-1} - 1]$ (signed, symmetric with $z = 0$).
#
# The real matrix is the MLP's `down_proj` of block 0, loaded with `rq.load_model()`. The bundled
# file stores its weights as GGUF Q4_1 (4-bit blocks of 32 with a float16 scale and minimum); the
# dequantized float32 values are our full-precision baseline.

# %%
import numpy as np
import matplotlib.pyplot as plt
import refquant as rq

np.set_printoptions(precision=4, suppress=True, linewidth=110)

model = rq.load_model()                                   # the bundled SmolLM2-135M, read lazily
W = model.weights["layers.0.mlp.down_proj.weight"]        # (out_features, in_features), float32
print("blk.0 down_proj:", W.shape, W.dtype)

# %% [markdown]
# ## 1. Scale and zero point from a range
#
# Take a range $[lo, hi]$ that we want to represent with $b$-bit unsigned codes. The $2^b$ codes
# split it into $2^b - 1$ equal steps, so the step (the **scale**) is
#
# $$s = \frac{hi - lo}{2^b - 1}.$$
#
# The **zero point** $z$ is the code that represents the real number 0: $\hat x = s(z - z) = 0$.
# We want 0 to be exact (zero padding, ReLU outputs and pruned weights are exactly 0), so the range
# is first widened to contain 0 and then $z = \mathrm{round}(-lo / s)$.
#
# Here are eight numbers, quantized by hand to 4 bits:

# %%
x = np.array([-0.62, -0.3, -0.05, 0.0, 0.11, 0.47, 0.9, 1.38])
bits = 4
qmin, qmax = 0, 2**bits - 1
lo, hi = min(x.min(), 0.0), max(x.max(), 0.0)
s = (hi - lo) / (qmax - qmin)
z = int(np.rint(-lo / s))
q = np.clip(np.rint(x / s) + z, qmin, qmax)
x_hat = s * (q - z)
print(f"range [{lo}, {hi}]  ->  s = {s:.5f}, z = {z}")
print("x      ", x)
print("x / s  ", x / s)
print("q      ", q)
print("x_hat  ", x_hat)
print("error  ", x - x_hat, " (|error| <= s/2 =", round(s / 2, 5), ")")

# %% [markdown]
# refquant does the same in three calls. `rq.calibrate` picks the range (here min-max) and turns
# it into `QParams` (a float32 scale and an integer zero point), `rq.quantize` makes the codes and
# `rq.dequantize` maps them back. The codes come back as `uint8`, the smallest dtype that holds
# them:

# %%
spec = rq.QuantSpec(bits=4, symmetric=False)
qp = rq.calibrate(x, spec, method="minmax")
q_rq = rq.quantize(x, qp, spec)
print("scale", qp.scale, "zero point", qp.zero_point)
print("codes", q_rq, q_rq.dtype)
print("x_hat", rq.dequantize(q_rq, qp, spec))
assert np.array_equal(q_rq, q) and int(qp.zero_point) == z

# %% [markdown]
# **Symmetric** quantization fixes $z = 0$ and uses signed codes. The range becomes $[-a, a]$ with
# $a = \max |x|$, and $s = a / (2^{b-1} - 1)$. It wastes part of the grid when the data is
# lopsided (here the negative codes below $-0.62/s$ are never used) but it makes the integer
# arithmetic simpler, which is why weights are usually quantized symmetrically. The signed range
# has one more negative code than positive ones ($-8 \dots 7$ for 4 bits); `restricted=True` drops
# it so that $q(-x) = -q(x)$ for every code.

# %%
for restricted in (False, True):
    sym = rq.QuantSpec(bits=4, symmetric=True, restricted=restricted)
    qp_sym = rq.calibrate(x, sym)
    print(f"restricted={restricted!s:5}: codes [{sym.qmin}, {sym.qmax}], s = {float(qp_sym.scale):.5f},"
          f" q = {rq.quantize(x, qp_sym, sym)}")

# %% [markdown]
# ### Exercise 1: your own quantizer
#
# Write `my_quantize(x, bits)`: asymmetric, per-tensor, min-max, exactly as refquant does it. It
# returns the scale (a float32), the zero point (an int) and the codes (uint8). Two details decide
# whether you match refquant bit for bit:
#
# - compute the range and the scale in float64, then round the scale to float32 (checkpoints store
#   float32 or float16 scales); use that float32 scale for the zero point and the codes;
# - round with `np.rint` (ties to even, see section 2), and clamp the zero point to the code range.
#
# The cell below ships with a working answer: break it (e.g. drop the widening to 0, or use
# `np.floor`) and watch the check cell tell you what is off.

# %%
def my_quantize(x, bits):
    x = np.asarray(x, dtype=np.float64)
    qmax = 2**bits - 1
    lo, hi = min(x.min(), 0.0), max(x.max(), 0.0)        # widen the range to contain 0
    s = np.float32((hi - lo) / qmax)                    # the scale, stored as float32
    z = int(np.clip(np.rint(-lo / np.float64(s)), 0, qmax))
    q = np.clip(np.rint(x / np.float64(s)) + z, 0, qmax).astype(np.uint8)
    return s, z, q


# %%
def check_quantizer(fn):
    """Compare fn(x, bits) with rq.calibrate + rq.quantize on small and real data; print the verdict."""
    problems = []
    cases = {"the eight numbers": x, "all positive": np.array([0.2, 0.7, 1.9]),
             "a row of the real down_proj": W[3]}
    for name, data in cases.items():
        for b in (2, 4, 8):
            spec = rq.QuantSpec(bits=b, symmetric=False)
            qp = rq.calibrate(data, spec)
            s, z, q = fn(data, b)
            if np.float32(s) != qp.scale:
                problems.append(f"{name}, {b} bits: scale {s!r}, refquant {float(qp.scale)!r}")
            elif z != int(qp.zero_point):
                problems.append(f"{name}, {b} bits: zero point {z}, refquant {int(qp.zero_point)}")
            else:
                wrong = np.flatnonzero(np.asarray(q) != rq.quantize(data, qp, spec))
                if wrong.size:
                    i = wrong[0]
                    problems.append(f"{name}, {b} bits: {wrong.size} codes differ, first at x={data[i]!r}:"
                                    f" {q[i]} vs {rq.quantize(data, qp, spec)[i]}")
    print("correct: your quantizer matches refquant" if not problems else "\n".join(problems[:5]))


check_quantizer(my_quantize)

# %% [markdown]
# ## 2. Rounding modes and exact ties
#
# `round` hides a decision: what to do when $x/s$ lies *exactly* halfway between two integers.
#
# - **half-to-even** (IEEE 754's default, NumPy's `rint`, PyTorch's `round`): $0.5 \to 0$,
#   $1.5 \to 2$, $2.5 \to 2$. Ties go up half the time and down half the time, so no bias.
# - **half-away-from-zero** (C's `roundf`, used by llama.cpp's quantizers): $0.5 \to 1$,
#   $2.5 \to 3$, $-0.5 \to -1$. Every tie moves away from 0: a systematic bias of $s/2$ on ties.
#
# refquant rounds half-to-even unless the spec says `rounding="half_away"`.

# %%
t = np.arange(-3, 3) + 0.5
print("x / s      ", t)
print("half_even  ", rq.round_to_int(t, "half_even"))     # -0. is the float minus zero, equal to 0
print("half_away  ", rq.round_to_int(t, "half_away"))

# a scale that is a power of two makes x / s exact, so these 100 values are all exact ties
s_tie = 0.125
x_ties = s_tie * (np.arange(100) + 0.5)
for mode in ("half_even", "half_away"):
    sp = rq.QuantSpec(bits=8, symmetric=True, rounding=mode)
    err = rq.dequantize(rq.quantize(x_ties, rq.QParams(s_tie), sp), rq.QParams(s_tie), sp) - x_ties
    print(f"{mode:9s}: mean error on ties {err.mean():+.4f} (s/2 = {s_tie / 2})")

# %% [markdown]
# Ties also hide a floating-point trap. The tempting one-liner for half-away rounding,
# $\lfloor |x| + 0.5 \rfloor$, is wrong for the largest double below 0.5: the sum rounds up to
# 1.0 before the floor sees it. refquant compares the exact fractional part instead:

# %%
tricky = np.array([0.5 - 2.0**-54])
print("floor(x + 0.5):", np.floor(tricky + 0.5), "   refquant half_away:", rq.round_to_int(tricky, "half_away"))

# %% [markdown]
# ## 3. Clipping, and the error as a sawtooth
#
# Everything between two grid points rounds to the nearer one, so inside the clipping range
# $[s(q_{min} - z),\ s(q_{max} - z)]$ the error $x - \hat x$ is a **sawtooth** of height $\pm s/2$.
# Outside it the code saturates at $q_{min}$ or $q_{max}$ and the error grows linearly: that is
# **clipping error**. Below, a 3-bit symmetric grid for the range $[-1, 1]$: $s = 1/3$ and codes
# $-4 \dots 3$, so the grid reaches $-4/3$ on the left but only $1$ on the right.

# %%
spec3 = rq.QuantSpec(bits=3, symmetric=True)
qp3 = rq.qparams_from_range(-1.0, 1.0, spec3)
lo3, hi3 = rq.clip_range(qp3, spec3)
xs = np.linspace(-1.7, 1.7, 3401)
xs_hat = rq.dequantize(rq.quantize(xs, qp3, spec3), qp3, spec3)
s3 = float(qp3.scale)
print(f"s = {s3:.4f}, clipping range [{float(lo3):.4f}, {float(hi3):.4f}]")

fig, ax = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
ax[0].plot(xs, xs, color="0.7", lw=1, label="x")
ax[0].plot(xs, xs_hat, color="C0", label=r"$\hat x$")
ax[0].set_title("3-bit symmetric quantizer, s = 1/3"); ax[0].legend()
ax[1].plot(xs, xs - xs_hat, color="C1")
ax[1].axhline(s3 / 2, ls="--", color="0.5"); ax[1].axhline(-s3 / 2, ls="--", color="0.5")
for edge in (float(lo3), float(hi3)):
    ax[0].axvline(edge, ls=":", color="C3"); ax[1].axvline(edge, ls=":", color="C3")
ax[1].set_title(r"error $x - \hat x$: a sawtooth within $\pm s/2$, linear beyond the clipping range")
ax[1].set_xlabel("x")
plt.tight_layout(); plt.show()

inside = (xs >= lo3) & (xs <= hi3)
assert np.abs(xs - xs_hat)[inside].max() <= s3 / 2 + 1e-12

# %% [markdown]
# If $x$ is spread evenly over many steps, the sawtooth error is uniform on $[-s/2, s/2]$ and its
# mean square is
#
# $$\mathbb E\big[(x - \hat x)^2\big] = \frac{1}{s}\int_{-s/2}^{s/2} e^2\, de = \frac{s^2}{12}.$$
#
# A narrower clipping range gives a smaller $s$, so less rounding error, but clips more values.
# For bell-shaped data with long tails the best range is *inside* the min-max range. Here the
# real `down_proj` weight of block 0, one symmetric scale per output row, with the range shrunk
# to a fraction $\alpha$ of each row's $\max|w|$. (Choosing the range from data is calibration:
# notebook 04.)

# %%
amax = np.abs(W).max(axis=1).astype(np.float64)               # [out] one range per output row
alphas = np.linspace(0.2, 1.0, 41)
fig, ax = plt.subplots(figsize=(6, 3.2))
for b in (3, 4):
    row_spec = rq.QuantSpec(bits=b, symmetric=True, granularity="channel", axis=0)
    mse = []
    for alpha in alphas:
        qp_a = rq.qparams_from_range(-alpha * amax, alpha * amax, row_spec)
        mse.append(np.mean((W - rq.fake_quantize(W, row_spec, qparams=qp_a)) ** 2))
    best = alphas[int(np.argmin(mse))]
    print(f"{b} bits: MSE at alpha=1 (min-max) {mse[-1]:.3e}, best alpha {best:.2f} with MSE {min(mse):.3e}")
    assert min(mse) < mse[-1]
    ax.plot(alphas, mse, label=f"{b} bits")
ax.set_xlabel(r"clipping range $\alpha \cdot \max|w|$ per row"); ax.set_ylabel("MSE"); ax.set_yscale("log")
ax.set_title("clipping error vs rounding error (blk.0 down_proj)"); ax.legend()
plt.tight_layout(); plt.show()

# %% [markdown]
# ## 4. Bits vs error
#
# Each extra bit doubles the number of codes and halves $s$, so the mean square error falls by 4
# and the signal-to-quantization-noise ratio
#
# $$\mathrm{SQNR} = 10 \log_{10} \frac{\sum w^2}{\sum (w - \hat w)^2}$$
#
# gains $20 \log_{10} 2 \approx 6.02$ dB per bit. We check that on the real matrix, per output
# channel, against the prediction $s^2/12$ averaged over the rows.

# %%
rows = []
for b in range(2, 9):
    row_spec = rq.QuantSpec(bits=b, symmetric=True, granularity="channel", axis=0)
    qp_b = rq.calibrate(W, row_spec)
    W_hat = rq.fake_quantize(W, row_spec, qparams=qp_b)
    mse = np.mean((W - W_hat) ** 2)
    predicted = np.mean(qp_b.scale.astype(np.float64) ** 2) / 12
    sqnr = 10 * np.log10(np.sum(W.astype(np.float64) ** 2) / np.sum((W - W_hat).astype(np.float64) ** 2))
    rows.append((b, mse, predicted, sqnr))
print(" bits        MSE   s^2/12 model    SQNR dB")
for b, mse, pred, sqnr in rows:
    print(f"{b:5d} {mse:10.3e} {pred:14.3e} {sqnr:10.2f}")
sqnrs = np.array([r[3] for r in rows])
print("dB gained per extra bit:", np.round(np.diff(sqnrs), 2))
assert np.all(np.diff(sqnrs) > 0)

fig, ax = plt.subplots(figsize=(5.5, 3.2))
ax.plot([r[0] for r in rows], sqnrs, "o-", label="measured")
ax.plot([r[0] for r in rows], sqnrs[-1] - 6.02 * (8 - np.arange(2, 9)), "--", label="6.02 dB per bit")
ax.set_xlabel("bits"); ax.set_ylabel("SQNR (dB)"); ax.set_title("per-channel symmetric, blk.0 down_proj")
ax.legend(); plt.tight_layout(); plt.show()

# %% [markdown]
# The uniform-noise model is excellent from 3 bits up. At 2 bits it fails: the codes are
# $-2 \dots 1$ with $s = \max|w|$, almost every weight rounds to 0, and the error is the weight
# itself, which is smaller than $s^2/12$ on average. At low bits each extra bit also gains *more*
# than 6 dB, because fewer and fewer weights fall into that dead zone around 0.

# %% [markdown]
# ## 5. Packing, and bits per weight
#
# A 4-bit code in a `uint8` wastes half the byte. `rq.pack` writes the codes into one
# little-endian bit stream: code $i$ takes bits $[ib, (i+1)b)$, so two 4-bit codes share a byte
# (the first in the low nibble), eight share an int32 word (the layout of GPTQ checkpoints), and
# 3-bit codes even cross byte boundaries.

# %%
codes = np.array([1, 2, 3, 15, 7, 0, 9, 4], np.uint8)
as_bytes = rq.pack(codes, 4)
as_word = rq.pack(codes, 4, "int32")
print("codes           ", codes)
print("bytes           ", [format(v, "08b") for v in as_bytes], "(low nibble = first code)")
print("one int32 word  ", format(int(as_word[0]) & 0xFFFFFFFF, "032b"))
assert np.array_equal(rq.unpack(as_bytes, 4, codes.size), codes)
print("32 codes of 3 bits fill", rq.packed_length(32, 3, "int32"), "int32 words")

# %% [markdown]
# The codes are not all we store: every scale (and zero point) takes space too. With $b$-bit
# codes, one 16-bit scale per group of $G$ weights and, for asymmetric specs, one $b$-bit zero
# point per group, a weight costs
#
# $$b + \frac{16}{G} + \frac{b}{G}\ \text{bits}$$
#
# `rq.size_report` does this arithmetic for any spec and shape. Here the codes of the real matrix
# are packed and the sizes printed:

# %%
spec_g = rq.QuantSpec(bits=4, symmetric=False, granularity="group", group_size=128)
qp_g = rq.calibrate(W, spec_g)
q_g = rq.quantize(W, qp_g, spec_g)
packed = rq.pack(q_g, 4, "int32")
assert np.array_equal(rq.unpack(packed, 4, W.shape[1]), q_g)
print(f"{W.shape} float32: {W.nbytes:,} bytes; codes unpacked (uint8) {q_g.nbytes:,}; packed {packed.nbytes:,}")
for sp in (rq.QuantSpec(bits=8, symmetric=True, granularity="channel"),
           rq.QuantSpec(bits=4, symmetric=True, granularity="channel"),
           spec_g,
           rq.QuantSpec(bits=3, symmetric=False, granularity="group", group_size=128)):
    print(rq.size_report(W.shape, sp, scale_bits=16))

# %% [markdown]
# ### Exercise 2: bits per weight by hand
#
# Write `bits_per_weight(shape, bits, group_size, asymmetric)` for a matrix quantized in groups of
# `group_size` along its last axis, with float16 scales and (when asymmetric) `bits`-bit zero
# points. Assume the last axis is a multiple of the group size. The answer below uses the formula
# above; the check compares it with `rq.size_report`.

# %%
def bits_per_weight(shape, bits, group_size, asymmetric):
    rows, K = shape
    n_groups = rows * K // group_size
    total_bits = rows * K * bits + n_groups * 16 + (n_groups * bits if asymmetric else 0)
    return total_bits / (rows * K)


# %%
problems = []
for shape in [(576, 1536), (4096, 4096), (11008, 4096)]:
    for bits, group_size, asym in [(4, 128, True), (3, 64, False), (8, 32, True), (2, 16, True)]:
        mine = bits_per_weight(shape, bits, group_size, asym)
        ref = rq.size_report(shape, rq.QuantSpec(bits=bits, symmetric=not asym, granularity="group",
                                                 group_size=group_size), scale_bits=16).bits_per_weight
        if not np.isclose(mine, ref, rtol=1e-12):
            problems.append(f"{shape}, {bits} bits, groups of {group_size}, asymmetric={asym}: "
                            f"you say {mine:.5f}, refquant {ref:.5f}")
print("correct: every case matches rq.size_report" if not problems else "\n".join(problems))

# %% [markdown]
# ## What to try next
#
# - In Exercise 1, quantize `W[3]` with `rounding="half_away"` and count how many codes change
#   (real weights rarely sit on an exact tie; the powers-of-two example above always does).
# - Redo the bits-vs-error table with `symmetric=False`: how many dB is the zero point worth?
# - In the clipping plot, try 2 bits and 8 bits: how does the best $\alpha$ move, and why?
# - Pack 3-bit codes with `rq.pack(codes, 3, "int32")` and find the code that straddles two words.
# - Notebook 02 moves from one scale per row to one per group and compares symmetric and
#   asymmetric grids on every weight matrix of a block; notebook 03 drops the even spacing
#   altogether; notebook 04 chooses the clipping range from data.
