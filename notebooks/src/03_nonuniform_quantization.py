# %% [markdown]
# # 03 · Non-uniform quantization: log-scale, NF4 and Lloyd-Max
#
# A uniform grid spends as many levels on the rare large weights as on the crowded small ones.
# Weights are bell-shaped: most of them sit near 0. A *non-uniform* quantizer places its levels
# where the data is. This notebook builds three of them and measures them against the uniform
# grid, at the same number of bits, on the weights of the bundled SmolLM2-135M.
#
# **You will learn**
#
# - the one rule every codebook quantizer shares: the nearest level from a table;
# - log-scale (power-of-two) levels, and why their error is bounded *relative* to $|x|$;
# - how NF4 places its 16 levels at the quantiles of a normal distribution (QLoRA);
# - how Lloyd-Max fits a table to the data, and why it is the best table for the mean squared error;
# - which of them wins on real weights at 3 and 4 bits, counted in bits per weight.
#
# **You should know first:** notebooks 01 (scale, codes, bits per weight) and 02 (per-group scales).
#
# A codebook quantizer has a sorted table of levels $c_0 < c_1 < \dots < c_{n-1}$ and a scale $s$:
#
# $$q = \arg\min_i \left| x/s - c_i \right|, \qquad \hat x = s\, c_q .$$
#
# The decision thresholds are the midpoints $(c_i + c_{i+1})/2$; a $b$-bit code indexes $n = 2^b$
# levels. The uniform grid of notebook 01 is the special case $c_i = i - z$. The three tables here:
#
# - **log-scale**: $\{0\} \cup \{\pm 2^{-k}\}_{k=0}^{L-1}$ (Miyashita, Lee, Murmann, *Convolutional
#   Neural Networks using Logarithmic Data Representation*, arXiv:1603.01025): a multiplication by
#   a level is a bit shift;
# - **NF4**: 16 quantiles of $\mathcal N(0, 1)$ scaled to $[-1, 1]$ (Dettmers et al., *QLoRA*,
#   NeurIPS 2023, arXiv:2305.14314);
# - **Lloyd-Max**: the table that minimises $\mathbb E[(x - \hat x)^2]$ for the data at hand
#   (S. P. Lloyd, *Least Squares Quantization in PCM*, IEEE Trans. Inf. Theory 1982; J. Max,
#   *Quantizing for Minimum Distortion*, IRE Trans. Inf. Theory 1960).

# %%
import numpy as np
import matplotlib.pyplot as plt
import refquant as rq
from refquant.schemes.spec import g_idx

np.set_printoptions(precision=4, suppress=True, linewidth=110)


def rel_error(W, W_hat):
    """Relative Frobenius error ||W - W_hat|| / ||W||."""
    return float(np.linalg.norm(W - W_hat) / np.linalg.norm(W))


# %% [markdown]
# ## 1. The nearest level from a table
#
# `rq.codebook_quantize` returns the index of the nearest level; values beyond the ends clip to
# the first or last level, and a value exactly halfway between two levels goes to the *lower*
# one (here 0.25 is halfway between 0 and 0.5).

# %%
levels = np.array([-1.0, -0.25, 0.0, 0.5, 1.0])
x = np.array([-3.0, -0.7, -0.1, 0.25, 0.26, 0.8, 2.0])
q = rq.codebook_quantize(x, levels)
print("x      ", x)
print("codes  ", q)
print("x_hat  ", rq.codebook_dequantize(q, levels))

# %% [markdown]
# ## 2. Log-scale levels: a bounded relative error
#
# `rq.LogSpec(levels=L)` has a sign, the magnitudes $s \cdot 2^{-k}$ for $k = 0 \dots L - 1$, and
# an exact zero: $2L + 1$ codes, so $L = 7$ fits in 4 bits and $L = 3$ in 3 bits. The scale $s$
# is the absmax, so the largest weight lands on the top level. Between $2^{-(k+1)}$ and $2^{-k}$
# the threshold is the midpoint $\tfrac34 \cdot 2^{-k}$, and there the relative error peaks at
# $\tfrac{1/4}{3/4}$:
#
# $$|x - \hat x| \le \tfrac13 |x| \quad \text{for } s\,2^{-(L-1)} \le |x| \le s .$$
#
# A uniform grid has the opposite behaviour: its *absolute* error is bounded by $s/2$, so its
# relative error explodes for small $|x|$.

# %%
spec3 = rq.LogSpec(levels=3)
print("magnitudes of LogSpec(levels=3):", spec3.magnitudes, f"({spec3.bits} bits)")
x = np.array([1.0, -0.5, 0.3, 0.374, 0.376, 0.0, -0.001])
print("x     ", x)
print("codes ", rq.log_quantize(x, spec3, scale=1.0))
print("x_hat ", rq.log_fake_quantize(x, spec3, scale=1.0))

log4 = rq.LogSpec(levels=7)                                       # 15 codes: 4 bits
uni4 = rq.QuantSpec(bits=4, symmetric=True)
xs = np.geomspace(1e-3, 1.0, 2000)                                # magnitudes in scale units
x_log = rq.log_fake_quantize(xs, log4, scale=1.0)
qp_uni = rq.qparams_from_range(-1.0, 1.0, uni4)
x_uni = rq.fake_quantize(xs, uni4, qparams=qp_uni)
floor = 2.0 ** -(log4.levels - 1)
in_range = xs >= floor
assert np.all(np.abs(xs - x_log)[in_range] <= xs[in_range] / 3 + 1e-12)
print(f"max relative error for {floor:.4f} <= x <= 1: log {np.max(np.abs(xs - x_log)[in_range] / xs[in_range]):.3f},"
      f" uniform {np.max(np.abs(xs - x_uni)[in_range] / xs[in_range]):.3f}")

fig, ax = plt.subplots(1, 2, figsize=(11, 3.4))
lin = np.linspace(0, 1, 2001)
ax[0].plot(lin, rq.fake_quantize(lin, uni4, qparams=qp_uni), label="uniform, 4 bits")
ax[0].plot(lin, rq.log_fake_quantize(lin, log4, scale=1.0), label="log-scale, 4 bits")
ax[0].plot(lin, lin, color="0.7", lw=1)
ax[0].set_title(r"$\hat x$ against $x$ (scale 1)"); ax[0].set_xlabel("x"); ax[0].legend()
ax[1].loglog(xs, np.maximum(np.abs(xs - x_uni) / xs, 1e-4), label="uniform")
ax[1].loglog(xs, np.maximum(np.abs(xs - x_log) / xs, 1e-4), label="log-scale")
ax[1].axhline(1 / 3, color="C3", ls="--", label="1/3"); ax[1].axvline(floor, color="0.5", ls=":")
ax[1].set_title(r"relative error $|x - \hat x| / |x|$"); ax[1].set_xlabel("x (log axis)"); ax[1].legend()
plt.tight_layout(); plt.show()

# %% [markdown]
# The price: the top of the range has only a few, widely spaced levels ($\tfrac12$, then 1), and
# most weights of a group are neither tiny nor at the maximum. We will see below what that costs.
#
# ## 3. NF4: levels at the quantiles of a normal distribution
#
# If the weights of a block are normal, then after dividing by the block's absmax each level
# should own the same share of the data: the levels are quantiles of $\mathcal N(0,1)$, scaled to
# $[-1, 1]$. QLoRA's table makes two adjustments: it contains an exact 0 (so zero weights and
# padding stay exact), which with 16 levels leaves 8 levels on one side and 7 on the other; and
# the outermost quantile is taken at the probability $1 - \delta$ instead of 1 (the quantile of 1
# is infinite). refquant ships the published table:

# %%
print("NF4_LEVELS:", rq.NF4_LEVELS)
print("spacing:   ", np.diff(rq.NF4_LEVELS))

# %% [markdown]
# ### Exercise 1: build NF4 from normal quantiles
#
# Rebuild the 16 levels with `scipy.stats.norm.ppf` (the inverse CDF of $\mathcal N(0,1)$):
#
# - positive side: 8 levels, the quantiles at 8 probabilities evenly spaced from $1 - \delta$
#   down to $\tfrac12$, the $\tfrac12$ itself excluded (it would be 0);
# - negative side: 7 levels, the mirror image of the quantiles at 7 probabilities evenly spaced
#   from $1 - \delta$ down to $\tfrac12$, again without $\tfrac12$;
# - the level 0, then sort and divide by the largest magnitude.
#
# QLoRA's $\delta$ is the mean of the outer-bin half-widths for 15 and 16 bins,
# $\delta = \tfrac12\left(\tfrac{1}{2 \cdot 15} + \tfrac{1}{2 \cdot 16}\right)$. The answer below
# works; the check compares it with `rq.NF4_LEVELS` and names the worst level.

# %%
from scipy.stats import norm


def nf4_levels():
    delta = (1 / (2 * 15) + 1 / (2 * 16)) / 2
    positive = norm.ppf(np.linspace(1 - delta, 0.5, 9)[:-1])       # 8 levels above 0
    negative = -norm.ppf(np.linspace(1 - delta, 0.5, 8)[:-1])      # 7 levels below 0
    v = np.sort(np.concatenate([negative, [0.0], positive]))
    return v / np.abs(v).max()


# %%
mine = np.asarray(nf4_levels(), dtype=np.float64)
ref = rq.NF4_LEVELS.astype(np.float64)
if mine.shape != ref.shape:
    print(f"your table has {mine.size} levels, NF4 has {ref.size}")
else:
    worst = int(np.argmax(np.abs(mine - ref)))
    gap = abs(mine[worst] - ref[worst])
    # the published table stores float32 values of a delta rounded to 7 digits: agreement to ~2e-7
    print(f"correct: every level within {gap:.1e} of rq.NF4_LEVELS" if gap < 1e-6 else
          f"level {worst} is {mine[worst]:.6f}, NF4 has {ref[worst]:.6f} (off by {gap:.2e})")

# %% [markdown]
# ## 4. Lloyd-Max: a table fitted to the data
#
# For a fixed table, the best cells are the nearest-level cells (thresholds at midpoints). For
# fixed cells, the best level of each cell is the mean of its data, because the mean minimises the
# squared distance. Lloyd-Max alternates the two conditions (it is k-means in one dimension):
#
# $$C_i = \{x : q(x) = i\}, \qquad c_i \leftarrow \frac{1}{|C_i|} \sum_{x \in C_i} x .$$
#
# Neither step can increase the mean squared error, so it decreases until it stops at a fixed
# point. On six numbers in two clusters, two levels land on the two cluster means:

# %%
tiny = rq.fit_lloyd_max([0.0, 1.0, 2.0, 10.0, 11.0, 12.0], 2)
print("levels", tiny.levels, "MSE per iteration", tiny.mse, "converged:", tiny.converged)

# %% [markdown]
# Now real data. All the quantizers below use one absmax scale per block of 64 weights along the
# input dimension (QLoRA's block size), so they all see the same normalised values
# $u = w / \max_{\text{block}} |w| \in [-1, 1]$. We take the MLP's `up_proj` of block 10
# ($1536 \times 576$, about 885k weights) and fit a 16-level table to its $u$.

# %%
model = rq.load_model()
W = model.weights["layers.10.mlp.up_proj.weight"]                   # [1536, 576]
B = 64
block = rq.LogSpec(levels=7, granularity="group", group_size=B)     # its absmax per block
absmax = rq.log_calibrate(W, block)                                 # [1536, 9]
S = absmax[:, g_idx(W.shape[1], B)].astype(np.float64)              # [1536, 576] each weight's scale
u = W / S                                                           # normalised weights in [-1, 1]
print(f"{W.shape}, blocks of {B}: absmax shape {absmax.shape}; share of u at exactly +-1: {np.mean(np.abs(u) == 1):.2%}")

lm16 = rq.fit_lloyd_max(u, 16)
print(f"Lloyd-Max, 16 levels: {lm16.n_iter} iterations, converged: {lm16.converged}")
print("MSE of u: start (quantiles)", f"{lm16.mse[0]:.3e}", "-> end", f"{lm16.mse[-1]:.3e}")
print("levels:", lm16.levels)
assert np.all(np.diff(lm16.mse) < 0)
print("MSE gained by the last 10 iterations:", f"{lm16.mse[-11] - lm16.mse[-1]:.1e}")

fig, ax = plt.subplots(1, 2, figsize=(10, 3.2))
ax[0].plot(lm16.mse, "o-", ms=2); ax[0].set_title("Lloyd-Max: MSE of u per iteration")
ax[0].set_xlabel("iteration"); ax[0].set_yscale("log")
ax[1].plot(lm16.level_history, color="C0", lw=0.8); ax[1].set_title("the 16 levels per iteration")
ax[1].set_xlabel("iteration")
plt.tight_layout(); plt.show()

# %% [markdown]
# The fit stopped at its cap of `iters=100` iterations, not at a fixed point: the last steps
# still lower the MSE, but by a tiny amount. The levels are nearly symmetric about 0, denser in
# the middle, and the outermost ones sit at $\pm 0.95$, not at $\pm 1$.
#
# ### Exercise 2: one Lloyd-Max iteration by hand
#
# Start from refquant's initial table, the quantiles of $u$ at the probabilities
# $(i + \tfrac12)/16$. Assign every value to its nearest level (thresholds at the midpoints; a
# value exactly on a midpoint goes to the lower level, which is what `np.searchsorted(...,
# side="left")` gives), then replace every level by the mean of its cell. The check compares your
# table with refquant's after one iteration (`rq.fit_lloyd_max(u, 16, iters=1)`).

# %%
def lloyd_step(u, n_levels):
    u = np.ravel(u).astype(np.float64)
    c = np.quantile(u, (np.arange(n_levels) + 0.5) / n_levels)      # initial table
    thresholds = (c[1:] + c[:-1]) / 2
    cell = np.searchsorted(thresholds, u, side="left")              # index of the nearest level
    counts = np.bincount(cell, minlength=n_levels)
    sums = np.bincount(cell, weights=u, minlength=n_levels)
    return np.where(counts > 0, sums / np.maximum(counts, 1), c)    # empty cells keep their level


# %%
one = rq.fit_lloyd_max(u, 16, iters=1)
expected = one.level_history[-1]
mine = np.asarray(lloyd_step(u, 16))
if mine.shape != expected.shape:
    print(f"your table has shape {mine.shape}, expected {expected.shape}")
elif np.allclose(mine, expected, rtol=1e-9, atol=1e-12):
    print(f"correct: after one iteration the MSE of u fell from {one.mse[0]:.4e} to {one.mse[-1]:.4e}")
else:
    i = int(np.argmax(np.abs(mine - expected)))
    print(f"level {i}: yours {mine[i]:.6f}, refquant {expected[i]:.6f}")

# %% [markdown]
# ## 5. The levels on the real distribution
#
# The histogram of $u$ with each quantizer's 16 (or 15) levels drawn over it. Uniform symmetric
# codes at this scale are $k/7$ for $k = -8 \dots 7$, the $-8/7$ one beyond the data. The spikes
# at $\pm 1$ are the absmax weight of every block (1 in 64): NF4 and the uniform grid have a level
# there and store it exactly, while Lloyd-Max prefers to move its outer levels inward to the bulk.
# (The small bumps in the histogram come from the Q4_1 grid the bundled weights were stored on.)

# %%
tables = {
    "uniform symmetric (4 bits)": np.arange(-8, 8) / 7,
    "log-scale L = 7 (4 bits)": np.concatenate([-log4.magnitudes[:0:-1], log4.magnitudes]),
    "NF4": rq.NF4_LEVELS,
    "Lloyd-Max, 16 levels": lm16.levels,
}
fig, axes = plt.subplots(2, 2, figsize=(11, 5.6), sharex=True)
for ax, (name, table) in zip(axes.ravel(), tables.items()):
    ax.hist(u.ravel(), bins=400, range=(-1.05, 1.05), density=True, color="0.6")
    for c in table:
        ax.axvline(c, color="C3", lw=0.8)
    ax.set_title(name); ax.set_xlim(-1.2, 1.05); ax.set_yscale("log")
for ax in axes[1]:
    ax.set_xlabel(r"$u = w / \max_{block}|w|$")
plt.suptitle("blk.10 up_proj, blocks of 64: histogram of u (log density) and the levels")
plt.tight_layout(); plt.show()

# %% [markdown]
# ## 6. Error at equal bits
#
# Every scheme below stores $b$-bit codes and one float16 scale per block of 64 (4.25 bits per
# weight at $b = 4$); the asymmetric uniform grid adds a $b$-bit zero point per block, and the
# fitted Lloyd-Max table adds its 16 float32 levels per tensor (64 bytes). At 3 bits there is no
# NF3 in refquant, so the normal-quantile row has only a 4-bit entry. "Lloyd-Max per tensor" fits
# a table to the raw weights, with no block scales at all.

# %%
def errors_at(bits):
    n = 2**bits
    L = {4: 7, 3: 3}[bits]
    out = {}
    sym = rq.QuantSpec(bits=bits, symmetric=True, granularity="group", group_size=B)
    asym = rq.QuantSpec(bits=bits, symmetric=False, granularity="group", group_size=B)
    logb = rq.LogSpec(levels=L, granularity="group", group_size=B)
    out["uniform symmetric"] = (rel_error(W, rq.fake_quantize(W, sym)), rq.size_report(W.shape, sym, scale_bits=16))
    out["uniform asymmetric"] = (rel_error(W, rq.fake_quantize(W, asym)), rq.size_report(W.shape, asym, scale_bits=16))
    out["log-scale"] = (rel_error(W, rq.log_fake_quantize(W, logb)), rq.size_report(W.shape, logb, scale_bits=16))
    if bits == 4:
        codes, am = rq.nf4_quantize(W, block_size=B)
        out["NF4"] = (rel_error(W, rq.nf4_dequantize(codes, am, block_size=B)),
                      rq.size_report(W.shape, "nf4", block_size=B, scale_bits=16))
    table = lm16.levels if bits == 4 else rq.fit_lloyd_max(u, n).levels
    W_lm = rq.codebook_dequantize(rq.codebook_quantize(W, table, scale=S), table, scale=S)
    out["Lloyd-Max per block"] = (rel_error(W, W_lm), rq.size_report(W.shape, rq.CodebookSpec(n, block_size=B), scale_bits=16))
    raw = rq.fit_lloyd_max(W, n).levels
    W_raw = rq.codebook_dequantize(rq.codebook_quantize(W, raw), raw)
    out["Lloyd-Max per tensor"] = (rel_error(W, W_raw), rq.size_report(W.shape, rq.CodebookSpec(n), scale_bits=16))
    return out


results = {bits: errors_at(bits) for bits in (3, 4)}
print(f"{'scheme':22s} {'bits':>4s} {'bits/weight':>11s} {'rel. error':>10s}")
for bits, res in results.items():
    for name, (err, size) in res.items():
        print(f"{name:22s} {bits:4d} {size.bits_per_weight:11.4f} {err:10.4f}")

fig, ax = plt.subplots(figsize=(8, 3.4))
names = list(results[4])
for k, bits in enumerate((3, 4)):
    vals = [results[bits].get(n, (np.nan,))[0] for n in names]
    ax.bar(np.arange(len(names)) + (k - 0.5) * 0.38, vals, width=0.38, label=f"{bits} bits")
ax.set_xticks(np.arange(len(names)), names, rotation=20, fontsize=8)
ax.set_ylabel("relative error"); ax.set_title("blk.10 up_proj: scales per block of 64 (Lloyd-Max per tensor: none)")
ax.legend(); plt.tight_layout(); plt.show()

r4, r3 = results[4], results[3]
assert r4["Lloyd-Max per block"][0] < r4["NF4"][0] < r4["uniform symmetric"][0] < r4["log-scale"][0]
assert r3["Lloyd-Max per block"][0] < r3["uniform symmetric"][0]
assert r4["Lloyd-Max per block"][0] < r4["Lloyd-Max per tensor"][0]

# %% [markdown]
# What the table says, for these weights:
#
# - **NF4 beats the symmetric uniform grid** at the same 4.25 bits per weight: its levels are
#   denser near 0 where the weights are, and it uses all 16 codes (uniform symmetric absmax
#   leaves $-8$ unused). It roughly ties the asymmetric uniform grid, which pays for a zero point.
# - **Lloyd-Max is best**, by construction: it is the minimum-MSE table for the data it was fitted
#   to (one 64-byte table for the whole tensor). Per-block scales still matter: a single table
#   without scales (per tensor) is worse than the same table on block-normalised weights, though at
#   a quarter of a bit less it still beats the symmetric uniform grid with its block scales.
# - **Log-scale loses at 4 bits.** Its levels are too sparse near the block maximum
#   ($\tfrac12, 1$) and wasted on tiny magnitudes ($2^{-6}$) that carry little of the squared
#   error. At 3 bits it does better than the symmetric uniform grid. Its strength is hardware (a
#   shift instead of a multiply) and a bounded relative error, not the mean squared error.
#
# The same comparison at 4 bits on all seven linears of block 10:

# %%
from refquant.models.llama import LINEAR_NAMES

print(f"{'matrix':18s} {'uniform sym':>11s} {'NF4':>8s} {'Lloyd-Max':>10s}")
for name in LINEAR_NAMES:
    M = model.weights[f"layers.10.{name}.weight"]
    Sm = rq.log_calibrate(M, block)[:, g_idx(M.shape[1], B)].astype(np.float64)
    table = rq.fit_lloyd_max(M / Sm, 16).levels
    e_uni = rel_error(M, rq.fake_quantize(M, rq.QuantSpec(bits=4, granularity="group", group_size=B)))
    codes, am = rq.nf4_quantize(M, block_size=B)
    e_nf4 = rel_error(M, rq.nf4_dequantize(codes, am, block_size=B))
    e_lm = rel_error(M, rq.codebook_dequantize(rq.codebook_quantize(M, table, scale=Sm), table, scale=Sm))
    print(f"{name:18s} {e_uni:11.4f} {e_nf4:8.4f} {e_lm:10.4f}")
    assert e_lm < e_uni and e_nf4 < e_uni

# %% [markdown]
# ## What to try next
#
# - Fit Lloyd-Max with `init="random"` and a few seeds: does it reach the same table? (k-means has
#   local minima; in one dimension they are rare but not impossible.)
# - Change the block size `B` to 32, 128 and 576 (one per row). Which scheme suffers most from
#   larger blocks, and how do the bits per weight change?
# - Fit the Lloyd-Max table on block 10 and use it on block 20: how much of its advantage over NF4
#   survives on weights it has not seen?
# - Compare the tables with the minimum-MSE quantizer of a *normal* distribution (Max's 1960
#   table): `rq.fit_lloyd_max(np.random.default_rng(0).standard_normal(10**6), 16)`.
# - Relative error matters for activations with a huge dynamic range; absolute error for weights
#   in a matrix product. Notebook 04 turns to activations and to choosing their clipping range.
