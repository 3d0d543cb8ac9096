"""The trainers' CUDA speed path (bf16 autocast, channels-last weights, fused optimizers), run on
the CPU: `classify.fast_path` is switched on, so the code a GPU session takes is exercised here,
where no GPU is. Each run must learn, and a run interrupted after a checkpoint must resume to the
record of an uninterrupted one (the fused optimizers' state goes through the checkpoint)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import gradpath_lib.train.detect as detect
from gradpath_lib.runs import ensure_run
from gradpath_lib.train import classify
from gradpath_lib.train.classify import classify_config, strip_timing
from gradpath_lib.train.detect import detect_config

from conftest import Killed, fit_interrupted_after, save_then_die

CHANCE = 0.1

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Switch the fast path on for the CPU and note what the trainers then did: whether each
    optimizer is fused, the weights' memory format and the dtype of every conv output in training."""
    seen: dict[str, Any] = {"fused": [], "channels_last": [], "conv_dtypes": set()}
    monkeypatch.setattr(classify, "fast_path", lambda device: True)
    monkeypatch.setattr(detect, "fast_path", lambda device: True)

    def note_dtype(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        if module.training:
            seen["conv_dtypes"].add(output.dtype)

    def spy(make_optimizer):
        def make(model: nn.Module, recipe: Any, device: torch.device) -> torch.optim.Optimizer:
            optimizer = make_optimizer(model, recipe, device)
            seen["fused"].append(optimizer.defaults["fused"])
            convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
            seen["channels_last"].append(all(
                m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs))
            for m in convs:
                m.register_forward_hook(note_dtype)
            return optimizer
        return make

    monkeypatch.setattr(classify, "make_optimizer", spy(classify.make_optimizer))
    monkeypatch.setattr(detect, "make_optimizer", spy(detect.make_optimizer))
    return seen


def test_classification_on_the_fast_path_learns_and_resumes_exactly(tmp_path, monkeypatch, seen, capsys):
    config = classify_config("csp-resnet", "smoke", 0, epochs=3)
    whole = ensure_run(config, results_dir=tmp_path / "whole", device="cpu", progress=False)
    assert seen["fused"] == [True] and seen["channels_last"] == [True]
    assert torch.bfloat16 in seen["conv_dtypes"], "the convolutions ran under bf16 autocast"
    assert whole["status"] == "ok" and whole["metrics"]["test_acc"] > 2 * CHANCE
    history = whole["metrics"]["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]

    real_fit = classify.fit
    monkeypatch.setattr(classify, "fit", fit_interrupted_after(real_fit, 1))
    with pytest.raises(KeyboardInterrupt):
        ensure_run(config, results_dir=tmp_path / "killed", device="cpu", progress=False)
    monkeypatch.setattr(classify, "fit", real_fit)
    capsys.readouterr()
    resumed = ensure_run(config, results_dir=tmp_path / "killed", device="cpu", progress=False)
    assert strip_timing(resumed["metrics"]) == strip_timing(whole["metrics"])
    assert f"resuming {resumed['run_id']} from its checkpoint: 1 epoch(s) done" in capsys.readouterr().err


def test_detection_on_the_fast_path_evaluates_and_resumes_exactly(tmp_path, monkeypatch, seen):
    config = detect_config("yolor-csp", "smoke", 1, epochs=2, batch_size=32, eval_every=2)
    whole = ensure_run(config, results_dir=tmp_path / "whole", device="cpu", progress=False)
    assert seen["fused"] == [True] and seen["channels_last"] == [True]
    assert torch.bfloat16 in seen["conv_dtypes"], "the convolutions ran under bf16 autocast"
    assert whole["status"] == "ok"
    for key in ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50"):
        assert 0 <= whole["metrics"][key] <= 1
    save = detect.save_checkpoint
    monkeypatch.setattr(detect, "save_checkpoint", save_then_die(save))
    with pytest.raises(Killed):
        ensure_run(config, results_dir=tmp_path / "killed", device="cpu", progress=False)
    monkeypatch.setattr(detect, "save_checkpoint", save)
    resumed = ensure_run(config, results_dir=tmp_path / "killed", device="cpu", progress=False)
    assert strip_timing(resumed["metrics"]) == strip_timing(whole["metrics"])
