"""Shared fixtures. `smoke_results`: ONE smoke reproduction of every chapter that has a notebook
(training at the smoke scale on the CPU, then papermill), shared by the notebook, runner and book
tests of the session."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

SMOKE_JOBS = 2  # the CI machine has two cores
# The first test that needs the reproduction pays for it (minutes on two busy cores).
SMOKE_TIMEOUT_S = 1800


# Positions of `history` and `stop_epoch` in the arguments of classify.fit (and LW-DNA's use of it).
FIT_HISTORY_ARG, FIT_STOP_EPOCH_ARG = 5, 6


def fit_interrupted_after(real_fit: Callable[..., Any], epochs: int) -> Callable[..., Any]:
    """A stand-in for `classify.fit` that trains (and checkpoints) `epochs` epochs, then raises
    KeyboardInterrupt: not an Exception, so no failed record is written and the checkpoint stays."""
    def fit(*args: Any, **kwargs: Any) -> Any:
        args_list = list(args)
        args_list[FIT_STOP_EPOCH_ARG] = epochs
        real_fit(*args_list, **kwargs)
        raise KeyboardInterrupt

    return fit


def measured_support(model: Any, report: Any, shape: tuple[int, ...], tokens: bool = False) -> dict:
    """(layer, group_start) -> the timestamps at which gradient is measured to reach that group
    (`structure_check`: a float64 spectrum on random inputs, or token ids with `tokens`)."""
    import torch

    from gradpath_lib.analysis.measured import structure_check

    check = structure_check(model, shape, torch.long if tokens else torch.float32, report=report)
    return {(row.layer, row.group_start): row.measured for row in check.itertuples() if row.measured}


def assert_structure_is_measured(model: Any, shape: tuple[int, ...], report: Any = None, tokens: bool = False) -> None:
    """Every channel group's structural timestamps (`report`, else analysed here) equal its measured ones."""
    import torch

    from gradpath_lib.analysis.measured import structure_check

    check = structure_check(model, shape, torch.long if tokens else torch.float32, report=report)
    assert check.agrees.all(), check[~check.agrees].to_string()


class Killed(BaseException):
    """Stands for a SIGKILL right after a checkpoint: nothing after it runs, nothing is recorded."""


def save_then_die(save: Callable[..., Any]) -> Callable[..., Any]:
    """A stand-in for a trainer's `save_checkpoint` that saves, then raises `Killed`."""
    def save_and_die(*args: Any, **kwargs: Any) -> Any:
        save(*args, **kwargs)
        raise Killed

    return save_and_die


def pytest_configure(config: pytest.Config) -> None:
    """Models built while the tests are collected (in parametrize lists) get seeded weights."""
    import torch

    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def seeded() -> None:
    """Every test starts from torch's seed 0: torch seeds itself at random per process, and a test
    model's random weights can gate a path to exactly zero (a ReLU dead on a 4 x 4 input), which
    would make the measured checks fail on some runs and not others."""
    import torch

    torch.manual_seed(0)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: on the test machine's two shared cores tiny CPU ops get slower, not
    faster, with more threads (modules opt in with `pytestmark = pytest.mark.usefixtures(...)`)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smoke_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """(results dir, chapter reports) of a complete smoke reproduction in a temporary folder."""
    from gradpath_lib.runner import reproduce

    results = tmp_path_factory.mktemp("smoke-results")
    reports = reproduce("smoke", jobs=SMOKE_JOBS, device="cpu", results_dir=results, progress=False)
    return results, reports
