"""Tests of `refquant inspect` (refquant.formats.audit + refquant.commands.inspect).

Oracles: files written by the gguf package's own writer and quantizers (gguf.GGUFWriter,
gguf.quants), errors recomputed here with NumPy from gguf's dequantization, a Q/K row
permutation written out as an explicit loop, hand-corrupted bytes, and the bundled model.
"""

import json

import gguf
import numpy as np
import pytest

import refquant as rq
from refquant.formats.audit import audit_checkpoint
from refquant.models.gguf_hf import hf_name
from refquant.commands import inspect as inspect_command
from refquant.formats import gptq
from refquant.models.layout import CorruptCheckpoint, scan_gguf, scan_safetensors
from refquant.models.resources import bundled_model_path

T = gguf.GGMLQuantizationType


def main(argv):
    """`refquant inspect ...` (argv without the subcommand), run as the CLI runs it."""
    import argparse

    assert argv[0] == "inspect"
    parser = argparse.ArgumentParser(prog="refquant inspect")
    inspect_command.add_arguments(parser)
    return inspect_command.run(parser.parse_args(argv[1:]))


def write_gguf(path, tensors, meta=None):
    """tensors: name -> float32 array (stored as F32) or (fmt, float32 array) quantized by gguf."""
    w = gguf.GGUFWriter(str(path), "llama")
    for k, v in (meta or {}).items():
        w.add_uint32(k, v)
    for name, t in tensors.items():
        if isinstance(t, tuple):
            fmt, x = t
            w.add_tensor(name, gguf.quants.quantize(x, getattr(T, fmt)), raw_dtype=getattr(T, fmt))
        else:
            w.add_tensor(name, np.asarray(t, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def rel(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.fixture()
def small(tmp_path):
    rng = np.random.default_rng(0)
    w = {f: rng.standard_normal((8, 64)).astype(np.float32) for f in ("Q8_0", "Q4_0", "Q4_1")}
    norm = rng.standard_normal(64).astype(np.float32)
    qfile = write_gguf(tmp_path / "q.gguf", {f"w_{f}.weight": (f, x) for f, x in w.items()} | {"norm.weight": norm})
    noisy = {f"w_{f}.weight": x + np.float32(0.01) * rng.standard_normal(x.shape).astype(np.float32)
             for f, x in w.items()}
    ref = write_gguf(tmp_path / "ref.gguf", noisy | {"norm.weight": norm})
    return qfile, ref, w, noisy


def test_small_gguf_report(small):
    qfile, _, w, _ = small
    rep = audit_checkpoint(qfile)
    by = {t.name: t for t in rep.tensors}
    assert [by[f"w_{f}.weight"].bits_per_weight for f in ("Q8_0", "Q4_0", "Q4_1")] == [8.5, 4.5, 5.0]
    for f in ("Q8_0", "Q4_0", "Q4_1"):
        t = by[f"w_{f}.weight"]
        assert t.consistent and t.group_size == 32 and t.shape == (8, 64)
        assert t.info["fixed_point"] == 1.0                         # written by gguf's quantizer
    assert by["norm.weight"].consistent and by["norm.weight"].group_size is None
    assert rep.n_inconsistent == 0


def test_reference_errors_match_numpy(small):
    qfile, ref, w, noisy = small
    rep = audit_checkpoint(qfile, reference=ref)
    by = {t.name: t for t in rep.tensors}
    for f, x in w.items():
        name = f"w_{f}.weight"
        stored = gguf.quants.dequantize(gguf.quants.quantize(x, getattr(T, f)), getattr(T, f))
        assert by[name].rel_err == pytest.approx(rel(stored, noisy[name]), rel=1e-12)
        again = gguf.quants.dequantize(gguf.quants.quantize(noisy[name], getattr(T, f)), getattr(T, f))
        assert by[name].rtn_rel_err == pytest.approx(rel(again, noisy[name]), rel=1e-12)
        assert 0 < by[name].uniform_rel_err < 1
    assert by["norm.weight"].rel_err == 0.0


def _corrupt(src, dst, tensor, mutate):
    spans, _ = scan_gguf(src)
    span = next(s for s in spans if s.name == tensor)
    raw = bytearray(open(src, "rb").read())
    mutate(raw, span.start)
    open(dst, "wb").write(bytes(raw))
    return dst


def test_inconsistent_tensors_are_flagged(small, tmp_path, capsys):
    qfile = small[0]

    def neg_d(raw, start):          # Q4_1 block 0: set the sign bit of d (float16 high byte)
        raw[start + 1] |= 0x80

    def nan_m(raw, start):          # Q4_1 block 1: m = NaN (0x7E00)
        raw[start + 20 + 2], raw[start + 20 + 3] = 0x00, 0x7E

    def code_m128(raw, start):      # Q8_0 block 0: code 5 = -128
        raw[start + 2 + 5] = 0x80

    cases = [("w_Q4_1.weight", neg_d, "scale_sign"), ("w_Q4_1.weight", nan_m, "scales_finite"),
             ("w_Q8_0.weight", code_m128, "codes_in_range")]
    for i, (tensor, mutate, check) in enumerate(cases):
        bad = _corrupt(qfile, tmp_path / f"bad{i}.gguf", tensor, mutate)
        rep = audit_checkpoint(bad)
        t = next(t for t in rep.tensors if t.name == tensor)
        assert t.consistent is False and t.checks[check] is False
        assert sum(u.consistent is False for u in rep.tensors) == 1
        assert main(["inspect", str(bad)]) == 1
        out = capsys.readouterr().out
        assert tensor in out and "NO" in out and check in out


def test_q4_0_negative_scale_is_consistent(tmp_path):
    x = np.abs(np.random.default_rng(1).standard_normal((2, 64))).astype(np.float32)  # max > 0
    f = write_gguf(tmp_path / "q40.gguf", {"w": ("Q4_0", x)})
    rep = audit_checkpoint(f)
    assert rep.tensors[0].consistent
    assert (gguf.quants.quantize(x, T.Q4_0).reshape(-1, 18)[:, 1] & 0x80).all()   # every d < 0


@pytest.mark.parametrize("keep", [0.5, 0.97, 0.999])
def test_truncated_gguf_names_the_tensor(small, tmp_path, keep, capsys):
    qfile = small[0]
    raw = open(qfile, "rb").read()
    spans, _ = scan_gguf(qfile)
    cut = int(len(raw) * keep)
    cut = max(cut, spans[0].start + 1) if keep > 0.9 else cut
    bad = tmp_path / "trunc.gguf"
    bad.write_bytes(raw[:cut])
    victim = next((s.name for s in spans if s.start + s.n_bytes > cut), None)
    with pytest.raises(CorruptCheckpoint) as err:
        audit_checkpoint(bad)
    msg = str(err.value)
    assert (victim in msg and "truncated" in msg) if victim else "file ends inside" in msg
    assert main(["inspect", str(bad)]) == 2
    assert "corrupt checkpoint" in capsys.readouterr().err


def test_truncated_bundled_model_names_the_tensor(tmp_path):
    src = bundled_model_path()
    with open(src, "rb") as f:
        head = f.read(40_000_000)                                # ends inside blk.*
    bad = tmp_path / "smollm2_truncated.gguf"
    bad.write_bytes(head)
    with pytest.raises(CorruptCheckpoint, match=r"tensor 'blk\.\d+\.\w+\.weight' \(\w+, shape .*\) is truncated"):
        audit_checkpoint(bad)


def test_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a GGUF file"):
        audit_checkpoint(tmp_path / "x.txt")
    with pytest.raises(ValueError, match="without a GPTQ"):
        audit_checkpoint(tmp_path)
    assert main(["inspect", str(tmp_path / "missing.gguf")]) == 2
    with pytest.raises(ValueError, match="zero_convention"):
        audit_checkpoint(tmp_path, zero_convention="v3")


# --- a reference in Hugging Face layout (names and Q/K rotary permutation) ---------------------

def test_hf_reference_with_qk_permutation(tmp_path):
    from safetensors.numpy import save_file

    n_head, n_kv, d = 4, 2, 8                          # head dim 8, hidden 32
    rng = np.random.default_rng(3)
    wq = rng.standard_normal((n_head * d, 64)).astype(np.float32)
    wk = rng.standard_normal((n_kv * d, 64)).astype(np.float32)

    def to_gguf_rows(w, heads):                        # llama.cpp's converter, as a loop
        out = np.empty_like(w)
        for h in range(heads):
            for i in range(d // 2):
                out[h * d + 2 * i] = w[h * d + i]
                out[h * d + 2 * i + 1] = w[h * d + d // 2 + i]
        return out

    q_file = write_gguf(tmp_path / "m.gguf",
                        {"blk.0.attn_q.weight": ("Q8_0", to_gguf_rows(wq, n_head)),
                         "blk.0.attn_k.weight": ("Q8_0", to_gguf_rows(wk, n_kv))},
                        meta={"llama.attention.head_count": n_head, "llama.attention.head_count_kv": n_kv})
    save_file({"model.layers.0.self_attn.q_proj.weight": wq, "model.layers.0.self_attn.k_proj.weight": wk},
              str(tmp_path / "ref.safetensors"))
    rep = audit_checkpoint(q_file, reference=tmp_path / "ref.safetensors")
    by = {t.name: t for t in rep.tensors}
    for name, w, heads in (("blk.0.attn_q.weight", wq, n_head), ("blk.0.attn_k.weight", wk, n_kv)):
        stored = gguf.quants.dequantize(gguf.quants.quantize(to_gguf_rows(w, heads), T.Q8_0), T.Q8_0)
        assert by[name].reference_name == hf_name(name)
        assert by[name].rel_err == pytest.approx(rel(stored, to_gguf_rows(w, heads)), rel=1e-12)
        assert by[name].rel_err < 0.01                 # a wrong permutation gives ~1.4


# --- GPTQ directories ----------------------------------------------------------------------------

def _gptq_dir(tmp_path, checkpoint_format="gptq", sym=False, drop_format=False, name="ck"):
    rng = np.random.default_rng(5)
    W = rng.standard_normal((48, 96)).astype(np.float32)
    spec = rq.QuantSpec(bits=4, symmetric=sym, granularity="group", group_size=32)
    qp = rq.calibrate(W, spec)
    layer = gptq.layer_from_quantized(rq.quantize(W, qp, spec), qp, spec)
    d = gptq.export_checkpoint(tmp_path / name, {"layers.0.mlp.up_proj": layer},
                               {"norm.weight": np.ones(96, np.float32)},
                               checkpoint_format=checkpoint_format,
                               extra_config={"sym": sym} if sym else None)
    if drop_format:
        cfg = json.loads((d / "quantize_config.json").read_text())
        del cfg["checkpoint_format"]
        (d / "quantize_config.json").write_text(json.dumps(cfg))
    return d, W, layer


def test_gptq_directory_report(tmp_path):
    from safetensors.numpy import save_file

    d, W, layer = _gptq_dir(tmp_path)
    save_file({"model.layers.0.mlp.up_proj.weight": W}, str(tmp_path / "ref.safetensors"))
    rep = audit_checkpoint(d, reference=tmp_path / "ref.safetensors")
    t = next(t for t in rep.tensors if t.name == "layers.0.mlp.up_proj.weight")
    assert t.consistent and t.group_size == 32 and t.stored_type == "GPTQ_4bit"
    # 4 bits + (16-bit scale + 4-bit zero) per group of 32 + a 32-bit g_idx per input column / 48 rows
    assert t.bits_per_weight == pytest.approx(4 + 20 / 32 + 32 / 48)
    expected = rel(layer.dequantize(), W)
    assert t.rel_err == pytest.approx(expected, rel=1e-12)
    # RTN at the same settings with float32 scales; the file stores float16 scales
    assert t.rtn_rel_err == pytest.approx(expected, rel=0.05)
    assert any("gptq (from quantize_config.json)" in n for n in rep.notes)


@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2"])
def test_gptq_zero_convention_detected_and_selectable(tmp_path, fmt):
    d, W, layer = _gptq_dir(tmp_path, checkpoint_format=fmt, sym=True, drop_format=True)
    rep = audit_checkpoint(d)
    t = rep.tensors[0]
    assert any(f"{fmt} (detected" in n for n in rep.notes)
    assert t.info["symmetric_zero_points"] is True
    other = "gptq_v2" if fmt == "gptq" else "gptq"
    rep2 = audit_checkpoint(d, zero_convention=other)
    assert rep2.tensors[0].info["symmetric_zero_points"] is False
    assert any("selected" in n for n in rep2.notes)


def test_truncated_gptq_safetensors_names_the_tensor(tmp_path, capsys):
    d, _, _ = _gptq_dir(tmp_path)
    f = d / "model.safetensors"
    spans = scan_safetensors(f)
    last = max(spans, key=lambda s: s.start)
    f.write_bytes(f.read_bytes()[: last.start + 1])
    with pytest.raises(CorruptCheckpoint, match=f"tensor '{last.name}'.*truncated"):
        audit_checkpoint(d)
    assert main(["inspect", str(d)]) == 2
    assert last.name in capsys.readouterr().err


# --- the bundled model -----------------------------------------------------------------------------

def test_bundled_model_json(capsys):
    assert main(["inspect", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    s = rep["summary"]
    assert s["n_tensors"] == 272 and s["n_inconsistent"] == 0
    q41 = s["by_type"]["Q4_1"]
    assert q41 == {"n_tensors": 210, "bits_per_weight": 5.0, "group_size": 32, "n_consistent": 210}
    assert s["by_type"]["Q8_0"]["bits_per_weight"] == 8.5
    tensors = {t["name"]: t for t in rep["tensors"]}
    t = tensors["blk.0.attn_q.weight"]
    assert t["stored_type"] == "Q4_1" and t["shape"] == [576, 576] and t["consistent"]
    assert all(t["checks"].values()) and t["info"]["fixed_point"] == 1.0
    assert all(t["info"].get("fixed_point", 1.0) == 1.0 for t in rep["tensors"])


def test_table_output(small, capsys):
    qfile, ref, _, _ = small
    assert main(["inspect", str(qfile), "--reference", str(ref), "--all"]) == 0
    out = capsys.readouterr().out
    assert "w_Q4_1.weight" in out and "5.00" in out and "norm.weight" in out
    assert "rel_err" in out and "Q4_1          1 tensors, 5.00 bits/weight, groups of 32" in out
