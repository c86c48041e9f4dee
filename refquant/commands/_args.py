"""Argument types shared by the commands: each parses one command-line value or raises
:class:`argparse.ArgumentTypeError` naming it, so that a bad value ends the command before any
work with argparse's usage line and exit code 2 (``refquant quantize: error: argument --seq-len:
expected an integer >= 1, got '0'``).

Each factory returns the ``type=`` callable of one option; the callable's ``__name__`` is what
argparse prints for a value it could not convert at all.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import tempfile


def integer(minimum: int):
    """``type=`` for an integer ``>= minimum``.

    Examples
    --------
    >>> integer(1)("16")
    16
    >>> integer(1)("0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected an integer >= 1, got '0'
    """
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


def finite_float(minimum: float):
    """``type=`` for a finite number ``>= minimum`` (``nan`` and ``inf`` are refused)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a finite number >= {minimum:g}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"expected a finite number >= {minimum:g}, got {text!r}")
        return value
    parse.__name__ = f"finite number >= {minimum:g}"
    return parse


def group_size(text: str) -> int:
    """``type=`` for ``--group-size``: an integer ``>= 1``, or ``0`` / ``-1`` for per-channel."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < -1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, or 0 or -1 for per output "
                                         f"channel, got {text!r}")
    return value


def subset(allowed):
    """``type=`` for a comma-separated, non-empty subset of ``allowed``; returns a list."""
    def parse(text: str) -> list:
        items = [t.strip() for t in text.split(",")]
        bad = [t for t in items if t not in allowed]
        if bad or not text.strip():
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of "
                                             f"{','.join(allowed)}, got {text!r}")
        return list(dict.fromkeys(items))
    parse.__name__ = "comma-separated list"
    return parse


def non_empty(text: str) -> str:
    """``type=`` for a string that is not empty or only whitespace."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a non-empty text, got {text!r}")
    return text


def output_directory(text: str) -> str:
    """``type=`` for a directory to write into: an existing writable directory, or a path whose
    nearest existing parent is a writable directory (it is created later, by the command).

    Writability is probed with a temporary file (deleted at once), which also holds for root and
    for read-only file systems; nothing is created at the path itself.
    """
    if not text:
        raise argparse.ArgumentTypeError("expected a directory, got ''")
    path = pathlib.Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a directory")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"cannot create {text!r}: {str(parent)!r} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot write to {text!r}: {str(parent)!r}: "
                                         f"{exc.strerror or exc}") from None
    return text


def output_path(text: str) -> str:
    """``type=`` for a directory or a ``.gguf`` file to write: what :func:`output_directory`
    accepts, and an existing ``.gguf`` file in a writable directory (to be replaced; the command
    checks which of the two it needs)."""
    path = pathlib.Path(text).expanduser() if text else None
    if path is not None and path.is_file() and path.suffix.lower() == ".gguf":
        output_directory(str(path.parent))
        return text
    return output_directory(text)


def require_tokenizer(model, purpose: str) -> None:
    """Raise ``ValueError`` naming the model when it has no tokenizer, needed for ``purpose``."""
    if model.tokenizer is None:
        raise ValueError(f"{model.source}: the model has no tokenizer (tokenizer.json), needed "
                         f"to {purpose}")


def check_n_blocks(model, n_blocks) -> None:
    """Raise ``ValueError`` when ``--n-blocks`` asks for more blocks than the model has."""
    L = model.config.n_layers
    if n_blocks is not None and n_blocks > L:
        raise ValueError(f"--n-blocks {n_blocks}: the model has {L} blocks")
