"""`gradpath bench jobs`: total training throughput of N runs sharing one device at once.

`gradpath reproduce --jobs N` trains N runs at a time, each in its own process (spawned, with
`run_pool.share_cpu` splitting the CPU threads), all on the same device: on a GPU that is how a
small CIFAR network, which alone leaves most of the GPU idle, fills it. This bench measures it:
for each N it starts N such processes, each builds its own model and data and runs one warm-up
pass of our training loop (`bench.gradpath_pass`); they wait for each other at a barrier, then
each times `steps` batches. Total throughput = all images / (last end - first start), wall
clock; the scaling column divides it by the throughput of one job.

`gradpath reproduce --jobs auto` (the default) reads these benches: it trains as many runs at once
as the recorded bench of this device found best (`recommended_jobs`), and one at a time without one.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .errors import GradpathError, error_line
from .models.registry import get_entry
from .runs import resolve_device
from .store import device_name


_start_together: Any = None  # in each worker process: the barrier all jobs of one measurement wait at


def _start_worker(jobs: int, barrier: Any) -> None:
    """Worker initializer: the run pool's CPU share, and the shared start barrier."""
    from .run_pool import share_cpu

    global _start_together
    share_cpu(jobs)
    _start_together = barrier


def _timed_job(model: str, scale: str, batch_size: int | None, steps: int, device: str,
               seed: int) -> tuple[int, float, float]:
    """In a worker process: (images, start, end) of `steps` timed batches after a warm-up pass."""
    from .bench import bench_images, bench_recipe, gradpath_pass
    from .train.batches import DeviceImages

    try:
        dev = resolve_device(device)
        recipe = bench_recipe(scale, batch_size)
        images, labels, _ = bench_images(scale, recipe.batch_size * steps, seed)
        run_pass = gradpath_pass(model, scale, recipe, DeviceImages.from_arrays(images, labels, dev), steps, seed)
        run_pass(0)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    except BaseException:
        _start_together.abort()  # the other jobs stop waiting for this one (BrokenBarrierError)
        raise
    _start_together.wait()
    start = time.time()  # wall clock: comparable across processes
    run_pass(1)  # reads the epoch's sums back, so the GPU work is done when it returns
    return recipe.batch_size * steps, start, time.time()


def measure_jobs(model: str, scale: str, jobs: int, *, batch_size: int | None, steps: int, device: str,
                 seed: int = 0) -> dict[str, Any]:
    """Run `jobs` concurrent timed jobs; their total and per-job images/s."""
    context = multiprocessing.get_context("spawn")  # as the run pool: fork + torch threads can deadlock
    barrier = context.Barrier(jobs)
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker, initargs=(jobs, barrier)) as pool:
        futures = [pool.submit(_timed_job, model, scale, batch_size, steps, device, seed + i) for i in range(jobs)]
        results = [f.result() for f in futures]
    images = sum(n for n, _, _ in results)
    seconds = max(end for _, _, end in results) - min(start for _, start, _ in results)
    return {"jobs": jobs, "images": images, "seconds": seconds, "total_images_per_s": images / seconds,
            "per_job_images_per_s": [n / (end - start) for n, start, end in results]}


def bench_jobs(model: str, scale: str = "smoke", jobs: Sequence[int] = (1, 2, 4), *, batch_size: int | None = None,
               steps: int = 20, device: str = "auto") -> dict[str, Any]:
    """Total training throughput of N concurrent runs of `model` for each N in `jobs`."""
    if not jobs or any(n < 1 for n in jobs) or steps < 1:
        raise GradpathError(f"bench jobs needs job counts >= 1 and steps >= 1, got jobs={list(jobs)}, steps={steps}")
    if get_entry(model).task != "classify":
        raise GradpathError(f"bench jobs times classifiers; {model!r} is a {get_entry(model).task!r} model")
    rows, failed = [], {}
    for n in jobs:
        try:
            rows.append(measure_jobs(model, scale, n, batch_size=batch_size, steps=steps, device=device))
        except Exception as err:  # e.g. out of GPU memory at N jobs: the other counts still count
            failed[str(n)] = error_line(err)
    single = next((r["total_images_per_s"] for r in rows if r["jobs"] == 1), None)
    for row in rows:
        row["scaling_vs_one_job"] = row["total_images_per_s"] / single if single else None
    return {"model": model, "scale": scale, "device": device_name(resolve_device(device)),
            "torch": torch.__version__, "steps": steps, "batch_size": batch_size, "results": rows,
            "failed_jobs": failed}


def jobs_frame(result: dict[str, Any]) -> pd.DataFrame:
    """The jobs bench as a table: jobs, total images/s, scaling vs one job, mean images/s per job."""
    return pd.DataFrame([{
        "jobs": r["jobs"],
        "total images/s": round(r["total_images_per_s"], 1),
        "scaling vs 1 job": None if r["scaling_vs_one_job"] is None else round(r["scaling_vs_one_job"], 2),
        "images/s per job": round(sum(r["per_job_images_per_s"]) / r["jobs"], 1),
    } for r in result["results"]])


NEAR_BEST = 0.95  # --jobs auto takes the fewest jobs within 5 % of the best measured total throughput


def pick_jobs(benches: Sequence[dict[str, Any]]) -> tuple[int, str]:
    """(jobs, why) from `bench jobs` results of one device: the fewest concurrent runs whose total images/s
    is within 5 % of the best measured."""
    rows = [(row["jobs"], row["total_images_per_s"], bench["model"]) for bench in benches for row in bench["results"]]
    best = max(total for _, total, _ in rows)
    jobs, total, model = min((row for row in rows if row[1] >= NEAR_BEST * best), key=lambda row: row[0])
    return jobs, (f"`gradpath bench jobs` on {benches[0]['device']}: {jobs} concurrent {model} runs train "
                  f"{total:.0f} images/s, within {1 - NEAR_BEST:.0%} of the best measured ({best:.0f})")


def recommended_jobs(results_dir: str | Path, scale: str, device: str) -> tuple[int, str]:
    """(jobs, why) for `reproduce --jobs auto` on `device` (a device string): `pick_jobs` of the recorded
    `bench jobs` of this device at `scale`, or 1 when none is recorded."""
    from .workload import recorded_benches

    name = device_name(resolve_device(device))
    mine = [bench for bench in recorded_benches(results_dir, scale, "jobs")
            if bench["device"] == name and bench["results"]]
    if not mine:
        return 1, f"no `gradpath bench jobs` of {name} is recorded at the {scale} scale"
    return pick_jobs(mine)


def auto_jobs_summary(results_dir: str | Path, scale: str) -> str:
    """What `reproduce --jobs auto` chooses on each device with a recorded `bench jobs` at `scale`."""
    from .workload import recorded_benches

    by_device: dict[str, list[dict[str, Any]]] = {}
    for bench in recorded_benches(results_dir, scale, "jobs"):
        if bench["results"]:
            by_device.setdefault(bench["device"], []).append(bench)
    if not by_device:
        return f"No `gradpath bench jobs` is recorded at the {scale} scale, so `--jobs auto` trains one run at a time."
    picks = {device: pick_jobs(benches) for device, benches in by_device.items()}
    return " ".join(f"On {device}, `--jobs auto` trains {jobs} runs at once: {why}."
                    for device, (jobs, why) in picks.items())
