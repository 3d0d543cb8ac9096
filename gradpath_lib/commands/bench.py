"""`gradpath bench ...`: performance measurements (`bench train`: trainer vs a reference loop)."""

from __future__ import annotations

import argparse
import json

from ..scales import SCALES


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `gradpath bench` and its subcommands."""
    parser = subparsers.add_parser("bench", help="performance measurements")
    benches = parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    train = benches.add_parser("train", help="images/s of our training step vs a typical DataLoader loop")
    train.add_argument("--model", required=True, help="registered model name")
    train.add_argument("--scale", default="mini", choices=SCALES)
    train.add_argument("--batch", type=int, help="batch size (default: the scale's recipe)")
    train.add_argument("--steps", type=int, default=20, help="training steps per timed pass")
    train.add_argument("--repeats", type=int, default=5, help="timed passes (the median is reported)")
    train.add_argument("--workers", type=int, default=4, help="DataLoader workers of the reference loop")
    train.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    train.add_argument("--compile", action="store_true", help="torch.compile our model")
    train.add_argument("--format", default="text", choices=("text", "json"))
    train.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    """Run the training bench and print it as a table or as JSON."""
    from ..bench import bench_train, format_bench

    result = bench_train(
        args.model, args.scale, batch_size=args.batch, steps=args.steps, repeats=args.repeats,
        device=args.device, compile=args.compile, workers=args.workers,
    )
    print(json.dumps(result, indent=1) if args.format == "json" else format_bench(result))
    return 0
