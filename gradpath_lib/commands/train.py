"""`gradpath train`: train one run (classifier or detector), or return its cached record at once."""

from __future__ import annotations

import argparse

from ..distributed import is_main, launch, launched_by_torchrun, process_group, relaunch_argv
from ..errors import GradpathError
from ..runs import cached_record, ensure_run
from ..scales import SCALES
from ..store import record_path
from ..models import get_entry
from ..train.classify import classify_config
from ..train.detect import detect_config

# How a registered model's task turns (model, scale, seed, recipe overrides) into a run config,
# and the metrics its summary line shows.
CONFIG_BUILDERS = {"classify": classify_config, "detect": detect_config}
HEADLINE_METRICS = {"classify": ("test_acc", "best_test_acc"), "detect": ("bbox_AP", "segm_AP")}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `gradpath train`."""
    parser = subparsers.add_parser("train", help="train one run of a classifier or detector (cached if recorded)")
    parser.add_argument("--model", required=True, help="registered model name (see `gradpath models`)")
    parser.add_argument("--scale", default="smoke", choices=SCALES, help="size preset (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed, >= 0 (default: %(default)s)")
    parser.add_argument("--epochs", type=int, help="override the scale's recipe epochs (default: the recipe's)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="retrain even if a record exists")
    parser.add_argument("--results-dir", default="results",
                        help="where records, weights and checkpoints go (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--nproc", type=int, default=1,
                        help="data-parallel processes (one per GPU) for this run: relaunches the command "
                             "under torchrun; the recipe's batch stays the global batch (default: %(default)s)")
    parser.set_defaults(func=run)


def summary(record: dict) -> str:
    """One line: run id, status, the task's headline metrics, epochs, throughput and wall time."""
    m = record["metrics"]
    shown = ", ".join(f"{k} {'n/a' if m.get(k) is None else format(m[k], '.4f')}"
                      for k in HEADLINE_METRICS[record["config"]["task"]])
    line = (f"{record['run_id']}: {record['status']}, {shown}, "
            f"{m.get('epochs_done')} epochs, {m.get('images_per_s')} img/s, "
            f"{record['wall_time_s']} s on {record['provenance']['device_name']}")
    if record["status"] == "diverged":
        line += f", diverged at step {record['diverged_at_step']} (epoch {record['diverged_at_epoch']})"
    return line


def check_counts(args: argparse.Namespace) -> None:
    """Raise GradpathError for a negative --seed or an --epochs below 1, naming the option."""
    if args.seed < 0:
        raise GradpathError(f"--seed must be >= 0, got {args.seed}")
    if args.epochs is not None and args.epochs < 1:
        raise GradpathError(f"--epochs must be >= 1, got {args.epochs}")


def run(args: argparse.Namespace) -> int:
    """Train (or look up) the run and print its record path and a summary line (a diverged run is
    a result, so it exits 0 too)."""
    check_counts(args)
    if args.nproc != 1 and not launched_by_torchrun():
        return launch(args.nproc, relaunch_argv(args))
    overrides = {"epochs": args.epochs} if args.epochs is not None else {}
    build_config = CONFIG_BUILDERS[get_entry(args.model).task]
    config = build_config(args.model, args.scale, args.seed, **overrides)
    cached = not args.force and cached_record(config, args.results_dir) is not None
    with process_group(args.device) as device:
        record = ensure_run(config, results_dir=args.results_dir, force=args.force,
                            device=device, progress=not args.no_progress and is_main())
        if is_main():
            print(record_path(args.results_dir, record["config"]))
            print(summary(record) + (" [cached]" if cached else ""))
    return 0
