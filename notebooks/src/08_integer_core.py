# %% [markdown]
# # 08 · The integer core
#
# Fake quantization (notebooks 01-07) rounds numbers but still computes in floating point. An
# integer engine does not: it multiplies 8-bit codes, adds the products in a 32-bit integer
# register, and turns the sum into the next layer's 8-bit codes with one integer multiply and a
# shift. This notebook builds that pipeline from its three pieces and runs it on real data.
#
# **You will learn**
#
# - why an int8 x int8 product must be accumulated in int32, and why NumPy's `int8 @ int8` gets
#   it wrong without a word;
# - how zero points turn into row and column sums that cost almost nothing;
# - how a real multiplier $M = S_x S_w / S_y$ becomes an int32 mantissa and a shift, and the two
#   ways engines round the product (one step, or gemmlowp's two);
# - an integer-only MLP on the digits data against its float version, and an integer-only layer
#   of the real SmolLM2-135M;
# - how fast each backend of `rq.int8_matmul` is, measured here.
#
# **You should know first:** notebook 01 (scale and zero point).
#
# **Sizes used here:** matrices of the bundled model's shapes with 256 tokens; the CUDA kernel,
# without a GPU, runs under Numba's simulator on a $32 \times 64 \times 32$ product only (see
# section 6). Everything runs in well under a minute.
#
# ## The equations (Jacob et al. 2018, arXiv:1712.05877)
#
# A real number is $r = S\,(q - Z)$. For a linear layer with uint8 input codes $q_x$
# ($S_x, Z_x$), int8 symmetric weights $q_w$ ($S_w$, $Z_w = 0$), int32 bias $q_b = \mathrm{round}
# (b / S_x S_w)$ and uint8 output codes $q_y$ ($S_y, Z_y$):
#
# $$ q_{y,n} = \mathrm{clamp}\Big(Z_y + M_n \underbrace{\Big(\sum_k q_{w,nk}\,(q_{x,k} - Z_x) +
#    q_{b,n}\Big)}_{acc_n:\ \text{int32}},\ 0,\ 255\Big), \qquad M_n = \frac{S_x S_{w,n}}{S_y}
#    = M_{0,n}\, 2^{-(31 + s_n)},\quad M_0 \in [2^{30}, 2^{31}). $$
#
# Three pieces: the int32 accumulation (section 1), the zero-point term (section 2), and the
# fixed-point multiplier (section 3).

# %%
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import matplotlib.pyplot as plt
import refquant as rq
from refquant.integer import fixed_point, intonly, w8a8
from refquant.kernels import K_MAX, uint8_int8_matmul
from refquant.models import llama
from refquant.pipeline import data

np.set_printoptions(linewidth=110)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. int8 times int8 needs int32
#
# One product of two int8 values lies in $[-128 \cdot 127, (-128)^2] = [-16256, 2^{14}]$: it
# already needs 16 bits, and a sum of $K$ of them needs $\log_2 K$ more. NumPy computes
# `int8 @ int8` *in int8* and wraps around modulo 256:

# %%
a = np.array([[100, 100, -50]], np.int8)
b = np.array([[100], [100], [7]], np.int8)
print("exact            :", a.astype(np.int64) @ b.astype(np.int64))
print("NumPy int8 @ int8:", a @ b, (a @ b).dtype, "  (19650 mod 256 = 194 -> -62 as int8)")
print("rq.int8_matmul   :", rq.int8_matmul(a, b, backend="numpy"), rq.int8_matmul(a, b, backend="numpy").dtype)

# %% [markdown]
# `rq.int8_matmul` returns the exact sum in int32. int32 holds any sum of $K$ products as long
# as $K \cdot 2^{14} \le 2^{31} - 1$, i.e.
#
# $$K \le K_{max} = \lfloor (2^{31} - 1) / 2^{14} \rfloor = 131071 .$$
#
# At $K = 131072$ a row of $(-128)(-128)$ sums to exactly $2^{31}$, one past the largest int32;
# refquant refuses that shape rather than return a wrapped number.

# %%
print("K_max =", K_MAX)
for K in (K_MAX, K_MAX + 1):
    a_k = np.full((1, K), -128, np.int8)
    b_k = np.full((K, 1), -128, np.int8)
    try:
        c = rq.int8_matmul(a_k, b_k, backend="numpy")
        print(f"K = {K}: {int(c[0, 0])} (= 2^31 - 2^14: fits)")
    except ValueError as e:
        print(f"K = {K}: ValueError: {e}")

# %% [markdown]
# ## 2. Zero points become row and column sums
#
# Activations after a ReLU or a norm are not centred, so they get uint8 codes with a zero point
# $Z_x$ (notebook 01). Expanding the product (Jacob et al., eq. 7):
#
# $$ \sum_k (q_{x,mk} - Z_x)\, q_{w,kn} \;=\; \sum_k q_{x,mk}\, q_{w,kn} \;-\; Z_x \sum_k q_{w,kn} .$$
#
# The first term is a plain 8-bit matrix product; the second is one column sum of the weights
# per output, computed once when the weights are loaded. (With a weight zero point $Z_w$ too, a
# row sum of the activations and a constant $K Z_x Z_w$ join in.) The kernels' 8-bit unit is
# signed, so refquant's fast path runs it on $q_x - 128$ (an exact int8) and adds
# $128 \sum_k q_{w,kn}$ back. With numbers you can print:

# %%
q_x = np.array([[0, 10, 200, 255], [128, 128, 3, 40]], np.uint8)        # [M=2, K=4]
q_w = np.array([[1, -2], [3, 4], [-5, 6], [7, -8]], np.int8)            # [K=4, N=2]
Z_x = 128
spec_result = uint8_int8_matmul(q_x, q_w, Z_x, backend="numpy")          # the specification
plain = rq.int8_matmul((q_x.view(np.int8) ^ np.int8(-128)), q_w, backend="numpy")  # (q_x - 128) q_w
col = q_w.astype(np.int32).sum(axis=0)                                  # sum_k q_w,kn
print("(q_x - Z_x) q_w, elementwise in int32:\n", spec_result)
print("(q_x - 128) q_w with the int8 kernel:\n", plain)
print("column sums of q_w:", col, "  correction (128 - Z_x) * col =", (128 - Z_x) * col)
print("numba backend:\n", uint8_int8_matmul(q_x, q_w, Z_x, backend="numba"))
assert np.array_equal(uint8_int8_matmul(q_x, q_w, Z_x, backend="numba"), spec_result)

# %% [markdown]
# Here $Z_x = 128$ and the correction vanishes; with another zero point the column sums carry
# it (`uint8_int8_matmul(q_x, q_w, 3)` — try it). The correction costs $O(K N)$ once, against the
# product's $O(M K N)$.

# %% [markdown]
# ## 3. Fixed-point requantization, step by step
#
# The int32 accumulator has scale $S_x S_w$; the next layer wants codes of scale $S_y$. The real
# multiplier $M = S_x S_w / S_y$ is almost always in $(0, 1)$. An integer engine stores it as a
# normalized int32 mantissa $M_0 \in [2^{30}, 2^{31})$ and a shift $s$ with $M = M_0\,2^{-(31+s)}$
# (`quantize_multiplier`, from `frexp`: $M = m\,2^e$, $m \in [0.5, 1)$, $M_0 = \mathrm{round}(m\,
# 2^{31})$, $s = -e$). Its relative error is at most $2^{-31}$.

# %%
S_x, S_w, S_y = 0.0235, 0.0041, 0.0617
M = S_x * S_w / S_y
M0, s = fixed_point.quantize_multiplier(M)
print(f"M = {M:.10e}")
print(f"frexp(M) = {np.frexp(M)}")
print(f"M0 = {int(M0)}  (in [2^30, 2^31) = [{2**30}, {2**31}))   shift s = {int(s)}")
print(f"M0 * 2^-(31+s) = {int(M0) * 2.0 ** -(31 + int(s)):.10e},  relative error "
      f"{abs(int(M0) * 2.0 ** -(31 + int(s)) - M) / M:.1e}")

# %% [markdown]
# Applying it to an accumulator: the product $acc \cdot M_0$ is formed exactly in int64 and
# shifted right by $31 + s$ bits with rounding. refquant offers both conventions in use:
#
# - `rounding="single"` (the default): one rounding of the exact product, $\lfloor (acc\,M_0 +
#   2^{30+s}) / 2^{31+s} \rfloor$, ties toward $+\infty$ (TFLite with `TFLITE_SINGLE_ROUNDING`,
#   ruy);
# - `rounding="gemmlowp"`: gemmlowp's two steps and TFLite's default: first
#   `SaturatingRoundingDoublingHighMul` (the rounded high word of $2\,acc\,M_0$, i.e.
#   $acc \cdot M_0 / 2^{31}$), then `RoundingDivideByPOT` by $2^s$ (ties away from zero). Two
#   roundings: the result can differ from the single one by one unit.
#
# Both are integer-only; here are a few accumulators, with the exact real product beside them
# (the last three are the first ones in $[-5000, 5000)$ where the two roundings disagree:
# products a hair away from a half, which gemmlowp's first rounding pushes across it):

# %%
scan = np.arange(-5000, 5000, dtype=np.int32)                      # find accumulators where they differ
differ = scan[fixed_point.multiply_by_quantized_multiplier(scan, M0, s, "single")
              != fixed_point.multiply_by_quantized_multiplier(scan, M0, s, "gemmlowp")]
accs = np.concatenate([np.array([0, 1, 1000, 123456, -2_000_000], np.int32), differ[:3]])
single = fixed_point.multiply_by_quantized_multiplier(accs, M0, s, "single")
gemm = fixed_point.multiply_by_quantized_multiplier(accs, M0, s, "gemmlowp")
print(f"{'acc':>12s} {'acc * M (real)':>16s} {'single':>8s} {'gemmlowp':>9s}")
for a_, r_, s1, s2 in zip(accs, accs * M, single, gemm):
    print(f"{int(a_):12d} {r_:16.4f} {int(s1):8d} {int(s2):9d}")

# %% [markdown]
# Over many accumulators, the error of each rounding against the real product: one rounding
# stays within $\pm 1/2$, two roundings within $\pm 3/4$. The second rounding matters most when
# the shift is small (the left plot uses the same $M_0$ with $s = 1$, i.e. $M \approx 0.4$);
# the right plot shows how often the two disagree, by one code, as the shift grows.

# %%
acc_many = rng.integers(-2**20, 2**20, 200_000).astype(np.int32)
errors = {}
for name in ("single", "gemmlowp"):
    for sh in (int(s), 1):
        exact = acc_many.astype(np.float64) * (int(M0) * 2.0 ** -(31 + sh))    # the stored multiplier
        errors[name, sh] = fixed_point.multiply_by_quantized_multiplier(acc_many, M0, sh, name) - exact
        print(f"{name:8s} shift {sh:2d}: max |requantized - exact| = {np.abs(errors[name, sh]).max():.4f}")
assert max(np.abs(errors["single", sh]).max() for sh in (int(s), 1)) <= 0.5
assert max(np.abs(errors["gemmlowp", sh]).max() for sh in (int(s), 1)) <= 0.75

shifts = np.arange(1, 12)
disagree = [np.mean(fixed_point.multiply_by_quantized_multiplier(acc_many, M0, sh, "single")
                    != fixed_point.multiply_by_quantized_multiplier(acc_many, M0, sh, "gemmlowp"))
            for sh in shifts]

fig, ax = plt.subplots(1, 2, figsize=(10, 3.2))
bins = np.linspace(-0.8, 0.8, 97)
ax[0].hist(errors["single", 1], bins=bins, alpha=0.6, label="single rounding")
ax[0].hist(errors["gemmlowp", 1], bins=bins, alpha=0.6, label="gemmlowp (two roundings)")
ax[0].set_xlabel("requantized - exact (codes)"); ax[0].set_ylabel("count")
ax[0].set_title(f"M0 = {int(M0)}, shift 1 (M = {int(M0) * 2.0**-32:.3f})", fontsize=9)
ax[0].legend(fontsize=8)
ax[1].plot(shifts, 100 * np.array(disagree), "o-")
ax[1].set_xlabel("shift s"); ax[1].set_ylabel("% of accumulators")
ax[1].set_title("single and gemmlowp differ by one code", fontsize=9)
plt.tight_layout(); plt.show()

# %% [markdown]
# ### Exercise — requantize by hand
#
# Using only integer NumPy operations (int64 is allowed for the product), compute the
# single-rounding requantization of `accs` with the multiplier `M0, s` above:
# $\lfloor (acc \cdot M_0 + 2^{30+s}) / 2^{31+s} \rfloor$ (an arithmetic right shift is a floor
# division by a power of two). The next cell checks it against refquant.

# %%
# --- your answer (a working answer is shipped) ---
total = 31 + int(s)
my_requant = (accs.astype(np.int64) * int(M0) + (1 << (total - 1))) >> total

# %%
ref = fixed_point.multiply_by_quantized_multiplier(accs, M0, s, "single")
if np.array_equal(my_requant, ref):
    print("correct:", my_requant.tolist())
else:
    bad = np.flatnonzero(my_requant != ref)
    print(f"not yet: at acc = {accs[bad].tolist()} you have {np.asarray(my_requant)[bad].tolist()}, "
          f"refquant has {ref[bad].tolist()} (did the product overflow int32? is the nudge 2^(30+s)?)")

# %% [markdown]
# ## 4. An integer-only MLP against its float version
#
# Put the pieces together. A 64-64-64-10 ReLU MLP trained in float64 on scikit-learn's bundled
# handwritten digits (the helpers of `examples/qat_digits.py`, as in notebook 05) is converted by
# `intonly.quantize_mlp`: int8 per-channel weights, int32 biases, uint8 activations with ranges
# from min-max on the training images, each ReLU fused into its layer's output clamp. Between
# the input quantization and the output dequantization, everything is integer.

# %%
root = next(p for p in (pathlib.Path.cwd(), *pathlib.Path.cwd().parents) if (p / "examples" / "qat_digits.py").exists())
sys.path.insert(0, str(root / "examples"))
import qat_digits as ex                                           # noqa: E402
from refquant.training import nn                                  # noqa: E402

X_tr, X_te, y_tr, y_te = ex.load_split(0)
fmodel = ex.train_float(X_tr, y_tr, hidden=64, epochs=30, seed=0)
linears = [layer for layer in fmodel.layers if isinstance(layer, nn.Linear)]
Ws, bs = [l.W.value for l in linears], [l.b.value for l in linears]

int_mlp = intonly.quantize_mlp(Ws, bs, X_tr)
for i, layer in enumerate(int_mlp.layers):
    print(f"layer {i}: q_w {layer.q_w.shape} int8, q_b int32 range [{layer.q_b.min()}, {layer.q_b.max()}], "
          f"M in [{layer.multiplier.min():.2e}, {layer.multiplier.max():.2e}], shifts {np.unique(layer.shift)}")

logits_float = intonly.mlp_float(Ws, bs, X_te)
logits_int = int_mlp.run(X_te, backend="numpy")
logits_gemm = int_mlp.run(X_te, backend="numpy", rounding="gemmlowp")
acc_f = np.mean(logits_float.argmax(1) == y_te)
acc_i = np.mean(logits_int.argmax(1) == y_te)
print(f"held-out accuracy: float {100 * acc_f:.1f} %, integer-only {100 * acc_i:.1f} %; "
      f"same prediction on {np.mean(logits_float.argmax(1) == logits_int.argmax(1)) * 100:.1f} % of images")
print(f"output step S_y = {int_mlp.out_q[0]:.4f}; max |int - float| = {np.abs(logits_int - logits_float).max():.4f}; "
      f"gemmlowp rounding changes {np.mean(logits_gemm != logits_int) * 100:.2f} % of the output codes")

fig, ax = plt.subplots(figsize=(4.2, 4))
ax.plot(logits_float.ravel(), logits_int.ravel(), ".", ms=2)
lim = [logits_float.min(), logits_float.max()]
ax.plot(lim, lim, color="0.5", lw=0.8)
ax.set_xlabel("float64 logits"); ax.set_ylabel("integer-only logits (dequantized)")
ax.set_title("digits MLP, 540 test images", fontsize=9); plt.tight_layout(); plt.show()

# %% [markdown]
# The integer-only logits sit on a grid of step $S_y$ along the diagonal. How much of their
# distance from the float logits is the fixed-point multiplier's fault? `linear_float_sim` runs
# the same integer layer with the *real* multiplier in float64: the two never differ by more
# than one code.

# %%
q = intonly.quantize_act(X_te, *int_mlp.in_q)
worst = 0
for layer in int_mlp.layers:
    q_int = intonly.linear_int(layer, q, backend="numpy")
    q_sim = intonly.linear_float_sim(layer, q)
    worst = max(worst, int(np.abs(q_int.astype(int) - q_sim.astype(int)).max()))
    q = q_int
print("largest difference fixed-point vs real multiplier, over all layers:", worst, "code")
assert worst <= 1

# %% [markdown]
# ## 5. One layer of the real model in integers
#
# The same `quantize_linear` on a real projection: `layers.5.self_attn.q_proj` ($576 \to 576$) of
# SmolLM2-135M, its input captured on 256 tokens of calibration text through the pluggable
# `linear` of the forward pass (as in notebook 04). Static uint8 input and output ranges from
# min-max on these tokens; then the integer-only layer against the float one.

# %%
model = rq.load_model()
tokens = data.calibration_tokens(model.tokenizer, 256)
float_linear = llama.default_linear(model)
captured = {}


def recording_linear(name, x):
    captured.setdefault(name, x.reshape(-1, x.shape[-1]).copy())
    return float_linear(name, x)


h = llama.embed(model, tokens[None, :])
for i in range(6):
    h = llama.block(model, i, h, linear=recording_linear)
name = "layers.5.self_attn.q_proj"
x5 = captured[name].astype(np.float64)                              # [256, 576]
W5 = model.weights[name + ".weight"].astype(np.float64)             # [576, 576]
y5 = x5 @ W5.T
layer = intonly.quantize_linear(W5, None, intonly.act_qparams(x5.min(), x5.max()),
                                intonly.act_qparams(y5.min(), y5.max()))
q_y = intonly.linear_int(layer, intonly.quantize_act(x5, layer.in_scale, layer.in_zero), backend="numba")
y_int = intonly.dequantize_act(q_y, layer.out_scale, layer.out_zero)
rel = np.linalg.norm(y_int - y5) / np.linalg.norm(y5)
print(f"input range [{x5.min():.2f}, {x5.max():.2f}] -> S_x = {layer.in_scale:.4f}, Z_x = {layer.in_zero}")
print(f"output range [{y5.min():.2f}, {y5.max():.2f}] -> S_y = {layer.out_scale:.4f}, Z_y = {layer.out_zero}")
print(f"integer-only q_proj: relative error {rel:.4f}")
y_w8a8 = w8a8.w8a8_matmul(x5.astype(np.float32), np.ascontiguousarray(w8a8.quantize_rows_int8(W5)[0].T),
                          w8a8.quantize_rows_int8(W5)[1], backend="numba")
print(f"W8A8 with per-token activation scales (refquant.integer.w8a8): relative error "
      f"{np.linalg.norm(y_w8a8 - y5) / np.linalg.norm(y5):.4f}")

# %% [markdown]
# A per-tensor static input range spends its 256 levels on the few largest activations of the
# whole batch (notebook 04); per-token scales, computed on the fly, adapt to each token and
# lose less. Both run the same exact int32 core.

# %% [markdown]
# ## 6. How fast is each backend?
#
# `rq.int8_matmul` has three backends that return the same integers bit for bit: `"numpy"` (the
# specification: cast to int32, then NumPy's integer matmul, which has no BLAS behind it),
# `"numba"` (a tiled CPU kernel) and `"cuda"` (numba.cuda). We time the product of the gate
# projection of the real model, $256 \times 576$ activations times $576 \times 1536$ weights,
# against a float32 matmul of the same shape (BLAS). The first numba call in a fresh install
# compiles the kernel (Numba then caches the machine code on disk, so later runs only load it);
# it is timed separately. Timings are the best of 5 on whatever machine ran this notebook; the
# committed outputs come from two cores shared with other jobs, so read them as orders of
# magnitude. `benchmarks/int8_gemm.py` measures carefully.

# %%
x_gate = captured["layers.5.mlp.gate_proj"]                          # [256, 576] float32
q_xg, _ = w8a8.quantize_rows_int8(x_gate)                             # int8 [256, 576]
q_wg = np.ascontiguousarray(w8a8.quantize_rows_int8(model.weights["layers.5.mlp.gate_proj.weight"])[0].T)


def best_of(f, n=5):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


t0 = time.perf_counter()
c_numba = rq.int8_matmul(q_xg, q_wg, backend="numba")
compile_s = time.perf_counter() - t0
c_numpy = rq.int8_matmul(q_xg, q_wg, backend="numpy")
assert np.array_equal(c_numba, c_numpy)
xf, wf = q_xg.astype(np.float32), q_wg.astype(np.float32)
timings = {"float32 BLAS": best_of(lambda: xf @ wf),
           "int8 numpy": best_of(lambda: rq.int8_matmul(q_xg, q_wg, backend="numpy")),
           "int8 numba": best_of(lambda: rq.int8_matmul(q_xg, q_wg, backend="numba"))}
print(f"numba's first call (compiles the kernel): {compile_s:.1f} s")
print("available backends:", rq.backends())
if "cuda" in rq.backends():                                          # a real GPU
    rq.int8_matmul(q_xg, q_wg, backend="cuda")                       # compile
    assert np.array_equal(rq.int8_matmul(q_xg, q_wg, backend="cuda"), c_numpy)
    timings["int8 cuda"] = best_of(lambda: rq.int8_matmul(q_xg, q_wg, backend="cuda"))
ops = 2 * 256 * 576 * 1536
for k, t in timings.items():
    print(f"{k:14s} {1e3 * t:8.2f} ms   {ops / t / 1e9:7.1f} G ops/s")

fig, ax = plt.subplots(figsize=(6, 2.8))
ax.barh(list(timings), [1e3 * t for t in timings.values()], color=["0.5", "C3", "C0", "C2"][:len(timings)])
ax.set_xscale("log"); ax.set_xlabel("ms (log scale), best of 5")
ax.set_title("256 x 576 x 1536 product", fontsize=9); plt.tight_layout(); plt.show()

# %% [markdown]
# Without a GPU, the CUDA kernel can still be *run*: Numba's CUDA simulator executes every GPU
# thread as Python code. It checks that the kernel is correct, not how fast it is; it is
# thousands of times slower than the real device and slower than NumPy itself. The simulator
# must be switched on before Numba is imported, so it runs in a fresh Python process here, on a
# $32 \times 64 \times 32$ product only.

# %%
sim_code = """
import time, numpy as np, refquant as rq
rng = np.random.default_rng(0)
a = rng.integers(-128, 128, (32, 64), dtype=np.int8)
b = rng.integers(-128, 128, (64, 32), dtype=np.int8)
t0 = time.perf_counter(); c = rq.int8_matmul(a, b, backend="cuda"); t = time.perf_counter() - t0
t1 = time.perf_counter(); ref = rq.int8_matmul(a, b, backend="numpy"); t_np = time.perf_counter() - t1
print(f"simulated CUDA 32x64x32: {t:.2f} s (NumPy: {1e3 * t_np:.3f} ms); equal to NumPy: {np.array_equal(c, ref)}")
"""
if "cuda" in rq.backends():
    print("a real GPU is present: the timing above is the device's")
else:
    out = subprocess.run([sys.executable, "-c", sim_code], capture_output=True, text=True,
                         env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}, timeout=300)
    print(out.stdout.strip() or out.stderr[-2000:])
    assert "equal to NumPy: True" in out.stdout

# %% [markdown]
# ## What to try next
#
# - Call `fixed_point.multiply_by_quantized_multiplier` with `n <= 0` (a multiplier $\ge 1/2$):
#   do the single and gemmlowp roundings still ever differ? (The module docstring says why.)
# - Give `uint8_int8_matmul` a weight zero point (`b_zero=3`) and derive the extra row-sum term
#   by hand, as in section 2.
# - Replace the static ranges of section 5 by MSE-calibrated ones (`rq.calibrate(x5,
#   rq.QuantSpec(bits=8, symmetric=False), method="mse")`) and pass them to `quantize_linear`.
# - Time a decoding step ($M = 1$ token) with `rq.w4_matmul`, the 4-bit weight-only kernel, and
#   compare with a float32 GEMV. The full measurements are scripts: `python
#   benchmarks/int8_gemm.py` and `python benchmarks/w4_gemv.py` on the CPU, and
#   `bash scripts/device_check.sh` runs the CUDA tests and `benchmarks/gpu_kernels.py` on a real
#   device.
# - Run the whole model in W8A8: `rq.perplexity(model, tokens, linear=w8a8.w8a8_linear(model))`,
#   or `python benchmarks/w8a8_perplexity.py`.
