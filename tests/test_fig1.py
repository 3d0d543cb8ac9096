"""Fig. 1's test: linear probes, the auxiliary-head model, the probe task and the chapter's tables."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradpath_lib.errors import GradpathError
from gradpath_lib.experiments.fig1 import fig1_frame, probe_frame, probe_table
from gradpath_lib.models.cost import count_flops
from gradpath_lib.models.registry import create_model
from gradpath_lib.paper import claims
from gradpath_lib.probes import fit_ridge_probe, pooled_features, probe_layers
from gradpath_lib.runs import ensure_run, normalize_config
from gradpath_lib.store import load_record, record_path, weights_path
from gradpath_lib.tables import verdict_frame
from gradpath_lib.train.batches import DeviceImages
from gradpath_lib.train.probe import probe_config

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

CLASSES = 5


def gaussian_blobs(n: int, dim: int, separation: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of CLASSES classes: each class's mean is `separation` along its own axis, unit noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    means = torch.zeros(CLASSES, dim)
    means[torch.arange(CLASSES), torch.arange(CLASSES)] = separation
    return means[labels] + torch.randn(n, dim, generator=generator), labels


def test_probe_separates_separable_features():
    x, y = gaussian_blobs(2000, 16, separation=8.0, seed=0)
    x_test, y_test = gaussian_blobs(1000, 16, separation=8.0, seed=1)
    assert fit_ridge_probe(x, y, CLASSES).accuracy(x_test, y_test) > 0.99


def test_probe_is_at_chance_on_random_features():
    x, y = gaussian_blobs(2000, 16, separation=0.0, seed=0)
    x_test, y_test = gaussian_blobs(2000, 16, separation=0.0, seed=1)
    accuracy = fit_ridge_probe(x, y, CLASSES).accuracy(x_test, y_test)
    assert abs(accuracy - 1 / CLASSES) < 0.05


def test_probe_rejects_mismatched_labels():
    with pytest.raises(GradpathError, match="one label per row"):
        fit_ridge_probe(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long), CLASSES)


def test_aux_head_loss_reaches_only_the_shallow_stage():
    torch.manual_seed(0)
    model = create_model("resnet-aux1", "smoke").train()
    model(torch.randn(4, 3, 32, 32))
    model.extra_loss(torch.tensor([0, 1, 2, 3])).backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert grads["aux_head.2.weight"].abs().sum() > 0
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("net.stages.0."))
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("net.stem."))
    assert all(g is None for n, g in grads.items() if n.startswith(("net.stages.1.", "net.stages.2.", "net.head.")))
    assert model.extra_loss(torch.tensor([0])) is None  # read once per forward


def test_aux_head_is_not_computed_at_inference():
    model = create_model("resnet-aux1", "smoke").eval()
    model(torch.randn(2, 3, 32, 32))
    assert model.extra_loss(torch.tensor([0, 1])) is None
    assert count_flops(model, (3, 32, 32)) == count_flops(create_model("resnet", "smoke"), (3, 32, 32))
    with pytest.raises(GradpathError, match="aux_stage"):
        create_model("resnet-aux1", "smoke", aux_stage=3)


def test_pooled_features_are_what_the_head_pools():
    torch.manual_seed(0)
    model = create_model("resnet", "smoke").eval()
    images = torch.randint(0, 256, (6, 32, 32, 3), dtype=torch.uint8).numpy()
    data = DeviceImages.from_arrays(images, torch.arange(6).numpy() % 2, torch.device("cpu"))
    features = pooled_features(model, data, batch_size=4)
    assert list(features) == ["stem", "stage1", "stage2", "stage3"]
    x = data.normalize(data.images)
    with torch.no_grad():
        expected = model.head[:2](model.stages(model.stem(x)))
    torch.testing.assert_close(features["stage3"], expected)
    with pytest.raises(GradpathError, match="stem"):
        probe_layers(nn.Linear(2, 2))


def test_probe_run_trains_its_target_keeps_weights_and_records_probes(tmp_path):
    config = probe_config("resnet-aux1", "smoke", 0, epochs=1)
    record = ensure_run(config, results_dir=tmp_path, device="cpu", progress=False)
    assert record["status"] == "ok"
    probes = record["metrics"]["probes"]
    assert sorted(probes) == ["stage1", "stage2", "stage3", "stem"]
    assert all(0 <= p["test_acc"] <= 1 and 0 <= p["train_acc"] <= 1 for p in probes.values())
    target = load_record(record_path(tmp_path, normalize_config(config["target"])))
    assert target["run_id"] == record["metrics"]["target_run_id"]
    assert weights_path(tmp_path, target["config"]).exists()
    again = ensure_run({**config, "probe": {**config["probe"], "l2": 0.5}}, results_dir=tmp_path,
                       device="cpu", progress=False)  # reuses the trained target
    assert again["metrics"]["target_run_id"] == target["run_id"]
    assert again["metrics"]["probes"]["stem"]["channels"] == probes["stem"]["channels"]

    weights_path(tmp_path, target["config"]).unlink()
    with pytest.raises(GradpathError, match="weights"):
        ensure_run({**config, "probe": {**config["probe"], "l2": 0.1}}, results_dir=tmp_path, device="cpu",
                   progress=False)


def test_chapter_tables_from_probe_records():
    def run(model: str, seed: int, stage1: float) -> tuple[dict, dict]:
        probes = {layer: {"channels": 8, "train_acc": 0.9, "test_acc": acc}
                  for layer, acc in [("stage1", stage1), ("stem", 0.3), ("stage2", 0.6)]}
        record = {"run_id": f"{model}-{seed}", "status": "ok", "params": 1, "flops": 2,
                  "metrics": {"probes": probes, "target_test_acc": 0.8}}
        return {"model": model, "seed": seed}, record

    runs = [run("resnet", 0, 0.40), run("resnet", 1, 0.42), run("resnet-aux1", 0, 0.60),
            run("resnet-aux1", 1, 0.62), ({"model": "resnet-aux1", "seed": 2}, None)]
    table = probe_table(probe_frame(runs))
    assert list(table["layer"]) == ["stem", "stage1", "stage2"]
    assert table.set_index("layer").at["stage1", "probe top-1 (%), aux-loss"] == "61.0 ± 1.4"
    frame = fig1_frame(runs)
    assert list(frame["status"]) == ["ok"] * 4 + ["missing"]
    verdicts = verdict_frame(claims("fig1"), frame)
    assert list(verdicts["verdict"]) == ["reproduced"]
