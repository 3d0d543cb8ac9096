"""Where independent work (runs, notebooks) is executed: this machine's processes or a Ray cluster.

Both executors are `concurrent.futures.Executor`s, so the batch runner submits work and waits on
futures the same way for either:

- `local`: a `ProcessPoolExecutor` of `jobs` spawned processes on this machine;
- `ray`: every task goes to a Ray cluster (`ray.init(address=...)`; `pip install .[ray]`), asking
  for one GPU when the runs train on CUDA and one CPU otherwise. Ray resubmits a task whose worker
  died (node lost, out-of-memory kill) up to `RAY_MAX_RETRIES` times; a resubmitted run resumes
  from the checkpoint its first attempt left in the shared results folder, and records are written
  atomically (temporary file + rename), so a half-finished attempt never leaves half a file.
  Every node must see the repository and the results folder at the same path (shared storage), with
  the same `gradpath` installed; `GRADPATH_DATA` / `GRADPATH_CACHE` are passed on as absolute paths.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from .data.paths import CACHE_ENV, DATA_ENV
from .errors import GradpathError, check_choice

EXECUTORS = ("local", "ray")
# Resubmissions of a Ray task whose worker process or node died; each resumes from its checkpoint.
RAY_MAX_RETRIES = 3
# CPUs a Ray task reserves (a run's data loading and evaluation are on its device, so one is enough).
RAY_CPUS_PER_TASK = 1


class WorkerLostError(RuntimeError):
    """A task's worker died every time it was tried (the Ray counterpart of BrokenProcessPool)."""


# What a future raises when the process running its task died: the run is failed, the batch goes on.
WORKER_LOST = (BrokenProcessPool, WorkerLostError)


def check_executor(name: str) -> str:
    """Return `name` if it is a known executor, else raise an error listing them."""
    check_choice("executor", name, EXECUTORS)
    return name


def import_ray() -> Any:
    """The `ray` module, or an error saying how to install it."""
    try:
        import ray
    except ImportError as err:
        raise GradpathError("--executor ray needs Ray: pip install 'gradpath[ray]' "
                            "(or pip install 'ray[default]')") from err
    return ray


def forwarded_env() -> dict[str, str]:
    """The data and cache folders of this process as absolute paths, for workers with another cwd."""
    return {name: str(Path(os.environ[name]).resolve()) for name in (DATA_ENV, CACHE_ENV) if os.environ.get(name)}


def ray_gpus(device: str, cluster_gpus: float) -> int:
    """GPUs a run asks for on Ray: 1 for cuda, 0 for cpu, and for auto 1 when the cluster has GPUs."""
    if device == "cpu":
        return 0
    if device.startswith("cuda"):
        return 1
    return 1 if cluster_gpus > 0 else 0


class RayExecutor(Executor):
    """Submit tasks to a Ray cluster, each asking for one CPU (and one GPU if `device` is CUDA), with retries.

    `address` None uses the Ray session this process already opened, else starts a local instance.
    `self.device` is what the tasks should train on: "cuda" (Ray gives each task its own GPU through
    CUDA_VISIBLE_DEVICES) or "cpu".
    """

    def __init__(self, address: str | None = None, device: str = "auto", max_retries: int = RAY_MAX_RETRIES) -> None:
        self._ray = import_ray()
        self._owns_ray = not self._ray.is_initialized()
        if self._owns_ray:
            self._ray.init(address=address, include_dashboard=False, log_to_driver=False)
        num_gpus = ray_gpus(device, self._ray.cluster_resources().get("GPU", 0.0))
        self.device = "cuda" if num_gpus else "cpu"
        self._options = {"num_cpus": RAY_CPUS_PER_TASK, "num_gpus": num_gpus, "max_retries": max_retries}
        env = forwarded_env()
        if env:
            self._options["runtime_env"] = {"env_vars": env}
        self._remote: dict[Callable[..., Any], Any] = {}
        errors = self._ray.exceptions
        self._lost_worker_errors = (errors.WorkerCrashedError, errors.NodeDiedError, errors.OutOfMemoryError)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Run `fn(*args, **kwargs)` as a Ray task; the future raises WorkerLostError if its worker kept dying."""
        if fn not in self._remote:
            self._remote[fn] = self._ray.remote(fn).options(**self._options)
        ray_future = self._remote[fn].remote(*args, **kwargs).future()
        future: Future = Future()
        ray_future.add_done_callback(lambda done: self._settle(done, future))
        return future

    def _settle(self, done: Future, future: Future) -> None:
        error = done.exception()
        if error is None:
            future.set_result(done.result())
        elif isinstance(error, self._lost_worker_errors):
            future.set_exception(WorkerLostError(f"Ray worker died {1 + self._options['max_retries']} times: {error}"))
        else:
            future.set_exception(error)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Disconnect from Ray if this executor connected (a session the caller opened stays open)."""
        if self._owns_ray:
            self._ray.shutdown()


def make_executor(
    kind: str,
    *,
    jobs: int = 1,
    device: str = "auto",
    address: str | None = None,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
) -> tuple[Executor, str]:
    """(executor, device string its tasks use). `local`: `jobs` spawned processes (each starting with
    `initializer(*initargs)`) and `device` as given; `ray`: a `RayExecutor` on the cluster at `address`,
    with as many tasks at once as the cluster's resources allow (`jobs` is not used)."""
    check_executor(kind)
    if kind == "local":
        context = multiprocessing.get_context("spawn")  # fork + torch threads can deadlock
        return ProcessPoolExecutor(max(1, jobs), mp_context=context, initializer=initializer, initargs=initargs), device
    if address is not None and not address.strip():
        raise GradpathError("--address is empty; give a Ray address such as ray://head:10001 or auto")
    executor = RayExecutor(address, device)
    return executor, executor.device


@contextmanager
def cluster_session(kind: str, address: str | None = None) -> Iterator[None]:
    """One connection to the Ray cluster for a whole batch (runs, then notebooks); nothing for local."""
    check_executor(kind)
    if kind == "local":
        yield
        return
    executor = RayExecutor(address, device="cpu")
    try:
        yield
    finally:
        executor.shutdown()
