"""Runs fanned out to a real local Ray instance (CPU) give the local executor's records; a worker
that dies mid-run is retried and the retry resumes from the run's checkpoint."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from gradpath_lib.cli import main
from gradpath_lib.executors import RayExecutor, WorkerLostError, ray_gpus
from gradpath_lib.experiments import chapter
from gradpath_lib.run_pool import CACHED, TRAINED, ensure_runs
from gradpath_lib.runs import ensure_run, normalize_config
from gradpath_lib.store import checkpoint_path, load_checkpoint, record_path
from gradpath_lib.train.classify import classify_config, strip_timing

ray = pytest.importorskip("ray")

MODEL = "plain"  # the fastest built-in smoke classifier (Ray workers know only the built-in registry)
RAY_CPUS = 2
POLL_S = 0.005
EPOCHS = 2  # a worker is killed after the first
# Ray gives a one-CPU task one thread (OMP_NUM_THREADS=1); CPU results are bit-for-bit equal only
# between runs with the same number of threads, so the local reference uses one thread too.
TASK_THREADS = 1


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray instance for this module; this module's functions are shipped to workers by value."""
    ray.init(num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


CONFIG = classify_config(MODEL, "smoke", 0, epochs=EPOCHS)


@pytest.fixture(scope="module")
def local_record(tmp_path_factory) -> dict:
    """The run trained here, in this process, with the threads a Ray task has."""
    threads = torch.get_num_threads()
    torch.set_num_threads(TASK_THREADS)
    try:
        (outcome,) = ensure_runs([CONFIG], results_dir=tmp_path_factory.mktemp("local"), allow_train=True,
                                 device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)
    return outcome.record


def test_runs_through_ray_give_the_local_records(tmp_path, ray_session, local_record):
    (remote,) = ensure_runs([CONFIG], results_dir=tmp_path, allow_train=True, device="cpu", progress=False,
                            executor="ray")
    assert remote.source == TRAINED, remote.error
    assert remote.record["run_id"] == local_record["run_id"]
    assert strip_timing(remote.record["metrics"]) == strip_timing(local_record["metrics"])
    assert record_path(tmp_path, remote.record["config"]).exists(), "the worker wrote the shared record"
    (again,) = ensure_runs([CONFIG], results_dir=tmp_path, executor="ray", progress=False)
    assert again.source == CACHED


def train_killed_once(config: dict, results_dir: str, marker: str) -> int:
    """A Ray task whose first attempt's process dies right after the run's first checkpoint;
    returns how many epochs the attempt that finishes found in the checkpoint."""
    checkpoint = checkpoint_path(results_dir, normalize_config(config))
    if not os.path.exists(marker):
        Path(marker).touch()

        def die_after_first_checkpoint() -> None:
            while not checkpoint.exists():
                time.sleep(POLL_S)
            os._exit(1)  # as if the node were lost: no exception, no cleanup

        threading.Thread(target=die_after_first_checkpoint, daemon=True).start()
    state = load_checkpoint(checkpoint)
    ensure_run(config, results_dir=results_dir, device="cpu", progress=False)
    return len(state["history"]) if state else 0


def test_a_lost_worker_is_retried_and_resumes_from_its_checkpoint(tmp_path, ray_session, local_record):
    executor = RayExecutor(device="cpu")
    resumed_from = executor.submit(train_killed_once, CONFIG, str(tmp_path), str(tmp_path / "marker"))
    assert resumed_from.result(timeout=300) == 1, "the retry started from the first attempt's checkpoint"
    executor.shutdown()
    assert ray.is_initialized(), "an executor leaves a Ray session it did not open"
    recorded = ensure_run(CONFIG, results_dir=tmp_path, allow_train=False)
    assert strip_timing(recorded["metrics"]) == strip_timing(local_record["metrics"])


def die() -> None:
    """A Ray task whose worker process exits at once."""
    os._exit(1)


def test_a_worker_that_keeps_dying_is_a_worker_lost_error(ray_session):
    executor = RayExecutor(device="cpu", max_retries=0)
    with pytest.raises(WorkerLostError, match="Ray worker died 1 times"):
        executor.submit(die).result(timeout=300)


def test_gpu_requests_and_command_line_checks(tmp_path, capsys):
    assert [ray_gpus(device, 0) for device in ("cpu", "cuda", "cuda:1", "auto")] == [0, 1, 1, 0]
    assert ray_gpus("auto", 8) == 1
    assert main(["reproduce", "--scale", "smoke", "--address", "auto", "--results-dir", str(tmp_path)]) == 2
    assert "--address names a Ray cluster; it needs --executor ray" in capsys.readouterr().err


def test_a_smoke_reproduction_through_ray_gives_the_local_records(tmp_path, ray_session):
    """`gradpath reproduce --executor ray` (runs only) writes the records `--executor local` writes."""
    def reproduce(executor: str) -> dict[str, dict]:
        results = tmp_path / executor
        assert main(["reproduce", "--scale", "smoke", "--only", "table4", "--runs-only", "--device", "cpu",
                     "--jobs", "2", "--executor", executor, "--results-dir", str(results)]) == 0
        records = [json.loads(p.read_text()) for p in sorted((results / "smoke" / "runs").glob("*.json"))]
        return {r["run_id"]: r for r in records}

    local, remote = reproduce("local"), reproduce("ray")
    assert len(local) == len(chapter("table4").runs("smoke", [0])) and remote.keys() == local.keys()
    for run in local:
        assert remote[run]["status"] == local[run]["status"]
        assert strip_timing(remote[run]["metrics"]) == strip_timing(local[run]["metrics"]), run
