"""Detection sets for the trainer: resident on the device (CIFAR-Det) or streamed from disk (COCO).

Both keep an image as uint8 pixels (H, W, 3) plus one uint8 instance map (H, W) whose value k+1
marks the pixels of instance k (0 is background), and the instances' labels padded with -1. One
map holds every mask because CIFAR-Det's masks are the visible parts and never overlap; for COCO,
where they can, a pixel goes to the later annotation. Augmentation (random horizontal flip and
scale jitter about the centre) moves pixels and the instance map with the same affine sampling
grid on the device (`warp`); masks, boxes (the masks' extents) and prototype-resolution mask
targets are then derived from the map (`make_targets`), so boxes and masks always agree with the
augmented image. The randomness of an epoch comes from `epoch_generator(seed, epoch)` (CPU), as
for classification, and is drawn the same way by both kinds of set (`epoch_draws`).

- `DeviceDetections`: every canvas (equal sizes, sides divisible by 32) stays on the device.
- `StreamedDetections`: a lazily read set of images of any size (COCO 2017). torch DataLoader
  workers read each image, letterbox it into the square input (aspect ratio kept, bilinear; the
  instance map by nearest neighbour; padding PAD_PIXEL grey and background), and batch them in
  pinned memory; the batch then goes to the device for the same `warp` and `make_targets`.
  Detections on the letterboxed inputs go back to each original image's pixels with
  `to_original` (see `det_predict.Letterbox`) before COCO evaluation.

Under torch.distributed both yield this rank's contiguous share (`shard`) of every global batch:
all ranks draw the same epoch order, and a streaming rank reads only its share's images.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..data.detection import DetectionDataset
from ..distributed import shard
from ..errors import GradpathError
from .batches import PIXEL_MAX, loader_workers
from .boxes import mask_extents
from .det_loss import Targets
from .det_predict import Detections, Letterbox

PAD_GREY = 0.5  # value of pixels a zoom-out brings in from outside the canvas
PAD_PIXEL = round(PAD_GREY * PIXEL_MAX)  # the same grey as uint8: the letterbox padding of streamed images
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
            instances[index] = instance_map(target["masks"])
            labels[index, : len(target["labels"])] = target["labels"]
        return cls(*(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in (images, instances, labels)))

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def device(self) -> torch.device:
        """Where the canvases are."""
        return self.images.device

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the canvases."""
        return self.images.shape[1], self.images.shape[2]

    def eval_batches(self, batch_size: int, limit: int | None = None) -> Iterator[Tensor]:
        """Normalised canvases in order (the first `limit`, if given), unaugmented, in batches of at most `batch_size`."""
        count = len(self) if limit is None else min(limit, len(self))
        for start in range(0, count, batch_size):
            yield to_float(self.images[start:min(start + batch_size, count)])

    def to_original(self, detections: list[Detections], start: int) -> list[Detections]:
        """`detections` unchanged: the canvases are the original images."""
        return detections

    def train_batches(
        self, batch_size: int, generator: torch.Generator, flip: bool, scale_jitter: float, proto_stride: int
    ) -> Iterator[tuple[Tensor, Targets]]:
        """One epoch of shuffled, flipped and rescaled full batches (this rank's share) with their targets
        (the rest is dropped)."""
        order, flips, scales = (t.to(self.device) for t in epoch_draws(len(self), generator, flip, scale_jitter))
        for index in local_batches(order, batch_size):
            images, instances = warp(self.images[index], self.instances[index], flips[index], scales[index])
            yield images, make_targets(instances, self.labels[index], proto_stride)


class LetterboxedImages(Dataset):
    """The images of a detection set, each letterboxed into its `Letterbox` (uint8 HWC tensors)."""

    def __init__(self, dataset: DetectionDataset, letterboxes: list[Letterbox]) -> None:
        self.dataset, self.letterboxes = dataset, letterboxes

    def __len__(self) -> int:
        return len(self.letterboxes)

    def __getitem__(self, index: int) -> Tensor:
        return torch.from_numpy(letterbox_pixels(np.asarray(self.dataset.images[index]), self.letterboxes[index]))

    @staticmethod
    def collate(images: list[Tensor]) -> Tensor:
        """A batch (B, S, S, 3) of letterboxed images."""
        return torch.stack(images)


class LetterboxedSamples(Dataset):
    """Letterboxed images with their letterboxed instance maps (uint8 HW) and labels (int64 K)."""

    def __init__(self, dataset: DetectionDataset, letterboxes: list[Letterbox]) -> None:
        self.images = LetterboxedImages(dataset, letterboxes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        dataset, box = self.images.dataset, self.images.letterboxes[index]
        target = dataset.targets[index]
        if len(target["labels"]) > MAX_INSTANCES:
            raise GradpathError(f"image {dataset.image_ids[index]} has {len(target['labels'])} instances; "
                                f"the instance map holds at most {MAX_INSTANCES}")
        instances = letterbox_map(instance_map(target["masks"]), box)
        return self.images[index], torch.from_numpy(instances), torch.from_numpy(target["labels"])

    @staticmethod
    def collate(samples: list[tuple[Tensor, Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
        """Stacked images and instance maps, and labels padded with -1 to the batch's most instances (at least 1)."""
        pixels, instances, labels = zip(*samples)
        padded = torch.full((len(labels), max(1, *(len(row) for row in labels))), -1, dtype=torch.int64)
        for row, values in enumerate(labels):
            padded[row, :len(values)] = values
        return torch.stack(pixels), torch.stack(instances), padded


class StreamedDetections:
    """A detection set read from disk per batch by DataLoader workers, letterboxed to `size` x `size`."""

    def __init__(self, dataset: DetectionDataset, size: int, device: torch.device, workers: int) -> None:
        self.dataset, self.size, self.device, self.workers = dataset, size, device, workers
        self.letterboxes = [Letterbox.fit(height, width, size) for height, width in dataset.image_sizes()]

    def __len__(self) -> int:
        return len(self.letterboxes)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the letterboxed inputs."""
        return self.size, self.size

    def loader(self, samples: LetterboxedImages | LetterboxedSamples, batches: list[list[int]]) -> DataLoader:
        """A DataLoader of `samples` in the given index batches (pinned memory for CUDA; no global RNG use)."""
        return DataLoader(samples, batch_sampler=batches, num_workers=self.workers, collate_fn=samples.collate,
                          pin_memory=self.device.type == "cuda", generator=torch.Generator())

    def eval_batches(self, batch_size: int, limit: int | None = None) -> Iterator[Tensor]:
        """Normalised letterboxed images in order (the first `limit`, if given), unaugmented, in batches of at
        most `batch_size`."""
        count = len(self) if limit is None else min(limit, len(self))
        batches = [list(range(start, min(start + batch_size, count))) for start in range(0, count, batch_size)]
        for pixels in self.loader(LetterboxedImages(self.dataset, self.letterboxes), batches):
            yield to_float(pixels.to(self.device, non_blocking=True))

    def to_original(self, detections: list[Detections], start: int) -> list[Detections]:
        """`detections` of the images from index `start` on, mapped back to the original images' pixels."""
        return [box.to_original(found) for box, found in zip(self.letterboxes[start:], detections)]

    def train_batches(
        self, batch_size: int, generator: torch.Generator, flip: bool, scale_jitter: float, proto_stride: int
    ) -> Iterator[tuple[Tensor, Targets]]:
        """One epoch of shuffled, flipped and rescaled full batches (this rank's share) with their targets
        (the rest is dropped), drawn as `DeviceDetections.train_batches` draws them."""
        order, flips, scales = epoch_draws(len(self), generator, flip, scale_jitter)
        batches = local_batches(order, batch_size)
        loader = self.loader(LetterboxedSamples(self.dataset, self.letterboxes), [index.tolist() for index in batches])
        for index, batch in zip(batches, loader):
            pixels, instances, labels = (t.to(self.device, non_blocking=True) for t in batch)
            images, instances = warp(pixels, instances, flips[index].to(self.device), scales[index].to(self.device))
            yield images, make_targets(instances, labels, proto_stride)


DetectionData = DeviceDetections | StreamedDetections  # what the detection trainer reads


def detection_data(
    dataset: DetectionDataset, device: torch.device, input_size: int | None
) -> DetectionData:
    """`dataset` for the trainer: resident canvases when `input_size` is None, else streamed and letterboxed."""
    if input_size is None:
        return DeviceDetections.from_dataset(dataset, device)
    return StreamedDetections(dataset, input_size, device, loader_workers())


def epoch_draws(
    count: int, generator: torch.Generator, flip: bool, scale_jitter: float
) -> tuple[Tensor, Tensor, Tensor]:
    """An epoch's order, horizontal flips and zoom factors of `count` images, drawn (on the CPU) from `generator`."""
    order = torch.randperm(count, generator=generator)
    flips = (torch.rand(count, generator=generator) < 0.5) & flip
    scales = 1 + scale_jitter * (2 * torch.rand(count, generator=generator) - 1)
    return order, flips, scales


def local_batches(order: Tensor, batch_size: int) -> list[Tensor]:
    """This rank's share (`shard`) of each full global batch of `order`; an incomplete last batch is dropped."""
    return [shard(order[start:start + batch_size]) for start in range(0, len(order) - batch_size + 1, batch_size)]


def instance_map(masks: np.ndarray) -> np.ndarray:
    """The uint8 map (H, W) of binary masks (K, H, W): k+1 where mask k is the last one covering a pixel, else 0."""
    instances = np.zeros(masks.shape[1:], dtype=np.uint8)
    for k, mask in enumerate(masks):
        instances[mask.astype(bool)] = k + 1
    return instances


def letterbox_pixels(image: np.ndarray, box: Letterbox) -> np.ndarray:
    """An RGB uint8 image (H, W, 3) resized bilinearly into `box`, padded with PAD_PIXEL."""
    return _paste(image, box, PAD_PIXEL, Image.Resampling.BILINEAR)


def letterbox_map(instances: np.ndarray, box: Letterbox) -> np.ndarray:
    """An instance map (H, W) resized by nearest neighbour into `box` (ids kept), padded with background."""
    return _paste(instances, box, 0, Image.Resampling.NEAREST)


def _paste(array: np.ndarray, box: Letterbox, fill: int, resample: Image.Resampling) -> np.ndarray:
    """`array` (H, W[, 3], uint8) resized to `box`'s inner size and pasted on a `fill` square of its size."""
    if array.shape[:2] != (box.height, box.width):
        raise GradpathError(f"an image of {array.shape[1]}x{array.shape[0]} px cannot fill a letterbox made "
                            f"for {box.width}x{box.height} px")
    canvas = np.full((box.size, box.size, *array.shape[2:]), fill, dtype=np.uint8)
    resized = Image.fromarray(np.ascontiguousarray(array)).resize((box.inner_width, box.inner_height), resample)
    canvas[box.top:box.top + box.inner_height, box.left:box.left + box.inner_width] = np.asarray(resized)
    return canvas


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
