"""Shared fixtures. `smoke_results`: ONE smoke reproduction of every chapter that has a notebook
(training at the smoke scale on the CPU, then papermill), shared by the notebook, runner and book
tests of the session."""

from __future__ import annotations

from pathlib import Path

import pytest

SMOKE_JOBS = 2  # the CI machine has two cores
# The first test that needs the reproduction pays for it (minutes on two busy cores).
SMOKE_TIMEOUT_S = 1800


@pytest.fixture(scope="session")
def smoke_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """(results dir, chapter reports) of a complete smoke reproduction in a temporary folder."""
    from gradpath_lib.runner import reproduce

    results = tmp_path_factory.mktemp("smoke-results")
    reports = reproduce("smoke", jobs=SMOKE_JOBS, device="cpu", results_dir=results, progress=False)
    return results, reports
