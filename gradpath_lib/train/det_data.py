"""A detection set resident on the training device, augmented there with batched tensor ops.

Each canvas is kept as uint8 pixels (H, W, 3) plus one uint8 instance map (H, W) whose value k+1
marks the pixels of instance k (0 is background), and the instances' labels padded with -1. One
map holds every mask because CIFAR-Det's masks are the visible parts and never overlap; for COCO,
where they can, a pixel goes to the later annotation. Augmentation (random horizontal flip and
scale jitter about the canvas centre) moves pixels and the instance map with the same affine
sampling grid; masks, boxes (the masks' extents) and prototype-resolution mask targets are then
derived from the map, so boxes and masks always agree with the augmented image. The randomness of
an epoch comes from `epoch_generator(seed, epoch)` (CPU), as for classification.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.detection import DetectionDataset
from ..errors import GradpathError
from .batches import PIXEL_MAX
from .boxes import mask_extents
from .det_loss import Targets

PAD_GREY = 0.5  # value of pixels a zoom-out brings in from outside the canvas
MAX_INSTANCES = 255  # the instance map is uint8


@dataclass
class DeviceDetections:
    """Canvases (uint8 NHWC), instance maps (uint8 NHW) and padded labels (N, M) on one device."""

    images: Tensor
    instances: Tensor
    labels: Tensor

    @classmethod
    def from_dataset(cls, dataset: DetectionDataset, device: torch.device) -> DeviceDetections:
        """Move `dataset` to `device` (its images must be one array of equal-sized canvases)."""
        images = np.asarray(dataset.images)
        if images.ndim != 4 or images.shape[1] % 32 or images.shape[2] % 32:
            raise GradpathError(f"detector training needs equal canvases with sides divisible by 32, got {images.shape}")
        most = max((len(t["labels"]) for t in dataset.targets), default=0)
        if most > MAX_INSTANCES:
            raise GradpathError(f"a canvas has {most} instances; the instance map holds at most {MAX_INSTANCES}")
        instances = np.zeros(images.shape[:3], dtype=np.uint8)
        labels = np.full((len(images), max(most, 1)), -1, dtype=np.int64)
        for index, target in enumerate(dataset.targets):
            for k, mask in enumerate(target["masks"]):
                instances[index][mask.astype(bool)] = k + 1
            labels[index, : len(target["labels"])] = target["labels"]
        return cls(*(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in (images, instances, labels)))

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the canvases."""
        return self.images.shape[1], self.images.shape[2]

    def eval_batches(self, batch_size: int) -> Iterator[Tensor]:
        """Normalised canvases in order, unaugmented, in batches of at most `batch_size`."""
        for start in range(0, len(self), batch_size):
            yield to_float(self.images[start:start + batch_size])

    def train_batches(
        self, batch_size: int, generator: torch.Generator, flip: bool, scale_jitter: float, proto_stride: int
    ) -> Iterator[tuple[Tensor, Targets]]:
        """One epoch of shuffled, flipped and rescaled full batches with their targets (the rest is dropped)."""
        n = len(self)
        order = torch.randperm(n, generator=generator)
        flips = (torch.rand(n, generator=generator) < 0.5) & flip
        scales = 1 + scale_jitter * (2 * torch.rand(n, generator=generator) - 1)
        device = self.images.device
        order, flips, scales = order.to(device), flips.to(device), scales.to(device)
        for start in range(0, n - batch_size + 1, batch_size):
            index = order[start:start + batch_size]
            images, instances = warp(self.images[index], self.instances[index], flips[index], scales[index])
            yield images, make_targets(instances, self.labels[index], proto_stride)


def to_float(images: Tensor) -> Tensor:
    """uint8 NHWC -> float NCHW in [0, 1] (channels-last memory)."""
    return images.permute(0, 3, 1, 2).float().div_(PIXEL_MAX)


def warp(images: Tensor, instances: Tensor, flips: Tensor, scales: Tensor) -> tuple[Tensor, Tensor]:
    """Flip and zoom images (uint8 NHWC) and instance maps (NHW) about the centre with one sampling grid."""
    batch, height, width = instances.shape
    theta = torch.zeros(batch, 2, 3, device=images.device)
    theta[:, 0, 0] = torch.where(flips, -1.0, 1.0) / scales
    theta[:, 1, 1] = 1.0 / scales
    grid = F.affine_grid(theta, [batch, 3, height, width], align_corners=False)
    pixels = F.grid_sample(to_float(images) - PAD_GREY, grid, mode="bilinear", align_corners=False) + PAD_GREY
    ids = F.grid_sample(instances[:, None].float(), grid, mode="nearest", align_corners=False)
    return pixels.contiguous(memory_format=torch.channels_last), ids[:, 0].round().to(torch.uint8)


def make_targets(instances: Tensor, labels: Tensor, proto_stride: int) -> Targets:
    """Masks, boxes (mask extents) and prototype-resolution masks of a batch's instance maps."""
    ids = torch.arange(1, labels.shape[1] + 1, device=instances.device, dtype=instances.dtype)
    masks = instances[:, None] == ids[None, :, None, None]  # (B, M, H, W)
    valid = masks.flatten(2).any(-1) & (labels >= 0)
    return Targets(
        boxes=mask_extents(masks),
        labels=labels,
        valid=valid,
        masks=F.avg_pool2d(masks.float(), proto_stride),
    )
