"""The classification trainer: caching, determinism, resume after SIGKILL, divergence, hooks."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gradpath_lib import runs
from gradpath_lib.cli import main
from gradpath_lib.errors import GradpathError
from gradpath_lib.models import registry
from gradpath_lib.runs import ensure_run, normalize_config
from gradpath_lib.store import checkpoint_path, load_record, record_path
from gradpath_lib.train import classify, recipes
from gradpath_lib.train.batches import DeviceImages, epoch_generator
from gradpath_lib.train.classify import classify_config, rng_state, set_rng_state, strip_timing
from gradpath_lib.train.recipes import Recipe, lr_at, recipe_for

REPO = Path(__file__).resolve().parent.parent
SMOKE_TRAIN_IMAGES = 512
SMOKE_BATCH = 64
STEPS_PER_EPOCH = SMOKE_TRAIN_IMAGES // SMOKE_BATCH
CHANCE = 0.1
real_train_epoch = classify.train_epoch


class TinyNet(nn.Module):
    """conv-BN-ReLU, global pool, linear: trains on the smoke data in well under a second."""

    def __init__(self, width: int = 8, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class PenalizedTinyNet(TinyNet):
    """TinyNet with an `extra_loss` (a strong L2 penalty on the classifier) that counts its calls."""

    def __init__(self, penalty: float | None = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.penalty = penalty
        self.extra_calls: list[int] = []

    def extra_loss(self, targets: torch.Tensor) -> torch.Tensor | None:
        self.extra_calls.append(targets.shape[0])
        return None if self.penalty is None else self.penalty * self.fc.weight.pow(2).sum()


class NaNAtStepNet(TinyNet):
    """TinyNet whose training forward returns NaN logits at its `nan_step`-th call (1-based)."""

    def __init__(self, nan_step: int, **kwargs):
        super().__init__(**kwargs)
        self.nan_step, self.calls = nan_step, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        if self.training:
            self.calls += 1
            if self.calls == self.nan_step:
                return logits * math.nan
        return logits


def tiny_entries() -> list[registry.ModelEntry]:
    """The test-only registry entries (smoke presets only)."""
    return [
        registry.ModelEntry("tiny-test-net", TinyNet, "test", presets={"smoke": {}}),
        registry.ModelEntry("tiny-penalized-net", PenalizedTinyNet, "test", presets={"smoke": {}}),
        registry.ModelEntry("tiny-nan-net", NaNAtStepNet, "test", presets={"smoke": {"nan_step": 11}}),
    ]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(autouse=True)
def tiny_models(monkeypatch):
    registry.model_names()  # load the built-in zoo first
    for entry in tiny_entries():
        monkeypatch.setitem(registry._REGISTRY, entry.name, entry)


def train(tmp_path: Path, model: str = "tiny-test-net", **overrides) -> dict:
    config = classify_config(model, "smoke", 0, **overrides)
    return ensure_run(config, results_dir=tmp_path, device="cpu", progress=False)


def test_classify_config_is_complete_and_checked():
    config = classify_config("tiny-test-net", "smoke", 3, epochs=5)
    assert config["task"] == "classify" and config["data"] == "smoke" and config["seed"] == 3
    assert config["recipe"] == recipe_for("smoke", epochs=5)
    assert config["recipe"]["epochs"] == 5
    with pytest.raises(GradpathError, match="epochz"):
        classify_config("tiny-test-net", "smoke", 0, epochz=5)
    with pytest.raises(GradpathError, match="valid choices"):
        classify_config("no-such-net", "smoke", 0)
    with pytest.raises(GradpathError, match="schedule"):
        recipe_for("smoke", schedule="step")


def test_lr_schedule_warms_up_then_decays_to_zero():
    recipe = Recipe(**recipe_for("mini"))
    total = 1000
    lrs = [lr_at(recipe, s, total) for s in range(total)]
    peak = lrs.index(max(lrs))
    assert max(lrs) == pytest.approx(recipe.lr)
    assert peak == int(recipe.warmup_fraction * total) - 1
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))
    assert all(a > b for a, b in zip(lrs[peak + 1:], lrs[peak + 2:]))
    assert lrs[-1] < recipe.lr * 0.01
    cosine = Recipe(**recipe_for("mini", schedule="cosine", warmup_fraction=0.0))
    assert lr_at(cosine, total // 2, total) == pytest.approx(recipe.lr / 2)


def test_device_augmentation_is_a_seeded_pad_crop_and_flip():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 5, 7, 3), dtype=np.uint8)
    labels = np.arange(6)
    data = DeviceImages.from_arrays(images, labels, torch.device("cpu"))
    pad = 2
    (x, y), = list(data.train_batches(6, epoch_generator(1, 2), crop_padding=pad, flip=True))
    (x2, _), = list(data.train_batches(6, epoch_generator(1, 2), crop_padding=pad, flip=True))
    assert torch.equal(x, x2) and x.shape == (6, 3, 5, 7)
    assert x.is_contiguous()  # NCHW on CPU; channels-last only on CUDA (see DeviceImages.normalize)
    pixels = (x * data.std + data.mean).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    for out, label in zip(pixels, y.tolist()):
        windows = {(dy, dx, f) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1) for f in (0, 1)
                   if np.array_equal(out, (padded[label] if not f else padded[label][:, ::-1])[dy:dy + 5, dx:dx + 7])}
        assert windows, "every augmented image is a crop of its padded (possibly flipped) original"
    assert sorted(y.tolist()) == list(range(6))
    (plain, _), = list(data.train_batches(6, epoch_generator(1, 2), crop_padding=0, flip=False))
    assert torch.equal(plain, data.normalize(data.images[y]))


def test_cached_record_is_returned_and_force_retrains(tmp_path, monkeypatch):
    first = train(tmp_path)
    assert first["status"] == "ok"

    def must_not_train(config, ctx):
        raise AssertionError("a cached run was trained again")

    monkeypatch.setitem(runs._TASKS, "classify", must_not_train)
    assert train(tmp_path) == first
    monkeypatch.setitem(runs._TASKS, "classify", classify.train_classify)
    calls = []
    monkeypatch.setattr(classify, "train_epoch", lambda *a: calls.append(1) or real_train_epoch(*a))
    config = classify_config("tiny-test-net", "smoke", 0)
    again = ensure_run(config, results_dir=tmp_path, device="cpu", progress=False, force=True)
    assert len(calls) == first["metrics"]["epochs_done"]
    assert strip_timing(again["metrics"]) == strip_timing(first["metrics"])


def test_record_keys_determinism_and_learning(tmp_path):
    a = train(tmp_path / "a", epochs=4)
    b = train(tmp_path / "b", epochs=4)
    assert strip_timing(a["metrics"]) == strip_timing(b["metrics"])
    assert {"run_id", "config", "status", "metrics", "params", "flops", "wall_time_s", "provenance",
            "dataset"} <= set(a)
    assert {"git_commit", "torch", "device", "dataset_sha256"} <= set(a["provenance"])
    assert a["provenance"]["dataset_sha256"] == a["dataset"]["sha256"] and a["dataset"]["name"] == "smoke"
    m = a["metrics"]
    assert {"test_acc", "best_test_acc", "train_loss", "epochs_done", "images_per_s"} <= set(m)
    assert m["epochs_done"] == len(m["history"]) == 4
    assert set(m["history"][0]) >= {"train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_s"}
    assert m["test_acc"] == m["history"][-1]["test_acc"] > 2 * CHANCE, "the smoke run learns"
    assert m["history"][-1]["train_loss"] < m["history"][0]["train_loss"]
    assert a["params"] == sum(p.numel() for p in TinyNet().parameters()) and a["flops"] > 0
    on_disk = json.loads(record_path(tmp_path / "a", a["config"]).read_text())
    assert on_disk == a


def test_extra_loss_hook_is_called_every_step_and_changes_training(tmp_path, monkeypatch):
    created = []
    monkeypatch.setitem(registry._REGISTRY, "tiny-penalized-net", registry.ModelEntry(
        "tiny-penalized-net", lambda **kw: created.append(PenalizedTinyNet(**kw)) or created[-1],
        "test", presets={"smoke": {}},
    ))
    plain = train(tmp_path / "plain")
    penalized = train(tmp_path / "pen", "tiny-penalized-net")
    steps = STEPS_PER_EPOCH * plain["metrics"]["epochs_done"]
    assert created[-1].extra_calls == [SMOKE_BATCH] * steps
    assert strip_timing(penalized["metrics"]) != strip_timing(plain["metrics"])
    no_penalty = ensure_run(
        classify_config("tiny-penalized-net", "smoke", 0, model_kwargs={"penalty": None}),
        results_dir=tmp_path / "none", device="cpu", progress=False,
    )
    assert strip_timing(no_penalty["metrics"]) == strip_timing(plain["metrics"]), "None adds nothing"


def test_nan_loss_is_recorded_as_diverged_at_its_step(tmp_path):
    record = train(tmp_path, "tiny-nan-net")
    assert record["status"] == "diverged"
    assert record["diverged_at_step"] == 11 and record["diverged_at_epoch"] == 11 // STEPS_PER_EPOCH
    assert record["metrics"]["epochs_done"] == 1 and record["metrics"]["test_acc"] is None
    assert not checkpoint_path(tmp_path, record["config"]).exists()
    huge_lr = train(tmp_path, lr=1e30)
    assert huge_lr["status"] == "diverged" and huge_lr["diverged_at_step"] >= 1


def test_paper_scale_without_imagenet_names_its_folder_and_records_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADPATH_DATA", str(tmp_path / "data"))
    config = classify_config("tiny-test-net", "paper", 0)
    assert config["data"] == "imagenet" and config["recipe"]["epochs"] == 100
    with pytest.raises(GradpathError, match="ImageNet.*not readable under .*data/imagenet"):
        ensure_run(config, results_dir=tmp_path, device="cpu", progress=False)
    assert not record_path(tmp_path, normalize_config(config)).exists()


def test_corrupted_record_and_checkpoint_give_clear_errors(tmp_path):
    config = classify_config("tiny-test-net", "smoke", 0, epochs=1)
    ckpt = checkpoint_path(tmp_path, normalize_config(config))
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(GradpathError, match="corrupted checkpoint .*" + ckpt.name):
        ensure_run(config, results_dir=tmp_path, device="cpu", progress=False)
    ckpt.unlink()
    record = ensure_run(config, results_dir=tmp_path, device="cpu", progress=False)
    path = record_path(tmp_path, record["config"])
    damaged = '{"run_id": "x", "conf'
    path.write_text(damaged)
    with pytest.raises(GradpathError, match="corrupted run record .*" + path.name):
        ensure_run(config, results_dir=tmp_path, device="cpu", progress=False)
    assert path.read_text() == damaged  # nothing is overwritten without --force
    for n in range(2):  # --force retrains and sets every damaged record aside, never overwriting one
        forced = ensure_run(config, results_dir=tmp_path, device="cpu", progress=False, force=True)
        assert forced["status"] == "ok" and strip_timing(load_record(path)["metrics"]) == strip_timing(record["metrics"])
        path.write_text(damaged + str(n))
    kept = sorted(p.name for p in path.parent.glob(path.stem + ".corrupt*"))
    assert kept == [path.stem + ".corrupt", path.stem + ".corrupt.1"]
    assert (path.parent / kept[0]).read_text() == damaged


def test_a_checkpoint_resumes_only_on_the_device_kind_that_saved_it():
    saved_on_cuda = {"cpu": torch.get_rng_state(), "cuda": torch.zeros(8, dtype=torch.uint8)}
    with pytest.raises(GradpathError, match="saved on cuda and cannot resume on cpu.*--device cuda"):
        set_rng_state(saved_on_cuda, torch.device("cpu"))
    set_rng_state(rng_state(torch.device("cpu")), torch.device("cpu"))


KILLED_RUN = """
import sys, time
sys.path.insert(0, "tests")
import test_train
from gradpath_lib.models.registry import register
from gradpath_lib.runs import ensure_run
from gradpath_lib.train.classify import classify_config
for e in test_train.tiny_entries():
    register(e.name, e.factory, family=e.family, presets=e.presets)
forward = test_train.TinyNet.forward
def slow_forward(self, x):
    time.sleep(0.05)  # slow enough that the kill surely lands before the run ends
    return forward(self, x)
test_train.TinyNet.forward = slow_forward
ensure_run(classify_config("tiny-test-net", "smoke", 0, epochs={epochs}),
           results_dir=sys.argv[1], device="cpu", progress=False)
"""


def test_run_killed_with_sigkill_resumes_to_the_same_metrics(tmp_path, monkeypatch):
    epochs = 5
    config = classify_config("tiny-test-net", "smoke", 0, epochs=epochs)
    ckpt = checkpoint_path(tmp_path, normalize_config(config))
    script = textwrap.dedent(KILLED_RUN).format(epochs=epochs)
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 60
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run was killed, not finished"
    assert ckpt.exists() and not record_path(tmp_path, normalize_config(config)).exists()

    calls = []
    monkeypatch.setattr(classify, "train_epoch", lambda *a: calls.append(1) or real_train_epoch(*a))
    resumed = ensure_run(config, results_dir=tmp_path, device="cpu", progress=False)
    assert 0 < len(calls) < epochs, "the resumed run skipped the checkpointed epochs"
    uninterrupted = ensure_run(config, results_dir=tmp_path / "clean", device="cpu", progress=False)
    assert strip_timing(resumed["metrics"]) == strip_timing(uninterrupted["metrics"])
    assert not ckpt.exists(), "the checkpoint is removed once the record is written"


def test_train_command_prints_record_path_and_summary(tmp_path, capsys):
    argv = ["train", "--model", "tiny-test-net", "--scale", "smoke", "--epochs", "1",
            "--device", "cpu", "--results-dir", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    path, line = capsys.readouterr().out.strip().splitlines()
    record = json.loads(Path(path).read_text())
    assert record["config"]["recipe"]["epochs"] == 1 and record["run_id"] in line and "ok" in line
    assert main(argv) == 0
    assert capsys.readouterr().out.strip().endswith("[cached]")
    assert main(argv[:2] + ["no-such-net"] + argv[3:]) == 2
    assert "unknown model 'no-such-net'" in capsys.readouterr().err


@pytest.mark.parametrize("option, value", [("--epochs", "0"), ("--seed", "-1")])
def test_train_command_names_the_option_out_of_range(option, value, tmp_path, capsys):
    argv = ["train", "--model", "tiny-test-net", "--device", "cpu", "--results-dir", str(tmp_path), option, value]
    assert main(argv) == 2
    assert f"{option} must be >= " in capsys.readouterr().err and not (tmp_path / "smoke").exists()


def test_progress_bar_stays_out_of_a_redirected_log(tmp_path, capsys):
    config = classify_config("tiny-test-net", "smoke", 0, epochs=1)
    ensure_run(config, results_dir=tmp_path, device="cpu", progress=True)  # stderr is captured: not a terminal
    assert "epoch" not in capsys.readouterr().err


def test_recipe_table_gives_every_field_its_value_per_scale_and_its_reason():
    table = recipes.recipe_table(recipes.RECIPES).set_index("field")
    assert list(table.index) == [f.name for f in dataclasses.fields(Recipe)]
    assert table.at["epochs", "mini"] == recipes.RECIPES["mini"].epochs
    assert table.at["lr", "paper"] == recipes.RECIPES["paper"].lr
    assert (table["why"].str.len() > 20).all()  # no field without a reason


def test_a_head_that_does_not_match_the_classes_is_refused_before_training(tmp_path):
    config = classify_config("tiny-test-net", "smoke", 0, epochs=1, model_kwargs={"num_classes": 7})
    with pytest.raises(GradpathError, match="model gives 7 logits but .* has 10 classes; set model_kwargs num_classes=10"):
        ensure_run(config, results_dir=tmp_path, device="cpu", progress=False)
    assert not checkpoint_path(tmp_path, normalize_config(config)).exists()


def test_tasks_that_hold_the_data_in_memory_refuse_a_streamed_data_set():
    with pytest.raises(GradpathError, match="the LW-DNA task needs a data set held in memory .* 'imagenet' is streamed"):
        classify.load_resident_data({"data": "imagenet"}, recipes.RECIPES["paper"], torch.device("cpu"), "LW-DNA")
