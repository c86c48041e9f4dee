# %% [markdown]
# # 12 · The whole Llama in integer arithmetic
#
# Notebook 08 built the integer core: int8 products summed in int32 and one fixed-point multiply
# per output. A Llama also runs RMSNorm, rotary embeddings, a softmax, SiLU and residual adds,
# and a W8A8 model still does all of them in floating point. This notebook replaces each with an
# integer op, measures what each costs against its float function, and then runs the bundled
# SmolLM2-135M from the token ids to int32 logits without a single float.
#
# **You will learn**
#
# - I-BERT's integer exponential (a shift and a second-order polynomial) and the softmax built on
#   it, with a causal mask and 8-bit probabilities;
# - the integer square root by Newton's method, and why RMSNorm's division only enters the
#   *scale* of a per-token int8 output, never its codes;
# - RoPE with fixed-point tables, SiLU through the integer exponential;
# - how a *dynamic* per-token scale lives in integer arithmetic (an integer row factor times a
#   static base) and how it reaches the next layer's fixed-point multiplier;
# - what the integer model's perplexity is against the float and the simulated W8A8 ones, and
#   which op dominates the gap (an ablation).
#
# **You should know first:** notebook 08 (int32 accumulation, fixed-point multipliers).
#
# **Sizes used here:** each op on synthetic inputs over its input range (a few 10^5 values); the
# integer forward pass on the first 2 blocks of the model for the live part; the perplexity and
# ablation tables are read from `scripts/integer_llama_results.json`, written by
# `python scripts/integer_llama_quality.py` (the token counts are in the file).
#
# References: I-BERT (Kim et al., ICML 2021, arXiv:2101.01321), I-LLM (Hu et al. 2024,
# arXiv:2405.17849), Jacob et al. (CVPR 2018, arXiv:1712.05877).

# %%
import dataclasses
import json
import math
import pathlib

import matplotlib.pyplot as plt
import numpy as np

import refquant as rq
from refquant.integer.ops_act import i_silu
from refquant.integer.ops_exp import A, exp_one, i_exp, i_softmax, causal_mask
from refquant.integer.ops_norm import P, i_rms_norm, isqrt
from refquant.integer.ops_rope import i_rope, rope_table_fixed
from refquant.integer.requant import dynamic_int8
from refquant.models import llama
from refquant.models.llama_int import forward_int, logits_to_float
from refquant.models.llama_int_prepare import prepare_integer
from refquant.pipeline import data
from refquant.pipeline.evaluate import token_nll

np.set_printoptions(linewidth=110)
rng = np.random.default_rng(0)
F = 16                                     # every int32 activation has the scale 2^-16
errors = {}                                # the per-op error table, filled section by section

# %% [markdown]
# ## 1. The integer exponential (i-exp)
#
# A softmax needs $e^x$ only for $x \le 0$ (after subtracting the row maximum). Write
# $x = -z \ln 2 + r$ with $z = \lfloor -x / \ln 2 \rfloor$ and $r \in (-\ln 2, 0]$; then
# $e^x = 2^{-z} e^r$, and on that short interval I-BERT fits
#
# $$ e^r \approx a (r + b)^2 + c, \qquad a = 0.3585,\ b = 1.353,\ c = 0.344 . $$
#
# On integer codes $q = x / S$ ($S = 2^{-16}$) every constant becomes an integer once:
# $q_{\ln 2} = \lfloor \ln 2 / S \rfloor$, $q_b = \lfloor b / S\rfloor$, $q_c = \lfloor c / (a S^2)
# \rfloor$; the result $((q_r + q_b)^2 + q_c) \gg z$ has the scale $a S^2$. refquant keeps the
# constants as Q40 integer literals, so nothing but integers is touched at run time.
# (I-LLM's DI-Exp uses shifts for $\log_2 e$ and a straight line for $2^{frac}$, with about
# 6 % error; the polynomial costs one multiply more and is 20 times closer.)

# %%
q = np.arange(-10 * 2**F, 1, 5)
e_int = i_exp(q, F)
x = q / 2**F
e_hat = e_int * (A * 2.0 ** (-2 * F))
err = np.abs(e_hat - np.exp(x))
errors["i-exp (abs. error, x in [-10, 0])"] = err.max()
print("codes of exp(0), exp(-1):", e_int[-1], e_int[np.argmin(np.abs(x + 1))], " one =", exp_one(F))
print(f"worst absolute error {err.max():.2e}, worst relative error where exp > 1e-3: "
      f"{(err / np.exp(x))[np.exp(x) > 1e-3].max():.2e}")
fig, ax = plt.subplots(1, 2, figsize=(10, 3.2))
ax[0].plot(x, np.exp(x), label="exp(x)")
ax[0].plot(x, e_hat, "--", label="i-exp")
ax[0].set_xlabel("x"); ax[0].legend()
ax[1].plot(x, e_hat - np.exp(x))
ax[1].set_xlabel("x"); ax[1].set_title("i-exp - exp: one arc per interval of ln 2")
plt.tight_layout(); plt.show()

# %% [markdown]
# ### Exercise — one i-exp by hand
#
# For $x = -1.5$ at $F = 16$ ($q = -1.5 \cdot 2^{16}$), compute with Python integers only:
# $q_{\ln 2} = \lfloor \ln 2 \cdot 2^{16} \rfloor$ (use `LN2_Q40 >> 24`), $z = \lfloor -q /
# q_{\ln 2} \rfloor$, $q_r = q + z\, q_{\ln 2}$, $q_b$ = `B_Q40 >> 24`, $q_c$ = `C_OVER_A_Q40 >> 8`
# and the result $((q_r + q_b)^2 + q_c) \gg z$. The next cell checks it against `i_exp`.

# %%
from refquant.integer.ops_exp import B_Q40, C_OVER_A_Q40, LN2_Q40
# --- your answer (a working answer is shipped) ---
q1 = -3 * 2**15
q_ln2 = LN2_Q40 >> 24
z1 = (-q1) // q_ln2
q_r = q1 + z1 * q_ln2
my_exp = ((q_r + (B_Q40 >> 24)) ** 2 + (C_OVER_A_Q40 >> 8)) >> z1

# %%
ref_exp = int(i_exp(np.array([q1]), F)[0])
if my_exp == ref_exp:
    print(f"correct: {my_exp}, i.e. {my_exp / exp_one(F):.5f} against exp(-1.5) = {np.exp(-1.5):.5f}")
else:
    print(f"not yet: you have {my_exp}, i_exp gives {ref_exp} (z = {(-q1) // q_ln2}?)")

# %% [markdown]
# The error repeats on every interval of length $\ln 2$, halved each time (the shift by $z$):
# the polynomial's own error on $(-\ln 2, 0]$ is all there is.
#
# ## 2. The integer softmax
#
# $p_{ts} = \mathrm{round}(255\, e_{ts} / \sum_{s'} e_{ts'})$ with masked positions set to 0
# before the sum: uint8 probabilities of scale $1/255$, the division done once per row as a
# fixed-point reciprocal. A common factor in the exponentials cancels; only their spread moves
# $p$, so the worst error stays near half a code.

# %%
T, S = 48, 48
z = rng.normal(0, 3, (64, T, S))
zq = np.rint(z * 2**F).astype(np.int64)
valid = causal_mask(T, S, 0)
p = i_softmax(zq, F, valid)
s = np.where(valid, z, -np.inf)
ref = np.exp(s - s.max(-1, keepdims=True)); ref /= ref.sum(-1, keepdims=True)
err_p = np.abs(p - 255 * ref)
errors["softmax (codes of 1/255)"] = err_p.max()
print(f"worst error {err_p.max():.3f} codes of 1/255; rows sum to {p.sum(-1).min()}..{p.sum(-1).max()}")
print("masked entries all zero:", bool(np.all(p[:, ~valid] == 0)))
plt.figure(figsize=(5, 3))
plt.hist((p - 255 * ref)[:, valid].ravel(), bins=60)
plt.xlabel("integer softmax - 255 softmax (codes)"); plt.show()

# %% [markdown]
# ## 3. The integer square root and RMSNorm
#
# Newton's iteration on integers, $x_{k+1} = \lfloor (x_k + \lfloor n / x_k \rfloor) / 2
# \rfloor$ from $x_0 = 2^{\lceil \mathrm{bitlen}(n)/2 \rceil}$, decreases until it reaches
# $\lfloor\sqrt n\rfloor$ exactly:

# %%
n = rng.integers(0, 2**62, 100_000)
r = isqrt(n)
print("isqrt equals math.isqrt on the first 2000:",
      all(int(a) == math.isqrt(int(b)) for a, b in zip(r[:2000], n[:2000])),
      "(tests/test_int_ops.py checks edges and squares +-1)")
print("floor property r^2 <= n < (r+1)^2 on all:",
      bool(np.all((r.astype(object) ** 2 <= n.astype(object)) & ((r.astype(object) + 1) ** 2 > n.astype(object)))))

# %% [markdown]
# RMSNorm $y = x g / \sqrt{\mathrm{mean}(x^2) + \epsilon}$ feeds a linear layer, which wants
# per-token int8 codes $q = \mathrm{round}(127\, y / \max|y|)$. The norm's divisor is the same
# for a whole row, so it cancels from the codes: $q$ comes from $x g$ alone, and $\sqrt{\cdot}$
# only enters the row's scale, $u_t = \lfloor \max|x g| \, 2^{16} / \mathrm{isqrt}(\dots)
# \rfloor$ (times a static base). The row is first shifted so that its maximum has 24 bits,
# which bounds the sum of squares by $d \cdot 2^{48} < 2^{62}$.

# %%
d = 576
xr = (rng.standard_normal((400, d)) * np.exp(rng.uniform(-2, 6, (400, 1))) * 2**F).astype(np.int32)
g = rng.uniform(0.5, 3, d); s_g = np.abs(g).max() / 32767; g_q = np.rint(g / s_g).astype(np.int64)
E = round(1e-5 / 2.0**(-2 * F))
q8, u = i_rms_norm(xr, g_q, E)
xf = xr / 2**F
y = xf * (g_q * s_g) / np.sqrt((xf**2).mean(-1, keepdims=True) + 1e-5)
m = np.abs(y).max(-1)
errors["RMSNorm codes (LSB of int8)"] = np.abs(q8 - 127 * y / m[:, None]).max()
errors["RMSNorm row scale (relative)"] = (np.abs(u * s_g / 2**P - m) / m).max()
print(f"codes: worst {errors['RMSNorm codes (LSB of int8)']:.3f} LSB; row scales: worst relative "
      f"error {errors['RMSNorm row scale (relative)']:.1e}")

# %% [markdown]
# ## 4. RoPE and SiLU
#
# RoPE's tables are the one float step: $\cos\phi$ and $\sin\phi$ computed once in float64 and
# rounded to Q30 integers; the rotation is then two int64 products and a rounding shift.
# SiLU is $g\,\sigma(g)$ with $\sigma(g) = 1/(1 + e^{-|g|})$ (or $e^{-|g|}/(1 + e^{-|g|})$ for
# $g < 0$) through the same integer exponential, in Q20.

# %%
cos, sin = llama.rope_tables(0, 512, 64, 10000.0)
c, s_ = rope_table_fixed(cos, sin)
xq = rng.integers(-2**24, 2**24, (512, 64)).astype(np.int32)
yr = i_rope(xq, c, s_)
x1, x2 = xq[:, :32].astype(float), xq[:, 32:].astype(float)
ref = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], 1)
errors["RoPE (LSB of 2^-16)"] = np.abs(yr - ref).max()
gq = np.arange(-12 * 2**F, 12 * 2**F, 3)
gf = gq / 2**F
silu = gf / (1 + np.exp(-gf))
errors["SiLU (LSB of 2^-16)"] = np.abs(i_silu(gq, F) - silu * 2**F).max()
print(f"RoPE worst {errors['RoPE (LSB of 2^-16)']:.2f} LSB (against the float model's own angles); "
      f"SiLU worst {errors['SiLU (LSB of 2^-16)']:.1f} LSB")
fig, ax = plt.subplots(1, 2, figsize=(10, 3.2))
ax[0].plot(gf, silu, label="SiLU"); ax[0].plot(gf, i_silu(gq, F) / 2**F, "--", label="integer SiLU")
ax[0].legend(); ax[0].set_xlabel("g")
ax[1].plot(gf, (i_silu(gq, F) - silu * 2**F)); ax[1].set_xlabel("g"); ax[1].set_title("error (LSB of 2^-16)")
plt.tight_layout(); plt.show()

# %% [markdown]
# ## 5. A dynamic scale in integers
#
# Per-token activations take $u_t = \max_k |x_{tk}|$ and $q = \mathrm{round}(127 x / u_t)$, the
# division one fixed-point reciprocal $R_t = \mathrm{round}(127 \cdot 2^{55} / u_t)$ per row. The
# real scale of row $t$ is $\beta u_t$ with a static $\beta$ ($S_x / 127$); after the int8 matmul
# the accumulator is brought to the output scale by $acc \cdot u_t \cdot M_n$, $M_n = \beta
# s_{w,n} / S_y$ fixed once: $u_t$ is cut to a 15-bit mantissa and a shift, and the product is
# exact in int64.

# %%
xd = rng.integers(-2**30, 2**30, (4, 8))
qd, ud = dynamic_int8(xd)
print("row maxima u:", ud.tolist())
print("codes of row 0:", qd[0].tolist())
print("127 x / u      :", np.round(127 * xd[0] / ud[0], 2).tolist())

# %% [markdown]
# ## 6. The per-op error table

# %%
for name, v in errors.items():
    print(f"{name:<38} {v:.3g}")

# %% [markdown]
# ## 7. The integer forward pass, live on two blocks
#
# `prepare_integer` is the offline step: int8 weights per output channel, the embedding table
# int8 per row (also the tied head), the K/V cache scales calibrated on the calibration split,
# every ratio of scales turned into a fixed-point multiplier. `forward_int` then computes the
# int32 logits; `logits_to_float` is the only float step, for the probabilities. The full model
# is proved integer-only in `tests/test_llama_int.py` (every local of every frame inside the
# pass is traced); here the first two blocks keep the cell fast.

# %%
model = rq.load_model()
small = dataclasses.replace(model, config=dataclasses.replace(model.config, n_layers=2))
calib = data.calibration_tokens(model.tokenizer, 256)
im = prepare_integer(small, calib, seq_len=128)
text = data.evaluation_tokens(model.tokenizer, 128)[None, :]
logits_i = forward_int(im, text)
print("integer logits:", logits_i.dtype, logits_i.shape)
lf = llama.forward(small, text)[0]
li = logits_to_float(logits_i)[0]
print(f"2-block model, 127 next tokens: NLL float {token_nll(lf[:-1], text[0, 1:]).mean():.4f}, "
      f"integer {token_nll(li[:-1], text[0, 1:]).mean():.4f}; argmax agreement "
      f"{np.mean(lf.argmax(-1) == li.argmax(-1)):.3f}")

# %% [markdown]
# ## 8. Perplexity of the whole model, and the ablation
#
# From `scripts/integer_llama_results.json` (`python scripts/integer_llama_quality.py --rows ...`;
# each row records its token count, calibration tokens and the machine). `abl_<op>` is the
# integer model with that one op computed in float64 (the same integer formats in and out).

# %%
res = json.loads((pathlib.Path("..") / "scripts" / "integer_llama_results.json").read_text())
base = res.get("w8a8_sim", {}).get("ppl")
print(f"{'row':<16} {'ppl':>8} {'vs W8A8 sim':>12} {'tokens':>7}")
for row in ["float", "w8a8_sim", "int_dynamic", "int_static", "int_w4_gptq", "w4_gptq_float"] + \
        sorted(k for k in res if k.startswith("abl_")):
    if row in res:
        r = res[row]
        rel = f"{100 * (r['ppl'] / base - 1):+.2f} %" if base else ""
        print(f"{row:<16} {r['ppl']:8.3f} {rel:>12} {r['n_tokens']:>7}")
    else:
        print(f"{row:<16} (not measured)")

# %% [markdown]
# ## What to try next
#
# - Raise the probability precision: change `P_MAX` in `refquant.integer.ops_exp` to a 16-bit
#   code (what must change in the $p\,v$ product's bound?).
# - Swap two ops to float at once (`float_ops=("softmax", "rms_norm")`) on the two-block model.
# - Run `refquant eval --integer-only` and `refquant generate --integer-only "The capital of
#   France is"`; `python benchmarks/integer_llama.py` for tokens/s against the float model.
