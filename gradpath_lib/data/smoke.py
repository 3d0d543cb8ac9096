"""The smoke dataset: tiny generated 32x32 images whose class a small convnet learns in seconds.

Class = colour (5 choices) x shape (solid square or striped square) of one patch placed at a
random position on a noisy dark background; the patch's brightness also varies. Deterministic
by seed, same array format as CIFAR-10.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from ..errors import check_choice
from .dataset import SPLITS, ImageDataset

# Bump when the generator's output changes, so the checksum (and run ids) change with it.
SMOKE_VERSION = 1
SMOKE_SIZES = {"train": 512, "test": 256}
IMAGE_SIZE = 32
PATCH_SIZE = 12  # large enough to survive a few stride-2 layers
BACKGROUND_MAX = 80  # background pixels are uniform noise in [0, BACKGROUND_MAX)
PATCH_BRIGHTNESS = (150, 255)  # per-image patch intensity range
PIXEL_NOISE = 20  # +- uniform noise on every patch pixel
COLOURS = {
    "red": (1, 0, 0),
    "green": (0, 1, 0),
    "blue": (0, 0, 1),
    "yellow": (1, 1, 0),
    "cyan": (0, 1, 1),
}
SHAPES = ("square", "stripes")
SMOKE_CLASSES = tuple(f"{colour}-{shape}" for shape in SHAPES for colour in COLOURS)


def smoke_sha256(seed: int) -> str:
    """The checksum of the generator config (version, seed, sizes) that identifies the data."""
    config = {"generator": "smoke", "version": SMOKE_VERSION, "seed": seed, "sizes": SMOKE_SIZES}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _patch_mask(shape: str) -> np.ndarray:
    mask = np.ones((PATCH_SIZE, PATCH_SIZE), dtype=bool)
    if shape == "stripes":
        mask[1::2] = False  # one-pixel horizontal stripes
    return mask


def make_smoke(split: str, seed: int = 0) -> ImageDataset:
    """Generate the smoke split `split` ("train" or "test"); the same seed gives the same arrays."""
    check_choice("split", split, SPLITS)
    n = SMOKE_SIZES[split]
    rng = np.random.default_rng((seed, SPLITS.index(split)))
    labels = rng.permutation(np.arange(n) % len(SMOKE_CLASSES)).astype(np.int64)
    images = rng.integers(0, BACKGROUND_MAX, (n, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.int16)
    corners = rng.integers(0, IMAGE_SIZE - PATCH_SIZE + 1, (n, 2))
    brightness = rng.integers(*PATCH_BRIGHTNESS, n)
    noise = rng.integers(-PIXEL_NOISE, PIXEL_NOISE + 1, (n, PATCH_SIZE, PATCH_SIZE, 3))
    colours = np.array(list(COLOURS.values()), dtype=np.int16)
    for i, label in enumerate(labels):
        colour = colours[label % len(COLOURS)]
        mask = _patch_mask(SHAPES[label // len(COLOURS)])
        y, x = corners[i]
        patch = images[i, y : y + PATCH_SIZE, x : x + PATCH_SIZE]
        patch[mask] = colour * brightness[i] + noise[i][mask]
    images = np.clip(images, 0, 255).astype(np.uint8)
    return ImageDataset(images, labels, SMOKE_CLASSES, f"generated smoke data (seed {seed})", smoke_sha256(seed))
