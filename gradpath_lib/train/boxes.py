"""Box geometry for the detector: xyxy boxes in pixels, IoU/CIoU, anchor-point decoding, mask extents."""

from __future__ import annotations

import math

import torch
from torch import Tensor

EPS = 1e-7


def box_area(boxes: Tensor) -> Tensor:
    """Area of xyxy boxes (..., 4); empty boxes have area 0."""
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of xyxy boxes that broadcast against each other ((..., 4) and (..., 4) -> (...))."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter / (box_area(a) + box_area(b) - inter + EPS)


def box_ciou(a: Tensor, b: Tensor) -> Tensor:
    """Complete IoU (Zheng et al. 2020) of broadcastable xyxy boxes: IoU - centre term - aspect term."""
    iou = box_iou(a, b)
    enclose_wh = torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])
    diag2 = enclose_wh.pow(2).sum(-1) + EPS
    centre2 = ((a[..., :2] + a[..., 2:]) - (b[..., :2] + b[..., 2:])).pow(2).sum(-1) / 4
    wa, ha = (a[..., 2] - a[..., 0]).clamp(min=EPS), (a[..., 3] - a[..., 1]).clamp(min=EPS)
    wb, hb = (b[..., 2] - b[..., 0]).clamp(min=EPS), (b[..., 3] - b[..., 1]).clamp(min=EPS)
    v = (4 / math.pi**2) * (torch.atan(wb / hb) - torch.atan(wa / ha)).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + 1 + EPS)
    return iou - centre2 / diag2 - alpha * v


def anchor_points(height: int, width: int, strides: tuple[int, ...], device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Cell centres (A, 2) in pixels (x, y) and their strides (A,), level by level, row-major."""
    points, point_strides = [], []
    for stride in strides:
        ys = (torch.arange(height // stride, device=device, dtype=torch.float32) + 0.5) * stride
        xs = (torch.arange(width // stride, device=device, dtype=torch.float32) + 0.5) * stride
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], -1))
        point_strides.append(torch.full((grid_x.numel(),), float(stride), device=device))
    return torch.cat(points), torch.cat(point_strides)


def decode_ltrb(raw: Tensor, points: Tensor, strides: Tensor) -> Tensor:
    """xyxy boxes from raw distance outputs (..., A, 4): softplus(raw) * stride from each point."""
    dist = torch.nn.functional.softplus(raw.float()) * strides[:, None]
    return torch.cat([points - dist[..., :2], points + dist[..., 2:]], -1)


def mask_extents(masks: Tensor) -> Tensor:
    """Tight xyxy pixel boxes (..., 4) of boolean masks (..., H, W); empty masks give zeros."""
    height, width = masks.shape[-2:]
    rows, cols = masks.any(-1), masks.any(-2)
    ys = torch.arange(height, device=masks.device, dtype=torch.float32)
    xs = torch.arange(width, device=masks.device, dtype=torch.float32)
    big = float(max(height, width))
    x0 = torch.where(cols, xs, big).amin(-1)
    y0 = torch.where(rows, ys, big).amin(-1)
    x1 = torch.where(cols, xs + 1, 0.0).amax(-1)
    y1 = torch.where(rows, ys + 1, 0.0).amax(-1)
    boxes = torch.stack([x0, y0, x1, y1], -1)
    return torch.where(masks.flatten(-2).any(-1)[..., None], boxes, torch.zeros_like(boxes))
