"""Training with quantized gradients on scikit-learn's digits: held-out accuracy of float
gradients vs int8, FP8 E5M2, int4 and FP4 E2M1 gradients, each by round to nearest and by
stochastic rounding.

The model, data split and optimizer are those of ``examples/qat_digits.py`` (64-128-128-10
ReLU MLP, float64, Adam lr 1e-3, batches of 32, the stratified 30 % held-out split); the forward
pass stays float. After every Linear a :class:`refquant.GradQuant` layer quantizes the error
signal ``dy`` flowing back into it (per tensor, scale ``amax / q_max`` or ``amax / max_normal``),
so both the weight gradients ``dy^T x`` and the gradients passed further down are computed from
quantized ``dy`` (DoReFa-Net's gradient quantization, FP8 training's E5M2 gradients). Each seed
sets the initial weights, the shuffling order, the split and the stochastic-rounding draws.

Usage::

    python scripts/grad_quant_digits.py [--seeds 0 1 2 3 4] [--epochs 30]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import sys
import time

# the matrices are tiny (batches of 32): one BLAS thread is fastest, and with other work on the
# cores a spinning thread pool is much slower; set before NumPy loads BLAS
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from refquant.training import nn  # noqa: E402
from refquant.training.gradquant import GradQuant  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import qat_digits as ex  # noqa: E402  (the digits split and the float recipe)

#: (label, gradient format or None for float, rounding)
SETTINGS = [("float64", None, None)] + [
    (f"{label} {short}", fmt, rounding)
    for label, fmt in (("int8", "int8"), ("FP8 E5M2", "e5m2"), ("int4", "int4"),
                       ("FP4 E2M1", "e2m1fn"))
    for short, rounding in (("RTN", "nearest"), ("SR", "stochastic"))]


def build(fmt, rounding, seed: int, hidden: int = ex.HIDDEN) -> nn.Sequential:
    """The MLP of examples/qat_digits.py with a GradQuant layer after every Linear."""
    rng = np.random.default_rng(seed)
    grad_rng = np.random.default_rng([seed, 1])              # the stochastic-rounding draws
    layers = []
    for k, m in ((64, hidden), (hidden, hidden), (hidden, 10)):
        layers.append(nn.Linear.init(k, m, rng))
        if fmt is not None:
            layers.append(GradQuant(fmt, rounding, grad_rng if rounding == "stochastic" else None))
        if m != 10:
            layers.append(nn.ReLU())
    return nn.Sequential(layers)


def run(seeds, epochs: int):
    """Held-out accuracy [n_settings, n_seeds]."""
    acc = np.zeros((len(SETTINGS), len(seeds)))
    for j, seed in enumerate(seeds):
        X_tr, X_te, y_tr, y_te = ex.load_split(seed)
        for i, (_, fmt, rounding) in enumerate(SETTINGS):
            model = build(fmt, rounding, seed)
            nn.fit(model, X_tr, y_tr, nn.Adam(model.parameters(), lr=ex.FLOAT_LR),
                   epochs=epochs, batch_size=ex.BATCH, seed=seed)
            acc[i, j] = nn.accuracy(model, X_te, y_te)
    return acc


def table(acc, seeds, epochs: int) -> str:
    lines = [f"held-out accuracy, digits MLP 64-128-128-10, Adam, {epochs} epochs, "
             f"seeds {list(seeds)} (mean +- sample std; per seed)",
             "| gradients (dy of every Linear) | mean | std | per seed |",
             "|---|---:|---:|---|"]
    for (label, _, _), row in zip(SETTINGS, acc):
        std = row.std(ddof=1) if row.size > 1 else 0.0
        per = ", ".join(f"{100 * a:.1f}" for a in row)
        lines.append(f"| {label} | {100 * row.mean():.2f} % | {100 * std:.2f} | {per} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args(argv)
    cpu = next((line.split(":", 1)[1].strip() for line in
                pathlib.Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) \
        if pathlib.Path("/proc/cpuinfo").exists() else platform.processor()
    t0 = time.perf_counter()
    acc = run(args.seeds, args.epochs)
    print(table(acc, args.seeds, args.epochs))
    print(f"CPU: {cpu}; {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
