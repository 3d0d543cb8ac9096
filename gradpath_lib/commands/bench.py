"""`gradpath bench ...`: performance measurements (`bench train`: trainer vs a reference loop;
`bench reproduce`: what each chapter costs; `bench jobs`: concurrent runs on one device)."""

from __future__ import annotations

import argparse
import json

from ..bench import REFERENCE_WORKERS
from ..scales import SCALES

DEVICE_HELP = "auto | cpu | cuda | cuda:N (default: %(default)s)"
SCALE_HELP = "size preset (default: %(default)s)"
RESULTS_HELP = "where --save records the bench (default: %(default)s)"
JOB_COUNTS = (1, 2, 4)  # `bench jobs --jobs` by default


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `gradpath bench` and its subcommands."""
    parser = subparsers.add_parser("bench", help="performance measurements")
    benches = parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    train = benches.add_parser("train", help="images/s of our training step vs a typical DataLoader loop")
    train.add_argument("--model", required=True, help="registered model name")
    train.add_argument("--scale", default="mini", choices=SCALES, help=SCALE_HELP)
    train.add_argument("--batch", type=int, help="batch size (default: the scale's recipe)")
    train.add_argument("--steps", type=int, default=20, help="training steps per timed pass (default: %(default)s)")
    train.add_argument("--repeats", type=int, default=5,
                       help="timed passes, the median is reported (default: %(default)s)")
    train.add_argument("--workers", type=int, default=REFERENCE_WORKERS,
                       help="DataLoader workers of the reference loop (default: min(4, CPU cores) = %(default)s)")
    train.add_argument("--device", default="auto", help=DEVICE_HELP)
    train.add_argument("--variants", nargs="+", default=["eager"], metavar="VARIANT",
                       help="our loop's variants to time beside the reference: eager (always timed), compile "
                            "(torch.compile), cudagraphs (torch.compile mode reduce-overhead) (default: eager)")
    train.add_argument("--format", default="text", choices=("text", "json"),
                       help="output format (default: %(default)s)")
    train.add_argument("--save", action="store_true",
                       help="also record it as <results-dir>/<scale>/bench/train-<model>.json (read by the book)")
    train.add_argument("--results-dir", default="results", help=RESULTS_HELP)
    train.set_defaults(func=run_train)

    reproduce = benches.add_parser(
        "reproduce", help="per chapter: runs, training images, training FLOPs and estimated device minutes",
        description="Estimate what reproducing every chapter costs from the recorded `bench train` results "
                    "(or measure them first with --measure); writes <results-dir>/<scale>/tables/bench_reproduce.csv.")
    reproduce.add_argument("--scale", default="mini", choices=SCALES, help=SCALE_HELP)
    reproduce.add_argument("--measure", action="store_true",
                           help="bench every classifier of the book on this device first (and record the benches)")
    reproduce.add_argument("--steps", type=int, default=20,
                           help="with --measure: training steps per timed pass (default: %(default)s)")
    reproduce.add_argument("--repeats", type=int, default=3,
                           help="with --measure: timed passes per model (default: %(default)s)")
    reproduce.add_argument("--workers", type=int, default=REFERENCE_WORKERS,
                           help="with --measure: reference-loop DataLoader workers (default: min(4, CPU cores) = "
                                "%(default)s)")
    reproduce.add_argument("--device", default="auto", help="with --measure: " + DEVICE_HELP)
    reproduce.add_argument("--results-dir", default="results",
                           help="where benches are read and the table written (default: %(default)s)")
    reproduce.set_defaults(func=run_reproduce)

    jobs = benches.add_parser(
        "jobs", help="total images/s of N concurrent training runs on one device (what reproduce --jobs N does)")
    jobs.add_argument("--model", required=True, help="registered classifier name")
    jobs.add_argument("--scale", default="smoke", choices=SCALES, help=SCALE_HELP)
    jobs.add_argument("--jobs", type=int, nargs="+", default=list(JOB_COUNTS),
                      help=f"concurrent run counts to measure (default: {' '.join(map(str, JOB_COUNTS))})")
    jobs.add_argument("--steps", type=int, default=20, help="timed training steps per run (default: %(default)s)")
    jobs.add_argument("--batch", type=int, help="batch size (default: the scale's recipe)")
    jobs.add_argument("--device", default="auto", help=DEVICE_HELP)
    jobs.add_argument("--save", action="store_true", help="also record it as <results-dir>/<scale>/bench/jobs-<model>.json")
    jobs.add_argument("--results-dir", default="results", help=RESULTS_HELP)
    jobs.set_defaults(func=run_jobs)


def run_train(args: argparse.Namespace) -> int:
    """Run the training bench and print it as a table or as JSON."""
    from ..bench import bench_train, format_bench

    result = bench_train(
        args.model, args.scale, batch_size=args.batch, steps=args.steps, repeats=args.repeats,
        device=args.device, variants=args.variants, workers=args.workers,
    )
    print(json.dumps(result, indent=1) if args.format == "json" else format_bench(result))
    if args.save:
        from ..workload import save_bench

        print(f"recorded {save_bench(result, args.results_dir, f'train-{args.model}')}")
    return 0


def run_reproduce(args: argparse.Namespace) -> int:
    """Print (and save) the per-chapter cost of reproducing the book at a scale."""
    from ..bench import bench_train
    from ..workload import UNMEASURED, bench_reproduce

    def bench(model: str) -> dict:
        return bench_train(model, args.scale, steps=args.steps, repeats=args.repeats, device=args.device,
                           workers=args.workers)

    table = bench_reproduce(args.scale, results_dir=args.results_dir, measure=args.measure, bench=bench)
    print(table.to_string(index=False))
    print(f"training FLOPs = 3 x forward FLOPs per image (torch FLOP counter, FLOPs = 2 x MACs); "
          f"written to {args.results_dir}/{args.scale}/tables/bench_reproduce.csv")
    if (table["est. minutes"] == UNMEASURED).any():
        print(f"minutes unmeasured: no `bench train` is recorded at the {args.scale} scale in {args.results_dir}; "
              f"run gradpath bench train --model M --scale {args.scale} --save, or bench reproduce "
              f"--scale {args.scale} --measure, on the GPU")
    return 0


def run_jobs(args: argparse.Namespace) -> int:
    """Measure N concurrent runs for each N and print the table (and record it with --save)."""
    from ..bench import check_batch_size
    from ..bench_jobs import bench_jobs, jobs_frame

    check_batch_size(args.batch)
    result = bench_jobs(args.model, args.scale, args.jobs, batch_size=args.batch, steps=args.steps,
                        device=args.device)
    print(f"model {result['model']} ({result['scale']}), {result['steps']} timed steps per run, "
          f"device: {result['device']}, torch {result['torch']}")
    print(jobs_frame(result).to_string(index=False))
    for jobs, error in result["failed_jobs"].items():
        print(f"{jobs} jobs failed: {error}")
    if args.save:
        from ..workload import save_bench

        print(f"recorded {save_bench(result, args.results_dir, f'jobs-{args.model}')}")
    return 0
