"""The packed W4 linear of a GPTQ checkpoint (refquant.formats.gptq_linear, issue 17).

Oracles: a scalar loop over the checkpoint's own dequantization equation
``sum_k x_k float32(s[g_idx[k], n]) (q[n, k] - z[g_idx[k], n])`` on dyadic values (every
product and sum exact in float32, so the kernel must match it bit for bit); the dequantized
float path (:func:`refquant.formats.gptq_layers.dequantize_layer` and a NumPy matmul) on
checkpoints written by ``refquant quantize``, within :func:`refquant.kernels.w4_tolerance`
(Higham's float32 summation bound) for every layer on the activations of a real forward pass.
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers_model import tiny_config, tiny_weights, write_tiny_hf
from refquant.cli import main
from refquant.formats import gptq
from refquant.formats.gptq_layers import PackedLayer, dequantize_layer
from refquant.formats.gptq_linear import CheckpointLinear, checkpoint_linear, w4_operands
from refquant.kernels import w4_tolerance
from refquant.models.llama import default_linear, hidden_states
from refquant.models.loaders import load_model
from refquant.pipeline.evaluate import perplexity

VOCAB = 49152          # the bundled tokenizer's
CASES = [(fmt, gs, act) for fmt in ("gptq", "gptq_v2") for gs in (32, 128) for act in (False, True)]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny random Llama (hidden 256, FFN 320: down_proj's K = 320 is 2.5 groups of 128) with
    the bundled tokenizer, as a Hugging Face directory."""
    d = tmp_path_factory.mktemp("src")
    cfg = tiny_config(n_layers=2, d_model=256, n_heads=4, n_kv_heads=2, d_ff=320,
                      vocab_size=VOCAB, max_seq_len=256)
    write_tiny_hf(d, cfg, tiny_weights(cfg))
    load_model().tokenizer.save(d)
    return d


@pytest.fixture(scope="module")
def checkpoints(source, tmp_path_factory):
    """``refquant quantize --method gptq`` checkpoints, made on first use, keyed by
    ``(format, group_size, act_order, bits)``."""
    made = {}

    def make(fmt, gs, act, bits=4):
        key = (fmt, gs, act, bits)
        if key not in made:
            out = tmp_path_factory.mktemp("q")
            argv = ["quantize", str(source), "-o", str(out), "--method", "gptq", "--format", fmt,
                    "--group-size", str(gs), "--bits", str(bits), "--calib-tokens", "64",
                    "--seq-len", "32", "--no-progress"] + (["--act-order"] if act else [])
            assert main(argv) == 0
            made[key] = out
        return made[key]
    return make


def _scalar_oracle(x, layer: PackedLayer) -> np.ndarray:
    """``y[m, n] = sum_k x[m, k] s[g_idx[k], n] (q[n, k] - z[g_idx[k], n])``, one term at a time."""
    M, K = x.shape
    N = layer.codes.shape[0]
    y = np.zeros((M, N), np.float64)
    for m in range(M):
        for n in range(N):
            for k in range(K):
                g = layer.g_idx[k]
                y[m, n] += float(x[m, k]) * float(layer.scales[g, n]) * (
                    int(layer.codes[n, k]) - int(layer.zeros[g, n]))
    return y


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_act_order_layer_matches_the_scalar_equation_exactly(backend):
    """A 4-bit layer with an act-order g_idx (groups of 8 scattered over K = 40, the last group
    shorter) and dyadic scales and inputs: the kernel on the permuted codes gives the scalar
    loop's value exactly (every term and partial sum is exact in float32)."""
    rng = np.random.default_rng(0)
    N, K, gs = 5, 40, 8
    order = rng.permutation(K)
    g_idx = np.empty(K, np.int32)
    g_idx[order] = np.arange(K) // gs                                  # position in order // gs
    layer = PackedLayer(codes=rng.integers(0, 16, (N, K)).astype(np.uint8),
                        scales=(2.0 ** rng.integers(-3, 2, (5, N))).astype(np.float16),
                        zeros=rng.integers(0, 16, (5, N)).astype(np.int32), g_idx=g_idx, bits=4,
                        group_size=gs)
    weights, perm = w4_operands(layer)
    assert perm is not None
    x = rng.integers(-4, 5, (3, K)).astype(np.float32)
    y = weights.matmul(np.ascontiguousarray(x[:, perm]), backend=backend)
    assert np.array_equal(y, _scalar_oracle(x, layer).astype(np.float32))


def test_irregular_groups_and_other_bit_widths_are_refused():
    """A g_idx whose groups are not ``group_size`` columns each, or 3-bit codes: a reason, no
    kernel operands."""
    N, K = 2, 8
    base = dict(codes=np.zeros((N, K), np.uint8), scales=np.ones((2, N), np.float16),
                zeros=np.zeros((2, N), np.int32), group_size=4)
    uneven = PackedLayer(g_idx=np.array([0, 0, 0, 0, 0, 1, 1, 1], np.int32), bits=4, **base)
    assert "not a permutation of contiguous groups of 4" in w4_operands(uneven)
    three = PackedLayer(g_idx=np.array([0] * 4 + [1] * 4, np.int32), bits=3, **base)
    assert w4_operands(three).startswith("3-bit codes")


@pytest.mark.parametrize("fmt,gs,act", CASES)
def test_every_layer_equals_the_dequantized_path_within_the_kernel_tolerance(checkpoints, fmt, gs, act):
    """Every quantized layer of a `refquant quantize` checkpoint, on the inputs the float
    forward pass gives it: the kernel (with the activation columns permuted for act order) is
    within w4_tolerance of ``x @ dequantize_layer(layer).T``."""
    out = checkpoints(fmt, gs, act)
    model = gptq.load_quantized_model(out)
    readers, _ = gptq.checkpoint_layers(out)
    float_linear = default_linear(model)
    seen = {}

    def checking(name, x):
        y = float_linear(name, x)
        layer = readers[name]()
        weights, perm = w4_operands(layer)
        x2 = x.reshape(-1, x.shape[-1])
        xp = x2 if perm is None else np.ascontiguousarray(x2[:, perm])
        y_kernel = weights.matmul(xp)
        y_float = x2 @ dequantize_layer(layer).T
        tol = w4_tolerance(xp, weights.scales, weights.zeros, weights.group_size)
        assert np.all(np.abs(y_kernel - y_float) <= tol), name
        seen[name] = perm is not None
        return y

    hidden_states(model, np.arange(300, 340)[None, :], linear=checking)
    assert len(seen) == 14
    assert any(seen.values()) if act else not any(seen.values())   # act order: permuted columns


@pytest.mark.parametrize("fmt,gs,act", [("gptq", 128, True), ("gptq_v2", 32, False)])
def test_perplexity_through_the_kernel_equals_the_float_path(checkpoints, fmt, gs, act):
    """Perplexity on 4 windows of 32 tokens through CheckpointLinear and through the dequantized
    float32 weights: the mean NLL agrees to 1e-5 relative (the per-layer differences are float32
    rounding, within w4_tolerance above), and every quantized layer ran the kernel."""
    out = checkpoints(fmt, gs, act)
    model = gptq.load_quantized_model(out)
    tokens = np.arange(300, 428)
    linear = CheckpointLinear(model, out)
    r_kernel = perplexity(model, tokens, seq_len=32, linear=linear)
    r_float = perplexity(model, tokens, seq_len=32)
    assert r_kernel.nll == pytest.approx(r_float.nll, rel=1e-5)
    assert len(linear.kernel_layers()) == 14 and linear.float_layers() == {}
    assert "packed W4 kernel" in linear.describe() and "for 14 layers" in linear.describe()


def test_a_3_bit_checkpoint_is_dequantized_and_says_so(checkpoints):
    """A 3-bit checkpoint: every layer takes the float path (the same arithmetic as the plain
    forward pass, bit for bit) and the line names the reason."""
    out = checkpoints("gptq", 32, False, bits=3)
    model = gptq.load_quantized_model(out)
    linear = CheckpointLinear(model, out)
    tokens = np.arange(300, 332)[None, :]
    assert np.array_equal(hidden_states(model, tokens, linear=linear), hidden_states(model, tokens))
    assert linear.kernel_layers() == []
    assert linear.describe() == ("linear layers: dequantized to float32 (3-bit codes (the W4 "
                                 "kernel takes 4-bit codes))")


def test_commands_run_the_kernel_by_default_and_float_with_dequantize(checkpoints, source, capsys):
    """`refquant eval` / `generate` on a 4-bit checkpoint print the kernel line; --dequantize
    prints the float32 line; the two perplexities agree to 1e-5 relative; a Hugging Face
    float model prints no such line."""
    out = checkpoints("gptq", 128, True)
    capsys.readouterr()
    assert main(["eval", str(out), "--tokens", "64", "--seq-len", "32"]) == 0
    kernel = capsys.readouterr().out
    assert "linear layers: packed W4 kernel (" in kernel and "for 14 layers" in kernel
    assert main(["eval", str(out), "--tokens", "64", "--seq-len", "32", "--dequantize"]) == 0
    floats = capsys.readouterr().out
    assert "linear layers: dequantized to float32 (--dequantize)" in floats

    def ppl(text):
        return float(next(l for l in text.splitlines() if l.startswith("perplexity:")).split()[1])
    assert ppl(kernel) == pytest.approx(ppl(floats), rel=1e-5)
    assert main(["generate", "The", "--model", str(out), "--n-new", "2"]) == 0
    assert "linear layers: packed W4 kernel (" in capsys.readouterr().out
    assert main(["generate", "The", "--model", str(out), "--n-new", "2", "--dequantize"]) == 0
    assert "linear layers: dequantized to float32 (--dequantize)" in capsys.readouterr().out
    assert checkpoint_linear(load_model(source)) == (None, None)
