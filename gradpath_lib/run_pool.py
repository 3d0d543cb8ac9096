"""Ensure many runs at once: reuse recorded ones, train the missing ones (in parallel across a
process pool when `jobs > 1`), and say for each where its record came from.

Needs only torch-level dependencies, so GPU machines without Jupyter can train every run of a
chapter (`gradpath reproduce --runs-only`).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .errors import GradpathError
from .executors import WORKER_LOST, make_executor
from .runs import ensure_run, normalize_config
from .store import load_record, record_path, run_id, weights_path

CACHED, TRAINED, MISSING, FAILED = "cached", "trained", "missing", "failed"


@dataclass
class RunOutcome:
    """One run of a batch: its config, its record (None if missing) and where that came from."""

    config: dict[str, Any]
    record: dict[str, Any] | None
    source: str  # CACHED | TRAINED | MISSING | FAILED
    error: str | None = None


def recorded(config: dict[str, Any], results_dir: str | Path) -> dict[str, Any] | None:
    """The record of `config` whatever its status (ok, diverged or failed), or None."""
    path = record_path(results_dir, normalize_config(config))
    return load_record(path) if path.exists() else None


def ensure_runs(
    configs: list[dict[str, Any]],
    *,
    results_dir: str | Path = "results",
    allow_train: bool = False,
    device: str = "auto",
    jobs: int = 1,
    progress: bool = True,
    executor: str = "local",
    address: str | None = None,
    deadline: float | None = None,
) -> list[RunOutcome]:
    """The outcome of every config, in order; duplicates are trained once.

    Recorded runs (ok or diverged) are reused; a damaged record makes its run `failed` (the error
    says how to repair it) and is never overwritten. Without `allow_train` the others are `missing`
    (or `failed`, with the failed record). With it they are trained, `jobs` at a time on this
    machine, or as Ray tasks with `executor="ray"` (on the cluster at `address`, see
    `gradpath_lib.executors`); a run that raises or whose worker dies is `failed` and the others go on.
    No group of runs (`target_groups`) starts after `deadline` (a `time.time()` value, read by the
    worker when the group would start, so Ray workers on other machines need synchronised clocks,
    as NTP keeps them); a started one finishes, and those not started stay `missing` for a later call.
    """
    unique = {run_id(normalize_config(c)): c for c in configs}
    outcomes: dict[str, RunOutcome] = {}
    to_train = []
    for key, config in unique.items():
        try:
            record = recorded(config, results_dir)
        except GradpathError as err:  # a damaged record fails its run only, and is left as it is
            outcomes[key] = RunOutcome(config, None, FAILED, str(err))
            continue
        if record is not None and record["status"] in ("ok", "diverged"):
            outcomes[key] = RunOutcome(config, record, CACHED)
        elif allow_train:
            to_train.append(key)
        else:
            outcomes[key] = RunOutcome(config, record, FAILED if record else MISSING,
                                       record.get("error") if record else None)
    bar = tqdm(total=len(to_train), desc="training runs", unit="run", disable=not (progress and to_train))
    groups = target_groups(to_train, unique)
    if executor == "local" and (jobs <= 1 or len(groups) <= 1):
        for group in groups:
            for key, outcome in zip(group, _train_group([unique[k] for k in group], str(results_dir), device,
                                                         progress, deadline)):
                outcomes[key] = outcome
                bar.update()
    elif groups:
        lost = _train_pooled(groups, unique, outcomes, bar, str(Path(results_dir).resolve()), device,
                             executor=executor, jobs=jobs, address=address, deadline=deadline)
        if executor == "local":
            # One crashing worker breaks a process pool and every group still pending in it; retry
            # those one per fresh process, so only a run that crashes by itself is failed.
            for group in lost:
                _train_pooled([group], unique, outcomes, None, str(Path(results_dir).resolve()), device,
                              executor=executor, jobs=1, address=address, deadline=deadline)
    bar.close()
    return [outcomes[run_id(normalize_config(c))] for c in configs]


def target_groups(keys: list[str], unique: dict[str, dict[str, Any]]) -> list[list[str]]:
    """`keys` in groups trained one after another by one worker: a run that studies a trained
    `target` run (probes, spectra) joins its target's group, after the target. Its weights are then
    on the machine that needs them, and no two workers train the same target at once."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        target = unique[key].get("target")
        groups.setdefault(run_id(normalize_config(target)) if target else key, []).append(key)
    return [sorted(group, key=lambda k: "target" in unique[k]) for group in groups.values()]


def weights_still_needed(configs: list[dict[str, Any]], results_dir: str | Path) -> list[Path]:
    """The saved weights of recorded `ok` targets whose dependent runs are not recorded yet: what a
    machine that trains part of a batch must hand on to the one that finishes it."""
    needed = {}
    for config in configs:
        target = config.get("target")
        if target is None or recorded(config, results_dir) is not None:
            continue
        record = recorded(target, results_dir)
        if record is not None and record["status"] == "ok":
            needed[record["run_id"]] = weights_path(results_dir, normalize_config(target))
    return sorted(needed.values())


def _train_pooled(groups: list[list[str]], unique: dict[str, dict[str, Any]], outcomes: dict[str, RunOutcome],
                  bar: Any, results_dir: str, device: str, *, executor: str, jobs: int,
                  address: str | None, deadline: float | None = None) -> list[list[str]]:
    """Train the groups on the executor into `outcomes`; the groups whose worker died (failed, for now)."""
    lost = []
    pool, run_device = make_executor(executor, jobs=jobs, device=device, address=address,
                                     initializer=share_cpu, initargs=(jobs,))
    with pool:  # results_dir is absolute: workers may start in another folder
        futures = {pool.submit(_train_group, [unique[k] for k in group], results_dir, run_device, False,
                               deadline): group for group in groups}
        for future in as_completed(futures):
            group = futures[future]
            try:
                for key, outcome in zip(group, future.result()):
                    outcomes[key] = outcome
            except WORKER_LOST as err:  # a worker died (killed, out of memory, crashed)
                for key in group:
                    outcomes[key] = RunOutcome(unique[key], None, FAILED, f"worker process died: {err}")
                lost.append(group)
            if bar is not None:
                bar.update(len(group))
    return lost


def _train_group(configs: list[dict[str, Any]], results_dir: str, device: str, progress: bool,
                 deadline: float | None = None) -> list[RunOutcome]:
    """Train runs one after another (see `target_groups`), unless `deadline` has passed before the
    first starts (then all stay MISSING); each failure is its own FAILED outcome."""
    if deadline is not None and time.time() > deadline:
        return [RunOutcome(c, None, MISSING, "not started: the time limit was reached") for c in configs]
    return [_train(config, results_dir, device, progress) for config in configs]


def _train(config: dict[str, Any], results_dir: str, device: str, progress: bool) -> RunOutcome:
    """Train one run; a failure becomes a FAILED outcome with the error, never an exception. The GPU
    memory the run cached is handed back afterwards, for the runs of other processes on the device."""
    try:
        record = ensure_run(config, results_dir=results_dir, allow_train=True, device=device, progress=progress)
    except Exception as err:  # ensure_run recorded it as failed (unless the config itself is bad)
        try:
            failed = recorded(config, results_dir)
        except GradpathError:
            failed = None
        return RunOutcome(config, failed, FAILED, f"{type(err).__name__}: {err}")
    finally:
        release_cached_gpu_memory()
    return RunOutcome(config, record, TRAINED)


def release_cached_gpu_memory() -> None:
    """Return the blocks PyTorch's CUDA allocator keeps cached to the device (nothing without CUDA)."""
    import torch

    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def share_cpu(jobs: int) -> None:
    """Give each of `jobs` worker processes its share of the CPU threads."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))
