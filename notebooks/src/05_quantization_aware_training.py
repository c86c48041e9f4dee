# %% [markdown]
# # 05 · Quantization-aware training
#
# Post-training quantization (notebooks 01-04) rounds a finished model and hopes for the best. At
# 2 or 3 bits the rounding error is too large to hope: the model has to *learn* to live with it.
# Quantization-aware training (QAT) puts the quantizer into the forward pass during training, so
# the loss sees exactly the numbers that will be deployed, and lets gradient descent move the
# weights (and, with LSQ, the step sizes) to where rounding hurts least.
#
# **You will learn**
#
# - why the gradient of rounding is useless, and what the straight-through estimator (STE) puts
#   in its place, drawn as a function and as a gradient;
# - how to check a backward pass with finite differences, and what such a check can and cannot
#   say about an STE;
# - the learned step size of LSQ: its gradient, its gradient scale, and how the step moves while
#   training;
# - how PTQ and QAT compare on a real (small) task: scikit-learn's bundled 8x8 handwritten digits.
#
# **You should know first:** notebook 01 (uniform quantization) and notebook 04 (min-max and MSE
# calibration); backpropagation through a linear layer.
#
# **Sizes used here:** a 64-64-64-10 MLP trained for 30 float epochs and 5 QAT epochs (about
# 15 s). The full comparison (128 hidden units, 60 + 30 epochs, about 80 s) is
# `python examples/qat_digits.py`.
#
# ## The equations
#
# The fake quantizer of a tensor $v$ with step $s$ and zero point $z$ is
#
# $$\hat v = s\,\big(\mathrm{clamp}(\lfloor v/s \rceil + z,\ q_{min},\ q_{max}) - z\big).$$
#
# Its true derivative $\partial \hat v / \partial v$ is 0 everywhere except at the jumps, where it
# does not exist. The **straight-through estimator** (Bengio et al. 2013, arXiv:1308.3432) treats
# rounding as the identity in the backward pass; the *clipped* STE (Jacob et al. 2018,
# arXiv:1712.05877) keeps the clamp:
#
# $$\frac{\partial \hat v}{\partial v} \approx \mathbb 1\big[q_{min} \le v/s + z \le q_{max}\big].$$
#
# **LSQ** (Esser et al. 2020, arXiv:1902.08153, eq. 3) also learns $s$. With $Q_N = z - q_{min}$,
# $Q_P = q_{max} - z$ and $u = v/s$,
#
# $$\frac{\partial \hat v}{\partial s} = \begin{cases} -Q_N & u \le -Q_N \\
#   \lfloor u \rceil - u & -Q_N < u < Q_P \\ Q_P & u \ge Q_P \end{cases}, \qquad
# \frac{\partial L}{\partial s} = g \sum_i \frac{\partial L}{\partial \hat v_i}
#   \frac{\partial \hat v_i}{\partial s}, \qquad g = \frac{1}{\sqrt{N Q_P}},$$
#
# where $N$ is the number of values sharing the step; $g$ keeps the step's update in proportion
# to the weights' updates.

# %%
import pathlib
import sys

import numpy as np
import matplotlib.pyplot as plt
import refquant as rq
from refquant.training import nn
from refquant.training.qat import lsq_backward, lsq_forward, lsq_grad_scale, ste_mask

np.set_printoptions(precision=4, suppress=True, linewidth=110)

# %% [markdown]
# ## 1. The staircase and its gradients
#
# Three-bit symmetric codes ($q_{min} = -4$, $q_{max} = 3$) with step $s = 0.25$: the quantizer
# maps $[-1.5, 1.5]$ onto 8 levels. `rq.FakeQuant` is the layer: `forward` quantizes, `backward`
# passes the incoming gradient through the STE.

# %%
spec3 = rq.QuantSpec(bits=3, symmetric=True)
qp = rq.QParams(np.float32(0.25), np.int32(0))
v = np.linspace(-1.5, 1.5, 1201)

fq = rq.FakeQuant(spec3, qp, ste="clipped")
v_hat = fq.forward(v)
grad_clipped = fq.backward(np.ones_like(v))                       # dL/dv for dL/dv_hat = 1
fi = rq.FakeQuant(spec3, qp, ste="identity")
fi.forward(v)
grad_identity = fi.backward(np.ones_like(v))
true_grad = np.gradient(v_hat, v)                                 # finite differences of the staircase

print("levels:", np.unique(v_hat))
print("codes of v = -1.2, -0.13, 0.12, 0.9:", rq.quantize(np.array([-1.2, -0.13, 0.12, 0.9]), qp, spec3))

fig, ax = plt.subplots(1, 2, figsize=(10, 3.3))
ax[0].plot(v, v, color="0.7", ls=":", label="identity")
ax[0].plot(v, v_hat, label=r"$\hat v$ (3-bit, s = 0.25)")
ax[0].set_xlabel("v"); ax[0].set_ylabel(r"$\hat v$"); ax[0].set_title("forward: the staircase")
ax[0].legend(fontsize=8)
ax[1].plot(v, np.clip(true_grad, 0, 3), color="0.6", label="true derivative (0, spikes at jumps)")
ax[1].plot(v, grad_clipped + 0.02, label="clipped STE")
ax[1].plot(v, grad_identity - 0.02, ls="--", label="identity STE")
ax[1].set_ylim(-0.2, 3.1); ax[1].set_xlabel("v"); ax[1].set_ylabel(r"$\partial \hat v / \partial v$")
ax[1].set_title("backward: what the gradient is told"); ax[1].legend(fontsize=8)
plt.tight_layout(); plt.show()

# %% [markdown]
# The true derivative is 0 on every step and infinite at every jump: a network trained with it
# would never move. The clipped STE says "1 inside the clipping range, 0 outside": a weight that
# has been clipped gets no gradient from the loss (it cannot change the output until it comes
# back inside), every other weight is updated as if there were no rounding.

# %% [markdown]
# ## 2. Finite differences: what they check and what they cannot
#
# A backward pass is checked by comparing it with central differences $\big(L(\theta + h) -
# L(\theta - h)\big) / 2h$. For the quantizer's *input* the check shows the STE for what it is: an
# estimate, not a derivative. Take $L = \sum_i c_i \hat v_i$ with random $c$:

# %%
rng = np.random.default_rng(0)
vs = rng.uniform(-1.4, 1.4, 6)
c = rng.standard_normal(6)
h = 1e-6
fd_v = np.array([(np.sum(c * rq.fake_quantize(vs + h * e, spec3, qparams=qp))
                  - np.sum(c * rq.fake_quantize(vs - h * e, spec3, qparams=qp))) / (2 * h) for e in np.eye(6)])
fq.forward(vs)
print("finite differences dL/dv:", fd_v)
print("clipped STE        dL/dv:", fq.backward(c))

# %% [markdown]
# The finite differences are zero (the points lie on flat steps); the STE returns $c_i$. There is
# no finite-difference check of an estimator, only of the code around it.
#
# The step size is a more instructive case. As long as no code changes, $\hat v = s\,(q - z)$
# is *linear* in $s$, so its true derivative is $q - z$. LSQ's gradient is that *plus* what the
# STE adds by letting the gradient through the rounding of $u = v/s$: $s \cdot \partial u /
# \partial s = -u$ for every value inside the clipping range, which is how $\lfloor u \rceil - u$
# arises. A finite-difference check must therefore find
#
# $$\frac{\partial L}{\partial s}\Big|_{\text{finite diff.}} \;=\;
#   \frac{\partial L}{\partial s}\Big|_{\text{LSQ}} \;+\; \sum_{i\ \text{inside}}
#   \frac{\partial L}{\partial \hat v_i}\, u_i .$$
#
# `lsq_forward` computes $\hat v$ for a float64 step, `lsq_backward` the gradients ($g = 1$ for
# the raw value).

# %%
spec4 = rq.QuantSpec(bits=4, symmetric=True)
w = rng.standard_normal(1000)
dL = rng.standard_normal(1000)                                     # dL/dv_hat of L = sum(dL * v_hat)
s = np.array(0.3)
z = np.array(0, np.int32)
_, ds = lsq_backward(dL, w, s, z, spec4, g=1.0)
h = 1e-7
L = lambda s_: float(np.sum(dL * lsq_forward(w, s_, z, spec4)))
ds_fd = (L(s + h) - L(s - h)) / (2 * h)
u_w = w / s
inside = (u_w > spec4.qmin) & (u_w < spec4.qmax)
ste_term = float(np.sum(dL[inside] * u_w[inside]))
print(f"finite difference (true derivative)  {ds_fd:12.6f}")
print(f"LSQ gradient + STE term              {float(ds) + ste_term:12.6f}"
      f"   (LSQ {float(ds):.6f}, STE term {ste_term:.6f})")
print(f"{np.sum(~inside)} of {w.size} weights are clipped")
assert abs(float(ds) + ste_term - ds_fd) <= 1e-6 * abs(ds_fd)

# %% [markdown]
# The same per element, as a function of $u = v/s$: `lsq_backward` one element at a time (the
# sawtooth $\lfloor u \rceil - u$ inside the range, the constants $-Q_N$ and $Q_P$ outside) and
# central differences of `lsq_forward` (the staircase $q$). Outside the range the two agree: a
# clipped value's gradient is exact, and it pulls the step up so that the value comes back in
# range. Inside they differ by exactly the STE term $-u$.

# %%
u = np.linspace(-11, 9, 801)                                        # v / s for s = 1
dvhat_ds = np.array([float(lsq_backward(np.ones(1), np.array([ui]), np.array(1.0), z, spec4, 1.0)[1])
                     for ui in u])
u_fd = u[::17] + 0.01                                               # off the rounding boundaries
fd = np.array([(lsq_forward(np.array([ui]), np.array(1.0 + 1e-6), z, spec4)[0]
                - lsq_forward(np.array([ui]), np.array(1.0 - 1e-6), z, spec4)[0]) / 2e-6 for ui in u_fd])
fig, ax = plt.subplots(figsize=(7, 3))
ax.plot(u, dvhat_ds, label=r"LSQ: $\lfloor u \rceil - u$ inside, $-Q_N$ / $Q_P$ outside")
ax.plot(u_fd, fd, "o", ms=3, label="finite difference (codes fixed): q")
ax.axvline(spec4.qmin, color="0.6", ls=":"); ax.axvline(spec4.qmax, color="0.6", ls=":")
ax.set_xlabel("u = v / s"); ax.set_ylabel(r"$\partial \hat v / \partial s$")
ax.set_title(f"step gradient, 4-bit symmetric ($-Q_N$ = {spec4.qmin}, $Q_P$ = {spec4.qmax})")
ax.legend(fontsize=7); plt.tight_layout(); plt.show()

# %% [markdown]
# ### Exercise — LSQ's step gradient
#
# Compute $\partial L / \partial s$ for the per-tensor step of the 1000 weights `w` above, with
# the incoming gradient `dL`, step `s = 0.3`, 4-bit symmetric codes, **and** LSQ's gradient scale
# $g = 1/\sqrt{N Q_P}$. Use only NumPy (`np.rint` rounds half to even, as refquant does). The next
# cell checks your value against `lsq_backward` with `g = lsq_grad_scale(N, spec4)`.

# %%
# --- your answer (a working answer is shipped) ---
Q_N, Q_P = 0 - spec4.qmin, spec4.qmax
u_w = w / 0.3
dvhat = np.where(u_w <= -Q_N, -Q_N, np.where(u_w >= Q_P, Q_P, np.rint(u_w) - u_w))
my_ds = np.sum(dL * dvhat) / np.sqrt(w.size * Q_P)

# %%
g = lsq_grad_scale(w.size, spec4)
_, ref_ds = lsq_backward(dL, w, np.array(0.3), z, spec4, g)
if np.isclose(my_ds, float(ref_ds), rtol=1e-6, atol=1e-12):
    print(f"correct: dL/ds = {float(ref_ds):.6f} (g = {g:.5f})")
else:
    print(f"not yet: you have {my_ds:.6f}, refquant has {float(ref_ds):.6f}; without g it is "
          f"{float(ref_ds) / g:.6f}. Check Q_N, Q_P and the three cases.")

# %% [markdown]
# ## 3. QAT on real data: handwritten digits
#
# The digits (1,797 images of 8x8 pixels, scaled to $[0, 1]$, bundled with scikit-learn: no
# download) are split 70/30, stratified by class. `examples/qat_digits.py` holds the experiment;
# we import its three helpers rather than copy them:
#
# - `train_float` trains a ReLU MLP in float64 with Adam;
# - `quantized_copy` rebuilds it with fake-quantized weights (symmetric, one scale per output
#   channel: `rq.FakeQuant`, or `rq.LSQ` with a trainable step) and 8-bit fake-quantized
#   activations (asymmetric, per tensor, ranges calibrated once on the training set);
# - `compare` runs PTQ (min-max and MSE calibration) and QAT (MSE calibration as the start, then
#   SGD with momentum on weights and steps) for each weight bit width.

# %%
root = next(p for p in (pathlib.Path.cwd(), *pathlib.Path.cwd().parents) if (p / "examples" / "qat_digits.py").exists())
sys.path.insert(0, str(root / "examples"))
import qat_digits as ex                                           # noqa: E402

X_tr, X_te, y_tr, y_te = ex.load_split(0)
print("train", X_tr.shape, "test", X_te.shape)
fmodel = ex.train_float(X_tr, y_tr, hidden=64, epochs=30, seed=0)
float_acc = nn.accuracy(fmodel, X_te, y_te)
print(f"float64 model: {100 * float_acc:.1f} % held-out accuracy")

# %% [markdown]
# Now 2-bit weights (codes $-2 \dots 1$ per output channel). PTQ with min-max calibration,
# PTQ with MSE calibration, then QAT starting from the MSE-calibrated copy, one epoch at a time so
# that we can watch the held-out accuracy and the learned steps of the first layer.

# %%
ptq = {m: nn.accuracy(ex.quantized_copy(fmodel, 2, X_tr, method=m, learn_steps=False), X_te, y_te)
       for m in ("minmax", "mse")}
print(f"PTQ 2-bit: min-max {100 * ptq['minmax']:.1f} %, MSE {100 * ptq['mse']:.1f} %")

qmodel = ex.quantized_copy(fmodel, 2, X_tr, method="mse", learn_steps=True)
first = next(layer for layer in qmodel.layers if isinstance(layer, nn.Linear))
steps0 = first.weight_quant.step.value.copy()                     # [64] one step per output channel
opt = nn.SGD(qmodel.parameters(), lr=ex.QAT_LR, momentum=0.9)
history, step_hist = [nn.accuracy(qmodel, X_te, y_te)], [steps0.copy()]
for epoch in range(5):
    nn.fit(qmodel, X_tr, y_tr, opt, epochs=1, batch_size=ex.BATCH, seed=1 + epoch)
    history.append(nn.accuracy(qmodel, X_te, y_te))
    step_hist.append(first.weight_quant.step.value.copy())
print("QAT held-out accuracy by epoch:", [f"{100 * a:.1f}" for a in history])
assert history[-1] > ptq["minmax"]

step_hist = np.array(step_hist)                                    # [6, 64]
fig, ax = plt.subplots(1, 2, figsize=(10, 3.2))
ax[0].plot(100 * np.array(history), "o-", label="QAT (LSQ)")
ax[0].axhline(100 * ptq["mse"], color="C1", ls="--", label="PTQ MSE")
ax[0].axhline(100 * ptq["minmax"], color="C3", ls="--", label="PTQ min-max")
ax[0].axhline(100 * float_acc, color="0.5", ls=":", label="float64")
ax[0].set_xlabel("QAT epoch"); ax[0].set_ylabel("held-out accuracy (%)")
ax[0].set_title("2-bit weights, 8-bit activations"); ax[0].legend(fontsize=7)
ax[1].plot(step_hist / steps0, color="C0", alpha=0.3, lw=0.8)
ax[1].set_xlabel("QAT epoch"); ax[1].set_ylabel("step / initial step")
ax[1].set_title("LSQ: the 64 learned steps of layer 1"); plt.tight_layout(); plt.show()
print("step / initial after 5 epochs: min {:.3f}, median {:.3f}, max {:.3f}".format(
    *np.percentile(step_hist[-1] / steps0, [0, 50, 100])))

# %% [markdown]
# Within a few epochs QAT wins back nearly all that 2-bit rounding took, and the steps move away
# from their MSE-calibrated start, each output channel on its own: the loss, not a
# reconstruction error, now decides the clipping range.
#
# ## 4. The table: PTQ vs QAT at every bit width
#
# `compare` trains the float model once and then, for each bit width, builds both PTQ copies and
# fine-tunes a QAT copy for 5 epochs.

# %%
float_acc, rows = ex.compare((8, 4, 3, 2), qat_epochs=5, hidden=64, float_epochs=30, seed=0)
print(ex.table(float_acc, rows))
by_bits = {r.bits: r for r in rows}
assert by_bits[2].qat > by_bits[2].ptq_minmax

bits = [r.bits for r in rows]
fig, ax = plt.subplots(figsize=(5.5, 3.3))
ax.plot(bits, [100 * r.ptq_minmax for r in rows], "o-", label="PTQ min-max")
ax.plot(bits, [100 * r.ptq_mse for r in rows], "s-", label="PTQ MSE")
ax.plot(bits, [100 * r.qat for r in rows], "^-", label="QAT (LSQ)")
ax.axhline(100 * float_acc, color="gray", ls="--", label="float64")
ax.set_xticks(bits); ax.invert_xaxis(); ax.set_xlabel("weight bits (8-bit activations)")
ax.set_ylabel("held-out accuracy (%)"); ax.set_title("digits MLP: PTQ vs QAT")
ax.legend(fontsize=8); plt.tight_layout(); plt.show()

# %% [markdown]
# At 8 and 4 bits the three are within a few test images of each other (540 images: one image is
# 0.19 %): rounding is harmless, and QAT has nothing to recover. At 3 and 2 bits min-max PTQ
# falls off, MSE calibration saves much of it, and QAT closes most of the remaining gap.
#
# The 2-bit QAT number here differs from the epoch-by-epoch run of section 3 although both
# start from the same copy: `compare` makes one 5-epoch `fit` with shuffling seed 1, section 3
# five 1-epoch fits with seeds 1 to 5. The gap between the two is the run-to-run noise of a
# short fine-tuning on 1,257 images; read differences of one or two test images accordingly.
#
# ## What to try next
#
# - Run the full comparison: `python examples/qat_digits.py --plot qat.png` (128 hidden units,
#   30 QAT epochs, about 80 s), and compare with the table above.
# - Switch the STE to `ste="identity"` in `quantized_copy` (pass it to `rq.FakeQuant`) and train
#   at 2 bits: does letting clipped weights receive gradient help or hurt?
# - Turn off LSQ's gradient scale (`rq.LSQ(..., grad_scale=False)`): how far do the steps move,
#   and does training stay stable at `lr=1e-2`?
# - QAT on the real model: `refquant.training.qat_mlp.qat_swiglu_mlp` fine-tunes one Llama MLP on
#   its own activations (see `examples/qat_llama_mlp.py`).
