"""Training on COCO-layout data: letterboxed streaming, the inverse mapping for COCOeval, an end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gradpath_lib.distributed as distributed
import gradpath_lib.train.detect as detect
from gradpath_lib.data.coco import load_coco
from gradpath_lib.data.detection import DetectionDataset, decode_rles
from gradpath_lib.errors import GradpathError
from gradpath_lib.models.yolor import SIZES
from gradpath_lib.runs import ensure_run
from gradpath_lib.train.batches import epoch_generator
from gradpath_lib.train.boxes import mask_extents
from gradpath_lib.train.coco_eval import evaluate_coco, masks_to_rle
from gradpath_lib.train.det_data import (
    PAD_PIXEL, LetterboxedSamples, StreamedDetections, epoch_draws, instance_map, make_targets, warp,
)
from gradpath_lib.train.det_predict import Detections, coco_predictions
from gradpath_lib.train.detect import PREDICTION_CANVASES, detect_config

CPU = torch.device("cpu")
INPUT = 64  # the tests' input side (the paper's is 640)
# (height, width) of the generated images: non-square, larger and smaller than the input
TRAIN_SIZES = [(48, 80), (90, 60), (64, 64), (40, 100), (72, 56), (100, 70)]
VAL_SIZES = [(60, 90), (96, 48), (50, 50)]
CATEGORIES = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
COLOURS = {90: (220, 40, 40), 1: (40, 200, 60), 3: (50, 60, 230)}
CROWD_IMAGE = 0  # the first image of each split also holds a crowd region


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def ellipse(height: int, width: int, centre: tuple[float, float], radii: tuple[float, float]) -> np.ndarray:
    """A binary (H, W) ellipse mask."""
    ys, xs = np.mgrid[:height, :width] + 0.5
    return (((ys - centre[0]) / radii[0]) ** 2 + ((xs - centre[1]) / radii[1]) ** 2 <= 1).astype(np.uint8)


def annotation(ann_id: int, image_id: int, category_id: int, segmentation, height: int, width: int,
               crowd: int = 0) -> tuple[dict, np.ndarray]:
    """A COCO annotation whose bbox and area are those of its rasterized segmentation, and that mask."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width)) if isinstance(segmentation, list) \
        else {**segmentation, "counts": segmentation["counts"].encode()}
    mask = decode_rles([rle], height, width)[0]
    return ({"id": ann_id, "image_id": image_id, "category_id": category_id, "iscrowd": crowd,
             "bbox": [float(v) for v in mask_utils.toBbox(rle)], "area": float(mask_utils.area(rle)),
             "segmentation": segmentation}, mask)


def write_split(root: Path, split: str, sizes: list[tuple[int, int]], first_id: int) -> None:
    """One COCO 2017 split: per image an RLE ellipse and a polygon overlapping it a little (painted in
    their class colours on noise, the polygon on top), the first image also a crowd region."""
    rng = np.random.default_rng(first_id)
    folder = root / f"{split}2017"
    folder.mkdir(parents=True)
    images, annotations = [], []
    for index, (height, width) in enumerate(sizes):
        image_id = first_id + index
        pixels = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
        first, second = CATEGORIES[index % 3]["id"], CATEGORIES[(index + 1) % 3]["id"]
        blob = ellipse(height, width, (0.35 * height, 0.3 * width), (0.22 * height, 0.2 * width))
        x0, y0, x1, y1 = 0.45 * width, 0.4 * height, 0.9 * width, 0.9 * height
        objects = [(first, masks_to_rle(blob[None])[0]), (second, [[x0, y0, x1, y0, x1, y1, x0, y1]])]
        for category, segmentation in objects:
            ann, mask = annotation(len(annotations) + first_id * 100, image_id, category, segmentation, height, width)
            pixels[mask.astype(bool)] = COLOURS[category]
            annotations.append(ann)
        if index == CROWD_IMAGE:
            crowd = np.zeros((height, width), np.uint8)
            crowd[: height // 5, width // 2:] = 1
            annotations.append(annotation(len(annotations) + first_id * 100, image_id, 1,
                                          masks_to_rle(crowd[None])[0], height, width, crowd=1)[0])
        name = f"{image_id:012d}.{'png' if index % 2 else 'jpg'}"
        Image.fromarray(pixels).save(folder / name, quality=95)
        images.append({"id": image_id, "width": width, "height": height, "file_name": name})
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{split}2017.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "coco"
    write_split(root, "train", TRAIN_SIZES, 1)
    write_split(root, "val", VAL_SIZES, 50)
    return root


def ground_truth_detections(samples: LetterboxedSamples, index: int) -> Detections:
    """The letterboxed ground truth of image `index` as detections on the input (score 1, full-resolution masks)."""
    _, instances, labels = samples[index]
    masks = instances[None] == torch.arange(1, len(labels) + 1, dtype=instances.dtype)[:, None, None]
    return Detections(mask_extents(masks[None])[0].float(), torch.ones(len(labels)), labels, masks)


def round_trip_predictions(dataset: DetectionDataset, size: int, mapped: bool) -> list[dict]:
    """COCO records of every image's ground truth after the letterbox (and, if `mapped`, back again)."""
    data = StreamedDetections(dataset, size, CPU, workers=0)
    samples = LetterboxedSamples(dataset, data.letterboxes)
    found = [ground_truth_detections(samples, index) for index in range(len(data))]
    if mapped:
        found = data.to_original(found, 0)
    else:  # boxes only: the masks of the input have the input's size, not the image's
        found = [Detections(f.boxes, f.scores, f.labels, None) for f in found]
    category_ids = [dataset.category_id(label) for label in range(len(dataset.categories))]
    return coco_predictions(found, dataset.image_ids, category_ids)


def test_one_image_is_letterboxed_with_its_instance_map(coco_root):
    train = load_coco(coco_root, "train")
    data = StreamedDetections(train, INPUT, CPU, workers=0)
    box = data.letterboxes[0]  # 80 wide, 48 high: scaled by 0.8 to 64 x 38, centred vertically
    assert (box.inner_width, box.inner_height, box.left, box.top) == (64, 38, 0, 13)
    pixels, instances, labels = LetterboxedSamples(train, data.letterboxes)[0]
    assert pixels.shape == (INPUT, INPUT, 3) and instances.shape == (INPUT, INPUT)
    assert (pixels[:13] == PAD_PIXEL).all() and (pixels[51:] == PAD_PIXEL).all()
    assert not instances[:13].any() and not instances[51:].any()
    names = train.class_names
    assert labels.tolist() == [names.index("toothbrush"), names.index("person")], "the crowd region is no target"
    masks = train.targets[0]["masks"]
    overlap = masks[0].astype(bool) & masks[1].astype(bool)
    assert overlap.any() and (instance_map(masks)[overlap] == 2).all(), "the later annotation gets shared pixels"
    polygon = pixels[instances == 2].float().mean(0)  # the image and its map are letterboxed alike
    assert torch.allclose(polygon, torch.tensor(COLOURS[CATEGORIES[1]["id"]], dtype=torch.float32), atol=20)
    found = ground_truth_detections(LetterboxedSamples(train, data.letterboxes), 0)
    back = box.to_original(found)
    # the overlap hides no extreme pixel of the ellipse: the visible extents are the annotated boxes,
    # within a pixel of the input (1 / 0.8 original pixels) plus nearest-neighbour rounding
    assert torch.allclose(back.boxes, torch.from_numpy(train.targets[0]["boxes"]), atol=1 / 0.8 + 0.5)
    visible = torch.from_numpy(instance_map(masks))[None] == torch.tensor([1, 2], dtype=torch.uint8)[:, None, None]
    assert back.masks.shape == visible.shape == (2, 48, 80)
    iou = (back.masks & visible).sum((1, 2)) / (back.masks | visible).sum((1, 2))
    assert (iou > 0.85).all(), iou


@pytest.mark.parametrize("size", [INPUT, 128])
def test_ground_truth_round_trips_through_the_letterbox(coco_root, size):
    for split in ("train", "val"):
        dataset = load_coco(coco_root, split)
        result = evaluate_coco(dataset.annotation_file, round_trip_predictions(dataset, size, mapped=True))
        assert result["bbox"]["AP"] > 0.85 and result["segm"]["AP"] > 0.85
        assert result["bbox"]["AP50"] == pytest.approx(1.0) and result["segm"]["AP50"] == pytest.approx(1.0)
        unmapped = evaluate_coco(dataset.annotation_file, round_trip_predictions(dataset, size, mapped=False),
                                 iou_types=["bbox"])
        assert unmapped["bbox"]["AP"] < 0.5, "without the inverse mapping the boxes miss"


def batches_of(data: StreamedDetections, seed: int, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One epoch of (images, boxes, labels) of batch 2 with flips and scale jitter."""
    return [(images, targets.boxes, targets.labels) for images, targets in
            data.train_batches(2, epoch_generator(seed, epoch), True, 0.25, proto_stride=4)]


def same_batches(first: list, second: list) -> bool:
    """Whether two epochs hold identical tensors."""
    return len(first) == len(second) and all(
        torch.equal(a, b) for one, other in zip(first, second) for a, b in zip(one, other))


def test_streamed_batches_are_the_epoch_generators_draws(coco_root):
    train = load_coco(coco_root, "train")
    serial, workers = StreamedDetections(train, INPUT, CPU, workers=0), StreamedDetections(train, INPUT, CPU, workers=2)
    epoch = batches_of(serial, 0, 1)
    assert len(epoch) == len(TRAIN_SIZES) // 2
    assert same_batches(epoch, batches_of(serial, 0, 1)) and same_batches(epoch, batches_of(workers, 0, 1))
    assert not same_batches(epoch, batches_of(serial, 0, 2)) and not same_batches(epoch, batches_of(serial, 1, 1))
    # the first batch is the epoch generator's first two images, letterboxed, flipped and zoomed by its draws
    order, flips, scales = epoch_draws(len(train.images), epoch_generator(0, 1), True, 0.25)
    samples = LetterboxedSamples(train, serial.letterboxes)
    pixels, instances, labels = LetterboxedSamples.collate([samples[int(i)] for i in order[:2]])
    images, warped = warp(pixels, instances, flips[order[:2]], scales[order[:2]])
    assert torch.equal(epoch[0][0], images)
    assert torch.equal(epoch[0][1], make_targets(warped, labels, 4).boxes) and torch.equal(epoch[0][2], labels)


def test_each_rank_reads_its_share_of_every_global_batch(coco_root, monkeypatch):
    train = load_coco(coco_root, "train")
    data = StreamedDetections(train, INPUT, CPU, workers=0)
    whole = batches_of(data, 3, 0)
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "world", lambda rank=rank: distributed.World(rank, 2))
        share = batches_of(data, 3, 0)
        assert same_batches(share, [tuple(t[rank:rank + 1] for t in batch) for batch in whole])


def test_a_tiny_detector_trains_on_coco_end_to_end(coco_root, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADPATH_DATA", str(coco_root.parent))
    monkeypatch.setattr(detect, "SAMPLE_SCORE", 0.0)  # an untrained detector's scores are low: keep them all
    tiny = {**SIZES["smoke"], "num_classes": len(CATEGORIES)}
    config = detect_config("yolor-v3", "paper", 0, input_size=INPUT, model_kwargs=tiny, epochs=2, batch_size=2,
                           eval_batch_size=2, eval_every=1, warmup_fraction=0.0)
    record = ensure_run(config, results_dir=tmp_path, device="cpu", progress=False)
    assert record["status"] == "ok" and record["config"]["input_size"] == INPUT
    metrics = record["metrics"]
    assert metrics["epochs_done"] == 2 and metrics["history"][0]["bbox_AP"] is not None
    for iou_type in ("bbox", "segm"):
        assert all(metrics[f"{iou_type}_{name}"] is not None for name in ("AP", "AP50", "AP75"))
    assert record["dataset"]["source"].startswith("MS COCO 2017 train")
    val = load_coco(coco_root, "val")
    samples = metrics["sample_predictions"]
    assert [sample["image_id"] for sample in samples] == val.image_ids[:PREDICTION_CANVASES]
    assert all(sample["detections"] for sample in samples)
    for sample, (height, width) in zip(samples, VAL_SIZES):  # in the original images' pixels
        for found in sample["detections"]:
            x, y, w, h = found["bbox"]
            assert found["segmentation"]["size"] == [height, width]
            assert 0 <= x <= x + w <= width and 0 <= y <= y + h <= height
            assert decode_rles([found["segmentation"]], height, width).shape == (1, height, width)


def test_coco_configs_have_an_input_size(tmp_path, monkeypatch):
    assert detect_config("yolor-v3", "paper")["input_size"] == 640
    assert "input_size" not in detect_config("yolor-v3", "smoke")
    with pytest.raises(GradpathError, match="input size 100 does not fit 'yolor-v3'"):
        detect_config("yolor-v3", "paper", input_size=100)
    with pytest.raises(GradpathError, match="input_size applies to streamed datasets"):
        detect_config("yolor-v3", "mini", input_size=64)
    monkeypatch.setenv("GRADPATH_DATA", str(tmp_path))
    with pytest.raises(GradpathError, match="COCO image folder .*train2017 does not exist"):
        ensure_run(detect_config("yolor-v3", "paper"), results_dir=tmp_path, device="cpu", progress=False)


def test_a_detector_with_other_classes_than_the_data_is_refused(coco_root, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADPATH_DATA", str(coco_root.parent))
    config = detect_config("yolor-v3", "paper", 0, input_size=INPUT, model_kwargs=SIZES["smoke"], epochs=1)
    with pytest.raises(GradpathError, match="predicts 10 classes but MS COCO 2017 val .* has 3 categories"):
        ensure_run(config, results_dir=tmp_path, device="cpu", progress=False)
