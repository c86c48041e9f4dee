"""Tests of `refquant inspect`'s checks of the GGML block types beyond Q8_0/Q4_0/Q4_1
(refquant.formats.audit_ggml through refquant.formats.audit.audit_checkpoint).

Oracles: GGUF files written by the gguf package's writer holding bytes from ggml's own C
quantizer (tests/ggml_oracle.py), bits per weight from gguf's GGML_QUANT_SIZES, and bytes
corrupted by hand (a float16 inf scale, a wrong Q8_K block sum).
"""

import gguf
import numpy as np
import pytest

import ggml_oracle
from refquant.formats.audit import audit_checkpoint

T = gguf.GGMLQuantizationType
TYPES = ("Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ4_XS")
pytestmark = pytest.mark.skipif(not ggml_oracle.available(), reason="libggml-python (test extra) missing")


def c_bytes(x, fmt):
    return ggml_oracle.quantize_row_ref(x, fmt) if fmt == "Q8_K" else ggml_oracle.quantize(x, fmt)


def write_gguf(path, tensors):
    """tensors: name -> (fmt, uint8 bytes [rows, row bytes])."""
    w = gguf.GGUFWriter(str(path), "llama")
    for name, (fmt, data) in tensors.items():
        w.add_tensor(name, data, raw_dtype=getattr(T, fmt))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_new_types_are_checked_and_consistent(tmp_path):
    x = np.random.default_rng(0).standard_normal((4, 512)).astype(np.float32)
    path = write_gguf(tmp_path / "k.gguf", {f"w_{f}.weight": (f, c_bytes(x, f)) for f in TYPES})
    by = {t.name: t for t in audit_checkpoint(path).tensors}
    for f in TYPES:
        t = by[f"w_{f}.weight"]
        block, size = gguf.GGML_QUANT_SIZES[getattr(T, f)]
        assert t.bits_per_weight == 8 * size / block and t.shape == (4, 512)
        assert t.consistent and t.checks["values_finite"] and "note" not in t.info, (f, t.checks)
        assert t.info["n_blocks"] == 4 * 512 // block
    assert by["w_Q8_K.weight"].checks["bsums"] and by["w_Q4_K.weight"].checks["scales_finite"]
    assert by["w_Q5_0.weight"].info["fixed_point"] == 1.0          # ggml's own reference bytes
    assert set(by["w_IQ4_XS.weight"].checks) == {"byte_length", "values_finite"}  # generic path


def test_corrupt_blocks_are_reported(tmp_path):
    x = np.random.default_rng(1).standard_normal((2, 256)).astype(np.float32)
    q4k, q8k = c_bytes(x, "Q4_K"), c_bytes(x, "Q8_K")
    q4k[1, 0:2] = [0x00, 0x7C]                                      # d = +inf (float16)
    q8k[0, 260:262] += 1                                            # bsums[0] off by one
    path = write_gguf(tmp_path / "bad.gguf", {"a.weight": ("Q4_K", q4k), "b.weight": ("Q8_K", q8k)})
    rep = audit_checkpoint(path)
    by = {t.name: t for t in rep.tensors}
    assert not by["a.weight"].consistent and not by["a.weight"].checks["scales_finite"]
    assert not by["b.weight"].checks["bsums"] and by["b.weight"].checks["scales_finite"]
    assert rep.n_inconsistent == 2
