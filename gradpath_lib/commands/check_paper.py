"""`gradpath check-paper`: dry-run the paper-scale (ImageNet / COCO 2017) configs without training."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `gradpath check-paper`."""
    parser = subparsers.add_parser(
        "check-paper", help="dry-run the paper-scale configs: data layout, model builds (no training)",
        description="Check that the paper-scale runs can start: the ImageNet / COCO 2017 layout under the data "
                    "directory (GRADPATH_DATA) and every model at its paper preset. Exits 2 naming what is missing.")
    parser.add_argument("--tables", nargs="+", metavar="TABLE", help="these paper tables (default: all)")
    parser.add_argument("--models", nargs="+", metavar="MODEL", help="only these models of the tables")
    parser.add_argument("--data-dir", help="the folder holding imagenet/ and coco/ (default: GRADPATH_DATA)")
    parser.add_argument("--flops", action="store_true", help="also count FLOPs at the paper input size (slow on CPU)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print one line per table and model (params, FLOPs) once data and models check out."""
    import pandas as pd

    from ..paper_configs import check_paper

    rows = check_paper(args.tables, models=args.models, root=args.data_dir, flops=args.flops)
    print(pd.DataFrame(rows).to_string(index=False))
    print(f"paper-scale data and models ready: {len(rows)} run(s) checked, nothing trained")
    return 0
