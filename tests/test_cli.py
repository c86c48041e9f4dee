"""The command line's error contract: a user error is one line on stderr and exit code 2.

The oracle is the contract in ``refquant/cli.py``'s docstring; each case runs ``main`` in-process.
"""

from __future__ import annotations

import pytest

from refquant import cli


def run(argv, capsys):
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("argv", [["eval", "/nonexistent/model.gguf"],
                                  ["generate", "Hi", "--model", "/nonexistent/model.gguf"],
                                  ["inspect", "/nonexistent/dir"]])
def test_missing_file_is_one_line_exit_2(argv, capsys):
    rc, out, err = run(argv, capsys)
    assert rc == 2
    assert "/nonexistent" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_debug_shows_the_exception():
    with pytest.raises(OSError, match="/nonexistent"):
        cli.main(["--debug", "eval", "/nonexistent/model.gguf"])


def test_value_error_from_a_command_is_exit_2(monkeypatch, capsys):
    def bad(args):
        raise ValueError("group_size must be positive, got -3")

    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_run(parser(), bad))
    rc, _, err = run(["eval"], capsys)
    assert rc == 2 and err.strip() == "refquant eval: error: group_size must be positive, got -3"


def test_a_bug_is_not_hidden(monkeypatch):
    """Only user errors are caught: an internal error keeps its traceback."""
    def bug(args):
        raise KeyError("internal")

    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_run(parser(), bug))
    with pytest.raises(KeyError):
        cli.main(["eval"])


def _with_run(parser, fn):
    for action in parser._subparsers._group_actions:
        for sub in action.choices.values():
            sub.set_defaults(_run=fn)
    return parser
