"""`gradpath check-paper`: dry-run the paper-scale (ImageNet / COCO 2017) configs without training."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `gradpath check-paper`."""
    parser = subparsers.add_parser(
        "check-paper", help="dry-run the paper-scale configs: data layout, model builds (no training)",
        description="Check that the paper-scale runs can start: the ImageNet / COCO 2017 layout under the data "
                    "directory (GRADPATH_DATA) and every model at its paper preset. The models are built (and "
                    "listed) even without the data; exits 2 naming what is missing.")
    parser.add_argument("--tables", nargs="+", metavar="TABLE", help="these paper tables (default: all)")
    parser.add_argument("--models", nargs="+", metavar="MODEL", help="only these models of the tables (default: all)")
    parser.add_argument("--data-dir", help="the folder holding imagenet/ and coco/ (default: GRADPATH_DATA)")
    parser.add_argument("--flops", action="store_true", help="also count FLOPs at the paper input size (slow on CPU)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the models and print one line per table and model (params, FLOPs), then check the data
    (`paper_configs.check_paper`, in steps so that the builds are shown when the data is missing)."""
    import pandas as pd

    from ..paper_configs import check_data, model_rows, paper_runs

    runs = paper_runs(args.tables, args.models)
    rows = model_rows(runs, flops=args.flops)
    print(pd.DataFrame(rows).to_string(index=False))
    check_data(runs, args.data_dir)
    print(f"paper-scale data and models ready: {len(rows)} run(s) checked, nothing trained")
    return 0
