"""`gradpath book`: build the Jupyter Book from recorded results (never trains at mini/paper)."""

from __future__ import annotations

import argparse

from ..scales import SCALES
from .reproduce import AUTO_JOBS, jobs_count


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `gradpath book`."""
    parser = subparsers.add_parser(
        "book", help="build the Jupyter Book into _build/html from recorded results",
        description="Build the book from the executed notebooks of one scale: mini when "
                    "results/mini/notebooks exists, else the smoke reproduction (run first, CPU, minutes).")
    parser.add_argument("--scale", choices=SCALES, help="size preset (default: mini if recorded, else smoke)")
    parser.add_argument("--results-dir", default="results",
                        help="where the recorded results are (default: %(default)s)")
    parser.add_argument("--jobs", default="auto",
                        help="parallel jobs of the smoke reproduction, or auto (the default): as many as the "
                             "recorded `gradpath bench jobs` of the CPU found best, else 1")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the book; 0 when it and the reproduction it needed succeeded."""
    from ..book import build_book

    jobs = jobs_count(args.jobs)
    return build_book(args.scale, results_dir=args.results_dir, jobs=None if jobs == AUTO_JOBS else jobs)
