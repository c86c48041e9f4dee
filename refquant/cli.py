"""The command line: ``refquant demo | quantize | eval | generate | inspect``.

Each subcommand lives in ``refquant/commands/<name>.py`` with two functions,
``add_arguments(parser)`` and ``run(args) -> int``; library code never prints, the commands do.

Exit codes: 0 success; 1 a check found a problem (``inspect``: an inconsistent tensor); 2 a user
error: bad arguments (argparse), or a ``ValueError`` (every refquant exception for bad input or a
bad file is one) or ``OSError`` (a missing file, a missing data package) raised by the command,
printed as one line ``refquant <command>: error: <message>``. ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module under refquant.commands, one-line help)
COMMANDS = {
    "demo": ("demo", "quantize the bundled model with RTN, GPTQ and AWQ and print the table"),
    "quantize": ("quantize", "quantize a model (GGUF file or Hugging Face directory) and export it"),
    "eval": ("evaluate", "perplexity of a float or quantized model on the evaluation text"),
    "generate": ("generate", "greedy generation from a prompt"),
    "inspect": ("inspect", "check a quantized checkpoint's tensors and report their error"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refquant", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error instead of one line")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(f"refquant.commands.{module}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (ValueError, OSError) as exc:          # user errors: bad input, bad or missing files
        if args.debug:
            raise
        message = str(exc) or type(exc).__name__
        print(f"refquant {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"refquant {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
