"""From detector outputs to detections: score filter, class-aware NMS, prototype masks, COCO records.

Letterboxed inputs (COCO, see `det_data.StreamedDetections`): `Letterbox` says where an original
image lies in its square input, and `Letterbox.to_original` maps detections back to the original
pixels (boxes: padding removed and scale undone; masks: padding cropped, resized to H x W) before
they become COCO records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import GradpathError
from .boxes import box_iou, decode_ltrb
from .coco_eval import masks_to_rle

SCORE_THRESHOLD = 0.001  # COCO evaluation keeps low-score detections: AP integrates over recall
NMS_IOU = 0.6  # YOLOv5/v8 validation setting
MAX_CANDIDATES = 300  # top-scoring (point, class) pairs per image that enter NMS (its IoU matrix is N x N)
MAX_DETECTIONS = 100  # COCO's maxDets
MASK_THRESHOLD = 0.5  # sigmoid probability above which a prototype-mask pixel is foreground


@dataclass
class Detections:
    """The detections of one image, best first."""

    boxes: Tensor  # (D, 4) xyxy pixels
    scores: Tensor  # (D,)
    labels: Tensor  # (D,) int64, 0-based
    masks: Tensor | None  # (D, H, W) bool at input resolution (or the original's), None when not asked for


@dataclass(frozen=True)
class Letterbox:
    """Where an original `height` x `width` image lies in its `size` x `size` input: resized to
    `inner_height` x `inner_width` (aspect ratio kept), its top-left corner at (`left`, `top`)."""

    size: int
    height: int
    width: int
    top: int
    left: int
    inner_height: int
    inner_width: int

    @classmethod
    def fit(cls, height: int, width: int, size: int) -> Letterbox:
        """The largest aspect-keeping resize of a `height` x `width` image into `size` x `size`, centred."""
        if min(height, width, size) < 1:
            raise GradpathError(f"cannot letterbox a {width}x{height} image into {size}x{size}: sides must be >= 1")
        scale = size / max(height, width)
        inner_height, inner_width = (min(size, max(1, round(side * scale))) for side in (height, width))
        top, left = (size - inner_height) // 2, (size - inner_width) // 2
        return cls(size, height, width, top, left, inner_height, inner_width)

    def to_original(self, found: Detections) -> Detections:
        """`found` (detections on the letterboxed input) in the original image's pixel coordinates."""
        scale_x, scale_y = self.width / self.inner_width, self.height / self.inner_height
        offset = found.boxes.new_tensor([self.left, self.top, self.left, self.top])
        boxes = (found.boxes - offset) * found.boxes.new_tensor([scale_x, scale_y, scale_x, scale_y])
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, self.width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, self.height)
        masks = None if found.masks is None else self.masks_to_original(found.masks)
        return Detections(boxes, found.scores, found.labels, masks)

    def masks_to_original(self, masks: Tensor) -> Tensor:
        """Binary masks (D, size, size) on the input as binary masks (D, height, width) on the original image
        (the unpadded part resampled bilinearly; a pixel is foreground where the resample exceeds one half)."""
        if len(masks) == 0:
            return masks.new_zeros((0, self.height, self.width))
        inner = masks[:, None, self.top:self.top + self.inner_height, self.left:self.left + self.inner_width]
        resized = F.interpolate(inner.float(), size=(self.height, self.width), mode="bilinear", align_corners=False)
        return resized[:, 0] > 0.5


def nms_keep(boxes: Tensor, labels: Tensor, valid: Tensor, iou_threshold: float) -> Tensor:
    """Which of each image's boxes greedy class-aware NMS keeps: boxes (B, N, 4) sorted best first per
    image, labels (B, N), valid (B, N) bool (invalid boxes neither count nor suppress) -> (B, N) bool.

    Greedy NMS keeps box j iff no kept box with a higher score and the same label overlaps it by
    more than the threshold. With boxes sorted by score that is the fixed point of
    `keep = valid & ~any_i(keep[i] & overlap[i, j], i < j)`, which the loop reaches, for the whole
    batch at once, in at most as many passes as the longest suppression chain (usually a handful):
    one host sync per pass, not per image.
    """
    same = (labels[:, :, None] == labels[:, None, :]) & valid[:, :, None]
    overlap = ((box_iou(boxes[:, :, None], boxes[:, None, :]) > iou_threshold) & same).triu(diagonal=1)
    keep = valid.clone()
    while True:
        updated = valid & ~(overlap & keep[:, :, None]).any(1)
        if torch.equal(updated, keep):
            return keep
        keep = updated


def crop_masks(masks: Tensor, boxes: Tensor) -> Tensor:
    """Zero mask pixels (D, H, W) whose centres lie outside their box (D, 4) in pixels."""
    height, width = masks.shape[-2:]
    xs = torch.arange(width, device=masks.device, dtype=torch.float32) + 0.5
    ys = torch.arange(height, device=masks.device, dtype=torch.float32) + 0.5
    inside = (
        (xs[None, None, :] >= boxes[:, 0, None, None]) & (xs[None, None, :] < boxes[:, 2, None, None])
        & (ys[None, :, None] >= boxes[:, 1, None, None]) & (ys[None, :, None] < boxes[:, 3, None, None])
    )
    return masks * inside


@torch.no_grad()
def postprocess(
    outputs: dict[str, Tensor], points: Tensor, strides: Tensor, image_size: tuple[int, int], with_masks: bool = True
) -> list[Detections]:
    """Detections per image: top candidates above the score threshold, class-aware NMS, cropped masks.

    The whole batch goes through selection and NMS together (`nms_keep`); the host waits for the
    device only once per NMS pass and once to split the kept detections by image.
    """
    height, width = image_size
    boxes_all = decode_ltrb(outputs["box"], points, strides)
    boxes_all[..., 0::2] = boxes_all[..., 0::2].clamp(0, width)
    boxes_all[..., 1::2] = boxes_all[..., 1::2].clamp(0, height)
    scores_all = outputs["cls"].float().sigmoid()
    batch, num_classes = scores_all.shape[0], scores_all.shape[-1]
    flat = scores_all.flatten(1)
    top = flat.topk(min(MAX_CANDIDATES, flat.shape[1]), dim=1)  # best first in every image
    point, labels = top.indices // num_classes, top.indices % num_classes
    boxes = boxes_all.gather(1, point[..., None].expand(-1, -1, 4))
    keep = nms_keep(boxes, labels, top.values > SCORE_THRESHOLD, NMS_IOU)
    keep &= keep.cumsum(1) <= MAX_DETECTIONS
    image, slot = keep.nonzero(as_tuple=True)  # image-major, best first within an image
    counts = torch.bincount(image, minlength=batch).tolist()
    results = []
    for i, chosen in enumerate(slot.split(counts)):
        found_boxes = boxes[i, chosen]
        masks = (instance_masks(outputs["coef"][i, point[i, chosen]], outputs["protos"][i], found_boxes, image_size)
                 if with_masks else None)
        results.append(Detections(found_boxes, top.values[i, chosen], labels[i, chosen], masks))
    return results


def instance_masks(coeffs: Tensor, protos: Tensor, boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Binary masks (D, H, W): sigmoid(coeffs (D, k) @ protos (k, h, w)) upsampled, cropped to boxes, thresholded."""
    logits = torch.einsum("dk,khw->dhw", coeffs.float(), protos.float())
    probs = F.interpolate(logits[None], size=image_size, mode="bilinear", align_corners=False)[0].sigmoid()
    return crop_masks(probs, boxes) > MASK_THRESHOLD


def best_detections(found: Detections, min_score: float, limit: int) -> Detections:
    """The first `limit` of `found`'s detections (best first) that score at least `min_score`."""
    keep = (found.scores >= min_score).nonzero().flatten()[:limit]
    masks = None if found.masks is None else found.masks[keep]
    return Detections(found.boxes[keep], found.scores[keep], found.labels[keep], masks)


def coco_predictions(detections: list[Detections], image_ids: list[int], category_ids: list[int]) -> list[dict[str, Any]]:
    """COCO result records (bbox [x, y, w, h] px, plus the RLE mask at the detections' resolution when present)."""
    records = []
    for found, image_id in zip(detections, image_ids):
        boxes = found.boxes.cpu().numpy().astype(np.float64)
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        rles = masks_to_rle(found.masks.cpu().numpy()) if found.masks is not None else [None] * len(boxes)
        for box, score, label, rle in zip(xywh, found.scores.tolist(), found.labels.tolist(), rles):
            record = {
                "image_id": int(image_id),
                "category_id": int(category_ids[label]),
                "score": round(float(score), 5),
                "bbox": [round(float(v), 2) for v in box],
            }
            records.append(record if rle is None else {**record, "segmentation": rle})
    return records
