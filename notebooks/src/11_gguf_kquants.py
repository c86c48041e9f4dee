# %% [markdown]
# # 11 · GGUF K-quants: super-blocks, importance matrices and mixes
#
# Most people who run a quantized Llama run a GGUF file in llama.cpp, and most of those files
# are *K-quants* (`Q4_K_M`, `Q5_K_M`, `Q6_K` ...) made with an *importance matrix*. A K-quant
# is notebook 02's per-group asymmetric quantization done twice: each group of 32 weights gets
# its own scale and minimum, and those 16 numbers per 256 weights are quantized again, to 6
# bits, against two float16 "scales of scales". The scale and minimum of each group are not
# min-max: they come from a small weighted least-squares search. This notebook takes one
# real block through that search by hand and checks the result byte for byte.
#
# **You will learn**
#
# - the Q4_K super-block: its 144 bytes, field by field, and why it costs 4.5 bits per weight;
# - ggml's search for a group's scale and minimum (`make_qkx2_quants`), in plain words and numbers;
# - how the 6-bit sub-block scales are packed into 12 bytes (the exercise);
# - what the importance matrix is (the mean $x^2$ of each input column) and what it changes;
# - what `llama-quantize`'s `Q4_K_M` mix gives each tensor of the bundled model, and why;
# - bits per weight against weight error for every GGML type refquant writes.
#
# **You should know first:** notebooks 01 (scales, codes, bits per weight) and 02 (groups,
# asymmetric quantization).
#
# ## The equations
#
# A Q4_K super-block holds 256 consecutive weights of a row as 8 sub-blocks $j$ of 32. Each
# weight is stored as a 4-bit code $q \in \{0, \dots, 15\}$ and decoded as
#
# $$ \hat x = d\,\mathrm{sc}_j\, q \;-\; d_{\min}\,\mathrm{mn}_j , $$
#
# with 6-bit integers $\mathrm{sc}_j, \mathrm{mn}_j \in \{0,\dots,63\}$ per sub-block and two
# float16 numbers $d, d_{\min}$ per super-block. Bits per weight:
# $(16 + 16 + 8 \cdot (6 + 6) + 256 \cdot 4) / 256 = 4.5$. Each sub-block's scale $s_j$ and
# minimum $m_j$ minimize a weighted squared error over codes $l_i$ and the pair $(s, m)$,
#
# $$ E(s, m) = \sum_{i=1}^{32} w_i \,\big(s\, l_i - m - x_i\big)^2 , \qquad
#    w_i = \sqrt{\tfrac{1}{32}\textstyle\sum_k x_k^2} + |x_i| $$
#
# (ggml's reference weights; with an importance matrix $w_i = \mathrm{imatrix}_i \sqrt{\sigma^2 + x_i^2}$).
# For fixed codes, $(s, m)$ is an ordinary 2-parameter weighted least-squares fit; the search
# tries 21 candidate scales to choose the codes. Reference: K. Kawrakow, "k-quants", llama.cpp
# PR #1684 (2023), and `ggml/src/ggml-quants.c` (`quantize_row_q4_K_ref`, `make_qkx2_quants`).

# **The weights.** The bundled SmolLM2 stores its block weights as Q4_1: every group of 32 of
# them already sits on a 16-level grid, which any 4-bit quantizer with a minimum per 32 weights
# reproduces almost exactly, so the searches below would have nothing to do. The notebook
# therefore moves each real weight off that grid by a uniform dither within half of its group's
# stored Q4_1 step (`off_grid` below), a stand-in for the lost full-precision weights with the
# same per-group ranges; section 5 shows what happens on the stored grid itself.

# %%
import numpy as np
import matplotlib.pyplot as plt
import gguf
import refquant as rq
from refquant.formats import ggml
from refquant.formats.gguf_mix import tensor_types, use_more_bits
from refquant.models.resources import bundled_model_path
from refquant.pipeline import data
from refquant.pipeline.imatrix import collect_imatrix

np.set_printoptions(precision=4, suppress=True, linewidth=110)
F = np.float32
model = rq.load_model()
reader = gguf.GGUFReader(str(bundled_model_path()))


def off_grid(name, seed):
    """Block ``name`` tensor of the bundled model (e.g. ``"layers.5.mlp.down_proj"``), moved off
    its stored Q4_1 grid: each weight plus a uniform dither in +-1/2 of its block's Q4_1 step."""
    W = np.asarray(model.weights[name + ".weight"], F)                  # [rows, K], decoded Q4_1
    i, kind = name.split(".")[1], {"mlp.down_proj": "ffn_down"}[name.split(".", 2)[2]]
    t = next(t for t in reader.tensors if t.name == f"blk.{i}.{kind}.weight")
    d = ggml.unpack_blocks(np.asarray(t.data), "Q4_1").d.astype(F)     # [rows, K // 32]
    u = np.random.default_rng(seed).uniform(-0.5, 0.5, W.shape).astype(F)
    return (W + np.repeat(d, 32, axis=1) * u).astype(F)


W = off_grid("layers.5.mlp.down_proj", seed=0)                            # [576, 1536]
x = W[0, :256].copy()                                                     # one super-block
print(f"blk.5.ffn_down: {W.shape}, super-block 0 of row 0: min {x.min():.4f}, max {x.max():.4f}")


def rel_error(A, A_hat):
    """Relative Frobenius error ||A - A_hat|| / ||A||."""
    return float(np.linalg.norm(A - A_hat) / np.linalg.norm(A))


def q4k_fields(block):
    """The fields of one Q4_K super-block's 144 bytes: d, dmin, sc[8], mn[8], q[256]."""
    d, dmin = block[0:4].copy().view("<f2").astype(F)
    b = block[4:16].astype(np.int32)                                  # the 12 scale bytes
    sc = np.r_[b[0:4] & 63, (b[8:12] & 15) | ((b[0:4] >> 6) << 4)]
    mn = np.r_[b[4:8] & 63, (b[8:12] >> 4) | ((b[4:8] >> 6) << 4)]
    qs = block[16:144].reshape(4, 32)                                 # 4 chunks of 64 values
    q = np.stack([qs & 15, qs >> 4], axis=1).reshape(256)             # low nibbles, then high
    return d, dmin, sc, mn, q


# %% [markdown]
# ## 1. The super-block, drawn
#
# | field | bytes | what it holds |
# |---|---|---|
# | `d` | 2 | float16 scale of the eight 6-bit sub-block scales |
# | `dmin` | 2 | float16 scale of the eight 6-bit sub-block minimums |
# | `scales` | 12 | $\mathrm{sc}_j$ and $\mathrm{mn}_j$, 6 bits each, packed (exercise below) |
# | `qs` | 128 | the 256 codes, two per byte: byte $32c + i$ holds value $64c + i$ (low nibble) and $64c + 32 + i$ (high) |
#
# Below: the 144 bytes of the real super-block quantized by `ggml.quantize(x, "Q4_K")`, and
# its 256 weights with each sub-block's 16-level grid $d\,\mathrm{sc}_j\, q - d_{\min}\mathrm{mn}_j$.
# Each sub-block's grid covers its own range; the eight grids differ only through the two
# 6-bit integers, so two sub-blocks with similar ranges get nearly the same grid.

# %%
block = ggml.quantize(x[None], "Q4_K")[0]                                  # uint8 [144]
d, dmin, sc, mn, q = q4k_fields(block)
print(f"d = {d:.3e}, dmin = {dmin:.3e}\nsc = {sc}\nmn = {mn}")
x_hat = ggml.dequantize(block[None], "Q4_K")[0]

fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(11, 6), gridspec_kw={"height_ratios": [1, 4]})
for start, n, name, color in [(0, 2, "d", "C3"), (2, 2, "dmin", "C1"), (4, 12, "scales", "C2"),
                              (16, 128, "qs: 256 x 4-bit codes", "C0")]:
    ax0.barh(0, n, left=start, color=color, edgecolor="white")
    if n > 4:
        ax0.text(start + n / 2, 0, name, ha="center", va="center", color="white", fontsize=9)
    else:                                        # 2-byte fields: label beside the bar
        ax0.annotate(name, (start + n / 2, 0.4), xytext=(start + 3 * n, 0.75), fontsize=8,
                     arrowprops={"arrowstyle": "-", "lw": 0.5})
ax0.set_xlim(0, 144), ax0.set_ylim(-0.5, 1), ax0.set_yticks([]), ax0.set_xlabel("byte")
ax0.set_title("Q4_K: 144 bytes for 256 weights = 4.5 bits per weight")
idx = np.arange(256)
for j in range(8):
    levels = d * sc[j] * np.arange(16, dtype=F) - dmin * mn[j]
    ax1.hlines(levels, 32 * j, 32 * j + 31, color=f"C{j % 10}", lw=0.5, alpha=0.6)
    ax1.axvline(32 * j - 0.5, color="0.8", lw=0.8)
ax1.plot(idx, x, "k.", ms=4, label="weight $x$")
ax1.plot(idx, x_hat, "r_", ms=6, label=r"decoded $\hat x$")
ax1.set_xlabel("position in the super-block (8 sub-blocks of 32)"), ax1.legend(loc="upper right")
ax1.set_title("each sub-block's 16 levels: $d\\,sc_j\\,q - d_{min}\\,mn_j$")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. One block by hand
#
# Here is `quantize_row_q4_K_ref` for this super-block, written out in float32 exactly as the C
# does it (one rounding per operation; sums as left-to-right loops, which is what `fsum` is for:
# `np.sum` adds pairwise and can differ in the last bit, and a last bit can change a choice).
#
# **The search for one sub-block** (`make_qkx2_quants` with 16 levels, candidates
# $k = 0..20$, offsets $-1 + 0.1k$):
#
# 1. start from min-max: $m = \min(0, \min x)$, $s = (\max x - m)/15$, codes
#    $l_i = \mathrm{round}((x_i - m)/s)$, and its weighted error $E$;
# 2. for each candidate, try a slightly different inverse scale
#    $(15 - 1 + 0.1k) / (\max x - m)$ -- a grid a little finer or coarser than min-max, which
#    moves the rounding boundaries -- and take the codes it gives;
# 3. for those codes solve the weighted least-squares problem for $(s, m)$ exactly
#    ($2 \times 2$ normal equations, $D = S_w S_{l^2} - S_l^2$); if the fitted minimum comes out
#    above 0, refit the scale alone with $m = 0$;
# 4. keep the candidate if its error $E$ is strictly smaller than the best so far (the next
#    candidates then start from the new minimum).

# %%
def fsum(v, start=F(0)):
    """C's ``float s = start; for (...) s += v[i];``."""
    s = F(start)
    for t in np.asarray(v, F):
        s = F(s + t)
    return s


def nearest(v):
    """ggml's nearest_int: round half to even (of a float32)."""
    return np.rint(np.asarray(v, F)).astype(np.int32)


def search(x, w, nmax=15, rmin=-1.0, rdelta=0.1, nstep=20, log=None):
    """ggml's make_qkx2_quants for one sub-block: (scale s, minimum m >= 0, codes)."""
    sum_w, sum_x = fsum(w[1:], w[0]), fsum((w * x)[1:], w[0] * x[0])     # C starts at i = 0
    lo = min(F(x.min()), F(0))                                             # the offset, <= 0
    hi = F(x.max())
    if hi == lo:
        return F(0), -lo, np.zeros(len(x), np.int32)
    iscale = F(F(nmax) / F(hi - lo))
    scale = F(F(1) / iscale)
    L = np.clip(nearest(iscale * (x - lo)), 0, nmax)
    best = fsum(w * (scale * L.astype(F) + lo - x) ** 2)
    if log is not None:
        log.append(("min-max", iscale, scale, -lo, best, True))
    for k in range(nstep + 1):
        iscale = F(F(F(F(rmin) + F(F(rdelta) * F(k))) + F(nmax)) / F(hi - lo))
        La = np.clip(nearest(iscale * (x - lo)), 0, nmax)
        l = La.astype(F)
        s_l, s_l2, s_xl = fsum(w * l), fsum(w * l * l), fsum(w * l * x)
        D = F(F(sum_w * s_l2) - F(s_l * s_l))
        if not D > 0:
            continue
        this_s = F(F(F(sum_w * s_xl) - F(sum_x * s_l)) / D)
        this_m = F(F(F(s_l2 * sum_x) - F(s_l * s_xl)) / D)
        if this_m > 0:                                    # a minimum above 0: fit s alone
            this_m, this_s = F(0), F(s_xl / s_l2)
        err = fsum(w * (this_s * l + this_m - x) ** 2)
        if log is not None:
            log.append((k, iscale, this_s, -this_m, err, bool(err < best)))
        if err < best:
            L, best, scale, lo = La, err, this_s, this_m
    return scale, F(-lo), L


xs = x.reshape(8, 32)
weights = [F(np.sqrt(F(fsum(xj * xj) / F(32)))) + np.abs(xj) for xj in xs]   # sqrt(mean x^2) + |x|
log = []
s0, m0, L0 = search(xs[0], weights[0], log=log)
print(" cand   1/scale     scale       min     error  kept")
for k, isc, s_, m_, e_, took in log:
    print(f"{k!s:>7} {isc:9.3f} {s_:9.5f} {m_:9.5f} {e_:9.3e}  {'<-' if took else ''}")
print(f"sub-block 0: s = {s0:.5f}, m = {m0:.5f}; min-max would give s = "
      f"{(xs[0].max() - min(xs[0].min(), 0)) / 15:.5f}, m = {-min(xs[0].min(), 0):.5f}")

# %% [markdown]
# The error column is what the search minimizes; a `<-` marks the candidates that improved it.
# Then the *second* level: the 8 scales $s_j$ and 8 minimums $m_j$ become 6-bit integers
# against their own maximum, $d = \max_j s_j / 63$, $\mathrm{sc}_j = \mathrm{round}(63\, s_j / \max_j s_j)$
# (the same for the minimums), $d$ and $d_{\min}$ are rounded to float16, and every code is
# chosen again on the grid that is actually stored: $q = \mathrm{clamp}(\mathrm{round}((x + d_{\min}\mathrm{mn}_j) / (d\,\mathrm{sc}_j)), 0, 15)$.

# %%
s, m = np.zeros(8, F), np.zeros(8, F)
for j in range(8):
    s[j], m[j], _ = search(xs[j], weights[j])
s_max, m_max = F(max(F(0), s.max())), F(max(F(0), m.max()))
my_sc = np.minimum(63, nearest(F(F(63) / s_max) * s))
my_mn = np.minimum(63, nearest(F(F(63) / m_max) * m))
my_d, my_dmin = np.float16(F(s_max / F(63))), np.float16(F(m_max / F(63)))
dj = F(my_d) * my_sc.astype(F)                                      # stored sub-block scales
mj = F(my_dmin) * my_mn.astype(F)                                   # stored sub-block minimums
my_q = np.clip(nearest((xs + mj[:, None]) / dj[:, None]), 0, 15).reshape(256)
print(f"s_j = {s}\nm_j = {m}\nsc  = {my_sc}\nmn  = {my_mn}\nd = {float(my_d):.4e}, dmin = {float(my_dmin):.4e}")
print("hand == ggml.quantize:", float(my_d) == d, float(my_dmin) == dmin,
      np.array_equal(my_sc, sc), np.array_equal(my_mn, mn), np.array_equal(my_q, q))

# %% [markdown]
# The hand calculation gives exactly the fields of `refquant.formats.ggml.quantize`, and that
# function's bytes are pinned to ggml's own C quantizer (`ggml_quantize_chunk` from the
# `libggml-python` wheel) by `tests/test_ggml_kquants.py`: on every stress input, near-ties and
# real SmolLM2 weights, with and without an importance matrix. (A notebook does not import the
# tests; the chain hand -> refquant -> ggml's C is what they check.)
#
# ### Exercise — the 12 scale bytes
#
# Pack `my_sc` and `my_mn` into the 12 bytes of the `scales` field. ggml's layout
# (`get_scale_min_k4`): for $j < 4$, byte $j$ holds $\mathrm{sc}_j$ and byte $j + 4$ holds
# $\mathrm{mn}_j$ in their low 6 bits; for $j \ge 4$, byte $j + 4$ holds the low 4 bits of
# $\mathrm{sc}_j$ (low nibble) and of $\mathrm{mn}_j$ (high nibble), and the top 2 bits of
# $\mathrm{sc}_j$ ($\mathrm{mn}_j$) go into the top 2 bits of byte $j - 4$ (byte $j$).
# The check compares with bytes 4..15 of the block ggml's layout produced.

# %%
# --- your answer (a working answer is shipped) ---
my_scales = np.zeros(12, np.uint8)
for j in range(8):
    if j < 4:
        my_scales[j] |= my_sc[j]
        my_scales[j + 4] |= my_mn[j]
    else:
        my_scales[j + 4] = (my_sc[j] & 15) | ((my_mn[j] & 15) << 4)
        my_scales[j - 4] |= (my_sc[j] >> 4) << 6
        my_scales[j] |= (my_mn[j] >> 4) << 6

# %%
if np.array_equal(my_scales, block[4:16]):
    print(f"correct: {my_scales.tolist()}")
else:
    print(f"not yet: you have {my_scales.tolist()},\n     ggml {block[4:16].tolist()}")

# %% [markdown]
# ## 3. What the importance matrix changes
#
# A weight matters as much as the inputs it multiplies. llama.cpp's `llama-imatrix` runs the
# float model on calibration text and keeps, for every linear layer and input column $c$, the
# mean of $x_c^2$ over the tokens: the *importance matrix* (a vector per tensor). If the input
# columns were uncorrelated, the expected squared output error of the layer would be exactly
#
# $$ \mathbb{E}\,\lVert (W - \hat W) x \rVert^2 = \sum_c \mathbb{E}[x_c^2] \sum_r (W - \hat W)_{rc}^2 ,$$
#
# so the quantizer should spend its precision where $\mathbb{E}[x_c^2]$ is large. With an
# importance matrix ggml swaps the search weights for
# $w_i = \mathrm{imatrix}_i \sqrt{\sigma^2 + x_i^2}$ and fits the 6-bit scales by a weighted
# search too (`make_qp_quants`). Here: the importance matrix of blocks 0-1 from 8 calibration
# sequences of 128 tokens (`refquant.pipeline.imatrix.collect_imatrix`, llama.cpp's rules),
# and block 1's `ffn_down` quantized to Q4_K without and with it.

# %%
calib = data.calibration_batch(model.tokenizer, 1024, 128)                 # [8, 128]
imx = collect_imatrix(model, calib, n_blocks=2)
imp = imx.importance("blk.1.ffn_down.weight")                              # [1536]
W1 = off_grid("layers.1.mlp.down_proj", seed=1)                           # [576, 1536]
print(f"{len(imx.entries)} tensors; blk.1.ffn_down importance: median {np.median(imp):.3g}, "
      f"max {imp.max():.3g} ({imp.max() / np.median(imp):.0f}x the median)")
col_err = {}
for label, im in (("Q4_K", None), ("Q4_K + imatrix", imp)):
    W1_hat = ggml.dequantize(ggml.quantize(W1, "Q4_K", im), "Q4_K")
    col_err[label] = imp * np.sum((W1_hat - W1).astype(np.float64) ** 2, axis=0)   # [1536]
    print(f"{label:15s} weight error {rel_error(W1, W1_hat):.4f}, importance-weighted "
          f"error {col_err[label].sum():.4e}")
gain = 1 - col_err["Q4_K + imatrix"].sum() / col_err["Q4_K"].sum()
print(f"the imatrix lowers the weighted error by {100 * gain:.0f}%")

order = np.argsort(imp)[::-1]
fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(10, 5.5), sharex=True)
ax0.semilogy(imp[order], "k")
ax0.set_ylabel("importance $E[x_c^2]$")
ax0.set_title("blk.1.ffn_down: input columns sorted by importance")
smooth = np.ones(32) / 32
for label, color in (("Q4_K", "C0"), ("Q4_K + imatrix", "C3")):
    ax1.semilogy(np.arange(16, 1536 - 15), np.convolve(col_err[label][order], smooth, "valid"),
                 color=color, label=label)
ax1.set_xlabel("column rank"), ax1.set_ylabel("weighted error per column\n(running mean of 32)")
ax1.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# The plain weight error barely moves (it may even grow a little): the imatrix does not make the
# quantizer better on average, it moves error from the columns that see large inputs to the
# ones that see small inputs. The left end of the lower plot is where that pays.
#
# ## 4. The mix: what `Q4_K_M` gives each tensor
#
# `llama-quantize ... Q4_K_M` does not make every tensor Q4_K. Its rules (`src/llama-quant.cpp`,
# written down in `refquant.formats.gguf_mix`) give the output head Q6_K, and `attn_v` and
# `ffn_down` Q6_K in the layers `use_more_bits` picks (the first and last eighth and every third
# layer between). And a K-quant needs rows that are a multiple of 256: the bundled model's
# hidden size is 576 = 2.25 x 256, so every tensor with 576 columns falls back to a 32-block type
# (Q4_K -> Q5_0, Q6_K -> Q8_0), exactly as llama.cpp does. Only `ffn_down` (1536 columns) keeps
# its K-quant.

# %%
shapes = {t.name: tuple(int(n) for n in t.shape[::-1]) for t in reader.tensors}   # NumPy order
cfg = model.config
mix = tensor_types(shapes, "Q4_K_M", n_layers=cfg.n_layers, n_gqa=cfg.n_heads // cfg.n_kv_heads)
n_params = {n: int(np.prod(s)) for n, s in shapes.items()}
bpw = {t: 32.0 if t == "F32" else ggml.bits_per_weight(t) for t in set(mix.values())}
total_bits = sum(n_params[n] * bpw[t] for n, t in mix.items())
print(f"{'type':6s} {'tensors':>8s} {'weights':>11s}  bits/weight")
for t in sorted(set(mix.values()), key=lambda t: bpw[t]):
    names = [n for n in mix if mix[n] == t]
    print(f"{t:6s} {len(names):8d} {sum(n_params[n] for n in names):11,d}  {bpw[t]:.4g}")
print(f"whole file: {total_bits / sum(n_params.values()):.3f} bits per weight "
      f"(Q4_K alone: 4.5); token_embd -> {mix['token_embd.weight']} (tied output head)")

KINDS = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
types = sorted(set(mix.values()) - {"F32"}, key=lambda t: bpw[t])
grid = np.array([[types.index(mix[f"blk.{i}.{k}.weight"]) for k in KINDS]
                 for i in range(cfg.n_layers)])
fig, ax = plt.subplots(figsize=(10, 3.2))
cmap = plt.get_cmap("viridis", len(types))
im = ax.imshow(grid.T, aspect="auto", cmap=cmap, vmin=-0.5, vmax=len(types) - 0.5)
ax.set_yticks(range(len(KINDS)), KINDS), ax.set_xlabel("block")
ax.set_title("Q4_K_M on SmolLM2-135M: the type of every block tensor")
cbar = fig.colorbar(im, ticks=range(len(types)))
cbar.ax.set_yticklabels([f"{t} ({bpw[t]:.3g} b/w)" for t in types])
plt.tight_layout()
plt.show()
more = [i for i in range(cfg.n_layers) if use_more_bits(i, cfg.n_layers)]
print(f"use_more_bits picks blocks {more}")

# %% [markdown]
# ## 5. Bits per weight against error, every type
#
# Every GGML block type refquant writes, on the first 192 rows of block 1's `ffn_down` (the
# one shape here every type can hold): the relative weight error of the reference quantizer,
# and the importance-weighted error without and with the importance matrix (types whose ggml
# quantizer ignores it get the same bytes either way). The last column is the reference
# quantizer on the weights as *stored* (no dither): there Q4_1 is exact and every type with a
# minimum per 32 weights looks better than it is -- a property of this checkpoint, not of the
# formats (DESIGN.md: the Q4_1 setting is a sanity check, not a benchmark).

# %%
Wt = W1[:192]
W_stored = np.asarray(model.weights["layers.1.mlp.down_proj.weight"], F)[:192]
TYPES = ["TQ2_0", "Q2_K", "Q3_K", "IQ4_XS", "Q4_0", "IQ4_NL", "Q4_K", "Q4_1", "Q5_0", "Q5_K",
         "Q5_1", "Q6_K", "Q8_0"]


def weighted_rel(A_hat, A):
    """sqrt(sum_c imp_c ||A_c - A_hat_c||^2 / sum_c imp_c ||A_c||^2)."""
    A, A_hat = A.astype(np.float64), A_hat.astype(np.float64)
    return float(np.sqrt(np.sum(imp * (A_hat - A) ** 2) / np.sum(imp * A ** 2)))


rows = []
for t in TYPES:
    plain = ggml.dequantize(ggml.quantize(Wt, t), t)
    with_im = ggml.dequantize(ggml.quantize(Wt, t, imp), t)
    stored = ggml.dequantize(ggml.quantize(W_stored, t), t)
    rows.append((t, ggml.bits_per_weight(t), rel_error(Wt, plain), weighted_rel(plain, Wt),
                 weighted_rel(with_im, Wt), rel_error(W_stored, stored)))
print(f"{'type':7s} {'bits/w':>7s} {'rel. error':>11s} {'weighted':>9s} {'+imatrix':>9s} "
      f"{'stored grid':>12s}")
for t, b, e, w0, w1, e_stored in rows:
    print(f"{t:7s} {b:7.4g} {e:11.4f} {w0:9.4f} {w1:9.4f} {e_stored:12.4f}")

fig, ax = plt.subplots(figsize=(8, 4.5))
for t, b, e, w0, w1, _ in rows:
    ax.plot([b, b], [w0, w1], color="0.7", lw=1)
    ax.plot(b, w0, "o", color="C0")
    ax.plot(b, w1, "s", color="C3")
    dx, dy = {"Q4_0": (6, 6), "IQ4_NL": (8, -1), "Q4_K": (8, -13), "Q5_K": (-30, -6)}.get(t, (4, 4))
    ax.annotate(t, (b, w0), textcoords="offset points", xytext=(dx, dy), fontsize=8)
ax.plot([], [], "o", color="C0", label="reference quantizer")
ax.plot([], [], "s", color="C3", label="with the importance matrix")
ax.set_yscale("log"), ax.set_xlabel("bits per weight (scales included)")
ax.set_ylabel("importance-weighted relative error")
ax.set_title("blk.1.ffn_down, 192 rows: every GGML type")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# At equal bits the K-quants beat the 32-block types (Q4_K vs Q4_0 at 4.5 bits): the same
# storage buys a minimum *and* a searched scale per 32 weights. The importance matrix lowers the
# weighted error of every type whose ggml quantizer reads it, here by roughly 15-35% (most for
# Q2_K, whose grid is coarsest); Q8_0 and TQ2_0 ignore it. In the `Q4_K_M` file of section 4,
# Q4_K holds only the 16 `ffn_down` tensors; the 576-column tensors are Q5_0 / Q8_0, which is
# why the whole file costs 6.2 bits per weight rather than 4.5.
#
# **Perplexity** needs the whole model quantized (about 100 M weights; minutes per type in
# NumPy on two cores), which is more than a notebook should run. Two commands do it:
# `refquant quantize --format gguf --type Q4_K_M --imatrix auto -o model.Q4_K_M.gguf` writes a
# complete llama.cpp file of the bundled model (with an importance matrix collected from the
# calibration text), and `refquant eval model.Q4_K_M.gguf` measures its perplexity on 16,384
# held-out tokens.
#
# ## What to try next
#
# - Change the candidate range of `search` (`rmin`, `rdelta`, `nstep`) and watch the table of
#   section 2: how much of the gain over min-max comes from the first few candidates?
# - Quantize the same super-block with `ggml.quantize(x[None], "Q4_K", imatrix)` for an
#   imatrix that is large on one sub-block only, and see which $\mathrm{sc}_j$ change.
# - Compare `Q4_K_M` with `Q3_K_M` and `Q2_K` in section 4 (`tensor_types(shapes, "Q3_K_M", ...)`):
#   which tensors each mix protects.
# - Write a GGUF file with `refquant quantize` and read it back with `refquant inspect`.
