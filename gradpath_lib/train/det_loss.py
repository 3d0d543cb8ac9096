"""Assignment and loss of the YOLOR-mini detector.

Assignment: task-aligned assignment (TAL, Feng et al. 2021, as in TOOD/YOLOv8). For every ground
truth, the anchor points inside its box are ranked by `score**ALPHA * IoU**BETA` (score: the
predicted probability of the ground truth's class; IoU: predicted box vs ground truth); the top
`TOPK` are positives. A point claimed by several ground truths keeps the one it overlaps most.
Positives get soft classification targets: the alignment normalised per ground truth and scaled by
that ground truth's best IoU (so the class score learns to rank localisation quality).

Loss = `BOX_GAIN` * CIoU loss (weighted by the soft target) + `CLS_GAIN` * BCE on all points and
classes (soft targets) + `MASK_GAIN` * BCE of the positives' prototype masks against the ground
truth mask at prototype resolution, counted only inside the ground-truth box and averaged over its
area (YOLACT's cropped mask loss). Box and class terms are normalised by the sum of soft targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .boxes import EPS, box_ciou, box_iou, decode_ltrb

TOPK = 10  # positives per ground truth (TOOD / YOLOv8 default)
ALPHA = 1.0  # weight of the class score in the alignment metric
BETA = 6.0  # weight of the IoU in the alignment metric
BOX_GAIN = 7.5  # YOLOv8's box gain for IoU-type loss
CLS_GAIN = 0.5  # YOLOv8's class gain
MASK_GAIN = 7.5  # the box gain again: masks are as important as boxes for AP mask


@dataclass
class Targets:
    """Ground truth of a batch, padded to M instances per image."""

    boxes: Tensor  # (B, M, 4) xyxy pixels
    labels: Tensor  # (B, M) int64, 0-based classes
    valid: Tensor  # (B, M) bool, False for padding
    masks: Tensor  # (B, M, Hp, Wp) float in [0, 1], at prototype resolution


@torch.no_grad()
def assign_tal(
    scores: Tensor, pred_boxes: Tensor, points: Tensor, gt_boxes: Tensor, gt_labels: Tensor, gt_valid: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Task-aligned assignment: (foreground (B, A) bool, gt index (B, A), soft target (B, A))."""
    lt = points[None, None] - gt_boxes[..., None, :2]
    rb = gt_boxes[..., None, 2:] - points[None, None]
    inside = torch.cat([lt, rb], -1).amin(-1) > EPS  # (B, M, A)
    candidates = inside & gt_valid[..., None]
    ious = box_iou(gt_boxes[:, :, None, :], pred_boxes[:, None, :, :]).clamp(min=0) * candidates
    labels = gt_labels.clamp(min=0)[..., None].expand(-1, -1, scores.shape[1])  # (B, M, A)
    class_scores = scores.permute(0, 2, 1).gather(1, labels)
    align = class_scores.pow(ALPHA) * ious.pow(BETA) * candidates
    topk = min(TOPK, align.shape[-1])
    top_index = align.topk(topk, dim=-1).indices
    positive = torch.zeros_like(candidates).scatter_(-1, top_index, True) & candidates
    claimed = positive.sum(1, keepdim=True) > 1  # a point chosen by several ground truths
    best = F.one_hot(ious.argmax(1), ious.shape[1]).permute(0, 2, 1).bool()
    positive = torch.where(claimed, best & candidates, positive)
    foreground = positive.any(1)
    gt_index = positive.float().argmax(1)
    align = align * positive
    best_align = align.amax(-1, keepdim=True)
    best_iou = (ious * positive).amax(-1, keepdim=True)
    soft = (align * best_iou / (best_align + EPS)).amax(1)
    return foreground, gt_index, soft


def _gather(values: Tensor, index: Tensor) -> Tensor:
    """values (B, M, ...) picked by index (B, A) -> (B, A, ...)."""
    flat = index.reshape(index.shape + (1,) * (values.dim() - 2)).expand(*index.shape, *values.shape[2:])
    return values.gather(1, flat)


def packed_positives(foreground: Tensor, slots: int) -> tuple[Tensor, Tensor]:
    """(point index (B, slots), is positive (B, slots)): every image's positive points first, in order.

    A fixed number of slots (at least the most positives an image can have) keeps shapes static,
    so the loss never waits for the device to count positives.
    """
    order = foreground.to(torch.uint8).sort(dim=1, descending=True, stable=True).indices[:, :slots]
    return order, foreground.gather(1, order)


def mask_loss(logits: Tensor, target_masks: Tensor, target_boxes: Tensor, stride: float) -> Tensor:
    """Per-mask BCE of logits (..., h, w) vs targets (..., h, w), averaged inside target boxes (..., 4) px."""
    height, width = logits.shape[-2:]
    ys = (torch.arange(height, device=logits.device, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(width, device=logits.device, dtype=torch.float32) + 0.5) * stride
    x0, y0, x1, y1 = (target_boxes[..., i, None, None] for i in range(4))
    inside = (xs >= x0) & (xs < x1) & (ys[:, None] >= y0) & (ys[:, None] < y1)
    bce = F.binary_cross_entropy_with_logits(logits.float(), target_masks, reduction="none") * inside
    return bce.sum((-2, -1)) / inside.sum((-2, -1)).clamp(min=1)


def detection_loss(
    outputs: dict[str, Tensor], targets: Targets, points: Tensor, strides: Tensor, proto_stride: float
) -> tuple[Tensor, Tensor]:
    """Total loss of a batch and its detached parts (box, cls, mask) for logging (no host syncs)."""
    cls_logits = outputs["cls"].float()
    pred_boxes = decode_ltrb(outputs["box"], points, strides)
    foreground, gt_index, soft = assign_tal(
        cls_logits.detach().sigmoid(), pred_boxes.detach(), points, targets.boxes, targets.labels, targets.valid
    )
    labels = _gather(targets.labels.clamp(min=0), gt_index)
    weight = soft * foreground
    cls_target = F.one_hot(labels, cls_logits.shape[-1]).float() * weight[..., None]
    norm = cls_target.sum().clamp(min=1)
    cls = F.binary_cross_entropy_with_logits(cls_logits, cls_target, reduction="sum") / norm
    box_target = _gather(targets.boxes, gt_index)
    box = ((1 - box_ciou(pred_boxes, box_target)) * weight).sum() / norm
    # each ground truth has at most TOPK positives, so an image has at most M * TOPK
    point, positive = packed_positives(foreground, min(foreground.shape[1], targets.labels.shape[1] * TOPK))
    coeffs = _gather(outputs["coef"].float(), point)  # (B, P, k)
    protos = outputs["protos"].float()
    logits = torch.bmm(coeffs, protos.flatten(2)).view(*point.shape, *protos.shape[-2:])
    assigned = gt_index.gather(1, point)
    per_mask = mask_loss(logits, _gather(targets.masks, assigned), _gather(targets.boxes, assigned), proto_stride)
    masks = (per_mask * positive).sum() / positive.sum().clamp(min=1)
    total = BOX_GAIN * box + CLS_GAIN * cls + MASK_GAIN * masks
    return total, torch.stack([box, cls, masks]).detach()
