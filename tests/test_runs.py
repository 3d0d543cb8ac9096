"""`runs.ensure_run` and `gradpath` itself: an unwritable results dir, Ctrl-C, a closed pipe, --version."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from gradpath_lib import runs
from gradpath_lib.cli import main
from gradpath_lib.store import REPO_ROOT, checkpoint_path, record_path, save_checkpoint
from gradpath_lib.train.classify import classify_config

CONFIG = classify_config("resnet", "smoke", 0)


@pytest.fixture
def task(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Stand in for the classify trainer: it records its checkpoint path, saves a checkpoint if it
    is told to (`ctx.results_dir / "save"` exists), then stops as Ctrl-C would."""
    runs.task_names()  # register the built-in tasks first, so they do not replace this one
    calls: list[Path] = []

    def interrupted(config: dict, ctx: runs.TaskContext) -> runs.TaskResult:
        calls.append(ctx.checkpoint)
        if (ctx.results_dir / "save").exists():
            save_checkpoint(ctx.checkpoint, {"history": [{"epoch": 1}]})
        raise KeyboardInterrupt

    monkeypatch.setitem(runs._TASKS, "classify", interrupted)
    return calls


def train(results_dir: Path) -> int:
    """The exit status of `gradpath train` of CONFIG into `results_dir` (a Ctrl-C it lets through fails the test)."""
    try:
        return main(["train", "--model", "resnet", "--scale", "smoke", "--device", "cpu", "--no-progress",
                     "--results-dir", str(results_dir)])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped cli.main")


def test_an_unwritable_results_dir_is_one_error_before_training(tmp_path: Path, monkeypatch, capsys) -> None:
    runs.task_names()
    monkeypatch.setitem(runs._TASKS, "classify", lambda config, ctx: pytest.fail("the run was trained"))
    blocker = tmp_path / "a-file"  # even root cannot create folders under a file
    blocker.write_text("not a folder")
    results = blocker / "results"
    assert train(results) == 2
    folder = record_path(results, runs.normalize_config(CONFIG)).parent
    assert capsys.readouterr().err == (f"gradpath: error: results dir {results} is not writable: cannot create "
                                       f"files in {folder}; give a writable one (--results-dir)\n")


def test_ctrl_c_is_one_line_exit_130_naming_the_kept_checkpoint(tmp_path: Path, task: list[Path], capsys) -> None:
    assert train(tmp_path) == 130
    assert capsys.readouterr().err == "gradpath: interrupted\n"  # no checkpoint yet: nothing to resume
    (tmp_path / "save").touch()
    assert train(tmp_path) == 130
    ckpt = checkpoint_path(tmp_path, runs.normalize_config(CONFIG))
    assert task == [ckpt, ckpt] and ckpt.is_file()
    assert capsys.readouterr().err == (f"gradpath: interrupted; checkpoint kept at {ckpt}; "
                                       "run the same command again to resume\n")
    assert not record_path(tmp_path, runs.normalize_config(CONFIG)).exists(), "an interrupted run is not failed"


def test_version_is_the_installed_package_version(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"gradpath {importlib.metadata.version('gradpath')}\n"


def test_a_reader_that_stops_early_ends_the_command_quietly() -> None:
    """`gradpath models | head -1`: the closed pipe is exit 141 (as SIGPIPE), without a traceback."""
    command = [sys.executable, "-m", "gradpath_lib", "models", "--scale", "smoke"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # before the command prints anything (it imports torch first)
    error = process.stderr.read().decode()
    assert process.wait() == 141 and error == ""
