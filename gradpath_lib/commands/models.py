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
    parser.add_argument("--input", type=int, default=None,
                        help="square input size in pixels (default: 32 for classifiers, the scale's canvas "
                             "for detectors: smoke 64, mini 192, paper 640)")
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
        print(f"scale {args.scale}, {_input_text(args.input, args.scale, 'input' in table.columns)}; FLOPs = 2 x MACs")
        print(table.astype(object).where(table.notna(), "").to_string())
    return 0


def _input_text(input_size: int | None, scale: str, detectors: bool) -> str:
    """What the header says about the input: the given side, or each task's default side."""
    from ..models.cost import CLASSIFY_INPUT
    from ..models.yolor import BASELINE, INPUT_SIZES, PAPER_INPUT

    side = INPUT_SIZES[scale]
    text = (f"one {input_size}x{input_size} RGB image" if input_size is not None else
            f"one RGB image, {CLASSIFY_INPUT}x{CLASSIFY_INPUT} for classifiers and {side}x{side} for detectors")
    if detectors:
        text += f"; detectors also at {PAPER_INPUT}x{PAPER_INPUT}, relative to {BASELINE}"
    return text
