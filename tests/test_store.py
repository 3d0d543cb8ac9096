"""Run records and checkpoints: ids, atomic writes, clear errors for damaged files."""

from __future__ import annotations

import json
import os

import pytest
import torch

from gradpath_lib.errors import GradpathError
from gradpath_lib.store import (
    atomic_write_bytes,
    iter_records,
    load_checkpoint,
    load_record,
    record_path,
    run_id,
    save_checkpoint,
    write_record,
)

CONFIG = {"task": "classify", "model": "resnet", "scale": "smoke", "seed": 1, "recipe": {"lr": 0.1}}


def record_of(config: dict, status: str = "ok") -> dict:
    return {"run_id": run_id(config), "config": config, "status": status, "metrics": {"test_acc": 0.5},
            "params": 10, "flops": 20, "wall_time_s": 1.0, "provenance": {"device": "cpu"}}


def test_run_id_depends_on_the_whole_config_not_on_key_order():
    reordered = dict(reversed(list(CONFIG.items())))
    assert run_id(reordered) == run_id(CONFIG)
    assert run_id(CONFIG).startswith("resnet-s1-")
    assert run_id({**CONFIG, "recipe": {"lr": 0.2}}) != run_id(CONFIG)
    assert run_id({**CONFIG, "seed": 2}) != run_id(CONFIG)


def test_records_round_trip_and_leave_no_temporary_files(tmp_path):
    path = record_path(tmp_path, CONFIG)
    write_record(path, record_of(CONFIG))
    assert load_record(path) == record_of(CONFIG)
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    other = {**CONFIG, "seed": 7}
    write_record(record_path(tmp_path, other), record_of(other, "diverged"))
    assert {r["config"]["seed"] for r in iter_records(tmp_path, "smoke")} == {1, 7}
    assert iter_records(tmp_path, "mini") == []


def test_invalid_status_is_refused_and_nothing_is_written(tmp_path):
    path = record_path(tmp_path, CONFIG)
    with pytest.raises(GradpathError, match="status"):
        write_record(path, record_of(CONFIG, "great"))
    assert not path.exists()


@pytest.mark.parametrize(("content", "problem"), [
    ("{\"run_id\": ", "Expecting value"),
    ("[1, 2]", "it is not a JSON object"),
    ("[]", "it is not a JSON object"),
    ("{}", "missing \\['config', 'flops'"),
    (json.dumps({"run_id": "x"}), "missing"),
    (json.dumps({k: v for k, v in record_of(CONFIG).items() if k != "provenance"}), "missing \\['provenance'\\]"),
    (json.dumps({**record_of(CONFIG), "status": "great"}), "status 'great' is not one of"),
])
def test_damaged_record_names_the_file_and_how_to_get_the_run_again(tmp_path, content, problem):
    path = record_path(tmp_path, CONFIG)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(GradpathError, match=f"corrupted run record .*{path.name}: {problem}") as err:
        load_record(path)
    # every kind of damage gets the same hint, one that works for train, reproduce and book alike
    assert str(err.value).endswith(f"move it away (e.g. rename it to {path.name}.corrupt) and the run "
                                   "is trained again the next time it is needed")
    assert "--force" not in str(err.value)
    assert path.read_text() == content
    with pytest.raises(GradpathError, match=path.name):
        iter_records(tmp_path, "smoke")


def test_checkpoints_round_trip_and_damaged_ones_give_a_clear_error(tmp_path):
    path = tmp_path / "ckpt" / "run.pt"
    assert load_checkpoint(path) is None
    state = {"weights": torch.arange(4.0), "history": [{"epoch": 1, "loss": 0.5}], "rng": torch.get_rng_state()}
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["weights"], state["weights"]) and loaded["history"] == state["history"]
    assert [p.name for p in path.parent.iterdir()] == ["run.pt"]
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(GradpathError, match="corrupted checkpoint .*run.pt"):
        load_checkpoint(path)


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_get_the_umask_permissions(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "table.csv", b"a,b\n")
        write_record(record_path(tmp_path, CONFIG), record_of(CONFIG))
        save_checkpoint(tmp_path / "run.pt", {"weights": torch.zeros(2)})
    finally:
        os.umask(old)
    for path in (tmp_path / "table.csv", record_path(tmp_path, CONFIG), tmp_path / "run.pt"):
        assert path.stat().st_mode & 0o777 == mode, path


def test_a_failed_write_is_one_error_naming_the_file_and_leaves_nothing(tmp_path):
    blocker = tmp_path / "a-file"  # a folder root cannot write into either: one under a file
    blocker.write_text("not a folder")
    target = blocker / "runs" / "record.json"
    with pytest.raises(GradpathError, match=f"cannot write {target}: .*Not a directory") as err:
        atomic_write_bytes(target, b"{}")
    assert isinstance(err.value, OSError)  # callers that catch OSError (the data caches) still do
    with pytest.raises(GradpathError, match=f"cannot write {blocker / 'run.pt'}"):
        save_checkpoint(blocker / "run.pt", {"weights": torch.zeros(2)})
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]
