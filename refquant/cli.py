"""The command line: ``refquant demo | quantize | eval | generate | inspect``.

Each subcommand lives in ``refquant/commands/<name>.py`` with two functions,
``add_arguments(parser)`` and ``run(args) -> int``; library code never prints, the commands do.
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
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(f"refquant.commands.{module}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
