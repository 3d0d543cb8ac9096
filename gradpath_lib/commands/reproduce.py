"""`gradpath reproduce`: train the runs of the book's chapters and execute their notebooks."""

from __future__ import annotations

import argparse

from ..errors import GradpathError
from ..executors import EXECUTORS
from ..runner import select_chapters
from ..scales import SCALES

AUTO_JOBS = 0  # --jobs auto, before it is resolved
TIME_LIMIT_REACHED = 3  # exit status of --runs-only when --time-limit left runs unstarted


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `gradpath reproduce`."""
    parser = subparsers.add_parser(
        "reproduce", help="train the chapters' runs and execute their notebooks (papermill)",
        description="Train (or reuse) every run the selected chapters need, then execute their notebooks "
                    "in dependency order into <results-dir>/<scale>/notebooks/. Resumable; a failing "
                    "notebook does not stop the others; exits 1 if any notebook or run failed, 3 if "
                    "--time-limit left runs of --runs-only unstarted.")
    parser.add_argument("--scale", required=True, choices=SCALES, help="size preset")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="these chapters (and what they depend on), of: "
                             + ", ".join(c.name for c in select_chapters()) + " (default: all)")
    parser.add_argument("--jobs", default="auto",
                        help="runs trained / notebooks executed in parallel, or auto (the default): as many as the "
                             "recorded `gradpath bench jobs` of this device found best, else 1 (1 with --no-train)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--no-train", action="store_true", help="never train: render recorded runs only")
    parser.add_argument("--runs-only", action="store_true",
                        help="train the runs only, without Jupyter (render later with --no-train)")
    parser.add_argument("--results-dir", default="results",
                        help="where records, tables and pages go (default: %(default)s)")
    parser.add_argument("--executor", default="local", choices=EXECUTORS,
                        help="local: --jobs processes here; ray: runs and notebooks as tasks of a Ray cluster "
                             "(one GPU per run on CUDA; pip install 'gradpath[ray]') (default: %(default)s)")
    parser.add_argument("--address", help="the Ray cluster to use (e.g. auto or ray://head:10001); "
                                          "default: start a local Ray instance")
    parser.add_argument("--nproc", type=int, default=1,
                        help="with --runs-only: train each run on this many data-parallel processes (one per "
                             "GPU), relaunching the command under torchrun (default: %(default)s)")
    parser.add_argument("--time-limit", type=float, metavar="SECONDS",
                        help="start no run after this many seconds (running ones finish; the others stay "
                             "missing for the next call): for machines lent for a fixed time")
    parser.set_defaults(func=run)


def jobs_count(value: str) -> int:
    """--jobs as a number of parallel jobs (>= 1), or 0 for auto; anything else is refused."""
    if value == "auto":
        return AUTO_JOBS
    if not value.isdigit() or int(value) < 1:
        raise GradpathError(f"--jobs must be a whole number >= 1 or auto, got {value!r}")
    return int(value)


def run(args: argparse.Namespace) -> int:
    """Reproduce, print the summary table, and return 0 only if everything succeeded."""
    from ..distributed import is_main, launch, launched_by_torchrun, process_group, relaunch_argv
    from ..executors import cluster_session
    from ..run_pool import MISSING
    from ..runner import reproduce, succeeded, summary_frame

    if args.no_train and args.runs_only:
        raise GradpathError("--no-train and --runs-only exclude each other (runs-only only trains)")
    if args.time_limit is not None and args.time_limit <= 0:
        raise GradpathError(f"--time-limit must be > 0 seconds, got {args.time_limit}")
    if args.address is not None and args.executor != "ray":
        raise GradpathError("--address names a Ray cluster; it needs --executor ray")
    data_parallel = args.nproc != 1 or launched_by_torchrun()
    if args.time_limit is not None and data_parallel:
        raise GradpathError("--time-limit cannot be combined with --nproc or torchrun: each rank would judge "
                            "the limit on its own clock and the ranks could part ways")
    select_chapters(args.only)  # an unknown chapter fails before anything is said or done
    args.jobs = jobs_count(args.jobs)
    if args.jobs == AUTO_JOBS:
        from ..bench_jobs import recommended_jobs

        if data_parallel or args.no_train:
            args.jobs, why = 1, "data-parallel runs train one at a time" if data_parallel else "nothing to train"
        else:
            args.jobs, why = recommended_jobs(args.results_dir, args.scale, args.device)
        if is_main():
            print(f"gradpath reproduce: --jobs auto = {args.jobs} ({why})")
    if data_parallel and (not args.runs_only or args.jobs != 1 or args.executor != "local"):
        raise GradpathError("data-parallel runs (--nproc or torchrun) need --runs-only with --jobs 1 and the local "
                            "executor: every process trains the same runs in the same order")
    if args.nproc != 1 and not launched_by_torchrun():
        return launch(args.nproc, relaunch_argv(args))
    with cluster_session(args.executor, args.address), process_group(args.device) as device:
        reports = reproduce(args.scale, only=args.only, jobs=args.jobs, device=device,
                            train=not args.no_train, runs_only=args.runs_only, results_dir=args.results_dir,
                            executor=args.executor, address=args.address, progress=is_main(),
                            time_limit_s=args.time_limit)
    if is_main():
        print(summary_frame(reports).to_string(index=False))
    if not succeeded(reports):
        return 1
    if args.runs_only and any(r.runs.get(MISSING) for r in reports):
        print("gradpath reproduce: the time limit stopped the batch before every run started; run it again")
        return TIME_LIMIT_REACHED
    return 0
