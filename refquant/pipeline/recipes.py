"""Mixed precision: measure how sensitive each linear layer is, then spend a bit budget.

Sensitivity of layer ``l`` (in block ``i``) is measured on the calibration tokens with the float
model: the block's output error when *only* that layer is round-to-nearest quantized with the low
setting, relative to what the block adds to its input,

.. math::

    \\sigma_l = \\frac{\\lVert B_i(X_i; \\hat W_l) - B_i(X_i) \\rVert_F^2}
                     {\\lVert B_i(X_i) - X_i \\rVert_F^2},

where ``B_i`` is the block and ``X_i`` its (float) input. Normalizing by the block's own
contribution to the residual stream makes blocks comparable. RTN is used as a cheap proxy for
the error of any method (GPTQ and AWQ reduce it for every layer, roughly in proportion).

:func:`auto_recipe` starts from the low setting everywhere and upgrades layers to the high setting
in order of ``sigma_l`` per extra stored bit (the greedy solution of the knapsack) while the
average stays within the bits-per-weight budget.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from refquant.pipeline.blockwise import LINEARS, LayerSetting, _chunks, _n_layers, layer_bits, with_weights
from refquant.calibration.fake import fake_quantize


def layer_sensitivity(model, calib_tokens, low: LayerSetting, *, n_blocks: int | None = None,
                      batch_size: int = 8, block_fn=None, embed_fn=None,
                      progress: bool = False) -> dict[str, float]:
    """``sigma_l`` (module docstring) for every linear of the first ``n_blocks`` blocks."""
    if block_fn is None or embed_fn is None:
        from refquant.models import llama
    block = block_fn or llama.block
    embed = embed_fn or llama.embed
    spec = low.spec()
    if spec is None:
        raise ValueError("the low setting must quantize (not 'float')")
    tokens = np.asarray(calib_tokens)
    if tokens.ndim != 2 or tokens.dtype.kind not in "iu":
        raise ValueError(f"calib_tokens must be a 2-D integer array, got shape {tokens.shape}")
    n_blocks = _n_layers(model) if n_blocks is None else int(n_blocks)
    X = np.concatenate([embed(model, tokens[s]) for s in _chunks(len(tokens), batch_size)])
    out = {}
    blocks = range(n_blocks)
    if progress:
        from tqdm.auto import tqdm
        blocks = tqdm(blocks, desc="sensitivity", unit="block")
    for i in blocks:
        run = lambda m: np.concatenate([block(m, i, X[s]) for s in _chunks(len(X), batch_size)])  # noqa: E731
        Y = run(model)                                                  # [B, T, d]
        denom = float(np.sum((Y.astype(np.float64) - X) ** 2))
        for lin in LINEARS:
            n = f"layers.{i}.{lin}.weight"
            Wq = fake_quantize(np.asarray(model.weights[n], np.float32), spec)
            Yl = run(with_weights(model, {n: Wq}))
            out[n[:-len(".weight")]] = float(np.sum((Yl.astype(np.float64) - Y) ** 2)) / max(denom, 1e-30)
        X = Y
    return out


def auto_recipe(model, sensitivity: Mapping[str, float], low: LayerSetting, high: LayerSetting,
                budget_bpw: float) -> list:
    """A recipe (list of ``(name, setting)`` ending with ``("*", low)``) whose block linears
    average at most ``budget_bpw`` stored bits per weight (:func:`refquant.pipeline.blockwise.layer_bits`),
    upgrading the layers with the largest sensitivity per extra bit to ``high``.

    Raises ``ValueError`` if even the all-``low`` recipe exceeds the budget.
    """
    shapes = {n: np.shape(model.weights[n + ".weight"]) for n in sensitivity}
    n_weights = sum(int(np.prod(s)) for s in shapes.values())
    base = sum(layer_bits(low, *s) for s in shapes.values())
    budget = budget_bpw * n_weights
    if base > budget:
        raise ValueError(f"budget {budget_bpw} bits/weight is below the low setting's "
                         f"{base / n_weights:.4f} bits/weight")
    extra = {n: layer_bits(high, *s) - layer_bits(low, *s) for n, s in shapes.items()}
    order = sorted(sensitivity, key=lambda n: -sensitivity[n] / max(extra[n], 1))
    used, upgraded = base, []
    for n in order:
        if extra[n] > 0 and used + extra[n] <= budget:
            upgraded.append(n)
            used += extra[n]
    return [(n, high) for n in sorted(upgraded)] + [("*", low)]


__all__ = ["layer_sensitivity", "auto_recipe"]
