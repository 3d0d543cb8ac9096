"""`gradpath book`: build the Jupyter Book from recorded results (never trains at mini/paper)."""

from __future__ import annotations

import argparse

from ..scales import SCALES


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `gradpath book`."""
    parser = subparsers.add_parser(
        "book", help="build the Jupyter Book into _build/html from recorded results",
        description="Build the book from the executed notebooks of one scale: mini when "
                    "results/mini/notebooks exists, else the smoke reproduction (run first, CPU, minutes).")
    parser.add_argument("--scale", help=f"one of {', '.join(SCALES)} (default: mini if recorded, else smoke)")
    parser.add_argument("--results-dir", default="results", help="where the recorded results are")
    parser.add_argument("--jobs", type=int, default=1, help="parallel jobs of the smoke reproduction")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the book; 0 when it and the reproduction it needed succeeded."""
    from ..book import build_book

    return build_book(args.scale, results_dir=args.results_dir, jobs=args.jobs)
