"""The in-memory image classification dataset every loader returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPLITS = ("train", "test")


@dataclass(frozen=True)
class ImageDataset:
    """Images and labels of one split, with where they came from."""

    images: np.ndarray  # uint8 (N, H, W, 3)
    labels: np.ndarray  # int64 (N,)
    classes: tuple[str, ...]
    source: str  # human-readable, e.g. "cifar10-jpeg.tar.xz (JPEG q75)"
    sha256: str  # checksum of the source (or of the generator config for smoke)
