"""`gradpath models`: every registered network with its parameters, FLOPs and cost relative to its base."""

from __future__ import annotations

import argparse

from ..scales import SCALES

FORMATS = ("table", "csv")
TASKS = ("classify", "detect")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `gradpath models`."""
    parser = subparsers.add_parser("models", help="list the registered networks with their cost")
    parser.add_argument("names", nargs="*", metavar="NAME", help="only these networks (and their bases)")
    parser.add_argument("--input", type=int, default=32, help="square input size in pixels (default 32)")
    parser.add_argument("--scale", choices=SCALES, default="mini", help="size preset (default mini)")
    parser.add_argument("--task", choices=TASKS, default=None, help="only the networks of this task")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the cost table (FLOPs = 2 x multiply-accumulates, one image)."""
    from ..models.cost import cost_table

    table = cost_table(args.scale, args.input, args.task, args.names)
    if args.format == "csv":
        print(table.to_csv(), end="")
    else:
        print(f"scale {args.scale}, one {args.input}x{args.input} RGB image; FLOPs = 2 x MACs")
        print(table.to_string(na_rep=""))
    return 0
