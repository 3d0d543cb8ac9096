"""The `gradpath` command. Each subcommand lives in `gradpath_lib/commands/<name>.py` and
defines `add_parser(subparsers)`, which registers its parser and sets `func(args) -> int`."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import commands
from .errors import GradpathError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand found in `gradpath_lib.commands`."""
    parser = argparse.ArgumentParser(
        prog="gradpath",
        description="Gradient path analysis, training and the reproducible book of the PRN / CSPNet / ELAN paper.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{info.name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; bad input exits with status 2 and one clear message."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except GradpathError as err:
        print(f"gradpath: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
