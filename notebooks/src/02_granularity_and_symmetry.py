# %% [markdown]
# # 02 · Granularity and symmetry on real weight matrices
#
# Notebook 01 quantized with one scale for a whole array or for a row. How many scales to use,
# and whether each gets a zero point, are the two cheapest and most effective choices in
# weight quantization. This notebook makes them on the weight matrices of the bundled
# SmolLM2-135M and measures what each costs and gains.
#
# **You will learn**
#
# - the three granularities (per tensor, per output channel, per group along the input) and the
#   shapes of their parameters;
# - why a few outlier weights ruin a per-tensor scale, seen in a plot of the real matrix;
# - when an asymmetric grid (with a zero point) beats a symmetric one, and what the zero point
#   costs in bits per weight;
# - how groups of 128 cover a row of 576 = 4.5 x 128 weights: the last group is shorter.
#
# **You should know first:** notebook 01 (scale, zero point, the $s/2$ error bound).
#
# With weights $W \in \mathbb R^{m \times K}$ in the (out_features, in_features) layout and
# $b$-bit symmetric codes ($q_{max} = 2^{b-1} - 1$), the three granularities differ only in the
# set of weights that share a scale:
#
# $$\text{per tensor: } s = \frac{\max_{i,j} |W_{ij}|}{q_{max}}, \qquad
# \text{per channel: } s_i = \frac{\max_{j} |W_{ij}|}{q_{max}}, \qquad
# \text{per group: } s_{i,g} = \frac{\max_{j:\ \lfloor j/G \rfloor = g} |W_{ij}|}{q_{max}}$$
#
# and $\hat W_{ij} = s_{i,\lfloor j/G \rfloor}\, q_{ij}$ with $q_{ij} = \mathrm{round}(W_{ij} /
# s_{i,\lfloor j/G \rfloor})$. An asymmetric grid replaces $[-\max|W|, \max|W|]$ by
# $[\min W, \max W]$ of the same set: $s = (\max - \min)/(2^b - 1)$, $z = \mathrm{round}(-\min/s)$.
# References: Nagel et al., *A White Paper on Neural Network Quantization* (arXiv:2106.08295),
# sections 2.2 and 2.3; the group convention $g = \lfloor j/G \rfloor$ is GPTQ's (Frantar et al.,
# arXiv:2210.17323).

# %%
import numpy as np
import matplotlib.pyplot as plt
import refquant as rq
from refquant.schemes.spec import g_idx

np.set_printoptions(precision=3, suppress=True, linewidth=110)
rng = np.random.default_rng(0)


def rel_error(W, W_hat):
    """Relative Frobenius error ||W - W_hat|| / ||W||."""
    return float(np.linalg.norm(W - W_hat) / np.linalg.norm(W))


# %% [markdown]
# ## 1. Three granularities on a matrix you can print
#
# A $2 \times 8$ matrix whose second row is ten times larger, and one weight of the first row that
# is an outlier. `rq.param_shape` says how many scales each granularity needs.

# %%
A = np.round(rng.standard_normal((2, 8)) * [[0.1], [1.0]], 2)
A[0, 6] = 0.9                                            # an outlier in the small row
print(A)
for spec in (rq.QuantSpec(bits=4, granularity="tensor"),
             rq.QuantSpec(bits=4, granularity="channel", axis=0),
             rq.QuantSpec(bits=4, granularity="group", group_size=4)):
    qp = rq.calibrate(A, spec)
    q = rq.quantize(A, qp, spec)
    print(f"\n{spec.granularity:8s} param_shape {rq.param_shape(A.shape, spec)}  scales {qp.scale.ravel()}")
    print(q)
    A_hat = rq.dequantize(q, qp, spec)
    print(f"relative error: row 0 {rel_error(A[0], A_hat[0]):.3f}, row 1 {rel_error(A[1], A_hat[1]):.3f}")

# %% [markdown]
# Per tensor, the first row shares the second row's large scale and almost all of it rounds to 0.
# Per channel, each row gets its own step. Per group of 4, the outlier at column 6 only inflates
# the scale of its own group; the first four weights of row 0 get a fine grid.

# %% [markdown]
# ## 2. Outliers in a real weight matrix
#
# The attention output projection of block 0, `layers.0.self_attn.o_proj` ($576 \times 576$), has
# strong outliers: a few rows (output channels) and columns (input channels) hold weights several
# times larger than the rest.

# %%
model = rq.load_model()
W = model.weights["layers.0.self_attn.o_proj.weight"]               # [out=576, in=576]
row_max = np.abs(W).max(axis=1)                                      # [576] per output channel
col_max = np.abs(W).max(axis=0)                                      # [576] per input channel
print(f"max |W| = {np.abs(W).max():.3f} at (row, column) {tuple(int(i) for i in np.unravel_index(np.abs(W).argmax(), W.shape))}")
print(f"rows:    median max|W| {np.median(row_max):.3f}, largest {np.sort(row_max)[-3:]} (rows {np.argsort(row_max)[-3:]})")
print(f"columns: median max|W| {np.median(col_max):.3f}, largest {np.sort(col_max)[-3:]} (columns {np.argsort(col_max)[-3:]})")

fig, ax = plt.subplots(1, 3, figsize=(12, 3.4))
im = ax[0].imshow(np.log10(np.abs(W) + 1e-4), cmap="magma", vmin=-3, vmax=0.4)
ax[0].set_title("log10 |W|, blk.0 o_proj"); ax[0].set_xlabel("input channel j"); ax[0].set_ylabel("output channel i")
fig.colorbar(im, ax=ax[0], fraction=0.046)
ax[1].plot(row_max, lw=0.8); ax[1].axhline(np.median(row_max), color="C3", ls="--", label="median")
ax[1].set_title(r"per output channel $\max_j |W_{ij}|$"); ax[1].set_xlabel("i"); ax[1].legend()
ax[2].plot(col_max, lw=0.8, color="C2"); ax[2].axhline(np.median(col_max), color="C3", ls="--", label="median")
ax[2].set_title(r"per input channel $\max_i |W_{ij}|$"); ax[2].set_xlabel("j"); ax[2].legend()
plt.tight_layout(); plt.show()

# %% [markdown]
# One weight sets the per-tensor range for all 331,776. With 4-bit symmetric codes the step is
# $s = 2.34 / 7 \approx 0.33$, while a typical weight is ten times smaller: nearly everything
# rounds to 0. One scale per row already spreads the codes over the grid:

# %%
specs4 = {"per tensor": rq.QuantSpec(bits=4, symmetric=True),
          "per channel": rq.QuantSpec(bits=4, symmetric=True, granularity="channel", axis=0)}
fig, ax = plt.subplots(figsize=(6.5, 3))
for k, (name, spec) in enumerate(specs4.items()):
    q = rq.quantize(W, rq.calibrate(W, spec), spec)
    codes, counts = np.unique(q, return_counts=True)
    print(f"{name:12s} codes used {codes.min()}..{codes.max()}, share of zeros {np.mean(q == 0):6.1%}, "
          f"relative error {rel_error(W, rq.fake_quantize(W, spec)):.3f}")
    ax.bar(codes + (k - 0.5) * 0.4, counts, width=0.4, label=name)
ax.set_yscale("log"); ax.set_xlabel("4-bit code"); ax.set_ylabel("count")
ax.set_title("codes of blk.0 o_proj"); ax.legend(); plt.tight_layout(); plt.show()

# %% [markdown]
# ## 3. Granularity and symmetry: error against storage
#
# Finer groups cost more parameters. With float16 scales and $b$-bit zero points (asymmetric
# only), a row of $K$ weights in groups of $G$ costs $b + \lceil K/G \rceil (16 + b) / K$ bits
# per weight. Below, every combination on the same matrix, with its size from `rq.size_report`.

# %%
granularities = [("tensor", {}), ("channel", {"axis": 0}), ("group", {"group_size": 128}),
                 ("group", {"group_size": 64}), ("group", {"group_size": 32})]
results = []
print("bits  symmetric  granularity   bits/weight  rel. error")
for bits in (3, 4):
    for symmetric in (True, False):
        for gran, kw in granularities:
            spec = rq.QuantSpec(bits=bits, symmetric=symmetric, granularity=gran, **kw)
            name = f"g{spec.group_size}" if gran == "group" else gran
            bpw = rq.size_report(W.shape, spec, scale_bits=16).bits_per_weight
            err = rel_error(W, rq.fake_quantize(W, spec))
            results.append((bits, symmetric, name, bpw, err))
            print(f"{bits:4d}  {symmetric!s:9s}  {name:11s} {bpw:11.3f} {err:11.4f}")

fig, ax = plt.subplots(figsize=(6.5, 3.8))
for bits, marker in ((3, "o"), (4, "s")):
    for symmetric, color in ((True, "C0"), (False, "C1")):
        pts = [(r[3], r[4], r[2]) for r in results if r[0] == bits and r[1] == symmetric and r[2] != "tensor"]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color,
                label=f"{bits}-bit {'symmetric' if symmetric else 'asymmetric'}")
        for x_, y_, name in pts:
            ax.annotate(name, (x_, y_), textcoords="offset points", xytext=(3, 3), fontsize=7)
ax.set_xlabel("bits per weight (float16 scales)"); ax.set_ylabel("relative error")
ax.set_title("blk.0 o_proj: per channel, then groups of 128, 64, 32"); ax.legend(fontsize=8)
plt.tight_layout(); plt.show()

err_of = {(r[0], r[1], r[2]): r[4] for r in results}
for bits in (3, 4):
    for symmetric in (True, False):
        chain = [err_of[(bits, symmetric, n)] for n in ("tensor", "channel", "g128", "g64", "g32")]
        assert all(a > b for a, b in zip(chain, chain[1:])), (bits, symmetric, chain)
    assert all(err_of[(bits, False, n)] < err_of[(bits, True, n)] for n in ("channel", "g128", "g64", "g32"))

# %% [markdown]
# Each halving of the group size buys a similar drop in error for a growing price in bits, and
# the asymmetric grid is better everywhere here. Why? A symmetric grid spans
# $[-\max|W|, \max|W|]$ even when the weights of a group reach further on one side than the
# other; the asymmetric grid spans exactly $[\min W, \max W]$. The smaller the group, the more
# lopsided its range tends to be. A convenient measure is the offset of the range's centre,
# $(\max + \min)/(\max - \min)$: 0 for a balanced range, $\pm 1$ when all weights have one sign.

# %%
fig, ax = plt.subplots(figsize=(6, 3))
for G in (576, 64, 16):
    groups = W.reshape(W.shape[0], -1, G)                             # [576, 576/G, G]
    lo, hi = groups.min(axis=-1), groups.max(axis=-1)
    offset = ((hi + lo) / (hi - lo)).ravel()
    ax.hist(offset, bins=60, range=(-1, 1), histtype="step", density=True, label=f"groups of {G}")
    print(f"groups of {G:3d}: mean |offset| {np.abs(offset).mean():.3f}")
ax.set_xlabel("(max + min) / (max - min)"); ax.set_ylabel("density")
ax.set_title("how lopsided is the range of a group?"); ax.legend(); plt.tight_layout(); plt.show()

# %% [markdown]
# For data of one sign the difference is a whole bit. A toy "activation" after a ReLU lies in
# $[0, 1]$: symmetric 4-bit codes only use $0 \dots 7$ of $-8 \dots 7$, so the step is twice the
# asymmetric one (this is why activations are usually quantized asymmetrically, and weights,
# which are roughly centred, symmetrically).

# %%
relu_out = np.maximum(rng.standard_normal(10_000), 0.0)
for symmetric in (True, False):
    spec = rq.QuantSpec(bits=4, symmetric=symmetric)
    qp = rq.calibrate(relu_out, spec)
    q = rq.quantize(relu_out, qp, spec)
    print(f"symmetric={symmetric!s:5}: s = {float(qp.scale):.4f}, codes {q.min()}..{q.max()}, "
          f"relative error {rel_error(relu_out, rq.dequantize(q, qp, spec)):.4f}")

# %% [markdown]
# ## 4. The shorter last group: 576 = 4.5 x 128
#
# SmolLM2's hidden size is 576, and the usual group size is 128. The row does not split into whole
# groups, so `reshape` cannot do it:

# %%
try:
    W.reshape(576, -1, 128)
except ValueError as e:
    print("ValueError:", e)

# %% [markdown]
# refquant follows GPTQ: column $j$ belongs to group $g = \lfloor j / G \rfloor$, so there are
# $\lceil K / G \rceil = 5$ groups and the last one holds the remaining $576 - 4 \cdot 128 = 64$
# columns. `g_idx` is that column-to-group map (the same array GPTQ checkpoints store).

# %%
spec = rq.QuantSpec(bits=4, symmetric=True, granularity="group", group_size=128)
gi = g_idx(W.shape[1], 128)
print("param_shape:", rq.param_shape(W.shape, spec))
print("g_idx:", gi[:3], "...", gi[126:131], "...", gi[-3:])
print("columns per group:", np.bincount(gi))

qp = rq.calibrate(W, spec)
col_mse = ((W - rq.fake_quantize(W, spec, qparams=qp)) ** 2).mean(axis=0)    # [576] per column
print("mean scale per group:     ", qp.scale.mean(axis=0))
print("mean squared error/group: ", " ".join(f"{col_mse[gi == g].mean():.2e}" for g in range(5)))

fig, ax = plt.subplots(figsize=(7, 3))
ax.plot(col_mse, lw=0.7)
for g in range(1, 5):
    ax.axvline(128 * g, color="0.5", ls=":")
ax.set_yscale("log"); ax.set_xlabel("input column j (group boundaries dotted)"); ax.set_ylabel("MSE over rows")
ax.set_title("4-bit g128 error per column of blk.0 o_proj"); plt.tight_layout(); plt.show()

# %% [markdown]
# The error is nearly flat inside a group and jumps at its boundaries: all weights of a group
# share one step $s$, and the error is about $s^2/12$ (notebook 01). The second group of this
# matrix holds outlier input channels, so its steps and its error are larger.
#
# The last group is usually a little better off: the maximum of 64 weights tends to be smaller
# than the maximum of 128, so its step is finer (not always: an outlier column can sit in it). Its
# parameters cost twice as much per weight, and `size_report` counts five groups per row:

# %%
r = rq.size_report(W.shape, rq.QuantSpec(bits=4, symmetric=False, granularity="group", group_size=128),
                   scale_bits=16)
print(r)
print("by hand: 4 + 5 * (16 + 4) / 576 =", 4 + 5 * (16 + 4) / 576)

# %% [markdown]
# ### Exercise: per-group scales with a short last group
#
# Write `group_scales(W, bits, G)`: the symmetric min-max scale of every group of `G` consecutive
# columns of every row, shape `(rows, ceil(K / G))`, including the short last group. Compute
# $\max|W|$ of each group, divide by $q_{max} = 2^{b-1} - 1$ in float64, and round to float32.
# (A group of all zeros would need scale 1 by refquant's zero-range convention; these weights have
# none.) The check compares your scales with `rq.calibrate` on two real matrices and reports the
# first mismatch.

# %%
def group_scales(W, bits, G):
    W = np.asarray(W, dtype=np.float64)
    K = W.shape[1]
    n_groups = -(-K // G)                                         # ceil(K / G)
    amax = np.stack([np.abs(W[:, g * G:(g + 1) * G]).max(axis=1) for g in range(n_groups)], axis=1)
    return (amax / (2 ** (bits - 1) - 1)).astype(np.float32)


# %%
def check_group_scales(fn):
    problems = []
    for name in ("layers.0.self_attn.o_proj", "layers.3.mlp.gate_proj"):
        M = model.weights[name + ".weight"]
        for bits, G in ((4, 128), (3, 100), (8, 576), (4, 1000)):
            ref = rq.calibrate(M, rq.QuantSpec(bits=bits, granularity="group", group_size=G)).scale
            mine = np.asarray(fn(M, bits, G))
            if mine.shape != ref.shape:
                problems.append(f"{name}, G={G}: shape {mine.shape}, expected {ref.shape}"
                                + (" (the short last group is missing?)" if mine.shape[-1] == ref.shape[-1] - 1 else ""))
            elif not np.array_equal(mine.astype(np.float32), ref):
                i, g = np.argwhere(mine.astype(np.float32) != ref)[0]
                problems.append(f"{name}, {bits} bits, G={G}: scale[{i}, {g}] = {mine[i, g]!r}, refquant {ref[i, g]!r}")
    print("correct: your scales equal refquant's, short last groups included" if not problems
          else "\n".join(problems[:5]))


check_group_scales(group_scales)

# %% [markdown]
# ## 5. Every linear of a block
#
# The same comparison on all seven weight matrices of block 0 (4-bit symmetric). The ordering
# per tensor > per channel > per group holds for every one of them; how much each step gains
# depends on how heavy the matrix's outliers are.

# %%
from refquant.models.llama import LINEAR_NAMES

print(f"{'matrix':18s} {'shape':12s} {'tensor':>8s} {'channel':>8s} {'g128':>8s} {'g32':>8s}")
table = {}
for name in LINEAR_NAMES:
    M = model.weights[f"layers.0.{name}.weight"]
    errs = [rel_error(M, rq.fake_quantize(M, rq.QuantSpec(bits=4, granularity=gran, **kw)))
            for gran, kw in (granularities[0], granularities[1], granularities[2], granularities[4])]
    table[name] = errs
    print(f"{name:18s} {str(M.shape):12s} " + " ".join(f"{e:8.4f}" for e in errs))
    assert errs[0] > errs[1] > errs[2] > errs[3]

# %% [markdown]
# ## What to try next
#
# - Repeat section 3 for `layers.5.self_attn.v_proj`, whose rows have nearly equal ranges: how much
#   does per-channel gain over per-tensor there?
# - Quantize per group along the *output* dimension instead (transpose `W`, quantize, transpose
#   back). Which direction do the outliers of `o_proj` favour?
# - The bundled weights were stored as Q4_1: 4-bit groups of 32 with a float scale and a *float*
#   minimum. Check that every group of 32 of `W` holds at most 16 distinct values, then explain
#   why asymmetric g32 with an *integer* zero point still has an error (about 9% here).
# - Outlier *input* columns hit every row's group that contains them. GPTQ's act_order
#   (notebook 06) and AWQ's per-channel scaling (notebook 07) are two answers to that.
# - Notebook 03 keeps the granularity but spaces the levels unevenly, to match the bell shape of
#   the weights.
