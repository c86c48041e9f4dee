"""``refquant quantize --format gguf``: a working run, and every bad argument refused up front.

Oracles: the file's own tensor types against the mix rules worked out by hand for the tiny
model (every tensor of width 32: K-quants fall back), the imatrix written here, and the exit
status and one-line message contract of ``refquant.cli`` (exit 2, ``refquant quantize: error:``).
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers_model import tiny_config, tiny_weights, write_tiny_gguf
from refquant.algorithms.imatrix import Imatrix, ImatrixEntry
from refquant.cli import main
from refquant.formats.imatrix_file import write_imatrix


@pytest.fixture
def tiny(tmp_path):
    cfg = tiny_config()
    return write_tiny_gguf(tmp_path / "tiny.gguf", cfg, tiny_weights(cfg)), cfg


def _err(capsys):
    return capsys.readouterr().err.strip()


def test_writes_a_verified_file_with_auto_imatrix(tiny, tmp_path, capsys):
    """Q4_K_M on the tiny model (rows of 32): Q4_K falls back to Q5_0, Q6_K (attn_v of block 1,
    the output) to Q8_0, as llama-quantize does; the imatrix is computed on the bundled text."""
    from refquant.models.gguffile import read_gguf

    src, cfg = tiny
    out = tmp_path / "out.gguf"
    rc = main(["quantize", str(src), "--format", "gguf", "--type", "q4_k_m", "-o", str(out),
               "--imatrix", "auto", "--calib-tokens", "64", "--seq-len", "32"])
    text = capsys.readouterr().out
    assert rc == 0 and "imatrix auto (14 entries)" in text and "verified by re-reading" in text
    types = {n: t.type_name for n, t in read_gguf(out).tensors.items()}
    assert types["blk.0.attn_q.weight"] == "Q5_0" and types["output.weight"] == "Q8_0"
    assert types["blk.1.attn_v.weight"] == "Q8_0" and types["blk.0.attn_v.weight"] == "Q5_0"
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert main(["quantize", str(src), "--format", "gguf", "--type", "Q8_0", "-o", str(out)]) == 0


@pytest.mark.parametrize("extra, message", [
    (["--type", "Q7_K"], "unknown GGUF type 'Q7_K'"),
    ([], "--format gguf needs --type"),
    (["--type", "F16", "--method", "gptq"], "--method gptq with --type F16: that type quantizes"),
    (["--type", "Q8_0", "--act-order"], "--act-order is GPTQ's column order; --method rtn has none"),
    (["--type", "Q8_0", "--method", "awq", "--act-order"], "--method awq has none"),
    (["--type", "Q8_0", "--method", "gptq", "--static-groups"], "--static-groups applies to GPTQ c"),
    (["--type", "Q8_0", "--method", "awq", "--calib-tokens", "8", "--seq-len", "16"],
     "--calib-tokens 8 is less than one sequence of --seq-len 16"),
    (["--type", "Q8_0", "--imatrix", "nope.gguf"], "--imatrix 'nope.gguf': no such file"),
])
def test_bad_arguments(tiny, tmp_path, capsys, extra, message):
    """Each bad argument: exit 2, one line naming it, no file written."""
    src, _ = tiny
    out = tmp_path / "x.gguf"
    assert main(["quantize", str(src), "--format", "gguf", "-o", str(out)] + extra) == 2
    err = _err(capsys)
    assert err.startswith("refquant quantize: error: ") and message in err and "\n" not in err
    assert not out.exists()


def test_directory_output_and_missing_block_type(tiny, tmp_path, capsys, monkeypatch):
    """A directory for --format gguf, and a mix needing a block type the registry lacks."""
    from refquant.formats import ggml

    src, _ = tiny
    assert main(["quantize", str(src), "--format", "gguf", "--type", "Q8_0", "-o", str(tmp_path)]) == 2
    assert "is a directory" in _err(capsys)
    monkeypatch.delitem(ggml.TYPES, "Q5_0")
    out = tmp_path / "x.gguf"
    assert main(["quantize", str(src), "--format", "gguf", "--type", "Q4_K_M", "-o", str(out)]) == 2
    assert "no block type Q5_0" in _err(capsys) and not out.exists()


def test_imatrix_of_wrong_length_names_file_and_tensor(tiny, tmp_path, capsys):
    """An imatrix whose entry does not match the tensor's row length (llama-quantize refuses it
    too): the file and the tensor are named, nothing is written."""
    src, _ = tiny
    im = write_imatrix(tmp_path / "im.gguf", Imatrix(
        {"blk.1.ffn_down.weight": ImatrixEntry(np.ones((1, 32)), np.array([4]))},
        chunk_count=1, chunk_size=4, datasets=("t",)))
    out = tmp_path / "x.gguf"
    assert main(["quantize", str(src), "--format", "gguf", "--type", "Q4_0", "-o", str(out),
                 "--imatrix", str(im)]) == 2
    err = _err(capsys)
    assert str(im) in err and "'blk.1.ffn_down.weight' has 32 values; the tensor's rows have 64" in err
    assert not out.exists()


def test_gptq_refuses_a_file_output(tiny, tmp_path, capsys):
    """-o may name an existing .gguf file, which only --format gguf writes (any other existing
    file is refused by argparse, tests/test_bad_inputs.py)."""
    src, _ = tiny
    f = tmp_path / "exists.gguf"
    f.write_text("x")
    assert main(["quantize", str(src), "-o", str(f)]) == 2
    assert "exists and is not a directory" in _err(capsys)
