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


def positive_mask_logits(coeffs: Tensor, protos: Tensor, foreground: Tensor) -> Tensor:
    """Mask logits (P, h, w) of the foreground points: coeffs (B, A, k) times their image's protos (B, k, h, w).

    The positives are packed into a (B, most positives per image, k) batch, so one batched matmul serves all.
    """
    batch, _, height, width = protos.shape
    image_index, point_index = foreground.nonzero(as_tuple=True)
    slot = (foreground.cumsum(1) - 1)[image_index, point_index]
    packed = coeffs.new_zeros(batch, int(foreground.sum(1).max()), coeffs.shape[-1])
    packed[image_index, slot] = coeffs[image_index, point_index]
    logits = torch.bmm(packed, protos.flatten(2).to(packed.dtype))
    return logits[image_index, slot].view(-1, height, width)


def mask_loss(logits: Tensor, target_masks: Tensor, target_boxes: Tensor, stride: float) -> Tensor:
    """BCE of mask logits (P, h, w) vs targets (P, h, w), inside target boxes (P, 4) px, per-box mean."""
    height, width = logits.shape[-2:]
    ys = (torch.arange(height, device=logits.device, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(width, device=logits.device, dtype=torch.float32) + 0.5) * stride
    inside = (
        (xs[None, None, :] >= target_boxes[:, 0, None, None]) & (xs[None, None, :] < target_boxes[:, 2, None, None])
        & (ys[None, :, None] >= target_boxes[:, 1, None, None]) & (ys[None, :, None] < target_boxes[:, 3, None, None])
    )
    bce = F.binary_cross_entropy_with_logits(logits.float(), target_masks, reduction="none") * inside
    area = inside.flatten(1).sum(-1).clamp(min=1)
    return (bce.flatten(1).sum(-1) / area).mean()


def detection_loss(
    outputs: dict[str, Tensor], targets: Targets, points: Tensor, strides: Tensor, proto_stride: float
) -> tuple[Tensor, Tensor]:
    """Total loss of a batch and its detached parts (box, cls, mask) for logging."""
    cls_logits = outputs["cls"].float()
    pred_boxes = decode_ltrb(outputs["box"], points, strides)
    foreground, gt_index, soft = assign_tal(
        cls_logits.detach().sigmoid(), pred_boxes.detach(), points, targets.boxes, targets.labels, targets.valid
    )
    labels = _gather(targets.labels.clamp(min=0), gt_index)
    cls_target = F.one_hot(labels, cls_logits.shape[-1]).float() * (soft * foreground)[..., None]
    norm = cls_target.sum().clamp(min=1)
    cls = F.binary_cross_entropy_with_logits(cls_logits, cls_target, reduction="sum") / norm
    box_target = _gather(targets.boxes, gt_index)
    weight = soft[foreground]
    box = ((1 - box_ciou(pred_boxes[foreground], box_target[foreground])) * weight).sum() / norm
    if foreground.any():
        masks = mask_loss(
            positive_mask_logits(outputs["coef"].float(), outputs["protos"].float(), foreground),
            _gather(targets.masks, gt_index)[foreground],
            box_target[foreground],
            proto_stride,
        )
    else:
        masks = outputs["coef"].sum() * 0
    total = BOX_GAIN * box + CLS_GAIN * cls + MASK_GAIN * masks
    return total, torch.stack([box, cls, masks]).detach()
