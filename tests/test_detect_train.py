"""The detection trainer: config, augmentation, assignment and loss, learning, resume, divergence."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import gradpath_lib.train.detect as detect
from gradpath_lib.data.cifar_det import load_cifar_det
from gradpath_lib.data.detection import DetectionDataset, decode_rles
from gradpath_lib.errors import GradpathError
from gradpath_lib.models import create_model
from gradpath_lib.runs import ensure_run
from gradpath_lib.store import load_checkpoint, record_path, weights_path
from gradpath_lib.train.batches import epoch_generator
from gradpath_lib.train.boxes import anchor_points
from gradpath_lib.train.classify import strip_timing
from gradpath_lib.train.det_data import DeviceDetections, StreamedDetections, make_targets, warp
from gradpath_lib.train.det_loss import assign_tal, detection_loss
from gradpath_lib.train.detect import (
    PREDICTION_CANVASES, RECIPES, SAMPLE_DETECTIONS, detect_config, fit_detector,
)

from conftest import Killed, save_then_die

CPU = torch.device("cpu")
OVERFIT_CANVASES = 8


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def smoke_train() -> DetectionDataset:
    return load_cifar_det("smoke", "train")


def first_canvases(dataset: DetectionDataset, count: int, annotation_file: Path) -> DetectionDataset:
    """The first `count` canvases of `dataset`, with a COCO file holding only their annotations."""
    coco = json.loads(Path(dataset.annotation_file).read_text())
    keep = set(dataset.image_ids[:count])
    coco["images"] = [image for image in coco["images"] if image["id"] in keep]
    coco["annotations"] = [ann for ann in coco["annotations"] if ann["image_id"] in keep]
    annotation_file.write_text(json.dumps(coco))
    return replace(dataset, images=dataset.images[:count], targets=dataset.targets[:count],
                   image_ids=dataset.image_ids[:count], annotation_file=annotation_file)


def test_detect_config_is_complete_and_checked():
    config = detect_config("yolor-csp", "smoke", 3, epochs=1)
    assert config["task"] == "detect" and config["seed"] == 3 and config["data"] == "cifar-det"
    assert config["recipe"]["epochs"] == 1
    assert set(config["recipe"]) == set(detect.DetectRecipe.__dataclass_fields__)
    with pytest.raises(GradpathError, match="unknown detection recipe field"):
        detect_config("yolor-csp", "smoke", epochz=1)
    with pytest.raises(GradpathError, match="not a detector"):
        detect_config("resnet", "smoke")
    with pytest.raises(GradpathError, match="schedule"):
        detect_config("yolor-csp", "smoke", schedule="step")


def test_targets_from_instance_maps_match_the_dataset(smoke_train):
    data = DeviceDetections.from_dataset(smoke_train, CPU)
    targets = make_targets(data.instances[:4], data.labels[:4], proto_stride=4)
    for index in range(4):
        truth = smoke_train.targets[index]
        count = len(truth["labels"])
        assert torch.equal(targets.boxes[index, :count], torch.from_numpy(truth["boxes"]))
        assert torch.equal(targets.labels[index, :count], torch.from_numpy(truth["labels"]))
        assert targets.valid[index, :count].all() and not targets.valid[index, count:].any()
        # prototype-resolution masks keep each instance's area
        areas = torch.from_numpy(truth["masks"].reshape(count, -1).sum(1)).float()
        assert torch.allclose(targets.masks[index, :count].sum((1, 2)) * 16, areas)


def test_flip_and_zoom_move_pixels_masks_and_boxes_together(smoke_train):
    data = DeviceDetections.from_dataset(smoke_train, CPU)
    images, instances, labels = data.images[:4], data.instances[:4], data.labels[:4]
    width = images.shape[2]
    same, same_ids = warp(images, instances, torch.zeros(4, dtype=torch.bool), torch.ones(4))
    assert torch.equal(same_ids, instances)
    assert torch.allclose(same * 255, images.permute(0, 3, 1, 2).float(), atol=1e-3)
    flipped, flipped_ids = warp(images, instances, torch.ones(4, dtype=torch.bool), torch.ones(4))
    assert torch.equal(flipped_ids, instances.flip(-1))
    assert torch.allclose(flipped, same.flip(-1), atol=1e-5)
    before, after = make_targets(instances, labels, 4), make_targets(flipped_ids, labels, 4)
    mirrored = torch.stack([width - before.boxes[..., 2], before.boxes[..., 1], width - before.boxes[..., 0],
                            before.boxes[..., 3]], -1) * before.valid[..., None]
    assert torch.equal(after.boxes, mirrored)
    _, zoomed_ids = warp(images, instances, torch.zeros(4, dtype=torch.bool), torch.full((4,), 1.25))
    zoomed = make_targets(zoomed_ids, labels, 4)
    both = zoomed.valid & before.valid
    # zooming in by 1.25 about the centre grows every whole box by about 1.25 (clipped ones less)
    grown = (zoomed.boxes[both][:, 2:] - zoomed.boxes[both][:, :2]) / (before.boxes[both][:, 2:] - before.boxes[both][:, :2])
    assert grown.max() <= 1.25 + 0.2 and grown.median() > 1.1


def test_streaming_canvases_at_their_own_size_gives_the_resident_batches(smoke_train):
    resident, streamed = DeviceDetections.from_dataset(smoke_train, CPU), StreamedDetections(smoke_train, 64, CPU, 0)
    assert streamed.image_size == resident.image_size and len(streamed) == len(resident)
    pairs = list(zip(*(data.train_batches(16, epoch_generator(2, 5), True, 0.25, 4) for data in (resident, streamed))))
    assert len(pairs) == len(resident) // 16
    for (images, targets), (streamed_images, streamed_targets) in pairs:
        assert torch.equal(images, streamed_images)
        most = streamed_targets.labels.shape[1]  # streamed labels are padded to the batch's most instances
        assert not targets.valid[:, most:].any()
        for field in ("boxes", "labels", "valid", "masks"):
            assert torch.equal(getattr(targets, field)[:, :most], getattr(streamed_targets, field))


def test_task_aligned_assignment_picks_points_inside_their_box():
    points, _ = anchor_points(64, 64, (8, 16, 32))
    gt_boxes = torch.tensor([[[4.0, 4.0, 28.0, 28.0], [30.0, 30.0, 62.0, 62.0], [0.0, 0.0, 0.0, 0.0]]])
    gt_labels = torch.tensor([[1, 2, -1]])
    gt_valid = torch.tensor([[True, True, False]])
    scores = torch.full((1, len(points), 3), 0.5)
    pred = torch.cat([points - 8, points + 8], -1)[None]
    foreground, gt_index, soft = assign_tal(scores, pred, points, gt_boxes, gt_labels, gt_valid)
    assert foreground.any()
    for point, gt in zip(points[foreground[0]], gt_index[0, foreground[0]]):
        box = gt_boxes[0, gt]
        assert box[0] < point[0] < box[2] and box[1] < point[1] < box[3]
    assert set(gt_index[0, foreground[0]].tolist()) == {0, 1}  # both real boxes, never the padding
    assert ((soft > 0) == foreground).all() and soft.max() <= 1


def test_loss_decreases_on_one_batch(smoke_train):
    torch.manual_seed(0)
    model = create_model("yolor-csp", "smoke")
    data = DeviceDetections.from_dataset(smoke_train, CPU)
    images, targets = next(data.train_batches(4, epoch_generator(0, 0), True, 0.25, model.proto_stride))
    points, strides = anchor_points(64, 64, model.strides)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for _ in range(20):
        loss, parts = detection_loss(model(images), targets, points, strides, model.proto_stride)
        assert torch.isfinite(parts).all()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append((loss.item(), *parts.tolist()))
    (first, box0, cls0, mask0), (last, box1, cls1, mask1) = history[0], history[-1]
    assert last < 0.6 * first
    assert box1 < 0.5 * box0 and cls1 < cls0 and mask1 < mask0


def test_smoke_detector_overfits_a_handful_of_canvases(smoke_train, tmp_path):
    few = first_canvases(smoke_train, OVERFIT_CANVASES, tmp_path / "few.json")
    recipe = replace(RECIPES["smoke"], epochs=70, batch_size=OVERFIT_CANVASES, lr=1e-2, flip=False,
                     scale_jitter=0.0, warmup_fraction=0.05, ema_tau=20.0, eval_every=1000)
    torch.manual_seed(0)
    result = fit_detector(create_model("yolor-v3", "smoke"), few, few, recipe, CPU, seed=0)
    assert result.status == "ok"
    assert result.metrics["bbox_AP50"] > 0.5
    assert result.metrics["segm_AP50"] > 0.2
    samples = result.metrics["sample_predictions"]  # what the prediction pictures show
    assert [sample["image_id"] for sample in samples] == few.image_ids[:PREDICTION_CANVASES]
    for sample, target in zip(samples, few.targets):
        best = sample["detections"][0]
        assert best["score"] >= detect.SAMPLE_SCORE
        assert best["category_id"] in {few.category_id(label) for label in target["labels"]}
    losses = [epoch["train_box_loss"] for epoch in result.metrics["history"]]
    assert losses[-1] < 0.5 * losses[0]


def test_resume_after_kill_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    config = detect_config("yolor-csp", "smoke", 1, epochs=2, batch_size=32, eval_every=2)
    whole = ensure_run(config, results_dir=tmp_path / "whole", device="cpu", progress=False)
    assert whole["status"] == "ok" and whole["metrics"]["epochs_done"] == 2
    for key in ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP75"):
        assert whole["metrics"][key] is not None
    save = detect.save_checkpoint
    monkeypatch.setattr(detect, "save_checkpoint", save_then_die(save))
    with pytest.raises(Killed):
        ensure_run(config, results_dir=tmp_path / "killed", device="cpu", progress=False)
    assert not list((tmp_path / "killed").glob("*/runs/*.json"))
    monkeypatch.setattr(detect, "save_checkpoint", save)
    resumed = ensure_run(config, results_dir=tmp_path / "killed", device="cpu", progress=False)
    assert strip_timing(resumed["metrics"]) == strip_timing(whole["metrics"])
    assert resumed["params"] == whole["params"] and resumed["flops"] == whole["flops"]
    trained = load_checkpoint(weights_path(tmp_path / "whole", whole["config"]))
    resumed_weights = load_checkpoint(weights_path(tmp_path / "killed", resumed["config"]))
    assert trained.keys() == resumed_weights.keys()
    assert all(torch.equal(trained[key], resumed_weights[key]) for key in trained)


def test_divergence_is_recorded(tmp_path):
    config = detect_config("yolor-v3", "smoke", 0, epochs=2, lr=1e30, grad_clip=1e30)
    record = ensure_run(config, results_dir=tmp_path, device="cpu", progress=False)
    assert record["status"] == "diverged"
    assert record["diverged_at_epoch"] == 0 and 1 <= record["diverged_at_step"] <= 4
    assert record["metrics"]["epochs_done"] == 0


def test_ema_follows_the_ramped_decay():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    ema = detect.ModelEMA(model, decay=0.9, tau=1.0)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model[1].num_batches_tracked += 5
    ema.update(model)
    decay = 0.9 * (1 - torch.exp(torch.tensor(-1.0)))
    assert torch.allclose(ema.module[0].weight, decay * start + (1 - decay) * model[0].weight)
    assert ema.module[1].num_batches_tracked.item() == 5 and ema.updates == 1
    # later updates (through the tensors gathered at the first) keep following the model in place
    averaged = ema.module[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.mul_(-2.0)
    model[1].num_batches_tracked += 1
    ema.update(model)
    decay = 0.9 * (1 - torch.exp(torch.tensor(-2.0)))
    assert torch.allclose(ema.module[0].weight, decay * averaged + (1 - decay) * model[0].weight)
    assert ema.module[1].num_batches_tracked.item() == 6 and ema.updates == 2
    ema.load_state_dict(detect.ModelEMA(model, decay=0.9, tau=1.0).state_dict())  # a resume copies in place
    assert torch.equal(ema.module[0].weight, model[0].weight)
    ema.update(model)
    assert torch.equal(ema.module[0].weight, model[0].weight)  # the average of identical weights


def ground_truth_samples(dataset: DetectionDataset, count: int) -> list[dict]:
    """The first `count` canvases' annotations in the recorded `sample_predictions` form (score 1)."""
    coco = json.loads(Path(dataset.annotation_file).read_text())
    def detection(annotation: dict) -> dict:
        return {"category_id": annotation["category_id"], "score": 1.0, "bbox": annotation["bbox"],
                "segmentation": annotation["segmentation"]}

    return [{"image_id": image_id,
             "detections": [detection(a) for a in coco["annotations"] if a["image_id"] == image_id]}
            for image_id in dataset.image_ids[:count]]


def test_plot_predictions_draws_the_recorded_samples_on_their_canvases(smoke_train):
    from matplotlib.patches import Rectangle

    from gradpath_lib.train.det_plots import plot_predictions, sample_arrays

    samples = ground_truth_samples(smoke_train, 4)[::-1]  # drawn by image_id, not by position
    image, boxes, labels, masks, scores = sample_arrays(samples[0], smoke_train)
    target = smoke_train.targets[3]
    assert (image == smoke_train.images[3]).all()
    assert boxes == pytest.approx(target["boxes"]) and (labels == target["labels"]).all()
    assert (masks == target["masks"]).all() and (scores == 1.0).all()
    figure = plot_predictions(samples, smoke_train, columns=2)
    drawn = [ax for ax in figure.axes if ax.images]
    assert len(drawn) == 4 and drawn[0].images[0].get_array().shape == (64, 64, 3)
    assert [sum(isinstance(p, Rectangle) for p in ax.patches) for ax in drawn] == [
        len(sample["detections"]) for sample in samples]
    with pytest.raises(GradpathError, match="do not belong to this dataset's canvases"):
        sample_arrays({"image_id": -1, "detections": []}, smoke_train)


def test_a_finished_run_records_sample_predictions_that_draw_inside_their_boxes(tmp_path, monkeypatch):
    monkeypatch.setattr(detect, "SAMPLE_SCORE", 0.0)  # an untrained detector's scores are low: keep them all
    config = detect_config("yolor-v3", "smoke", 0)
    record = ensure_run(config, results_dir=tmp_path, device="cpu", progress=False)
    val = load_cifar_det("smoke", "val")
    samples = record["metrics"]["sample_predictions"]
    assert [sample["image_id"] for sample in samples] == val.image_ids[:PREDICTION_CANVASES]
    assert all(1 <= len(sample["detections"]) <= SAMPLE_DETECTIONS for sample in samples)
    assert any(len(sample["detections"]) == SAMPLE_DETECTIONS for sample in samples)  # the cap holds
    size = record_path(tmp_path, record["config"]).stat().st_size
    print(f"record with {sum(len(s['detections']) for s in samples)} sample detections: {size} bytes")
    assert size < 50_000
    category_ids = {category["id"] for category in val.categories}
    height, width = val.images.shape[1:3]
    nonempty = 0
    for sample in samples:
        found = sample["detections"]
        assert all(set(d) == {"category_id", "score", "bbox", "segmentation"} for d in found)
        assert {d["category_id"] for d in found} <= category_ids
        scores = [d["score"] for d in found]
        assert scores == sorted(scores, reverse=True)
        masks = decode_rles([d["segmentation"] for d in found], height, width)
        assert masks.shape == (len(found), height, width)
        for d, mask in zip(found, masks):
            x, y, w, h = d["bbox"]
            rows, cols = mask.nonzero()
            centres_x, centres_y = cols + 0.5, rows + 0.5  # crop_masks keeps pixels whose centres are in the box
            assert ((centres_x >= x - 0.01) & (centres_x <= x + w + 0.01)).all()
            assert ((centres_y >= y - 0.01) & (centres_y <= y + h + 0.01)).all()
            nonempty += int(mask.any())
    assert nonempty > 0


def test_train_command_trains_a_detector_and_reports_its_aps(tmp_path, capsys):
    from gradpath_lib.cli import main

    argv = ["train", "--model", "yolor-v3", "--scale", "smoke", "--epochs", "1",
            "--results-dir", str(tmp_path), "--no-progress", "--device", "cpu"]
    assert main(argv) == 0
    path, line = capsys.readouterr().out.strip().splitlines()[-2:]
    record = json.loads(Path(path).read_text())
    assert record["config"]["task"] == "detect" and record["status"] == "ok"
    assert f"bbox_AP {record['metrics']['bbox_AP']:.4f}" in line and "segm_AP" in line
    assert main(argv) == 0 and capsys.readouterr().out.strip().endswith("[cached]")
