"""The run pool: runs that study a trained target are trained in the target's group, after it."""

from __future__ import annotations

from gradpath_lib.run_pool import CACHED, FAILED, TRAINED, ensure_runs, target_groups, weights_still_needed
from gradpath_lib.runs import normalize_config
from gradpath_lib.store import record_path, run_id, weights_path
from gradpath_lib.train.classify import classify_config
from gradpath_lib.train.probe import probe_config


def key(config: dict) -> str:
    return run_id(normalize_config(config))


def test_dependents_join_their_targets_group_after_it():
    probe = probe_config("resnet-aux1", "smoke", 0, epochs=1)
    other_probe = {**probe, "probe": {**probe["probe"], "l2": 0.5}}
    target, lone = probe["target"], classify_config("plain", "smoke", 0)
    unique = {key(c): c for c in (probe, lone, other_probe, target)}
    groups = target_groups(list(unique), unique)
    assert groups == [[key(target), key(probe), key(other_probe)], [key(lone)]]
    # a dependent whose target is already recorded still groups with its siblings
    assert target_groups([key(probe), key(other_probe)], unique) == [[key(probe), key(other_probe)]]


def test_two_workers_train_a_shared_target_once_and_its_dependents_beside_it(tmp_path):
    probe = probe_config("resnet-aux1", "smoke", 0, epochs=1)
    other_probe = {**probe, "probe": {**probe["probe"], "l2": 0.5}}
    lone = classify_config("plain", "smoke", 0, epochs=1)
    outcomes = ensure_runs([other_probe, lone, probe, probe["target"]], results_dir=tmp_path,
                           allow_train=True, device="cpu", jobs=2, progress=False)
    assert [o.source for o in outcomes] == [TRAINED] * 4, [o.error for o in outcomes]
    target_id = outcomes[3].record["run_id"]
    assert outcomes[0].record["metrics"]["target_run_id"] == outcomes[2].record["metrics"]["target_run_id"] == target_id
    again = ensure_runs([probe, other_probe], results_dir=tmp_path, progress=False)
    assert [o.source for o in again] == [CACHED, CACHED]


def test_weights_still_needed_are_those_of_recorded_targets_with_missing_dependents(tmp_path):
    probe = probe_config("resnet-aux1", "smoke", 0, epochs=1)
    other_probe = {**probe, "probe": {**probe["probe"], "l2": 0.5}}
    assert weights_still_needed([probe, other_probe], tmp_path) == []  # the target is not trained yet
    ensure_runs([probe["target"]], results_dir=tmp_path, allow_train=True, device="cpu", progress=False)
    expected = [weights_path(tmp_path, normalize_config(probe["target"]))]
    assert weights_still_needed([probe, other_probe], tmp_path) == expected
    ensure_runs([probe, other_probe], results_dir=tmp_path, allow_train=True, device="cpu", progress=False)
    assert weights_still_needed([probe, other_probe], tmp_path) == []


def test_a_damaged_record_fails_its_run_only_and_is_kept(tmp_path):
    damaged, fine = classify_config("plain", "smoke", 0, epochs=1), classify_config("plain", "smoke", 1, epochs=1)
    path = record_path(tmp_path, normalize_config(damaged))
    path.parent.mkdir(parents=True)
    path.write_text('{"run_id": "trunc')
    outcomes = ensure_runs([damaged, fine], results_dir=tmp_path, allow_train=True, device="cpu", progress=False)
    assert [o.source for o in outcomes] == [FAILED, TRAINED]
    assert "corrupted run record" in outcomes[0].error and path.name in outcomes[0].error
    assert path.read_text() == '{"run_id": "trunc', "the damaged record is left for the user to repair"
