"""``refquant eval --integer-only`` and ``refquant generate --integer-only`` (issue 18), run
in-process through ``refquant.cli.main`` on the bundled model.

Oracles: the library calls they stand for (``generate_int`` on the same prepared model gives the
printed text; the printed perplexity is finite and the text names the integer-only path), and
argparse's contract for a bad value (exit 2, one line).
"""

from __future__ import annotations

import math
import re

import pytest

from refquant import cli


def test_generate_integer_only(capsys):
    """The greedy text of the integer model, prompt first; equal to generate_int's."""
    import refquant as rq
    from refquant.models.llama_int import generate_int
    from refquant.models.llama_int_prepare import prepare_integer
    from refquant.pipeline.data import calibration_tokens

    rc = cli.main(["generate", "--integer-only", "The capital of France is", "--n-new", "3",
                   "--calib-tokens", "128"])
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("The capital of France is")
    m = rq.load_model()
    im = prepare_integer(m, calibration_tokens(m.tokenizer, 128), seq_len=128)
    ids = generate_int(im, m.tokenizer.encode("The capital of France is"), 3)
    assert out.splitlines()[0] == "The capital of France is" + m.tokenizer.decode(ids).split("\n")[0]


def test_eval_integer_only(capsys):
    """A finite perplexity, printed for the integer-only model."""
    rc = cli.main(["eval", "--integer-only", "--tokens", "64", "--seq-len", "32",
                   "--calib-tokens", "64"])
    out = capsys.readouterr().out
    assert rc == 0 and "integer-only" in out
    ppl = float(re.search(r"perplexity: ([0-9.]+)", out).group(1))
    assert math.isfinite(ppl) and 1 < ppl < 1000


def test_bad_calibration_size_is_refused(capsys):
    """--calib-tokens below 16 is an argparse error (exit 2) naming the value."""
    with pytest.raises(SystemExit) as e:
        cli.main(["eval", "--integer-only", "--calib-tokens", "8"])
    assert e.value.code == 2 and "'8'" in capsys.readouterr().err
