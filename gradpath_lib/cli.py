"""The `gradpath` command. Each subcommand lives in `gradpath_lib/commands/<name>.py` and
defines `add_parser(subparsers)`, which registers its parser and sets `func(args) -> int`."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import pkgutil
import sys

from . import __version__, commands
from .errors import GradpathError

PACKAGE = "gradpath"  # the distribution name in pyproject.toml
INTERRUPTED_EXIT = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C
CLOSED_PIPE_EXIT = 141  # 128 + SIGPIPE: the reader of the output stopped early (`gradpath models | head`)


def package_version() -> str:
    """The installed package's version (the source tree's `__version__` when it is not installed)."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return __version__


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand found in `gradpath_lib.commands`."""
    parser = argparse.ArgumentParser(
        prog="gradpath",
        description="Gradient path analysis, training and the reproducible book of the PRN / CSPNet / ELAN paper.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{info.name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; bad input exits with status 2 and one clear message, Ctrl-C with 130, a
    closed output pipe with 141 and no traceback."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except GradpathError as err:
        print(f"gradpath: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # its message, if any, says what was kept (runs.ensure_run)
        print("gradpath: interrupted" + (f"; {err}" if str(err) else ""), file=sys.stderr)
        return INTERRUPTED_EXIT
    except BrokenPipeError:  # quietly, as other command-line tools; stdout goes nowhere from here on
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return CLOSED_PIPE_EXIT


if __name__ == "__main__":
    sys.exit(main())
