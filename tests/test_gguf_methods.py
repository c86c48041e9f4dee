"""GPTQ and AWQ into GGUF (:func:`refquant.pipeline.gguf_methods.export_gguf_method`) and
``refquant quantize --format gguf --method gptq|awq``.

Oracles: :func:`refquant.formats.gguf_export.export_gguf`'s round-to-nearest file (the methods
reduce to it exactly: AWQ with the single grid point alpha = 0 and no clipping, GPTQ with an
identity Hessian), the mix's types as ``plan_tensors`` gives them (worked out by hand in
tests/test_gguf_export.py for the 256-wide model), the float block's output on the calibration
input (each method's file against the RTN file's, both read back through the GGUF loader), and
the one-line error contract of ``refquant.cli``.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers_model import tiny_config, tiny_weights, write_tiny_gguf

from refquant.algorithms.imatrix import Imatrix, ImatrixEntry
from refquant.formats.gguf_export import export_gguf, plan_tensors
from refquant.models.gguffile import read_gguf
from refquant.pipeline import gguf_methods
from refquant.pipeline.gguf_methods import export_gguf_method


def _model(tmp_path, **kw):
    from refquant import load_model

    cfg = tiny_config(**kw)
    return load_model(write_tiny_gguf(tmp_path / "src.gguf", cfg, tiny_weights(cfg)))


def _tokens(cfg, B=4, T=16, seed=0):
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, (B, T))


def _imatrix(cfg, seed=3):
    """Random importance rows for every block linear (llama.cpp names)."""
    from refquant.models.gguf_hf import gguf_name

    rng = np.random.default_rng(seed)
    out = {}
    for n, shape in cfg.weight_shapes().items():
        if n.startswith("layers.") and len(shape) == 2:
            S = rng.uniform(0.2, 4.0, (1, shape[1])) * 64
            out[gguf_name(n)] = ImatrixEntry(in_sum2=S, counts=np.array([64]))
    return Imatrix(entries=out, chunk_count=4, chunk_size=16)


def _tensors(path):
    f = read_gguf(path)
    return {n: (t.type_name, np.asarray(t.data)) for n, t in f.tensors.items()}


def _same_files(a, b):
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for n in ta:
        assert ta[n][0] == tb[n][0] and np.array_equal(ta[n][1], tb[n][1]), n


@pytest.mark.parametrize("with_imatrix", [False, True])
def test_awq_at_alpha_zero_is_the_rtn_file(tmp_path, with_imatrix):
    """AWQ with alpha = 0 only (s = 1) and no clipping is round-to-nearest: every tensor's bytes
    equal export_gguf's (Q4_K_M on a 256-wide model: Q4_K and Q6_K, Q/K rows permuted)."""
    model = _model(tmp_path, d_model=256, d_ff=512)
    imx = _imatrix(model.config) if with_imatrix else None
    rtn = export_gguf(model, tmp_path / "rtn.gguf", "Q4_K_M", imatrix=imx)
    awq = export_gguf_method(model, tmp_path / "awq.gguf", "Q4_K_M", _tokens(model.config),
                             method="awq", imatrix=imx, awq_kw=dict(n_grid=1, clip=None))
    _same_files(rtn, awq)


def test_gptq_with_identity_hessian_is_the_rtn_file(tmp_path, monkeypatch):
    """GPTQ with H = I (injected for every linear) rounds every column to nearest: the file is
    export_gguf's, with an imatrix (its fixed scales) and the Q/K row permutation."""
    model = _model(tmp_path, d_model=256, d_ff=512)
    imx = _imatrix(model.config)

    def identity(view, i, X, batch_size):
        d, f = view.config.d_model, view.config.d_ff
        return {"self_attn.q_proj": np.eye(d), "self_attn.o_proj": np.eye(d),
                "mlp.gate_proj": np.eye(d), "mlp.down_proj": np.eye(f)}

    monkeypatch.setattr(gguf_methods, "_collect_hessians", identity)
    rtn = export_gguf(model, tmp_path / "rtn.gguf", "Q4_K_M", imatrix=imx)
    out = export_gguf_method(model, tmp_path / "gptq.gguf", "Q4_K_M", _tokens(model.config),
                             method="gptq", imatrix=imx, act_order=False)
    _same_files(rtn, out)


def _block0_error(path, model, tokens):
    """Mean squared error of block 0 of the file's model against the float block, on the
    calibration input (the float embedding of ``tokens``)."""
    from refquant import load_model
    from refquant.models.llama import block, embed

    X = embed(model, tokens)
    ref = block(model, 0, X)
    got = block(load_model(path), 0, X)
    return float(np.mean((got.astype(np.float64) - ref) ** 2))


@pytest.mark.parametrize("method, mix", [("awq", "Q4_0"), ("gptq", "Q4_0"), ("gptq", "Q4_K_M")])
def test_methods_lower_the_block_error_and_keep_the_mix(tmp_path, method, mix):
    """The file has the mix's types (plan_tensors) and reloads; its first block's output error
    on the calibration input is below the RTN file's."""
    model = _model(tmp_path, d_model=256 if mix == "Q4_K_M" else 64,
                   d_ff=512 if mix == "Q4_K_M" else 128)
    tokens = _tokens(model.config, B=8, T=32)
    reports = []
    out = export_gguf_method(model, tmp_path / f"{method}.gguf", mix, tokens, method=method,
                             awq_kw=dict(n_grid=6, clip_grid=10), progress=reports.append)
    rtn = export_gguf(model, tmp_path / "rtn.gguf", mix)
    want = {t.gguf_name: t.type_name for t in plan_tensors(model.config, mix)}
    assert {n: t for n, (t, _) in _tensors(out).items()} == want
    assert [r.block for r in reports] == [0, 1] and all(r.method == method for r in reports)
    assert _block0_error(out, model, tokens) < _block0_error(rtn, model, tokens)


def test_bad_arguments(tmp_path):
    model = _model(tmp_path)
    tok = _tokens(model.config)
    with pytest.raises(ValueError, match="method must be one of .* got 'rtn'"):
        export_gguf_method(model, tmp_path / "x.gguf", "Q8_0", tok, method="rtn")
    with pytest.raises(ValueError, match="calib_tokens must be a non-empty 2-D integer"):
        export_gguf_method(model, tmp_path / "x.gguf", "Q8_0", tok[0], method="awq")
    with pytest.raises(ValueError, match="GGUF type F16 stores every block linear"):
        export_gguf_method(model, tmp_path / "x.gguf", "F16", tok, method="gptq")
    with pytest.raises(ValueError, match="unknown GGUF type 'Q9_0'"):
        export_gguf_method(model, tmp_path / "x.gguf", "Q9_0", tok, method="gptq")
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize("method, extra", [("awq", []), ("gptq", ["--act-order"])])
def test_cli_writes_the_method_file(tmp_path, capsys, method, extra):
    """``refquant quantize --format gguf --method M``: one line per block naming the method,
    the summary names it, the file has the mix's types (Q4_K_M on rows of 32: Q5_0, Q8_0)."""
    from refquant.cli import main

    cfg = tiny_config()
    src = write_tiny_gguf(tmp_path / "tiny.gguf", cfg, tiny_weights(cfg))
    out = tmp_path / "out.gguf"
    rc = main(["quantize", str(src), "--format", "gguf", "--type", "Q4_K_M", "--method", method,
               "--imatrix", "auto", "--calib-tokens", "128", "--seq-len", "32", "-o", str(out)]
              + extra)
    text = capsys.readouterr().out
    assert rc == 0, text
    assert f"method {method}" in text and f"({method};" in text and "verified by re-reading" in text
    lines = [ln for ln in text.splitlines() if ln.startswith("block ")]
    assert len(lines) == 2 and all(f": {method} onto " in ln for ln in lines)
    assert lines[1].startswith("block 2/2:") and "Q5_0 5, Q8_0 2" in lines[1]
    want = {t.gguf_name: t.type_name for t in plan_tensors(cfg, "Q4_K_M", has_imatrix=True)}
    assert {n: t for n, (t, _) in _tensors(out).items()} == want
