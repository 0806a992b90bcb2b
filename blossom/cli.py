"""`blossom data|train|bench|report|parity ...`: the commands the workflow rules call, and a parity check.

Each command group registers itself from its own module (a `register(subparsers)` function that
only builds argparse parsers and imports heavy libraries inside its handlers).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from blossom.errors import BlossomError

COMMAND_MODULES = ("blossom.data.cli", "blossom.train_cli", "blossom.bench_cli", "blossom.report.cli", "blossom.parity_cli")


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every command group registered."""
    parser = argparse.ArgumentParser(prog="blossom", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the chosen command; known errors become one line on stderr, exit 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BlossomError as err:
        print(f"blossom {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
