"""Bad input never passes silently: the commands, perplexity, AWQ's statistics, GPTQ in the
pipeline.

Each case asserts the exception type (for the command line: exit code 2, one error line naming
the value, no traceback, and no output directory left behind) and that the message names the
offending value. The oracles: the error contract of ``refquant/cli.py`` (argparse errors exit 2
with a usage line; a ``ValueError`` is one line, exit 2); for the numbers, the valid ranges the
commands document; for the failing Hessians, the damping margins measured by hand on the
bundled model's first block (128 calibration tokens: its seven Hessians factor in float32 from
damp ~1e-5 to ~2e-5 on, so 1e-8, 1e-7, 1e-6 and 0 all fail by a decade or more); for
perplexity, a fault injected by hand at a known window and position.
"""

from __future__ import annotations

import numpy as np
import pytest

import refquant as rq
from refquant.algorithms import awq
from refquant.algorithms.gptq import HessianNotPositiveDefinite
from refquant.cli import main
from refquant.models.llama import LlamaModel, default_linear
from refquant.pipeline import evaluate

from helpers_model import tiny_config, tiny_weights, write_tiny_hf

QUICK = ["--n-blocks", "1", "--calib-tokens", "128", "--seq-len", "64", "--no-progress"]


def _usage_error(argv, capsys):
    """``main(argv)`` must stop in argparse: exit 2, a usage line, the error, no traceback."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.startswith("usage: refquant ") and "Traceback" not in err
    return err.strip().splitlines()[-1]


def _one_line_error(argv, capsys):
    """``main(argv)`` returns 2 with one error line on stderr and no traceback."""
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, out + err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------ argument values

BAD_ARGUMENTS = [
    (["quantize", "--seq-len", "0"], "argument --seq-len: expected an integer >= 1, got '0'"),
    (["quantize", "--seq-len", "-3"], "argument --seq-len: expected an integer >= 1, got '-3'"),
    (["quantize", "--seq-len", "1.5"], "argument --seq-len: expected an integer >= 1, got '1.5'"),
    (["quantize", "--calib-tokens", "0"], "argument --calib-tokens: expected an integer >= 1, got '0'"),
    (["quantize", "--n-blocks", "0"], "argument --n-blocks: expected an integer >= 1, got '0'"),
    (["quantize", "--damp", "nan"], "argument --damp: expected a finite number >= 0, got 'nan'"),
    (["quantize", "--damp", "inf"], "argument --damp: expected a finite number >= 0, got 'inf'"),
    (["quantize", "--damp", "-0.01"], "argument --damp: expected a finite number >= 0, got '-0.01'"),
    (["quantize", "--group-size", "-2"], "argument --group-size: expected an integer >= 1, or 0 or "
                                         "-1 for per output channel, got '-2'"),
    (["eval", "--seq-len", "1"], "argument --seq-len: expected an integer >= 2, got '1'"),
    (["eval", "--tokens", "0"], "argument --tokens: expected an integer >= 2, got '0'"),
    (["eval", "--tokens", "many"], "argument --tokens: expected an integer >= 2, got 'many'"),
    (["generate", "Hi", "--n-new", "-1"], "argument --n-new: expected an integer >= 0, got '-1'"),
    (["generate", "  "], "argument prompt: expected a non-empty text, got '  '"),
    (["demo", "--calib-tokens", "0"], "argument --calib-tokens: expected an integer >= 1, got '0'"),
    (["demo", "--seq-len", "1"], "argument --seq-len: expected an integer >= 2, got '1'"),
    (["demo", "--awq-grid", "0"], "argument --awq-grid: expected an integer >= 1, got '0'"),
    (["demo", "--awq-seqs", "-1"], "argument --awq-seqs: expected an integer >= 1, got '-1'"),
    (["demo", "--methods", "rtn,gtpq"], "argument --methods: expected a comma-separated subset of "
                                        "rtn,gptq,awq, got 'rtn,gtpq'"),
    (["demo", "--settings", "w5"], "argument --settings: expected a comma-separated subset of "
                                   "w8,w4g128,w3g128,w4,fp8,fp8_b128,mxfp6,mxfp4,nvfp4,fp8_w8a8, "
                                   "got 'w5'"),
]


@pytest.mark.parametrize("argv, message", BAD_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_ARGUMENTS])
def test_bad_argument_stops_before_any_work(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    if argv[0] in ("quantize", "demo"):
        argv = argv + ["-o", str(out)]
    line = _usage_error(argv, capsys)
    assert line == f"refquant {argv[0]}: error: {message}"
    assert not out.exists()


def test_output_path_that_cannot_be_a_directory(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    line = _usage_error(["quantize", "-o", str(tmp_path / "file")], capsys)
    assert f"argument -o/--output: '{tmp_path / 'file'}' exists and is not a directory" in line
    line = _usage_error(["demo", "-o", str(tmp_path / "file" / "sub")], capsys)
    assert f"cannot create '{tmp_path / 'file' / 'sub'}': '{tmp_path / 'file'}' is not a directory" in line


@pytest.mark.parametrize("argv, message", [
    (["quantize", "--calib-tokens", "100", "--seq-len", "128"],
     "--calib-tokens 100 is less than one sequence of --seq-len 128"),
    (["quantize", "--n-blocks", "31"], "--n-blocks 31: the model has 30 blocks"),
    (["eval", "--tokens", "10", "--seq-len", "64"], "--tokens 10 do not fill one window of --seq-len 64"),
    (["generate", "Hi", "--n-new", "100000"],
     "the prompt's 1 tokens plus --n-new 100000 exceed the model's context length 8192"),
    (["demo", "--eval-tokens", "100", "--seq-len", "200"],
     "--eval-tokens 100 do not fill one window of --seq-len 200"),
    (["demo", "--calib-tokens", "100"], "--calib-tokens 100 is less than one calibration sequence of 256 tokens"),
    (["demo", "--n-blocks", "40", "--no-progress"], "--n-blocks 40: the model has 30 blocks"),
])
def test_inconsistent_arguments_are_one_line(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    if argv[0] in ("quantize", "demo"):
        argv = argv + ["-o", str(out)]
    assert _one_line_error(argv, capsys) == f"refquant {argv[0]}: error: {message}"
    assert not out.exists()


@pytest.mark.parametrize("command", ["quantize", "eval", "generate", "demo"])
def test_model_without_tokenizer(command, tmp_path, capsys):
    """A Hugging Face directory without tokenizer.json (tests/helpers_model.write_tiny_hf writes
    none): every command that needs text says so, before creating anything."""
    cfg = tiny_config()
    model_dir = write_tiny_hf(tmp_path / "hf", cfg, tiny_weights(cfg))
    out = tmp_path / "out"
    argv = {"quantize": ["quantize", str(model_dir), "-o", str(out)],
            "eval": ["eval", str(model_dir), "--tokens", "64", "--seq-len", "16"],
            "generate": ["generate", "the", "--model", str(model_dir)],
            "demo": ["demo", "--model", str(model_dir), "-o", str(out)]}[command]
    line = _one_line_error(argv, capsys)
    assert f"{model_dir}: the model has no tokenizer (tokenizer.json)" in line
    assert not out.exists()


# ------------------------------------------------------------------------------ GPTQ's Hessians

@pytest.mark.parametrize("damp, tried", [("0", "damp = 0.0 (lambda=0)"),
                                         ("1e-8", "damp = 1e-08 (lambda=")])
def test_quantize_names_the_layer_and_leaves_no_directory(damp, tried, tmp_path, capsys):
    out = tmp_path / "out"
    line = _one_line_error(["quantize", "--damp", damp, *QUICK, "-o", str(out)], capsys)
    assert line.startswith("refquant quantize: error: layers.0.self_attn.q_proj: H + lambda I is "
                           "not positive definite at " + tried)
    if damp != "0":                                          # 10x retries: 1e-8, 1e-7, 1e-6
        assert "1e-07 (lambda=" in line and "1e-06 (lambda=" in line
    assert not out.exists()


def test_failed_quantize_keeps_a_given_directory_and_what_was_there(tmp_path, capsys):
    """Into an existing directory: a failed run removes only its own shards."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    _one_line_error(["quantize", "--damp", "0", *QUICK, "-o", str(out)], capsys)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_pipeline_names_the_layer():
    model = rq.load_model(None)
    from refquant.pipeline.blockwise import LayerSetting, quantize_model
    from refquant.pipeline.data import calibration_batch

    calib = calibration_batch(model.tokenizer, 128, 64)
    with pytest.raises(HessianNotPositiveDefinite) as exc:
        quantize_model(model, calib, LayerSetting("gptq", 4, 128), damp=1e-8, n_blocks=1)
    assert exc.value.layer == "layers.0.self_attn.q_proj"
    assert str(exc.value).startswith("layers.0.self_attn.q_proj: H + lambda I is not positive "
                                     "definite at damp = 1e-08")
    assert exc.value.damps == pytest.approx((1e-8, 1e-7, 1e-6))
    assert isinstance(exc.value, ValueError)


# ------------------------------------------------------------------------------ perplexity

def _tiny_model():
    cfg = tiny_config()
    return LlamaModel(cfg, tiny_weights(cfg))


def _inf_at(model, window: int, position: int):
    """A linear that makes the last block's down_proj output +inf at ``position`` of ``window``
    (counting the windows by the calls of that linear, one per window): only that position's
    residual stream, hence only its logits, become non-finite."""
    base, last, calls = default_linear(model), f"layers.{model.config.n_layers - 1}.mlp.down_proj", [0]

    def linear(name, x):
        y = base(name, x)
        if name == last:
            if calls[0] == window:
                y = y.copy()
                y[0, position] = np.inf
            calls[0] += 1
        return y
    return linear


@pytest.mark.parametrize("window, position, head_chunk", [(0, 0, 128), (2, 9, 128), (1, 13, 4)])
def test_perplexity_never_returns_nan(window, position, head_chunk, monkeypatch):
    """Oracle: the fault is placed by hand; the error names that window and position (also
    where the head's log-softmax runs in chunks of 4 positions)."""
    monkeypatch.setattr(evaluate, "HEAD_CHUNK", head_chunk)
    model = _tiny_model()
    tokens = np.random.default_rng(1).integers(0, 300, 64)
    with pytest.raises(ValueError) as exc, np.errstate(all="ignore"):
        rq.perplexity(model, tokens, seq_len=16, linear=_inf_at(model, window, position))
    stream = 16 * window + position
    assert str(exc.value).startswith(
        f"non-finite log-likelihood (nan) in window {window} at position {position} "
        f"(token {stream} of the stream, id {tokens[stream]}, predicting id {tokens[stream + 1]}); "
        f"its logits hold 300 NaN or Inf value(s)")


def test_eval_of_an_overflowing_model_exits_2(tmp_path, capsys):
    """A finite checkpoint whose head overflows float32 (one lm_head row of 3e38: its logit is
    +-inf wherever it is not 0, and +inf - +inf is NaN): eval exits 2 naming window 0."""
    from helpers_model import write_tiny_gguf

    cfg = tiny_config()
    weights = tiny_weights(cfg)
    weights["lm_head.weight"][7] = 3e38
    path = write_tiny_gguf(tmp_path / "big.gguf", cfg, weights)
    with np.errstate(all="ignore"):
        line = _one_line_error(["eval", str(path), "--tokens", "64", "--seq-len", "16"], capsys)
    assert line.startswith("refquant eval: error: non-finite log-likelihood (nan) in window 0 at position ")


# ------------------------------------------------------------------------------ AWQ's statistics

@pytest.mark.parametrize("s_x, message", [
    ([1.0, np.nan, 2.0], r"s_x contains NaN or Inf \(first at index \(1,\): np.float64\(nan\)\)"),
    ([1.0, 2.0, np.inf], r"s_x contains NaN or Inf \(first at index \(2,\): np.float64\(inf\)\)"),
    ([0.5, -1.0, -2.0], r"s_x\[1\] = -1.0: activation magnitudes must be >= 0 \(2 negative channel\(s\)\)"),
    ([], r"s_x must have shape \(C,\) with C >= 1, got \(0,\)"),
    ([[1.0, 2.0]], r"s_x must have shape \(C,\) with C >= 1, got \(1, 2\)"),
])
def test_scale_from_alpha_rejects_bad_statistics(s_x, message):
    with pytest.raises(ValueError, match=message):
        awq.scale_from_alpha(np.asarray(s_x), 0.5)


def test_scale_from_alpha_bad_alpha_and_overflow():
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\], got nan"):
        awq.scale_from_alpha([1.0, 2.0], float("nan"))
    # s = max(s_x, 1e-4) / sqrt(1e300 * 1e-4): channel 0 is 1e152 > float32's 3.4e38 (by hand)
    with pytest.raises(ValueError, match=r"the scale of channel 0 is inf in float32 \(s_x\[0\] = 1e\+300"):
        awq.scale_from_alpha([1e300, 0.0], 1.0)
    # max * min = 1e300 * 1e10 overflows float64, so every s is 0 (by hand): channel 0 named
    with pytest.raises(ValueError, match=r"the scale of channel 0 is 0.0 in float32 \(s_x\[0\] = 1e\+300"):
        awq.scale_from_alpha([1e300, 1e10], 1.0)


def test_activation_scale_names_the_channel():
    X = np.ones((6, 5))
    X[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"X contains NaN or Inf \(first at index \(3, 2\)"):
        awq.activation_scale(X)
    X = np.ones((6, 5))
    X[:, 4] = 1e308                                  # finite, but the float64 sum overflows
    with pytest.raises(ValueError, match=r"the mean \|X\| of channel 4 overflows float64"):
        awq.activation_scale(X)


def test_awq_search_scale_rejects_bad_statistics_and_nan_losses():
    rng = np.random.default_rng(0)
    W, X = rng.standard_normal((4, 8)), rng.standard_normal((16, 8))
    spec = rq.QuantSpec(bits=3, symmetric=False, granularity="channel", axis=0)
    s_x = np.ones(8)
    s_x[5] = np.nan
    with pytest.raises(ValueError, match=r"s_x contains NaN or Inf \(first at index \(5,\)"):
        awq.awq_search_scale([W], X, spec, s_x=s_x)
    X_bad = X.copy()
    X_bad[7, 6] = -np.inf
    with pytest.raises(ValueError, match=r"X contains NaN or Inf \(first at index \(7, 6\)"):
        awq.awq_search_scale([W], X_bad, spec)

    def nan_unless_original(ws):             # a forward pass that overflows on any other weight
        return X @ ws[0].T if np.array_equal(ws[0], W.astype(np.float32)) else np.full((16, 4), np.nan)
    with pytest.raises(ValueError, match=r"the loss at alpha = 0.0 is nan"):
        awq.awq_search_scale([W], X, spec, nan_unless_original, n_grid=4)


def test_fold_scales_names_the_bad_scale():
    with pytest.raises(ValueError, match=r"s\[2\] = 0.0 in float32: scales must be finite and > 0"):
        awq.fold_scales(np.array([1.0, 2.0, 0.0]), np.ones(3), [np.ones((2, 3))])
    with pytest.raises(ValueError, match=r"s contains NaN or Inf \(first at index \(0,\)"):
        awq.fold_scales(np.array([np.nan, 1.0]), np.ones(2), [np.ones((2, 2))])
    with pytest.raises(ValueError, match=r"s\[1\] = inf in float32"):       # 1e300 overflows float32
        awq.fold_scales(np.array([1.0, 1e300]), np.ones(2), [np.ones((2, 2))])
