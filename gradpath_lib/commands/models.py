"""`gradpath models`: every registered network with its parameters, FLOPs and cost relative to its base."""

from __future__ import annotations

import argparse

from ..errors import GradpathError
from ..scales import SCALES
from .analyze import parse_shape

FORMATS = ("table", "csv")
TASKS = ("classify", "detect")
RGB = 3  # the channels of a CxHxW --input


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `gradpath models`."""
    parser = subparsers.add_parser("models", help="list the registered networks with their cost")
    parser.add_argument("names", nargs="*", metavar="NAME", help="only these networks (and their bases)")
    parser.add_argument("--input", default=None,
                        help="square input side in pixels, e.g. 32, or its RGB shape 3x32x32 (default: 32 for "
                             "classifiers, the scale's canvas for detectors: smoke 64, mini 192, paper 640)")
    parser.add_argument("--scale", choices=SCALES, default="mini", help="size preset (default mini)")
    parser.add_argument("--task", choices=TASKS, default=None, help="only the networks of this task (default: all)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the cost table (FLOPs = 2 x multiply-accumulates, one image)."""
    from ..models.cost import cost_table

    side = None if args.input is None else input_side(args.input)
    table = cost_table(args.scale, side, args.task, args.names)
    if args.format == "csv":
        print(table.to_csv(), end="")
    else:
        print(f"scale {args.scale}, {_input_text(side, args.scale, 'input' in table.columns)}; FLOPs = 2 x MACs")
        print(table.astype(object).where(table.notna(), "").to_string())
    return 0


def input_side(text: str) -> int:
    """--input as a square side: '32' -> 32, '3x32x32' -> 32 (an RGB image with equal height and width)."""
    shape = parse_shape(text)
    if len(shape) == 1:
        return shape[0]
    if len(shape) == 3 and shape[0] == RGB and shape[1] == shape[2]:
        return shape[1]
    raise GradpathError(f"--input {text!r}: the costs are of one square RGB image; give its side (32) or its shape "
                        f"(3x32x32)")


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
