# %% [markdown]
# # 04 · Calibration for post-training quantization
#
# A weight matrix is known before the model runs, so its range can be read off exactly. An
# activation is not: it depends on the input. Post-training quantization (PTQ) of activations
# therefore runs the float model on a little *calibration* text, watches what flows into each
# layer, and fixes a clipping range once. This notebook compares the four ways refquant offers to
# pick that range, first on a tensor you can print, then on the activations of the bundled
# SmolLM2-135M reading real Wikipedia text.
#
# **You will learn**
#
# - why every clipping range trades rounding error against clipping error, and how to draw it;
# - the four observers: min-max, percentile, MSE search and KL (entropy) calibration;
# - how to capture a real model's activations through the forward pass's pluggable `linear`;
# - what each observer does to the error of one tensor, of a layer's output, and of the whole
#   model's perplexity;
# - why the *massive activations* of a language model make one static scale per tensor so hard.
#
# **You should know first:** notebook 01 (scale, zero point, the $s/2$ round-trip bound).
#
# **Sizes used here** (so that the notebook runs in about a minute and a half on two cores):
# calibration on `N_CAL = 256` tokens, the model-level comparison on `N_EVAL = 256` held-out
# evaluation tokens (one window). Both are variables in the cells below; the issue-sized
# evaluation (16k tokens in windows of 512) takes several minutes per observer on two cores.
#
# ## The equation
#
# Calibration chooses a clipping range $[lo, hi]$ (symmetric: $[-a, a]$). With $b$-bit codes the
# range sets the step and the zero point,
#
# $$ s = \frac{hi - lo}{2^b - 1},\quad z = \mathrm{round}\!\left(-\frac{lo}{s}\right) \qquad
# \text{or, symmetric,} \qquad s = \frac{a}{2^{b-1} - 1},\quad z = 0, $$
#
# and the quantizer is $\hat x = s\,(\mathrm{clamp}(\mathrm{round}(x/s) + z, q_{min}, q_{max}) - z)$.
# For a symmetric range the squared error splits into two parts:
#
# $$ \sum_i (x_i - \hat x_i)^2 \;=\; \underbrace{\sum_{|x_i| \le a} (x_i - \hat x_i)^2}_{\text{rounding}
#    \;\approx\; N_{in}\, s^2/12} \;+\; \underbrace{\sum_{|x_i| > a} (|x_i| - a)^2}_{\text{clipping}} .$$
#
# A wide range ($a = \max|x|$, *min-max*) has no clipping error but a coarse step; a narrow one
# has a fine step but clips the outliers. The observers differ in how they settle this:
#
# | method | rule | reference |
# |---|---|---|
# | `minmax` | $a = \max|x|$ | Jacob et al. 2018 (arXiv:1712.05877) |
# | `percentile` | $a = P_{p}(|x|)$, default $p = 99.99$ | Nagel et al. 2021 (arXiv:2106.08295), sec. 3.2 |
# | `mse` | $a = \alpha^* \max|x|$, $\alpha^* = \arg\min_\alpha \lVert x - Q_\alpha(x)\rVert^2$ | Nagel et al. 2021, sec. 3.2 |
# | `kl` | the window of a 2048-bin histogram minimizing $D_{KL}(P \Vert Q)$ | Migacz 2017 (TensorRT, GTC) |

# %%
import numpy as np
import matplotlib.pyplot as plt
import refquant as rq
from refquant.calibration import entropy
from refquant.models import llama
from refquant.pipeline import data

np.set_printoptions(precision=3, suppress=True, linewidth=110)
METHODS = ("minmax", "percentile", "mse", "kl")
OBSERVER = {"minmax": rq.MinMaxObserver, "percentile": rq.PercentileObserver,
            "mse": rq.MSEObserver, "kl": rq.KLObserver}


def mse(x, x_hat):
    """Mean squared error in float64."""
    return float(np.mean((np.asarray(x, np.float64) - x_hat) ** 2))


# %% [markdown]
# ## 1. A tensor you can print: 999 ordinary values and one outlier
#
# Take 4-bit symmetric codes ($q_{max} = 7$) and a tensor whose values are standard normal except
# for one outlier at 20. Every observer returns `QParams`; the threshold is $a = s\,q_{max}$.

# %%
rng = np.random.default_rng(0)
x = np.concatenate([rng.standard_normal(999), [20.0]]).astype(np.float32)
spec4 = rq.QuantSpec(bits=4, symmetric=True)

toy = {}
for method in METHODS:
    qp = rq.calibrate(x, spec4, method=method)
    x_hat = rq.fake_quantize(x, spec4, qparams=qp)
    a = float(qp.scale) * spec4.qmax
    toy[method] = a
    print(f"{method:10s}  a = {a:6.3f}   step s = {float(qp.scale):.3f}   MSE = {mse(x, x_hat):.4f}"
          f"   outlier -> {x_hat[-1]:6.3f}")

q = rq.quantize(x, rq.calibrate(x, spec4, method="minmax"), spec4)
print("\nmin-max codes of the first 12 values:", q[:12])
print("share of the 999 ordinary values that min-max rounds to 0:", np.mean(q[:-1] == 0))

# %% [markdown]
# With min-max the step is $20/7 \approx 2.9$, so almost every ordinary value rounds to code 0:
# the one outlier has bought its exact representation with the information of everyone else.
# The MSE and KL observers clip it (its error is then $(20 - a)^2$, paid once) and give the 999
# others a finer grid. The percentile rule barely moves: with 1000 values, the 99.99th
# percentile interpolates between the two largest, so it still lies close to the outlier.
#
# The picture behind the choice: sweep the threshold $a$ and measure both parts of the error with
# `rq.qparams_from_range(-a, a, spec)` (the same formula every observer ends with).

# %%
a_grid = np.linspace(0.5, 20.0, 400)
rounding, clipping = [], []
inside = np.abs(x.astype(np.float64))[None, :] <= a_grid[:, None]       # [400, 1000]
for a, keep in zip(a_grid, inside):
    x_hat = rq.fake_quantize(x, spec4, qparams=rq.qparams_from_range(-a, a, spec4))
    e = (x.astype(np.float64) - x_hat) ** 2
    rounding.append(e[keep].sum() / x.size)
    clipping.append(e[~keep].sum() / x.size)
rounding, clipping = np.array(rounding), np.array(clipping)

fig, ax = plt.subplots(figsize=(7, 3.4))
ax.plot(a_grid, rounding, label="rounding (|x| <= a)")
ax.plot(a_grid, clipping, label="clipping (|x| > a)")
ax.plot(a_grid, rounding + clipping, "k", lw=2, label="total")
for method, c in zip(METHODS, ("C3", "C4", "C5", "C6")):
    ax.axvline(toy[method], color=c, ls="--", label=f"{method}: a = {toy[method]:.2f}")
ax.set_xlabel("threshold a"); ax.set_ylabel("mean squared error"); ax.set_yscale("log")
ax.set_title("4-bit symmetric: the error of every threshold")
ax.legend(fontsize=7, ncol=2); plt.tight_layout(); plt.show()

# %% [markdown]
# The total error has a clear minimum; the MSE observer finds it (on its grid of 100 shrink
# factors), min-max sits at the far right end of the curve. The percentile and KL rules do not
# look at this curve at all: they land wherever their own criterion puts them.

# %% [markdown]
# ## 2. Observers see data in batches
#
# Calibration data arrives one batch at a time. An observer is updated with each batch and asked
# for its range at the end; the result does not depend on how the data was split (percentile, MSE
# and KL keep every batch so that their answer is exact, min-max keeps two numbers).

# %%
obs = rq.PercentileObserver(spec4, percentile=99.0)
for batch in np.split(x, 4):
    obs.update(batch)
lo, hi = obs.clip_range()
print("range from 4 batches:", float(lo), float(hi))
print("range from one batch:", [float(v) for v in rq.PercentileObserver(spec4, 99.0).update(x).clip_range()])

# %% [markdown]
# ### Exercise 1 — the percentile scale by hand
#
# For 8-bit symmetric codes, compute the scale that the percentile observer with $p = 99.9$
# chooses for `x`: the threshold is the $p$-th percentile of $|x|$ (NumPy's linear
# interpolation), and $s = a / q_{max}$. Edit `my_scale` below; the next cell checks it against
# refquant.

# %%
spec8 = rq.QuantSpec(bits=8, symmetric=True)
# --- your answer (a working answer is shipped) ---
a = np.percentile(np.abs(x.astype(np.float64)), 99.9)
my_scale = a / spec8.qmax

# %%
ref = float(rq.calibrate(x, spec8, method="percentile", percentile=99.9).scale)   # float32 scale
if np.isclose(my_scale, ref, rtol=1e-6, atol=0):
    print(f"correct: s = {ref:.6f}")
else:
    print(f"not yet: you have s = {my_scale:.6f}, refquant has s = {ref:.6f} "
          f"(ratio {my_scale / ref:.4f}; did you take |x|, and divide by q_max = {spec8.qmax}?)")

# %% [markdown]
# ## 3. Real activations, captured through the pluggable linear
#
# The Llama forward pass (`refquant.models.llama.forward`) sends every projection through a
# function `linear(name, x)`. Wrapping the default one lets us record the input of each of the
# 210 linear layers (7 per block x 30 blocks) while the model reads 256 tokens of calibration
# text. `q_proj`, `k_proj` and `v_proj` see the same input, as do `gate_proj` and `up_proj`, so
# there are 120 distinct tensors.

# %%
model = rq.load_model()
N_CAL, N_EVAL = 256, 256
cal_tokens = data.calibration_tokens(model.tokenizer, N_CAL)
print(model.tokenizer.decode(cal_tokens[:60].tolist()), "...")

float_linear = llama.default_linear(model)
acts = {}


def recording_linear(name, x):
    """The float linear layer, remembering its input [tokens, in] the first time it is called."""
    acts.setdefault(name, x.reshape(-1, x.shape[-1]).copy())
    return float_linear(name, x)


llama.forward(model, cal_tokens[None, :], linear=recording_linear)
SHARED = {"self_attn.k_proj": "self_attn.q_proj", "self_attn.v_proj": "self_attn.q_proj",
          "mlp.up_proj": "mlp.gate_proj"}


def source(name):
    """The layer whose input ``name`` shares (k and v read q's input, up reads gate's)."""
    for suffix, other in SHARED.items():
        if name.endswith(suffix):
            return name[: -len(suffix)] + other
    return name


distinct = sorted({source(n) for n in acts})
print(len(acts), "linear layers,", len(distinct), "distinct inputs;",
      "e.g. layers.5.mlp.down_proj input:", acts["layers.5.mlp.down_proj"].shape)

# %% [markdown]
# How large do the inputs get? The largest $|x|$ of each input, block by block:

# %%
kinds = ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj")
fig, ax = plt.subplots(figsize=(7, 3.2))
for kind in kinds:
    ax.plot([np.abs(acts[f"layers.{i}.{kind}"]).max() for i in range(30)], "o-", ms=3,
            label=f"input of {kind}")
ax.set_yscale("log"); ax.set_xlabel("block"); ax.set_ylabel("max |x|")
ax.set_title("largest activation entering each linear layer (256 tokens)")
ax.legend(fontsize=7); plt.tight_layout(); plt.show()

x11 = acts["layers.11.mlp.down_proj"]
t, c = np.unravel_index(np.abs(x11).argmax(), x11.shape)
print(f"layers.11.mlp.down_proj: max |x| = {np.abs(x11).max():.0f} at token {t} "
      f"({model.tokenizer.decode([int(cal_tokens[t])])!r}), channel {c}; "
      f"99.9th percentile of |x|: {np.percentile(np.abs(x11), 99.9):.2f}")

# %% [markdown]
# Most inputs stay below 10, but the inputs of a few `down_proj` layers reach the thousands. Those
# values sit in a handful of channels of the *first token* of the window: the "massive
# activations" that large language models use as a fixed bias (Sun et al., *Massive Activations
# in Large Language Models*, arXiv:2402.17762). They are rare, and they matter.

# %% [markdown]
# ## 4. Four observers on two real tensors
#
# Two inputs, 8-bit symmetric, one scale per tensor (the usual static setting for activations):
#
# - `layers.5.mlp.down_proj`: heavy-tailed, largest value about 9;
# - `layers.11.mlp.down_proj`: the massive activation, about 3000 at token 0.
#
# For each observer we measure the error of the tensor itself and the relative error of the
# layer's output $y = x W^\top$ when $x$ is replaced by $\hat x$, separately for token 0 and the
# other 255 tokens. For block 5 we also capture *held-out* activations from evaluation text, to
# see whether a range fitted on calibration text still fits new text.

# %%
ev_tokens = data.evaluation_tokens(model.tokenizer, max(N_EVAL, 256))
held_out = {}


def recording_block5(name, x):
    if name == "layers.5.mlp.down_proj":
        held_out[name] = x.reshape(-1, x.shape[-1]).copy()
    return float_linear(name, x)


h = llama.embed(model, ev_tokens[None, :256])
for i in range(6):                                   # blocks 0..5 are enough for this input
    h = llama.block(model, i, h, linear=recording_block5 if i == 5 else float_linear)


def out_error(name, x, x_hat, rows):
    """Relative error ||(x_hat - x) W^T||^2 / ||x W^T||^2 of the layer output over ``rows``."""
    W = model.weights[name + ".weight"].astype(np.float64)
    y, y_hat = x[rows] @ W.T, x_hat[rows] @ W.T
    return float(np.sum((y_hat - y) ** 2) / np.sum(y ** 2))


observers = {}
print(f"{'tensor':24s} {'method':10s} {'a':>9s} {'MSE(x)':>10s} {'out err t0':>11s} "
      f"{'out err rest':>12s} {'held-out MSE':>12s}")
for name in ("layers.5.mlp.down_proj", "layers.11.mlp.down_proj"):
    xv = acts[name]
    for method in METHODS:
        o = OBSERVER[method](spec8).update(xv)
        observers[name, method] = o
        qp = o.qparams()
        x_hat = rq.fake_quantize(xv, spec8, qparams=qp)
        row = (f"{name:24s} {method:10s} {float(qp.scale) * 127:9.3f} {mse(xv, x_hat):10.3e} "
               f"{out_error(name, xv, x_hat, [0]):11.2e} {out_error(name, xv, x_hat, slice(1, None)):12.2e}")
        if name in held_out:
            xe = held_out[name]
            row += f" {mse(xe, rq.fake_quantize(xe, spec8, qparams=qp)):12.3e}"
        print(row)

for name in ("layers.5.mlp.down_proj", "layers.11.mlp.down_proj"):     # MSE is never worse than min-max
    assert mse(acts[name], rq.fake_quantize(acts[name], spec8, qparams=observers[name, "mse"].qparams())) \
        <= mse(acts[name], rq.fake_quantize(acts[name], spec8, qparams=observers[name, "minmax"].qparams()))

# %% [markdown]
# Read the table row by row:
#
# - **Block 5.** The MSE search shrinks the range to about half of min-max ($\alpha^* \approx 0.5$)
#   and halves the error of the tensor and of the output of the ordinary tokens; the range it
#   chose on calibration text is just as good on held-out text. The percentile rule clips harder,
#   KL harder still: KL minimizes a divergence between histograms, not the squared error, and
#   lands on a threshold that clips values that matter to the output.
# - **Block 11.** No single range serves both kinds of tokens. Min-max (and the MSE search, which
#   finds that clipping 3000 down costs more than anything else) keep token 0 exact, but with a
#   step of $3052/127 \approx 24$ every ordinary token rounds to zero: the output error of the
#   other 255 tokens is 100 %. Percentile keeps the ordinary tokens and destroys token 0. KL
#   cannot pick a window narrower than 128 of its 2048 bins, $a \ge 3052 \cdot 128/2048 \approx
#   190$: it clips token 0 *and* is still too coarse for the rest.
#
# The histograms of $|x|$ with the four thresholds:

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.3))
for ax, name in zip(axes, ("layers.5.mlp.down_proj", "layers.11.mlp.down_proj")):
    v = np.abs(acts[name]).ravel()
    bins = np.geomspace(1e-4, v.max() * 1.1, 120)
    ax.hist(v, bins=bins, color="0.6")
    for method, c in zip(METHODS, ("C3", "C4", "C5", "C6")):
        a = float(observers[name, method].qparams().scale) * 127
        ax.axvline(a, color=c, ls="--", label=f"{method} a={a:.3g}")
    ax.set_xscale("log"); ax.set_yscale("log"); ax.set_xlabel("|x|"); ax.set_ylabel("count")
    ax.set_title(f"input of {name}", fontsize=9); ax.legend(fontsize=7)
plt.tight_layout(); plt.show()

# %% [markdown]
# ## 5. Inside the KL search
#
# TensorRT's entropy calibration (Migacz 2017) histograms $|x|$ into $B = 2048$ bins over
# $[0, \max|x|]$. For every candidate window of the first $t$ bins, $t = 128, \dots, 2048$
# ($128 = q_{max} + 1$ levels for 8-bit symmetric codes):
#
# 1. $P$ is the window's histogram with all counts beyond it folded into its last bin (the clipped
#    values land on $a$);
# 2. $Q$ merges the window's own counts into 128 chunks, one per quantization level, and spreads
#    each chunk back evenly over its nonzero bins (what the histogram would look like after
#    quantization);
# 3. the window with the smallest $D_{KL}(P \Vert Q) = \sum_k P_k \log(P_k / Q_k)$ wins; $a = t
#    \cdot \max|x| / B$.
#
# The pieces are public in `refquant.calibration.entropy`: `histograms` builds the counts, and
# `kl_window_prefix` the divergence of one window (from prefix sums, in $O(128)$). Below we
# evaluate every window of the block-5 input and check that the curve's minimum is the window the
# `KLObserver` chose.

# %%
name = "layers.5.mlp.down_proj"
v = np.abs(acts[name].astype(np.float64)).ravel()[None, :]            # one group: [1, m]
B, L = 2048, spec8.qmax + 1
counts, width = entropy.histograms(v, np.zeros(1), v.max(axis=1), B)  # [1, B], [1]
sums = entropy.prefix_sums(counts)
start = np.zeros(1, np.int64)
ts = np.arange(L, B + 1)
kl = np.array([entropy.kl_window_prefix(counts, sums, start, int(t), L, 1e-4)[0] for t in ts])
kl_obs = observers[name, "kl"]
t_best = ts[::-1][np.argmin(kl[::-1])]            # the smallest divergence, the widest on ties
print(f"curve minimum at t = {t_best} bins (a = {t_best * width[0]:.3f}); "
      f"KLObserver chose t = {int(kl_obs.n_bins)} (a = {float(kl_obs.clip_range()[1]):.3f}), "
      f"KL = {float(kl_obs.kl):.4f}")
assert t_best == int(kl_obs.n_bins)

edges = np.arange(B + 1) * width[0]
fig, ax = plt.subplots(1, 2, figsize=(10, 3.3))
ax[0].stairs(counts[0], edges, fill=True, color="0.6")
ax[0].axvline(t_best * width[0], color="C6", ls="--", label=f"KL threshold a={t_best * width[0]:.2f}")
ax[0].axvline(float(observers[name, "mse"].clip_range()[1]), color="C5", ls="--", label="MSE threshold")
ax[0].set_yscale("log"); ax[0].set_xlabel("|x|"); ax[0].set_ylabel("count per bin")
ax[0].set_title("the 2048-bin histogram the search sees", fontsize=9); ax[0].legend(fontsize=7)
ax[1].plot(ts * width[0], kl)
ax[1].axvline(t_best * width[0], color="C6", ls="--")
ax[1].set_xlabel("threshold a = t * bin width"); ax[1].set_ylabel("KL(P || Q)"); ax[1].set_yscale("log")
ax[1].set_title("divergence of every candidate window", fontsize=9)
plt.tight_layout(); plt.show()

# %% [markdown]
# The divergence is high for the narrowest windows (they fold much of the histogram into their
# last bin), falls, noisily, to its minimum, and then rises in steps as wider windows spread the
# 128 levels over more and more empty tail. Its minimum is a statement about the *shape* of the
# distribution; the rare large values in the tail weigh little in it, though they weigh a lot in
# the output of the layer (section 4).

# %% [markdown]
# ## 6. The whole model: 8-bit activations, four calibrations
#
# Now fake-quantize the input of every linear layer of the model (weights stay float): 8-bit
# symmetric, one static scale per input tensor, calibrated on the 256 calibration tokens with
# each observer, and measure perplexity on `N_EVAL` = 256 held-out evaluation tokens (one
# window: a small sample, but the differences below are far larger than its noise).
# The quantized model is just another `linear`: it quantizes `x` with the calibrated
# parameters, then calls the float layer.

# %%
def act_quant_linear(qparams):
    """A ``linear(name, x)`` that fake-quantizes ``x`` with ``qparams[source(name)]``."""
    def linear(name, x):
        return float_linear(name, rq.fake_quantize(x, spec8, qparams=qparams[source(name)]))
    return linear


ev = ev_tokens[:N_EVAL]
ppl = {"float": rq.perplexity(model, ev, seq_len=256).ppl}
for method in METHODS:
    qps = {n: rq.calibrate(acts[n], spec8, method=method) for n in distinct}
    ppl[method] = rq.perplexity(model, ev, seq_len=256, linear=act_quant_linear(qps)).ppl
for k, p in ppl.items():
    print(f"{k:10s} perplexity {p:9.2f}")

fig, ax = plt.subplots(figsize=(6, 3))
ax.bar(list(ppl), list(ppl.values()), color=["0.5", "C3", "C4", "C5", "C6"])
ax.set_yscale("log"); ax.set_ylabel("perplexity (log scale)")
ax.set_title("A8 per-tensor static activations, float weights")
plt.tight_layout(); plt.show()

# %% [markdown]
# Clipping the massive activations (percentile, KL) breaks the model; keeping them (min-max, MSE)
# costs resolution everywhere else, and even the best static per-tensor calibration leaves the
# perplexity far above the float model's. This is why LLM inference quantizes activations per
# token and on the fly (`refquant.integer.w8a8`, the LLM.int8() baseline, Dettmers et al. 2022,
# arXiv:2208.07339), or moves the outliers into the weights first (SmoothQuant, Xiao et al. 2023,
# arXiv:2211.10438) — and why weight-only quantization (notebooks 06, 07) is the common choice for
# small models.

# %% [markdown]
# ### Exercise 2 — the MSE search by hand
#
# Write the MSE observer's search yourself for the block-5 input at **4 bits** symmetric: for
# $\alpha = k/100$, $k = 100, 99, \dots, 1$, quantize with the range $[-\alpha \max|x|, \alpha
# \max|x|]$ (`rq.qparams_from_range` and `rq.fake_quantize`), measure the mean squared error in
# float64, and keep the $\alpha$ with the smallest error (on a tie keep the larger $\alpha$).
# The next cell compares your $\alpha^*$ with `rq.MSEObserver`'s.

# %%
xv = acts["layers.5.mlp.down_proj"]
amax = float(np.abs(xv).max())
# --- your answer (a working answer is shipped) ---
best_alpha, best_err = 1.0, np.inf
for k in range(100, 0, -1):
    alpha = k / 100
    qp = rq.qparams_from_range(-alpha * amax, alpha * amax, spec4)
    err = mse(xv, rq.fake_quantize(xv, spec4, qparams=qp))
    if err < best_err:
        best_alpha, best_err = alpha, err
my_alpha = best_alpha

# %%
ref = rq.MSEObserver(spec4).update(xv)
ref.clip_range()
if my_alpha == float(ref.alpha):
    print(f"correct: alpha* = {my_alpha:.2f}, MSE = {float(ref.mse):.4e}")
else:
    print(f"not yet: you found alpha = {my_alpha}, refquant found alpha* = {float(ref.alpha)} "
          f"(MSE {float(ref.mse):.4e}); check the grid, the error in float64 and the tie rule")

# %% [markdown]
# ## What to try next
#
# - Change `spec8` to asymmetric (`symmetric=False`) or to 6 bits and rerun section 6: which
#   observer degrades first?
# - Give the percentile observer a higher percentile (`percentile=99.9999`): at 256 tokens x 1536
#   channels, how many values does it still clip, and does the model survive?
# - Calibrate on more text (`N_CAL = 2048`) and evaluate on more (`N_EVAL = 16384` with
#   `seq_len=512`, several minutes per observer on two cores): do the rankings hold? (For
#   quantized *weights* the command line does this: `.venv/bin/refquant eval --help`.)
# - Quantize activations per token instead: `refquant.integer.w8a8.w8a8_linear(model)` is a
#   `linear` like the ones above; compare its perplexity with section 6.
# - The KL search can never pick fewer than 128 of its 2048 bins: raise `bins=` for the block-11
#   input and watch its threshold.
