"""ImageNet-1k from its class folders, streamed: decoded and augmented on the host, batches on the device.

Layout: `<data dir>/imagenet/{train,val}/<wnid>/*.JPEG|jpg|png` (the usual class-folder layout, the
validation images sorted into their class folders). Classes are the sorted wnids, the same in both
splits; images are listed sorted by class, then file name. `imagenet_problems` is the one check of
that layout (the trainer's loader and the paper-scale dry run, `gradpath check-paper`, both use it).

Augmentation is the standard ImageNet recipe, done with PIL in DataLoader workers: training views
are RandomResizedCrop(224, scale (0.08, 1), ratio (3/4, 4/3)) with bilinear resizing and a random
horizontal flip; evaluation views are the shorter side resized to 256 (bilinear), then the central
224 square. Pixels are normalized on the device with the usual ImageNet mean and std.

Every random choice of an epoch (order, one crop seed per image, flips) is drawn up front from the
trainer's epoch generator and sent with the image index to the workers, so an epoch is the same
whatever the number of workers, and a resumed run replays the epochs an uninterrupted one would.
Under torch.distributed each rank decodes only its contiguous share of every global batch.

The record's dataset checksum is a sha256 of the sorted file names and byte sizes of both splits
(reading 150 GB of pixels for a checksum would take longer than an epoch): it tells copies and
subsets apart, not two copies whose files differ at equal size.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..distributed import local_slice, shard
from ..errors import GradpathError
from ..train.batches import Batch, loader_workers, normalize_batch
from .paths import DATA_ENV, data_dir

IMAGENET_DIRNAME = "imagenet"
IMAGENET_SPLITS = ("train", "val")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
MISSING_SHOWN = 3  # how many missing names an error lists
CROP_SIZE = 224  # the training and evaluation input of the CSPNet ImageNet results
RESIZE_SIZE = 256  # evaluation: shorter side resized to this, then the central CROP_SIZE square
CROP_SCALE = (0.08, 1.0)  # RandomResizedCrop: fraction of the image area kept
CROP_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop: aspect ratios (width / height) drawn log-uniformly
CROP_ATTEMPTS = 10  # draws before RandomResizedCrop falls back to a central crop (as torchvision)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # per-channel pixel mean and std in [0, 1] units
IMAGENET_STD = (0.229, 0.224, 0.225)
SEED_LIMIT = 1 << 62  # per-image crop seeds are drawn in [0, SEED_LIMIT)

# What one worker is asked for: (image index, crop seed or None for the evaluation view, flip).
ViewSpec = tuple[int, int | None, bool]


def imagenet_dir() -> Path:
    """Where ImageNet is read from: `<data dir>/imagenet` (the data dir is `$GRADPATH_DATA`)."""
    return data_dir() / IMAGENET_DIRNAME


def is_image(name: str) -> bool:
    """Whether a file name has one of the image suffixes (any case)."""
    return name.lower().endswith(IMAGE_SUFFIXES)


def class_folders(folder: Path) -> list[str]:
    """The sorted names of the sub-folders of `folder` (one per class)."""
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


def first_image(folder: Path) -> Path | None:
    """Any one image file in `folder`, or None if it holds none."""
    with os.scandir(folder) as entries:
        return next((Path(e.path) for e in entries if is_image(e.name)), None)


def undecodable(path: Path) -> str | None:
    """Why `path` is not a readable image, or None if PIL can read it."""
    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, SyntaxError) as err:  # PIL's verify() raises SyntaxError for a broken PNG
        return f"{path} is not a readable image ({err})"
    return None


def imagenet_problems(root: Path, num_classes: int | None = None) -> list[str]:
    """What is missing or wrong in an ImageNet class-folder layout under `root` (empty: all fine).

    Checks both splits' folders, that they have class folders (`num_classes` of them, if given),
    the same in both splits, none without an image, and that a sample image decodes.
    """
    problems, classes = [], {}
    for split in IMAGENET_SPLITS:
        folder = root / split
        if not folder.is_dir():
            problems.append(f"missing folder {folder} (expected {split}/<wnid>/*.JPEG)")
            continue
        names = class_folders(folder)
        if not names:
            problems.append(f"{folder} has no class folders (expected {split}/<wnid>/*.JPEG)")
            continue
        classes[split] = names
        if num_classes is not None and len(names) != num_classes:
            problems.append(f"{folder} has {len(names)} class folders, the models expect {num_classes}")
        empty = [name for name in names if first_image(folder / name) is None]
        if empty:
            problems.append(f"{len(empty)} class folder(s) of {folder} hold no image, e.g. {empty[:MISSING_SHOWN]}")
        else:
            problems += filter(None, [undecodable(first_image(folder / names[0]))])
    if len(classes) == len(IMAGENET_SPLITS) and classes["train"] != classes["val"]:
        only = sorted(set(classes["train"]) ^ set(classes["val"]))
        problems.append(f"the class folders of {root / 'train'} and {root / 'val'} differ, e.g. {only[:MISSING_SHOWN]} "
                        "is in one split only")
    return problems


@dataclass(frozen=True)
class SplitListing:
    """Every image file of one split: relative names, labels and byte sizes, sorted by class then name."""

    folder: Path
    classes: tuple[str, ...]
    files: np.ndarray  # bytes "<wnid>/<file>" (one flat buffer: workers share it without copying)
    labels: np.ndarray  # int64 index into `classes`
    sizes: np.ndarray  # int64 bytes


def list_split(folder: Path, classes: Sequence[str]) -> SplitListing:
    """The images of `folder`/<class>/ for each of `classes` (label = its position)."""
    names: list[bytes] = []
    labels: list[int] = []
    sizes: list[int] = []
    for label, wnid in enumerate(classes):
        with os.scandir(folder / wnid) as entries:
            images = sorted((e.name, e.stat().st_size) for e in entries if e.is_file() and is_image(e.name))
        names += [os.fsencode(f"{wnid}/{name}") for name, _ in images]
        labels += [label] * len(images)
        sizes += [size for _, size in images]
    return SplitListing(folder, tuple(classes), np.array(names), np.array(labels, dtype=np.int64),
                        np.array(sizes, dtype=np.int64))


def listing_sha256(listings: Sequence[SplitListing]) -> str:
    """sha256 of each split's folder name, then its relative file names and byte sizes, in listing order."""
    digest = hashlib.sha256()
    for listing in listings:
        digest.update(os.fsencode(listing.folder.name) + b"\0")
        for name, size in zip(listing.files.tolist(), listing.sizes.tolist()):
            digest.update(name + b"\0" + str(size).encode() + b"\n")
    return digest.hexdigest()


def random_resized_box(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (left, top, right, bottom) in a `width` x `height` image, drawn from `rng`.

    As torchvision: up to CROP_ATTEMPTS draws of an area fraction in CROP_SCALE and a log-uniform
    aspect ratio in CROP_RATIO; if none fits, the largest central box with its ratio clamped to CROP_RATIO.
    """
    area = width * height
    log_low, log_high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(CROP_ATTEMPTS):
        target = area * rng.uniform(*CROP_SCALE)
        aspect = math.exp(rng.uniform(log_low, log_high))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    if width / height < CROP_RATIO[0]:
        w, h = width, round(width / CROP_RATIO[0])
    elif width / height > CROP_RATIO[1]:
        w, h = round(height * CROP_RATIO[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def eval_view(image: Image.Image) -> Image.Image:
    """The shorter side resized to RESIZE_SIZE (bilinear), then the central CROP_SIZE square."""
    width, height = image.size
    if width <= height:
        size = (RESIZE_SIZE, int(RESIZE_SIZE * height / width))
    else:
        size = (int(RESIZE_SIZE * width / height), RESIZE_SIZE)
    resized = image.resize(size, Image.Resampling.BILINEAR)
    left, top = round((size[0] - CROP_SIZE) / 2), round((size[1] - CROP_SIZE) / 2)
    return resized.crop((left, top, left + CROP_SIZE, top + CROP_SIZE))


def view(image: Image.Image, seed: int | None, flip: bool) -> Image.Image:
    """A CROP_SIZE square of `image`: its RandomResizedCrop drawn by `seed` (eval view if None), maybe flipped."""
    if seed is None:
        out = eval_view(image)
    else:
        box = random_resized_box(*image.size, np.random.default_rng(seed))
        out = image.crop(box).resize((CROP_SIZE, CROP_SIZE), Image.Resampling.BILINEAR)
    return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else out


def recipe_augmentation(crop_padding: int, flip: bool) -> tuple[bool, bool]:
    """(RandomResizedCrop on, flip on): what the classification recipe's augmentation fields mean here.

    The recipe's `crop_padding` is the CIFAR pad-crop in pixels; for ImageNet it only switches:
    any value > 0 gives RandomResizedCrop(224, scale (0.08, 1), ratio (3/4, 4/3)), 0 gives every
    training image its evaluation view (resize 256, center-crop 224). `flip` is the random
    horizontal flip, as for CIFAR.
    """
    return crop_padding > 0, flip


class FolderImages(Dataset):
    """The images of a `SplitListing`, decoded with PIL into uint8 (CROP_SIZE, CROP_SIZE, 3) views."""

    def __init__(self, listing: SplitListing):
        self.listing = listing

    def __len__(self) -> int:
        return len(self.listing.labels)

    def __getitem__(self, spec: ViewSpec) -> tuple[torch.Tensor, int]:
        index, seed, flip = spec
        path = self.listing.folder / os.fsdecode(self.listing.files[index])
        try:
            with Image.open(path) as image:
                picture = view(image.convert("RGB"), seed, flip)
        except OSError as err:
            raise GradpathError(f"{path} is not a readable image ({err}); replace or remove it") from err
        return torch.from_numpy(np.array(picture)), int(self.listing.labels[index])


class StreamedImages:
    """One split streamed from its folder (`ClassificationData`): DataLoader workers decode and
    augment, batches arrive on `device` (pinned memory and non-blocking copies on CUDA)."""

    def __init__(self, listing: SplitListing, device: torch.device, workers: int):
        self.images = FolderImages(listing)
        self.device = device
        self.workers = workers
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, -1, 1, 1).to(device)
        self.std = torch.tensor(IMAGENET_STD).view(1, -1, 1, 1).to(device)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one view."""
        return 3, CROP_SIZE, CROP_SIZE

    def rank_train_batches(
        self, batch_size: int, generator: torch.Generator, crop_padding: int, flip: bool
    ) -> Iterator[Batch]:
        """This rank's share (`shard`) of every full global batch of one shuffled, augmented epoch
        (`recipe_augmentation` says what `crop_padding` and `flip` turn on)."""
        n = len(self)
        order = torch.randperm(n, generator=generator)
        seeds = torch.randint(0, SEED_LIMIT, (n,), generator=generator)
        flips = torch.randint(0, 2, (n,), generator=generator, dtype=torch.bool)
        random_crop, flip = recipe_augmentation(crop_padding, flip)

        def specs() -> Iterator[list[ViewSpec]]:
            for start in range(0, n - batch_size + 1, batch_size):
                idx = shard(order[start:start + batch_size])
                yield [(i, s if random_crop else None, f and flip)
                       for i, s, f in zip(idx.tolist(), seeds[idx].tolist(), flips[idx].tolist())]

        return self.load(specs())

    def rank_eval_batches(self, batch_size: int) -> Iterator[Batch]:
        """This rank's part (`local_slice`) of the split, in order, as evaluation views."""
        part = range(len(self))[local_slice(len(self))]
        return self.load([(i, None, False) for i in part[start:start + batch_size]]
                         for start in range(0, len(part), batch_size))

    def load(self, batches: Iterable[list[ViewSpec]]) -> Iterator[Batch]:
        """The views of each list of `batches`, decoded by the workers, normalized on the device."""
        # The loader's own generator (never drawn from by our workers) keeps the global RNG untouched.
        loader = DataLoader(self.images, batch_sampler=batches, num_workers=self.workers,
                            pin_memory=self.device.type == "cuda", generator=torch.Generator())
        for x, y in loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            yield normalize_batch(x, self.mean, self.std), y


def load_imagenet(
    device: torch.device, root: Path | None = None, workers: int | None = None
) -> tuple[StreamedImages, StreamedImages, dict[str, Any]]:
    """(train, val, provenance) of ImageNet under `root` (default `imagenet_dir()`), streamed to `device`.

    Raises GradpathError naming every problem of the layout (see `imagenet_problems`).
    """
    root = imagenet_dir() if root is None else root
    problems = imagenet_problems(root)
    if problems:
        raise GradpathError(
            f"ImageNet, the paper-scale dataset, is not readable under {root} (expected "
            f"{root}/{{train,val}}/<wnid>/*.JPEG|jpg|png; set {DATA_ENV} to the folder holding "
            f"{IMAGENET_DIRNAME}/):\n  - " + "\n  - ".join(problems))
    classes = class_folders(root / "train")
    train, val = (list_split(root / split, classes) for split in IMAGENET_SPLITS)
    workers = loader_workers() if workers is None else workers
    provenance = {
        "name": IMAGENET_DIRNAME,
        "source": f"ImageNet class folders {IMAGENET_DIRNAME}/{{train,val}} of the data directory ({len(train.labels)} train and "
                  f"{len(val.labels)} val images, {len(classes)} classes; checksum of the sorted file "
                  "names and sizes)",
        "sha256": listing_sha256([train, val]),
        "classes": len(classes),
    }
    return StreamedImages(train, device, workers), StreamedImages(val, device, workers), provenance
