"""Post-training quantization vs quantization-aware training on scikit-learn's digits.

Trains a small MLP (64-128-128-10, ReLU) in float64 on the bundled 8x8 handwritten digits
(``sklearn.datasets.load_digits``: 1,797 images, no download), then quantizes its weights to
8, 4, 3 and 2 bits (symmetric, one scale per output channel) with 8-bit activations
(asymmetric, one scale per tensor, fixed after calibration on the training set) in three ways:

- PTQ min-max: weight scales and activation ranges from min-max calibration;
- PTQ MSE: both from the MSE grid-search calibration of :func:`refquant.calibration.observers`;
- QAT: start from the MSE-calibrated model, then fine-tune the weights *and* the weight step
  sizes (LSQ, Esser et al., ICLR 2020, arXiv:1902.08153) with straight-through gradients on the
  training set, activations fake-quantized in the forward pass.

Held-out accuracy is measured on a stratified 30 % test split that no step ever trains or
calibrates on. All hyperparameters are fixed below (nothing is tuned on the test split) and
every random choice is seeded.

Measured (seed 0; float64 model 98.1 % held-out; ~80 s on 2 shared CPU cores)::

    weight bits   PTQ min-max   PTQ MSE   QAT (LSQ)
    8             98.1 %        98.1 %    98.1 %
    4             98.1 %        98.5 %    98.7 %
    3             97.0 %        98.0 %    98.3 %
    2             71.7 %        95.4 %    98.0 %

(540 test images: at 3 bits QAT's lead over PTQ MSE is 2 images, at 2 bits 14.)

Usage::

    python examples/qat_digits.py [--plot qat_digits.png] [--qat-epochs 30]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import numpy as np

import refquant as rq
from refquant.training import nn
from refquant.training.qat import LSQ, FakeQuant

HIDDEN = 128
FLOAT_EPOCHS = 60
FLOAT_LR = 1e-3
QAT_LR = 1e-2
BATCH = 32
ACT_SPEC = rq.QuantSpec(bits=8, symmetric=False)            # per tensor


def weight_spec(bits: int) -> rq.QuantSpec:
    return rq.QuantSpec(bits=bits, symmetric=True, granularity="channel", axis=0)


def load_split(seed: int = 0):
    """Digits scaled to [0, 1], split 70/30, stratified by class (deterministic)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    X = d.data.astype(np.float64) / 16.0                   # [1797, 64]
    return train_test_split(X, d.target, test_size=0.3, random_state=seed, stratify=d.target)


def train_float(X, y, *, hidden: int = HIDDEN, epochs: int = FLOAT_EPOCHS, seed: int = 0):
    rng = np.random.default_rng(seed)
    model = nn.Sequential([nn.Linear.init(X.shape[1], hidden, rng), nn.ReLU(),
                           nn.Linear.init(hidden, hidden, rng), nn.ReLU(),
                           nn.Linear.init(hidden, 10, rng)])
    nn.fit(model, X, y, nn.Adam(model.parameters(), lr=FLOAT_LR), epochs=epochs,
           batch_size=BATCH, seed=seed)
    return model


def quantized_copy(model, bits: int, X_cal, *, method: str, learn_steps: bool):
    """A copy of ``model`` with fake-quantized weights and 8-bit fake-quantized activations.

    Weight parameters come from ``rq.calibrate(W, spec, method)``; with ``learn_steps`` the
    weight quantizers are LSQ (trainable step, initialised there), else fixed ``FakeQuant``.
    Activation ranges are calibrated with the same ``method`` on ``X_cal``, layer after layer
    through the already quantized prefix (the input, and every ReLU output), then fixed.
    """
    spec = weight_spec(bits)
    h = X_cal
    qp = rq.calibrate(h, ACT_SPEC, method=method)
    layers = [FakeQuant(ACT_SPEC, qp)]
    h = layers[0].forward(h)
    for layer in model.layers:
        if isinstance(layer, nn.Linear):
            W = layer.W.value
            wqp = rq.calibrate(W, spec, method=method)
            wq = LSQ(spec, wqp) if learn_steps else FakeQuant(spec, wqp)
            new = nn.Linear(W, layer.b.value, weight_quant=wq)
            layers.append(new)
            h = new.forward(h)
        elif isinstance(layer, nn.ReLU):
            layers.append(nn.ReLU())
            h = layers[-1].forward(h)
            act = FakeQuant(ACT_SPEC, rq.calibrate(h, ACT_SPEC, method=method))
            layers.append(act)
            h = act.forward(h)
        else:
            raise ValueError(f"unsupported layer {type(layer).__name__}")
    return nn.Sequential(layers)


@dataclass
class Row:
    bits: int
    ptq_minmax: float
    ptq_mse: float
    qat: float


def compare(bits_list=(8, 4, 3, 2), *, qat_epochs: int = 30, seed: int = 0,
            float_epochs: int = FLOAT_EPOCHS, hidden: int = HIDDEN):
    """Train the float model once, then PTQ (min-max, MSE) and QAT for every bit width.

    Returns ``(float_accuracy, rows)`` with held-out accuracies.
    """
    X_tr, X_te, y_tr, y_te = load_split(seed)
    fmodel = train_float(X_tr, y_tr, hidden=hidden, epochs=float_epochs, seed=seed)
    float_acc = nn.accuracy(fmodel, X_te, y_te)
    rows = []
    for bits in bits_list:
        acc = {}
        for method in ("minmax", "mse"):
            acc[method] = nn.accuracy(quantized_copy(fmodel, bits, X_tr, method=method,
                                                     learn_steps=False), X_te, y_te)
        qmodel = quantized_copy(fmodel, bits, X_tr, method="mse", learn_steps=True)
        nn.fit(qmodel, X_tr, y_tr, nn.SGD(qmodel.parameters(), lr=QAT_LR, momentum=0.9), epochs=qat_epochs,
               batch_size=BATCH, seed=seed + 1)
        rows.append(Row(bits, acc["minmax"], acc["mse"], nn.accuracy(qmodel, X_te, y_te)))
    return float_acc, rows


def table(float_acc: float, rows) -> str:
    lines = [f"held-out accuracy, digits MLP (float64: {100 * float_acc:.1f} %), "
             f"8-bit activations",
             "| weight bits | PTQ min-max | PTQ MSE | QAT (LSQ) |",
             "|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.bits} | {100 * r.ptq_minmax:.1f} % | {100 * r.ptq_mse:.1f} % | "
                     f"{100 * r.qat:.1f} % |")
    return "\n".join(lines)


def plot(float_acc: float, rows, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bits = [r.bits for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(bits, [100 * r.ptq_minmax for r in rows], "o-", label="PTQ min-max")
    ax.plot(bits, [100 * r.ptq_mse for r in rows], "s-", label="PTQ MSE")
    ax.plot(bits, [100 * r.qat for r in rows], "^-", label="QAT (LSQ)")
    ax.axhline(100 * float_acc, color="gray", ls="--", label="float64")
    ax.set_xlabel("weight bits (8-bit activations)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_xticks(bits)
    ax.invert_xaxis()
    ax.set_title("digits MLP: post-training quantization vs QAT")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--plot", default="qat_digits.png", help="PNG path for the plot")
    ap.add_argument("--qat-epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    float_acc, rows = compare(qat_epochs=args.qat_epochs, seed=args.seed)
    print(table(float_acc, rows))
    plot(float_acc, rows, args.plot)
    print(f"plot written to {args.plot}; {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
