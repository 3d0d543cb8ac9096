"""COCO-style box and mask evaluation with pycocotools `COCOeval` (no hand-written AP).

`evaluate_coco` returns, for `bbox` and `segm`, the six summary numbers COCOeval prints:
AP (IoU .50:.95), AP50, AP75 and AP for small / medium / large objects (COCO area ranges
32^2 and 96^2 px). COCOeval writes -1 where a number is undefined, i.e. the ground truth has no
object in that area range; we report those as NaN, so they can never be mistaken for a score and
pandas skips them in means. Where the ground truth has objects but there are no predictions,
every AP is 0.0.

pycocotools is imported inside the functions, so the core library imports without it.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data.detection import coco_from_dict, masks_to_rle, read_coco_json
from ..errors import GradpathError, check_choice

__all__ = ["IOU_TYPES", "SUMMARY_NAMES", "evaluate_coco", "masks_to_rle"]

IOU_TYPES = ("bbox", "segm")
# The first six entries of COCOeval.stats, in COCOeval's order.
SUMMARY_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# Keys a prediction needs for each IoU type (besides image_id, category_id and score).
PREDICTION_KEYS = {"bbox": "bbox", "segm": "segmentation"}


def evaluate_coco(
    annotation_file: str | Path,
    predictions: Sequence[dict[str, Any]],
    iou_types: Sequence[str] = IOU_TYPES,
    verbose: bool = False,
) -> dict[str, dict[str, float]]:
    """COCOeval summary {"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl"}, "segm": {...}} in [0, 1] or NaN.

    Each prediction is {"image_id", "category_id", "score", "bbox": [x, y, w, h]} plus
    "segmentation" (an RLE with str counts, see `masks_to_rle`) when "segm" is evaluated.
    """
    for iou_type in iou_types:
        check_choice("COCO IoU type", iou_type, IOU_TYPES)
    ground_truth = coco_from_dict(read_coco_json(annotation_file))
    return {iou_type: _evaluate_one(ground_truth, predictions, iou_type, verbose) for iou_type in iou_types}


def _evaluate_one(
    ground_truth: Any, predictions: Sequence[dict[str, Any]], iou_type: str, verbose: bool
) -> dict[str, float]:
    """COCOeval's six summary numbers for one IoU type."""
    from pycocotools.cocoeval import COCOeval

    detections = _load_results(ground_truth, _predictions_for(predictions, iou_type), verbose)
    evaluator = COCOeval(ground_truth, detections, iouType=iou_type)
    with _quiet(verbose):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: _undefined_to_nan(value) for name, value in zip(SUMMARY_NAMES, evaluator.stats)}


def _predictions_for(predictions: Sequence[dict[str, Any]], iou_type: str) -> list[dict[str, Any]]:
    """Copies holding only what COCO.loadRes should see for `iou_type`.

    loadRes rewrites a segmentation from the box when both are present, and mutates its input,
    so each IoU type gets its own copies with just its geometry.
    """
    key = PREDICTION_KEYS[iou_type]
    selected = []
    for index, prediction in enumerate(predictions):
        missing = {"image_id", "category_id", "score", key} - set(prediction)
        if missing:
            raise GradpathError(f"prediction {index} lacks {sorted(missing)} needed for {iou_type} evaluation")
        selected.append({
            "image_id": int(prediction["image_id"]),
            "category_id": int(prediction["category_id"]),
            "score": float(prediction["score"]),
            key: [float(v) for v in prediction[key]] if key == "bbox" else copy.deepcopy(prediction[key]),
        })
    return selected


def _load_results(ground_truth: Any, predictions: list[dict[str, Any]], verbose: bool) -> Any:
    """The predictions as a COCO object; an empty one when there are none (loadRes cannot take [])."""
    if not predictions:
        return coco_from_dict({**ground_truth.dataset, "annotations": []})
    unknown = {p["image_id"] for p in predictions} - set(ground_truth.getImgIds())
    if unknown:
        raise GradpathError(f"predictions name image ids absent from the ground truth: {sorted(unknown)[:10]}")
    with _quiet(verbose):
        return ground_truth.loadRes(predictions)


def _undefined_to_nan(value: float) -> float:
    """COCOeval's -1 ('no ground truth in this range') as NaN; other values as plain floats."""
    return math.nan if value < 0 else float(value)


def _quiet(verbose: bool) -> contextlib.AbstractContextManager:
    """Swallow pycocotools' prints unless `verbose`."""
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
