"""GPTQ onto the GGML block grids against the plain block quantizer, on real SmolLM2-135M layers.

For blocks ``--blocks`` (default 0 and 15) and their q_proj, gate_proj and down_proj, the inputs
of each linear are recorded on 16384 calibration tokens (64 sequences of 256, the calibration
split) and on 4096 held-out tokens of the evaluation split. From the calibration inputs: the
Hessian ``H = 2 X X^T / n`` and an importance matrix (mean ``x^2`` per input column, what
``llama-imatrix`` accumulates). For every type of :data:`refquant.formats.ggml.gptq_grid`'s
grids whose block divides the row (the K-quants and IQ4_XS need 256: only down_proj, 1536
inputs), without and with the importance matrix, it prints the relative output error on the
held-out inputs,

    ||(W - W_hat) X_eval||_F / ||W X_eval||_F,

of the plain quantizer (``ggml.quantize``, ggml's C bytes) and of
:func:`refquant.formats.ggml.gptq_ggml` (``act_order=True``, ``damp=0.01``), and their ratio.
The bundled weights are stored as Q4_1, so Q4_1 (and Q5_1 with an imatrix) reproduce them
exactly ("exact"), and Q4_K / Q5_K nearly so (their 32-value sub-blocks with a minimum hold
the Q4_1 grid up to the 6-bit scales): GPTQ has little left to gain there.

Usage::

    python scripts/gptq_ggml_layers.py [--blocks 0,15]      # about 7 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import time

import numpy as np

import refquant as rq
from refquant.algorithms.gptq import hessian
from refquant.formats import ggml
from refquant.models.llama import default_linear
from refquant.pipeline.blocks import block_batched, embed_batched
from refquant.pipeline.data import calibration_batch, evaluation_tokens

LAYERS = ("self_attn.q_proj", "mlp.gate_proj", "mlp.down_proj")
FMTS = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
        "Q6_K", "IQ4_XS")


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    names = [ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")]
    return names[0] if names else platform.processor()


def recording_linear(model, rec: dict):
    """The float linear, appending each input of a LAYERS linear to ``rec[layer]``."""
    fl = default_linear(model)

    def linear(name, x):
        key = name.split(".", 2)[2]
        if key in LAYERS:
            rec.setdefault(key, []).append(x.reshape(-1, x.shape[-1]).astype(np.float32))
        return fl(name, x)
    return linear


def layer_rows(W, H, imatrix, E):
    """One printed row per type: plain and GPTQ relative errors on the held-out inputs E."""
    ref = np.linalg.norm(W.astype(np.float64) @ E)
    for fmt in FMTS:
        t = ggml.block_type(fmt)
        if W.shape[1] % t.block_size:
            continue
        cells = []
        for im in (None, imatrix):
            if im is not None and not t.uses_imatrix:
                cells.append("(ignores the imatrix)")
                continue
            start = time.time()
            plain = ggml.dequantize(ggml.quantize(W, fmt, im), fmt)
            res = ggml.gptq_ggml(W, H, fmt, imatrix=im, act_order=True)
            e0 = np.linalg.norm((W - plain).astype(np.float64) @ E) / ref
            e1 = np.linalg.norm((W - res.w_hat).astype(np.float64) @ E) / ref
            ratio = f"{e1 / e0:.3f}" if e0 > 0 else "exact"
            cells.append(f"plain {e0:.4f} gptq {e1:.4f} ratio {ratio} ({time.time() - start:.1f} s)")
        yield fmt, cells


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", default="0,15")
    args = ap.parse_args()
    blocks = sorted(int(b) for b in args.blocks.split(","))
    model = rq.load_model(None)
    calib = calibration_batch(model.tokenizer, 16384, 256, seed=0)
    ev = evaluation_tokens(model.tokenizer, 4096, seed=0)
    ev = ev[: len(ev) // 256 * 256].reshape(-1, 256)
    print(f"CPU: {cpu_model()}; calibration {calib.size} tokens, evaluation {ev.size} tokens")
    Xc, Xe = embed_batched(model, calib, 4), embed_batched(model, ev, 4)
    for i in range(blocks[-1] + 1):
        rc, re = {}, {}
        lc, le = (recording_linear(model, rc), recording_linear(model, re)) if i in blocks \
            else (None, None)
        Xc, Xe = block_batched(model, i, Xc, 4, linear=lc), block_batched(model, i, Xe, 4, linear=le)
        if i not in blocks:
            continue
        for layer in LAYERS:
            X_cal = np.concatenate(rc[layer])                              # [n, in]
            W = np.asarray(model.weights[f"layers.{i}.{layer}.weight"], np.float32)
            H, _ = hessian(X_cal)
            imatrix = np.mean(X_cal.astype(np.float64) ** 2, axis=0).astype(np.float32)
            E = np.concatenate(re[layer]).astype(np.float64).T             # [in, n_eval]
            for fmt, cells in layer_rows(W, H, imatrix, E):
                print(f"blk {i:2d} {layer:17s} {fmt:7s} | {cells[0]} | imatrix: {cells[1]}",
                      flush=True)


if __name__ == "__main__":
    main()
