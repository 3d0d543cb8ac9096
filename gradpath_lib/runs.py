"""Run one experiment from its config, or return its cached record.

A config is a plain JSON-able dict with at least `task`, `model`, `scale` and `seed`; the
`numerics_version` of the library is added so that records made by older code are never reused.
Each task (classification, detection, ...) registers a function with `register_task`; it trains
and returns a `TaskResult`, and `ensure_run` writes the record.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import NUMERICS_VERSION
from .data.paths import is_writable
from .distributed import barrier, is_main
from .errors import GradpathError, check_choice
from .scales import check_scale
from .store import (
    checkpoint_path,
    load_record,
    now_iso,
    provenance,
    record_path,
    run_id,
    set_aside,
    weights_path,
    write_record,
)


@dataclass
class TaskContext:
    """What a task function gets besides its config."""

    device: torch.device
    checkpoint: Path  # save/resume here with store.save_checkpoint / store.load_checkpoint
    progress: bool = True  # show tqdm bars
    results_dir: Path = Path("results")  # where records (and saved weights, store.weights_path) live


@dataclass
class TaskResult:
    """What a task function returns; `ensure_run` turns it into a record."""

    status: str  # "ok" or "diverged"
    metrics: dict[str, Any]  # final metrics plus "history": a list of per-epoch dicts
    params: int
    flops: int  # FLOPs for one input (2 x MACs), from torch's FLOP counter
    dataset_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. {"diverged_at_step": 123}


TaskFn = Callable[[dict[str, Any], TaskContext], TaskResult]
_TASKS: dict[str, TaskFn] = {}


def register_task(name: str, fn: TaskFn) -> None:
    """Make `fn(config, ctx) -> TaskResult` the trainer of configs whose `task` is `name`."""
    _TASKS[name] = fn


def _load_tasks() -> None:
    from .train import tasks  # noqa: F401  (registers every built-in task)


def task_names() -> list[str]:
    """The registered task names."""
    _load_tasks()
    return sorted(_TASKS)


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA when present; 'cpu' / 'cuda' / 'cuda:N' are taken as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" or device.startswith("cuda"):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise GradpathError(f"device {device!r} asked for, but no CUDA GPU is available; use cpu or auto")
        return torch.device(device)
    raise GradpathError(f"unknown device {device!r}; valid choices: auto, cpu, cuda, cuda:N")


# CPU kernels sum in an order that depends on the thread count, so a CPU run always uses this many
# intra-op threads: its record is then the same bit for bit whatever --jobs, executor or machine.
CPU_RUN_THREADS = 1


@contextmanager
def fixed_cpu_threads(device: torch.device) -> Iterator[None]:
    """On the CPU, run the body with `CPU_RUN_THREADS` intra-op threads (restored afterwards)."""
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(CPU_RUN_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def normalize_config(config: dict[str, Any]) -> dict[str, Any]:
    """Check the config's required keys and add the library's numerics version."""
    missing = {"task", "model", "scale", "seed"} - set(config)
    if missing:
        raise GradpathError(f"run config lacks {sorted(missing)}: {config}")
    check_scale(config["scale"])
    check_choice("task", config["task"], task_names())
    return {**config, "numerics_version": NUMERICS_VERSION}


def cached_record(config: dict[str, Any], results_dir: str | Path = "results") -> dict[str, Any] | None:
    """The usable record of `config` (ok or diverged), or None if it was never run or failed."""
    config = normalize_config(config)
    path = record_path(results_dir, config)
    if not path.exists():
        return None
    record = load_record(path)
    return record if record["status"] in ("ok", "diverged") else None


def check_writable(results_dir: str | Path, folders: list[Path]) -> None:
    """Raise a GradpathError before a run trains if any of its output `folders` cannot be written."""
    for folder in folders:
        if not is_writable(folder):
            raise GradpathError(
                f"results dir {results_dir} is not writable: cannot create files in {folder}; "
                "give a writable one (--results-dir)"
            )


def ensure_run(
    config: dict[str, Any],
    *,
    results_dir: str | Path = "results",
    allow_train: bool = True,
    force: bool = False,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any] | None:
    """The record of `config`: cached if present (unless `force`), else trained if `allow_train`.

    Returns None when the run is missing and training is not allowed. A run that raises is
    recorded as `failed` (with the error) and the error is raised again. Under torch.distributed
    every rank trains and only rank 0 writes (see `gradpath_lib.distributed`).
    """
    config = normalize_config(config)
    path = record_path(results_dir, config)
    if path.exists() and not force:
        record = load_record(path)  # a corrupted record stops here with an error naming it
        if record["status"] in ("ok", "diverged"):
            return record
    if not allow_train:
        return None
    ckpt = checkpoint_path(results_dir, config)
    check_writable(results_dir, [path.parent, ckpt.parent, weights_path(results_dir, config).parent])
    main = is_main()
    if main and force and path.exists():
        try:
            load_record(path)
        except GradpathError:
            set_aside(path)
    dev = resolve_device(device)
    ctx = TaskContext(device=dev, checkpoint=ckpt, progress=progress, results_dir=Path(results_dir))
    if main and force:
        ctx.checkpoint.unlink(missing_ok=True)
    barrier()  # no rank reads the checkpoint before rank 0 is done with it
    start = time.perf_counter()
    try:
        with fixed_cpu_threads(dev):
            prov = provenance(dev, None)
            result = _TASKS[config["task"]](config, ctx)
    except KeyboardInterrupt:
        if ckpt.exists():  # the CLI prints the message: where the run is kept and how to resume it
            raise KeyboardInterrupt(f"checkpoint kept at {ckpt}; run the same command again to resume") from None
        raise
    except GradpathError:
        raise
    except Exception as err:
        record = {
            "run_id": run_id(config), "config": config, "status": "failed", "metrics": {},
            "params": None, "flops": None, "wall_time_s": time.perf_counter() - start,
            "error": "".join(traceback.format_exception_only(err)).strip(),
            "provenance": {**prov, "end_time": now_iso()},
        }
        if main:
            write_record(path, record)
        raise
    prov["dataset_sha256"] = result.dataset_sha256
    record = {
        "run_id": run_id(config),
        "config": config,
        "status": result.status,
        "metrics": result.metrics,
        "params": result.params,
        "flops": result.flops,
        "wall_time_s": round(time.perf_counter() - start, 3),
        "provenance": {**prov, "end_time": now_iso()},
        **result.extra,
    }
    if main:
        write_record(path, record)
        ctx.checkpoint.unlink(missing_ok=True)
    return record
