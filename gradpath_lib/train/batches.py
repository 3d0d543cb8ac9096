"""The whole image set resident on the training device, augmented there with batched tensor ops.

Images stay uint8 (N, H, W, 3) on the device; each epoch draws its order, crop offsets and flips
from a CPU `torch.Generator` seeded by (seed, epoch), so an epoch is the same on every device and
a resumed run replays exactly the epochs an uninterrupted one would. Batches come out NCHW with
channels-last memory (the fast layout for convolutions on GPUs), normalized by the training set's
per-channel mean and standard deviation.

`ClassificationData` is what the classification trainer reads: `DeviceImages`, or a data set
streamed from its folder (`gradpath_lib.data.imagenet.StreamedImages`) with the same epoch semantics.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ..distributed import local_slice, shard
from ..errors import GradpathError

# Seeds of different epochs of one run are this far apart, so (seed, epoch) pairs never collide.
EPOCH_SEED_STRIDE = 1 << 20
PIXEL_MAX = 255.0


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator of all randomness of one epoch's data (order, crops, flips)."""
    return torch.Generator().manual_seed(seed * EPOCH_SEED_STRIDE + epoch)


def normalize_batch(batch: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> normalized float32 NCHW (channels-last memory on CUDA, contiguous on CPU)."""
    x = batch.permute(0, 3, 1, 2).float().div_(PIXEL_MAX)
    x = (x - mean) / std
    # torch 2.13's CPU conv backward corrupts memory ("double free") on channels-last inputs
    # when a layer has an odd channel count (e.g. LW-DNA's shrunk widths); CPU runs stay NCHW.
    return x if x.is_cuda else x.contiguous()


def channel_stats(images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation, in [0, 1] pixel units, of uint8 (N, H, W, C) images, as
    (1, C, 1, 1) float32 tensors: from each channel's histogram of the 256 values (exact counts, then
    float64), so 50 000 CIFAR images take a fraction of a second and no float copy of them."""
    values = np.arange(256, dtype=np.float64) / PIXEL_MAX
    means, stds = [], []
    for channel in range(images.shape[-1]):
        counts = np.bincount(images[..., channel].ravel(), minlength=256).astype(np.float64)
        total = counts.sum()
        mean = (counts * values).sum() / total
        means.append(mean)
        stds.append(np.sqrt((counts * (values - mean) ** 2).sum() / total))
    return (torch.tensor(means, dtype=torch.float32).view(1, -1, 1, 1),
            torch.tensor(stds, dtype=torch.float32).view(1, -1, 1, 1))


Batch = tuple[torch.Tensor, torch.Tensor]  # normalized float32 NCHW images, int64 labels, on the device


class ClassificationData(Protocol):
    """One split as the classification trainer reads it (under torch.distributed, rank by rank)."""

    @property
    def device(self) -> torch.device:
        """Where the batches are."""
        ...

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one batch image."""
        ...

    def __len__(self) -> int:
        """Images in the split (all ranks together)."""
        ...

    def rank_train_batches(
        self, batch_size: int, generator: torch.Generator, crop_padding: int, flip: bool
    ) -> Iterator[Batch]:
        """This rank's contiguous share (`shard`) of every full global batch of one augmented epoch."""
        ...

    def rank_eval_batches(self, batch_size: int) -> Iterator[Batch]:
        """This rank's part (`local_slice`) of the split, in order, unaugmented, in batches."""
        ...


@dataclass
class DeviceImages:
    """Images (uint8, NHWC) and labels on `device`, with the normalization of the training set."""

    images: torch.Tensor
    labels: torch.Tensor
    mean: torch.Tensor  # (1, 3, 1, 1) float32, in [0, 1] pixel units
    std: torch.Tensor

    @classmethod
    def from_arrays(
        cls,
        images: np.ndarray,
        labels: np.ndarray,
        device: torch.device,
        stats_from: np.ndarray | None = None,
    ) -> DeviceImages:
        """Move uint8 (N, H, W, 3) images to `device`; normalize with `stats_from`'s statistics."""
        mean, std = channel_stats(images if stats_from is None else stats_from)
        return cls(
            images=torch.from_numpy(np.ascontiguousarray(images)).to(device),
            labels=torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device),
            mean=mean.to(device),
            std=std.to(device),
        )

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def device(self) -> torch.device:
        """The device holding the images."""
        return self.images.device

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        _, height, width, channels = self.images.shape
        return channels, height, width

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> normalized float32 NCHW with this set's statistics (see `normalize_batch`)."""
        return normalize_batch(batch, self.mean, self.std)

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The images in order, unaugmented, in batches of at most `batch_size`."""
        for start in range(0, len(self), batch_size):
            stop = start + batch_size
            yield self.normalize(self.images[start:stop]), self.labels[start:stop]

    def train_batches(
        self, batch_size: int, generator: torch.Generator, crop_padding: int, flip: bool
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of shuffled, randomly cropped and flipped full batches (the rest is dropped)."""
        n, height, width, _ = self.images.shape
        order = torch.randperm(n, generator=generator)
        shifts = torch.randint(0, 2 * crop_padding + 1, (2, n), generator=generator)
        flips = torch.randint(0, 2, (n,), generator=generator, dtype=torch.bool)
        device = self.images.device
        order, shifts, flips = order.to(device), shifts.to(device), (flips & flip).to(device)
        padded = F.pad(self.images, (0, 0, crop_padding, crop_padding, crop_padding, crop_padding))
        rows = torch.arange(height, device=device)
        cols = torch.arange(width, device=device)
        for start in range(0, n - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            dy, dx = shifts[0, idx], shifts[1, idx]
            cols_b = cols + dx[:, None]
            cols_b = torch.where(flips[idx, None], cols_b.flip(1), cols_b)
            crop = padded[idx[:, None, None], (rows + dy[:, None])[:, :, None], cols_b[:, None, :]]
            yield self.normalize(crop), self.labels[idx]

    def rank_train_batches(
        self, batch_size: int, generator: torch.Generator, crop_padding: int, flip: bool
    ) -> Iterator[Batch]:
        """This rank's contiguous share (`shard`) of every global batch of `train_batches`."""
        for x, y in self.train_batches(batch_size, generator, crop_padding, flip):
            yield shard(x), shard(y)

    def rank_eval_batches(self, batch_size: int) -> Iterator[Batch]:
        """This rank's part (`local_slice`) of the images, in order, unaugmented (`eval_batches`)."""
        part = local_slice(len(self))
        yield from DeviceImages(self.images[part], self.labels[part], self.mean, self.std).eval_batches(batch_size)


LOADER_WORKERS_ENV = "GRADPATH_LOADER_WORKERS"
MAX_LOADER_WORKERS = 8  # default DataLoader worker processes per rank, at most


def loader_workers() -> int:
    """DataLoader workers per process of a streamed data set: `$GRADPATH_LOADER_WORKERS` (0 decodes in
    the training process itself), else this machine's CPU cores shared by its local ranks, 1 to
    MAX_LOADER_WORKERS."""
    value = os.environ.get(LOADER_WORKERS_ENV)
    if value is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        return max(1, min(MAX_LOADER_WORKERS, cores // local_ranks))
    if not value.strip().isdigit():
        raise GradpathError(f"{LOADER_WORKERS_ENV} must be a whole number of DataLoader workers (0: decode in "
                            f"the training process), got {value!r}")
    return int(value)
