"""`gradpath reproduce`: runs before notebooks, resuming after a kill, failures, bad input."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gradpath_lib.cli import main
from gradpath_lib.experiments import chapter
from gradpath_lib.runner import (DONE, FAILED_NB, UP_TO_DATE, executed_notebook, reproduce, select_chapters,
                                 succeeded, summary_frame)
from gradpath_lib.store import REPO_ROOT

from conftest import SMOKE_TIMEOUT_S

pytestmark = pytest.mark.timeout(SMOKE_TIMEOUT_S)  # the shared smoke reproduction runs in the first test

KILL_TIMEOUT_S = 300  # the killed reproduction must reach its first notebook within this


def test_smoke_reproduction_succeeds_and_counts_runs(smoke_results) -> None:
    _, reports = smoke_results
    assert succeeded(reports)
    table2 = next(r for r in reports if r.name == "table2")
    assert table2.runs["trained"] + table2.runs["cached"] == 8 and table2.runs["missing"] == 0
    summary = summary_frame(reports)
    assert list(summary.columns[:6]) == ["chapter", "status", "trained", "cached", "missing", "failed"]


def test_rerun_redoes_nothing(smoke_results) -> None:
    results, _ = smoke_results
    reports = reproduce("smoke", only=["table2", "table4"], device="cpu", results_dir=results, progress=False)
    assert [(r.name, r.status, r.runs["trained"]) for r in reports] == [
        ("table2", UP_TO_DATE, 0), ("table4", UP_TO_DATE, 0)]


def test_resumes_after_being_killed(smoke_results, tmp_path: Path) -> None:
    """Kill a reproduction once its first notebook is written; the rerun redoes only the rest."""
    results, _ = smoke_results
    shutil.copytree(results / "smoke" / "runs", tmp_path / "smoke" / "runs")
    vovnet = next((tmp_path / "smoke" / "runs").glob("vovnet-s0-*.json"))
    vovnet.unlink()  # one run to train before the notebooks
    command = [sys.executable, "-m", "gradpath_lib", "reproduce", "--scale", "smoke", "--only", "table2", "table4",
               "--device", "cpu", "--results-dir", str(tmp_path)]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    first_page = executed_notebook(tmp_path, "smoke", "table2")
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while not first_page.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the whole group: the CLI and its papermill kernel
    process.wait()
    assert first_page.exists() and vovnet.exists(), "the killed run should have trained and rendered table2"
    assert not executed_notebook(tmp_path, "smoke", "table4").exists()
    trained_at = vovnet.stat().st_mtime

    reports = reproduce("smoke", only=["table2", "table4"], device="cpu", results_dir=tmp_path, progress=False)
    assert [(r.name, r.status) for r in reports] == [("table2", UP_TO_DATE), ("table4", DONE)]
    assert all(r.runs["trained"] == 0 for r in reports) and vovnet.stat().st_mtime == trained_at


def test_failing_notebooks_name_their_cell_and_do_not_stop_the_batch(smoke_results, tmp_path: Path) -> None:
    """Every run is recorded, so nothing trains; the notebooks' setup rejects the device."""
    results, _ = smoke_results
    shutil.copytree(results / "smoke" / "runs", tmp_path / "smoke" / "runs")
    reports = reproduce("smoke", only=["table2", "table4"], device="tpu", results_dir=tmp_path, progress=False)
    assert [r.status for r in reports] == [FAILED_NB, FAILED_NB] and not succeeded(reports)
    for report in reports:
        assert report.error.startswith("cell ") and "unknown device 'tpu'" in report.error
        assert (tmp_path / "smoke" / "notebooks" / f"{report.name}.failed.ipynb").exists()
        assert not executed_notebook(tmp_path, "smoke", report.name).exists()


def test_a_damaged_record_fails_its_run_and_the_summary_names_it(smoke_results, tmp_path: Path) -> None:
    results, _ = smoke_results
    shutil.copytree(results / "smoke" / "runs", tmp_path / "smoke" / "runs")
    vovnet = next((tmp_path / "smoke" / "runs").glob("vovnet-s0-*.json"))
    vovnet.write_text("{")
    reports = reproduce("smoke", only=["table2", "table4"], device="cpu", runs_only=True, results_dir=tmp_path,
                        progress=False)
    assert [(r.name, r.runs["failed"], r.runs["trained"]) for r in reports] == [("table2", 0, 0), ("table4", 1, 0)]
    assert not succeeded(reports) and vovnet.read_text() == "{", "reported, not retrained over"
    error = summary_frame(reports).set_index("chapter").loc["table4", "error"]
    assert error.startswith(vovnet.stem + ": corrupted run record") and len(error) <= 160


def test_runs_only_trains_without_jupyter(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['papermill'] = None; sys.modules['nbclient'] = None; "
            "from gradpath_lib.cli import main; "
            f"sys.exit(main(['reproduce', '--scale', 'smoke', '--only', 'architecture', '--runs-only', "
            f"'--results-dir', {str(tmp_path)!r}]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "runs only" in done.stdout and not (tmp_path / "smoke" / "notebooks").exists()


def test_a_time_limit_starts_no_run_after_it_and_the_next_call_finishes(tmp_path: Path, capsys) -> None:
    argv = ["reproduce", "--scale", "smoke", "--only", "table4", "--runs-only", "--device", "cpu",
            "--results-dir", str(tmp_path)]
    assert main([*argv, "--time-limit", "1e-9"]) == 3
    assert "run it again" in capsys.readouterr().out and not (tmp_path / "smoke" / "runs").exists()
    assert main([*argv, "--time-limit", "3600"]) == 0
    assert len(list((tmp_path / "smoke" / "runs").glob("*.json"))) == len(chapter("table4").runs("smoke", [0]))


@pytest.mark.parametrize("argv, message", [
    (["--scale", "smoke", "--time-limit", "0"], "--time-limit must be > 0 seconds"),
    (["--scale", "smoke", "--runs-only", "--nproc", "2", "--time-limit", "60"], "--time-limit cannot be combined"),
    (["--scale", "smoke", "--only", "table99"], "unknown chapter 'table99'; valid choices: architecture"),
    (["--scale", "smoke", "--jobs", "0"], "--jobs must be a whole number >= 1 or auto, got '0'"),
    (["--scale", "smoke", "--jobs", "many"], "--jobs must be a whole number >= 1 or auto, got 'many'"),
])
def test_bad_input_is_one_clear_error(argv, message, capsys) -> None:
    assert main(["reproduce", *argv]) == 2
    out, err = capsys.readouterr()
    assert message in err and "--jobs auto" not in out


def test_help_lists_the_scales_and_chapters(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["reproduce", "--scale", "huge"])
    assert exit_.value.code == 2
    assert "invalid choice: 'huge' (choose from 'smoke', 'mini', 'paper')" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["reproduce", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--scale {smoke,mini,paper}" in help_text
    assert ", ".join(c.name for c in select_chapters()) in help_text


def test_the_reproducing_chapter_is_stale_once_any_record_or_bench_changes(tmp_path: Path) -> None:
    from gradpath_lib.runner import fingerprint

    reproducing, table2 = chapter("reproducing"), chapter("table2")
    assert reproducing.reads_all_results and not table2.reads_all_results
    params = {"scale": "smoke"}
    before = {c.name: fingerprint(c, "smoke", [0], tmp_path, params) for c in (reproducing, table2)}
    for folder, name in (("runs", "other-run.json"), ("bench", "train-resnet.json")):
        (tmp_path / "smoke" / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / "smoke" / folder / name).write_text("{}")
        now = {c.name: fingerprint(c, "smoke", [0], tmp_path, params) for c in (reproducing, table2)}
        assert now["reproducing"] != before["reproducing"], f"a new {folder} file makes the page stale"
        assert now["table2"] == before["table2"], "a record of another run does not touch table2"
        before = now


def test_runs_are_trained_seed_by_seed_so_a_cut_batch_covers_every_chapter(tmp_path: Path, monkeypatch) -> None:
    import gradpath_lib.runner as runner

    asked: list[dict] = []

    def record_order(configs, **kwargs):
        asked.extend(configs)
        return real_ensure_runs(configs, **kwargs)

    real_ensure_runs = runner.ensure_runs
    monkeypatch.setattr(runner, "ensure_runs", record_order)
    reports = reproduce("mini", train=False, runs_only=True, results_dir=tmp_path, progress=False)
    seeds = [(c.get("target") or c)["seed"] for c in asked]
    assert seeds == sorted(seeds) and set(seeds) == {0, 1, 2}
    seed0 = [c for c, s in zip(asked, seeds) if s == 0]
    with_runs = [r.name for r in reports if sum(r.runs.values())]
    for name in with_runs:  # the seed-0 block alone holds a run of every chapter that trains
        ids = {runner._run_id(c) for c in chapter(name).runs("mini", [0])}
        assert ids & {runner._run_id(c) for c in seed0}, name
