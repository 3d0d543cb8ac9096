"""COCO evaluation (pycocotools COCOeval), mask RLEs, and the COCO 2017 loader on generated files."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from gradpath_lib.data.cifar_det import cifar_det_stats, load_cifar_det
from gradpath_lib.data.coco import load_coco
from gradpath_lib.data.detection import decode_rles
from gradpath_lib.errors import GradpathError
from gradpath_lib.train.coco_eval import SUMMARY_NAMES, evaluate_coco, masks_to_rle


@pytest.fixture(scope="module")
def smoke_val(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADPATH_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield load_cifar_det("smoke", "val")


def _predictions(dataset, image_indices) -> list[dict]:
    """Ground truth turned into predictions (score 1) for the chosen images."""
    predictions = []
    for index in image_indices:
        target = dataset.targets[index]
        for box, label, rle in zip(target["boxes"], target["labels"], masks_to_rle(target["masks"])):
            x0, y0, x1, y1 = box.tolist()
            predictions.append({"image_id": dataset.image_ids[index], "category_id": dataset.category_id(label),
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "score": 1.0, "segmentation": rle})
    return predictions


def test_masks_to_rle_round_trips():
    rng = np.random.default_rng(0)
    masks = (rng.random((3, 7, 9)) > 0.5).astype(np.uint8)
    rles = masks_to_rle(masks)
    assert all(isinstance(r["counts"], str) and r["size"] == [7, 9] for r in rles)
    assert np.array_equal(decode_rles(rles, 7, 9), masks)
    assert masks_to_rle(np.zeros((0, 7, 9), np.uint8)) == []


def test_perfect_predictions_score_one(smoke_val):
    result = evaluate_coco(smoke_val.annotation_file, _predictions(smoke_val, range(len(smoke_val.images))))
    for iou_type in ("bbox", "segm"):
        assert list(result[iou_type]) == list(SUMMARY_NAMES)
        assert result[iou_type]["AP"] == pytest.approx(1.0)
        assert result[iou_type]["AP50"] == pytest.approx(1.0)
    has_large = cifar_det_stats(smoke_val).loc["all", "large"] > 0
    assert math.isnan(result["bbox"]["APl"]) != has_large, "APl is NaN exactly when there is no large object"


def test_no_predictions_score_zero(smoke_val):
    result = evaluate_coco(smoke_val.annotation_file, [])
    assert result["bbox"]["AP"] == 0.0 and result["segm"]["AP"] == 0.0 and result["segm"]["AP50"] == 0.0


def test_half_the_images_score_in_between(smoke_val):
    half = _predictions(smoke_val, range(0, len(smoke_val.images), 2))
    result = evaluate_coco(smoke_val.annotation_file, half)
    for iou_type in ("bbox", "segm"):
        assert 0.2 < result[iou_type]["AP"] < 0.8


def test_box_and_mask_are_scored_separately(smoke_val):
    predictions = _predictions(smoke_val, range(len(smoke_val.images)))
    for p in predictions:  # grow every box by half its size: IoU 1/2.25, below every threshold
        x, y, w, h = p["bbox"]
        p["bbox"] = [x, y, 1.5 * w, 1.5 * h]
    result = evaluate_coco(smoke_val.annotation_file, predictions, iou_types=["bbox", "segm"])
    # Nearly 0, not exactly: a grown box can still overlap a neighbouring object of its class.
    assert result["bbox"]["AP50"] < 0.05 and result["segm"]["AP"] == pytest.approx(1.0)


def test_bad_predictions_raise(smoke_val):
    with pytest.raises(GradpathError, match="segmentation"):
        evaluate_coco(smoke_val.annotation_file,
                      [{"image_id": 1, "category_id": 1, "score": 1.0, "bbox": [0, 0, 4, 4]}])
    with pytest.raises(GradpathError, match="absent from the ground truth"):
        evaluate_coco(smoke_val.annotation_file,
                      [{"image_id": 10**6, "category_id": 1, "score": 1.0, "bbox": [0, 0, 4, 4]}], iou_types=["bbox"])
    with pytest.raises(GradpathError, match="valid choices: bbox, segm"):
        evaluate_coco(smoke_val.annotation_file, [], iou_types=["keypoints"])


def _write_coco(root, annotations=None, categories=None, images=None) -> None:
    """A two-image COCO 2017 'val' split: polygon objects, one crowd RLE, non-contiguous category ids."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "val2017").mkdir(exist_ok=True)
    images = images or [{"id": 7, "width": 40, "height": 30, "file_name": "000000000007.jpg"},
                        {"id": 9, "width": 20, "height": 20, "file_name": "000000000009.jpg"}]
    for image in images:
        pixels = np.full((image["height"], image["width"], 3), 128, np.uint8)
        Image.fromarray(pixels).save(root / "val2017" / image["file_name"])
    crowd = masks_to_rle(np.pad(np.ones((1, 4, 4), np.uint8), ((0, 0), (0, 16), (0, 16))))[0]
    default_annotations = [
        {"id": 1, "image_id": 7, "category_id": 3, "bbox": [2, 3, 10, 5], "area": 50.0, "iscrowd": 0,
         "segmentation": [[2, 3, 12, 3, 12, 8, 2, 8]]},
        {"id": 2, "image_id": 7, "category_id": 90, "bbox": [20, 10, 8, 8], "area": 32.0, "iscrowd": 0,
         "segmentation": [[20, 10, 28, 10, 20, 18]]},
        {"id": 3, "image_id": 9, "category_id": 1, "bbox": [0, 0, 4, 4], "area": 16.0, "iscrowd": 1,
         "segmentation": crowd},
    ]
    dataset = {
        "images": images,
        "annotations": default_annotations if annotations is None else annotations,
        "categories": categories or [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"},
                                     {"id": 3, "name": "car"}],
    }
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(dataset))


def test_coco_loader_reads_a_generated_split(tmp_path):
    _write_coco(tmp_path)
    dataset = load_coco(tmp_path, "val")
    assert dataset.image_ids == [7, 9] and len(dataset.images) == 2 and len(dataset.targets) == 2
    assert dataset.class_names == ["person", "car", "toothbrush"] and dataset.category_id(2) == 90
    assert dataset.images[0].shape == (30, 40, 3) and dataset.images[0].dtype == np.uint8
    first = dataset.targets[0]
    assert first["labels"].tolist() == [1, 2]
    assert first["boxes"].tolist() == [[2, 3, 12, 8], [20, 10, 28, 18]]
    assert first["masks"].shape == (2, 30, 40) and first["masks"][0].sum() > 0
    assert len(dataset.targets[1]["labels"]) == 0, "crowd regions are not training targets"
    assert len(dataset.sha256) == 64


@pytest.mark.parametrize("change, problem", [
    ({"annotations": "not json"}, "not readable JSON"),
    ({"annotations": [{"id": 1, "image_id": 7, "category_id": 3}]}, "lacks"),
    ({"annotations": [{"id": 1, "image_id": 7, "category_id": 5, "bbox": [0, 0, 2, 2], "area": 4,
                       "segmentation": []}]}, "unknown category_id 5"),
    ({"annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [35, 0, 10, 2], "area": 20,
                       "segmentation": []}]}, "outside the 40x30 image"),
    ({"annotations": [{"id": 1, "image_id": 8, "category_id": 3, "bbox": [0, 0, 2, 2], "area": 4,
                       "segmentation": []}]}, "image_id 8"),
    ({"drop": "categories"}, "missing the list 'categories'"),
])
def test_malformed_annotation_file_is_a_clear_error(tmp_path, change, problem):
    _write_coco(tmp_path)
    path = tmp_path / "annotations" / "instances_val2017.json"
    if change.get("annotations") == "not json":
        path.write_text('{"images": [')
    else:
        dataset = json.loads(path.read_text())
        if "drop" in change:
            del dataset[change["drop"]]
        else:
            dataset.update(change)
        path.write_text(json.dumps(dataset))
    with pytest.raises(GradpathError, match=problem) as error:
        load_coco(tmp_path, "val")
    assert str(path) in str(error.value)
    with pytest.raises(GradpathError, match=problem):
        evaluate_coco(path, [])


def test_an_image_of_another_size_than_annotated_is_a_clear_error(tmp_path):
    _write_coco(tmp_path)
    Image.fromarray(np.zeros((20, 25, 3), np.uint8)).save(tmp_path / "val2017" / "000000000009.jpg")
    dataset = load_coco(tmp_path, "val")
    assert dataset.image_sizes() == [(30, 40), (20, 20)]
    assert replace(dataset, images=[np.zeros((5, 6, 3), np.uint8)]).image_sizes() == [(5, 6)]  # a plain list
    with pytest.raises(GradpathError, match="000000000009.jpg is 25x20 px but its annotation file says 20x20"):
        dataset.images[1]


def test_missing_coco_folders_are_clear_errors(tmp_path):
    with pytest.raises(GradpathError, match="val2017"):
        load_coco(tmp_path, "val")
    (tmp_path / "val2017").mkdir()
    with pytest.raises(GradpathError, match="does not exist"):
        load_coco(tmp_path, "val")
    with pytest.raises(GradpathError, match="valid choices: train, val"):
        load_coco(tmp_path, "test")


def test_default_coco_root_is_under_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADPATH_DATA", str(tmp_path))
    _write_coco(tmp_path / "coco")
    assert load_coco(None, "val").image_ids == [7, 9]
