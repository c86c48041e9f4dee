"""refquant against its golden vectors (refquant/testing/golden, written by scripts/make_golden.py).

The expected values in the .npz files come from the script's exact Fraction oracle (it does not
import refquant); the GGML cases are also checked against the gguf package here.
"""

import importlib.util
import pathlib
import re

import gguf
import numpy as np
import pytest

import refquant as rq
from refquant.formats import ggml
from refquant.testing.golden import GOLDEN_DIR
from refquant.testing import (GOLDEN_VERSION, assert_ggml_equal, load_case_file,
                              reference_case, reference_cases)

ROOT = pathlib.Path(__file__).resolve().parent.parent
CASES = reference_cases()
UNIFORM = [c for c in CASES if c.startswith("uniform_")]
GGML = [c for c in CASES if c.startswith("ggml_")]


def _make_golden():
    spec = importlib.util.spec_from_file_location("make_golden", ROOT / "scripts" / "make_golden.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_scheme_is_covered():
    assert len(UNIFORM) >= 9 and sorted(GGML) == ["ggml_q4_0", "ggml_q4_1", "ggml_q8_0"]
    specs = [reference_case(c).spec for c in UNIFORM]
    assert {s.granularity for s in specs} == {"tensor", "channel", "group"}
    assert {s.symmetric for s in specs} == {True, False}
    assert {s.rounding for s in specs} == {"half_even", "half_away"}
    assert {2, 3, 4, 8, 16} <= {s.bits for s in specs}


@pytest.mark.parametrize("name", UNIFORM)
def test_uniform_case(name):
    case = reference_case(name)
    assert case.version == GOLDEN_VERSION and case.scheme == "uniform"
    qp = rq.calibrate(case.x, case.spec, method="minmax")
    np.testing.assert_array_equal(qp.scale, case.scale)
    np.testing.assert_array_equal(qp.zero_point, case.zero_point)
    codes = rq.quantize(case.x, qp, case.spec)
    assert codes.dtype == case.codes.dtype
    np.testing.assert_array_equal(codes, case.codes)
    np.testing.assert_array_equal(rq.dequantize(codes, qp, case.spec), case.dequantized)


@pytest.mark.parametrize("name", GGML)
def test_ggml_case(name):
    case = reference_case(name)
    fmt = case.fmt
    assert_ggml_equal(ggml.quantize(case.x, fmt), case.blocks, fmt, x=case.x)
    blk = ggml.unpack_blocks(case.blocks, fmt)
    np.testing.assert_array_equal(blk.q, case.codes)
    np.testing.assert_array_equal(blk.d.view(np.uint16), case.scale.view(np.uint16))
    if fmt == "Q4_1":
        np.testing.assert_array_equal(blk.m.view(np.uint16), case.zero_point.view(np.uint16))
    np.testing.assert_array_equal(ggml.dequantize(case.blocks, fmt), case.dequantized)
    # third party: the gguf package agrees with the oracle's bytes and dequantized values
    qtype = getattr(gguf.GGMLQuantizationType, fmt)
    assert_ggml_equal(gguf.quants.quantize(case.x, qtype), case.blocks, fmt, x=case.x)
    np.testing.assert_array_equal(gguf.quants.dequantize(case.blocks, qtype), case.dequantized)


def test_files_match_the_provenance_digests():
    mg = _make_golden()
    table = dict(re.findall(r"\| `(\w+)` \|.*\| `([0-9a-f]{16})` \|",
                            (GOLDEN_DIR / "PROVENANCE.md").read_text()))
    assert sorted(table) == CASES
    for name in CASES:
        with np.load(GOLDEN_DIR / f"{name}.npz", allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        assert mg.content_digest(arrays)[:16] == table[name], name


def test_script_regenerates_the_committed_files(tmp_path):
    digests = _make_golden().build(tmp_path)
    assert sorted(digests) == CASES
    for name in CASES:
        new, old = load_case_file(tmp_path / f"{name}.npz"), reference_case(name)
        for field in ("x", "codes", "scale", "dequantized"):
            np.testing.assert_array_equal(getattr(new, field), getattr(old, field), err_msg=f"{name}.{field}")


def test_oracle_rounding_helpers_by_hand():
    mg = _make_golden()
    from fractions import Fraction as F
    # 1/3 to binary16: 0x3555 = 1365/4096
    assert mg.fl16(F(1, 3)) == F(1365, 4096)
    # 2**-24 * 3/2 is a binary16 tie between subnormals 2**-24 (odd) and 2**-23 (even)
    assert mg.fl16(F(3, 2**25)) == F(1, 2**23)
    assert mg.fl32(F(1) + F(1, 2**24)) == 1                     # tie to even (1.0)
    assert mg.fl32(F(1) + F(3, 2**24)) == F(1) + F(1, 2**22)    # tie to even (up)
    assert [mg.round_int(F(v), "half_even") for v in (0.5, 1.5, -2.5)] == [0, 2, -2]
    assert [mg.round_int(F(v), "half_away") for v in (0.5, 1.5, -2.5)] == [1, 2, -3]
    with pytest.raises(OverflowError):
        mg.fl16(F(65520))


def test_reference_case_api():
    with pytest.raises(ValueError, match="unknown reference case"):
        reference_case("no_such_case")
    case = reference_case("uniform_int4_asym_group32")
    assert case.qparams.scale.shape == (4, 4)
    with pytest.raises(ValueError, match="GGML case"):
        reference_case("ggml_q4_1").qparams
