"""CIFAR-Det: a generated COCO-format detection and instance-segmentation set made of real CIFAR images.

Each canvas has a smooth random background (a colour gradient, a blurry colour texture and pixel
noise) and 1-8 objects. An object is a CIFAR image (train images for the train split, test
images for val) resized to a random size and cut by a random silhouette (ellipse, polygon, star
or smooth blob); its class is the CIFAR label (COCO category ids 1..10, CIFAR names). Objects
are pasted from the smallest to the largest (near objects look bigger and cover far ones);
masks are the visible parts, boxes are the masks' extents, and an object whose visible area
falls below a threshold is left out entirely (neither annotated nor drawn, so no unlabelled
object remains on the canvas). Object sides are uniform in 16-128 px, so small, medium and large
objects (COCO's 32^2 / 96^2 px area ranges) all occur: about 39 / 53 / 7 % at the mini scale
(generator v2: 39 707 train and 3 951 val objects).

The smoke scale takes its objects from the smoke classification images, so it needs no download.
Everything is deterministic by seed (numpy Generator) and cached under the cache directory as a
uint8 array (N, H, W, 3) `.npy` plus a COCO instances JSON with RLE masks, keyed by the
generator version, scale settings, split, seed and the source checksum.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import multiprocessing
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from tqdm import tqdm

from ..errors import GradpathError, check_choice
from ..store import atomic_write_bytes
from . import cache_dir, load_classification
from .dataset import ImageDataset
from .detection import (
    AREA_RANGES,
    DetectionDataset,
    area_range,
    coco_from_dict,
    image_targets,
    masks_to_rle,
    read_coco_json,
    sorted_categories,
)

# Bump when the generator's output changes: it is part of the cache key and the dataset checksum.
GENERATOR_VERSION = 2  # 2: one generator per canvas (parallel generation)
GENERATION_CHUNK = 250  # canvases per task of a generation worker
BUILD_WORKERS = 16  # generation processes of `gradpath data build cifar-det`, at most
SPLITS = ("train", "val")
SOURCE_SPLIT = {"train": "train", "val": "test"}  # objects of val canvases are CIFAR test images
SHAPES = ("ellipse", "polygon", "star", "blob")
OUTLINE_POINTS = 48  # vertices of the ellipse and blob outlines
ASPECT_RANGE = (2 / 3, 3 / 2)  # object width / height, log-uniform
BACKGROUND_TEXTURE_GRID = 5  # the background texture is a 5 x 5 random grid, upsampled
BACKGROUND_TEXTURE_STD = 25.0
BACKGROUND_NOISE_STD = 6.0


@dataclass(frozen=True)
class CifarDetSettings:
    """What a scale's CIFAR-Det looks like."""

    canvas: int  # square canvas side, px
    object_sides: tuple[int, int]  # min and max object side before the aspect ratio, px
    max_objects: int  # each canvas has 1..max_objects objects (before dropping hidden ones)
    min_visible_area: int  # objects with fewer visible pixels are left out
    canvases: tuple[tuple[str, int], ...]  # (split, number of canvases)
    source: str  # classification dataset the objects come from


SETTINGS = {
    # 64 px canvases; sides from 8 px (not 16/3: a 5 px object leaves nothing for a stride-8
    # detector to learn) to 128/3 px. 64 + 32 canvases keep the smoke detector's epochs to seconds.
    "smoke": CifarDetSettings(64, (8, 42), 8, 12, (("train", 64), ("val", 32)), "smoke"),
    # 192 px canvases with 16-128 px objects; objects under 48 visible px (~7x7) are dropped.
    # 10 000 training canvases (1.1 GB as uint8) stay resident on the GPU and are few enough for a
    # small detector to see each one many times in its ~2 GPU-minute budget; 1 000 val canvases
    # (~3 900 objects, ~270 of them large) keep every AP, APl included, from resting on a handful.
    "mini": CifarDetSettings(192, (16, 128), 8, 48, (("train", 10_000), ("val", 1_000)), "cifar10"),
}


@dataclass
class PlacedObject:
    """One object before compositing: its pixels, silhouette, top-left corner and 0-based class."""

    patch: np.ndarray  # uint8 (h, w, 3)
    silhouette: np.ndarray  # bool (h, w)
    top: int
    left: int
    label: int


def check_cifar_det_scale(scale: str) -> CifarDetSettings:
    """The settings of `scale`, or an error saying which scales have CIFAR-Det."""
    if scale == "paper":
        raise GradpathError("CIFAR-Det exists at scales smoke and mini; the paper scale uses MS COCO 2017 "
                            "(gradpath_lib.data.coco.load_coco)")
    check_choice("CIFAR-Det scale", scale, SETTINGS)
    return SETTINGS[scale]


def silhouette(shape: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A random filled outline of kind `shape` touching a width x height box, as a bool mask (height, width)."""
    check_choice("silhouette", shape, SHAPES)
    if shape == "ellipse":
        angles, radii = np.linspace(0, 2 * np.pi, OUTLINE_POINTS, endpoint=False), np.ones(OUTLINE_POINTS)
    elif shape == "polygon":
        corners = int(rng.integers(3, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, corners))
        radii = rng.uniform(0.7, 1.0, corners)
    elif shape == "star":
        points = int(rng.integers(5, 8))
        angles = rng.uniform(0, 2 * np.pi) + np.arange(2 * points) * np.pi / points
        radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, rng.uniform(0.4, 0.6))
    else:  # blob: a radius made of a few low harmonics
        angles = np.linspace(0, 2 * np.pi, OUTLINE_POINTS, endpoint=False)
        harmonics = np.arange(2, 5)
        amplitudes = rng.uniform(0, 0.3, harmonics.size) / harmonics * 2
        phases = rng.uniform(0, 2 * np.pi, harmonics.size)
        radii = 1 + (amplitudes[:, None] * np.cos(harmonics[:, None] * angles + phases[:, None])).sum(0)
    xs, ys = radii * np.cos(angles), radii * np.sin(angles)
    xs = (xs - xs.min()) / np.ptp(xs) * width  # stretch the outline to the whole box
    ys = (ys - ys.min()) / np.ptp(ys) * height
    image = Image.new("L", (width, height), 0)
    ImageDraw.Draw(image).polygon(list(zip(xs.tolist(), ys.tolist())), fill=1)
    return np.asarray(image, dtype=bool)


def background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random background (size, size, 3): a colour gradient, a blurry colour texture and noise."""
    coords = np.arange(size, dtype=np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    ramp = coords[None, :] * np.cos(angle) + coords[:, None] * np.sin(angle)
    ramp = (ramp - ramp.min()) / np.ptp(ramp)
    start, end = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    image = start + ramp[..., None] * (end - start)
    coarse = rng.normal(0, BACKGROUND_TEXTURE_STD, (BACKGROUND_TEXTURE_GRID, BACKGROUND_TEXTURE_GRID, 3))
    for channel in range(3):  # bicubic upsampling of a coarse random grid gives smooth blotches
        grid = Image.fromarray(coarse[..., channel].astype(np.float32), mode="F")
        image[..., channel] += np.asarray(grid.resize((size, size), Image.BICUBIC))
    image += rng.normal(0, BACKGROUND_NOISE_STD, image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def sample_objects(rng: np.random.Generator, source: ImageDataset, settings: CifarDetSettings) -> list[PlacedObject]:
    """1..max_objects random objects for one canvas (source image, size, silhouette, place), smallest first."""
    low, high = settings.object_sides
    objects = []
    for _ in range(int(rng.integers(1, settings.max_objects + 1))):
        index = int(rng.integers(len(source.images)))
        side = rng.uniform(low, high)
        aspect = math.exp(rng.uniform(*np.log(ASPECT_RANGE)))
        width = int(np.clip(round(side * math.sqrt(aspect)), low, high))
        height = int(np.clip(round(side / math.sqrt(aspect)), low, high))
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        mask = silhouette(shape, width, height, rng)
        patch = np.asarray(Image.fromarray(source.images[index]).resize((width, height), Image.BILINEAR))
        top = int(rng.integers(settings.canvas - height + 1))
        left = int(rng.integers(settings.canvas - width + 1))
        objects.append(PlacedObject(patch, mask, top, left, int(source.labels[index])))
    # Stack from small to large, as perspective does (near objects look bigger and cover far ones);
    # in random order occlusion leaves only ~2 % of objects large at the mini scale, sorted ~7 %.
    return sorted(objects, key=lambda obj: int(obj.silhouette.sum()))


def composite(
    canvas: np.ndarray, objects: list[PlacedObject], min_visible_area: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paste `objects` in order onto a copy of `canvas`; returns (image, visible masks (K, H, W) bool, labels (K,)).

    Objects whose visible area would fall below `min_visible_area` are left out and not drawn;
    removing an occluder only uncovers pixels, so every kept object stays above the threshold.
    """
    areas = np.bincount(_instance_map(canvas.shape[:2], objects).ravel(), minlength=len(objects) + 1)
    kept = [obj for number, obj in enumerate(objects, 1) if areas[number] >= min_visible_area]
    visible = _instance_map(canvas.shape[:2], kept)
    image = canvas.copy()
    for obj in kept:
        region = image[obj.top : obj.top + obj.patch.shape[0], obj.left : obj.left + obj.patch.shape[1]]
        region[obj.silhouette] = obj.patch[obj.silhouette]
    masks = visible[None] == np.arange(1, len(kept) + 1)[:, None, None]
    return image, masks, np.array([obj.label for obj in kept], dtype=np.int64)


def _instance_map(shape: tuple[int, ...], objects: list[PlacedObject]) -> np.ndarray:
    """Per pixel, the 1-based number of the topmost object covering it (0 = background)."""
    numbers = np.zeros(shape, dtype=np.int32)
    for number, obj in enumerate(objects, 1):
        height, width = obj.silhouette.shape
        numbers[obj.top : obj.top + height, obj.left : obj.left + width][obj.silhouette] = number
    return numbers


def mask_annotations(masks: np.ndarray, labels: np.ndarray, image_id: int, first_id: int) -> list[dict[str, Any]]:
    """COCO annotations of visible masks: RLE segmentation, area = pixel count, bbox = mask extent."""
    from pycocotools import mask as mask_utils

    rles = masks_to_rle(masks)
    boxes = mask_utils.toBbox([{**rle, "counts": rle["counts"].encode()} for rle in rles]) if rles else []
    return [
        {"id": first_id + k, "image_id": image_id, "category_id": int(label) + 1, "iscrowd": 0,
         "area": int(mask.sum()), "bbox": [float(v) for v in box], "segmentation": rle}
        for k, (mask, label, box, rle) in enumerate(zip(masks, labels, boxes, rles))
    ]


def generate_canvas(source: ImageDataset, settings: CifarDetSettings, seed: int, split: str,
                    index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Canvas `index` of a split: (image, visible masks, labels), from its own generator (seed, split, index)."""
    rng = np.random.default_rng((seed, SPLITS.index(split), index))
    objects = sample_objects(rng, source, settings)
    return composite(background(settings.canvas, rng), objects, settings.min_visible_area)


_WORKER_SOURCE: dict[str, ImageDataset] = {}  # the source images, in a generation worker process


def _keep_source(source: ImageDataset) -> None:
    _WORKER_SOURCE["source"] = source


def _canvas_range(settings: CifarDetSettings, seed: int, split: str, start: int, stop: int,
                  source: ImageDataset | None = None) -> list[tuple[np.ndarray, list[dict[str, Any]]]]:
    """Canvases start..stop-1 with their annotations (ids still 0), from `source` (in a worker: the
    source it was given when it started)."""
    source = _WORKER_SOURCE["source"] if source is None else source
    out = []
    for index in range(start, stop):
        image, masks, labels = generate_canvas(source, settings, seed, split, index)
        out.append((image, mask_annotations(masks, labels, index + 1, 0)))
    return out


def generate_cifar_det(source: ImageDataset, settings: CifarDetSettings, count: int, seed: int,
                       split: str, progress: bool = False,
                       workers: int = 1) -> tuple[np.ndarray, dict[str, Any]]:
    """`count` canvases (uint8 (N, H, W, 3)) and their COCO instances dict, deterministic by seed.

    Every canvas has its own generator, so the output does not depend on `workers`, the number of
    processes generating chunks of `GENERATION_CHUNK` canvases (spawned: a script that asks for more
    than one needs the `if __name__ == "__main__":` guard; `gradpath data build` uses them)."""
    check_choice("CIFAR-Det split", split, SPLITS)
    chunks = [(start, min(start + GENERATION_CHUNK, count)) for start in range(0, count, GENERATION_CHUNK)]
    workers = min(len(chunks), workers)
    bar = tqdm(total=count, desc=f"CIFAR-Det {split}", unit="canvas", disable=not progress, leave=False)
    parts = []
    if workers <= 1:
        for start, stop in chunks:
            parts.append(_canvas_range(settings, seed, split, start, stop, source))
            bar.update(stop - start)
    else:
        context = multiprocessing.get_context("spawn")  # no fork of a process that may run torch threads
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_keep_source,
                                 initargs=(source,)) as pool:
            for future in [pool.submit(_canvas_range, settings, seed, split, a, b) for a, b in chunks]:
                parts.append(future.result())
                bar.update(len(parts[-1]))
    bar.close()
    size = settings.canvas
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    annotations: list[dict[str, Any]] = []
    for index, (image, canvas_annotations) in enumerate(item for part in parts for item in part):
        images[index] = image
        annotations += [{**a, "id": len(annotations) + k + 1} for k, a in enumerate(canvas_annotations)]
    coco = {
        "info": {"description": f"CIFAR-Det {split} (generator v{GENERATOR_VERSION}, seed {seed})",
                 "source": source.source, "source_sha256": source.sha256},
        "images": [{"id": i + 1, "width": size, "height": size, "file_name": f"{i:06d}.png"} for i in range(count)],
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": name, "supercategory": "cifar"} for k, name in enumerate(source.classes)],
    }
    return images, coco


def cifar_det_sha256(settings: CifarDetSettings, split: str, seed: int, source_sha256: str) -> str:
    """The checksum identifying one generated split: generator version, settings, split, seed and source."""
    key = {"generator": "cifar-det", "version": GENERATOR_VERSION, "settings": asdict(settings),
           "split": split, "seed": seed, "source_sha256": source_sha256}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def cifar_det_paths(scale: str, split: str, seed: int, sha256: str) -> tuple[Path, Path]:
    """The cached image array and COCO JSON of one generated split."""
    stem = cache_dir() / "cifar-det" / f"{scale}-{split}-seed{seed}-{sha256[:16]}"
    return stem.with_suffix(".npy"), stem.with_suffix(".json")


def load_cifar_det(scale: str, split: str, seed: int = 0, progress: bool = True, workers: int = 1) -> DetectionDataset:
    """One CIFAR-Det split ("train" or "val") at `scale` ("smoke" or "mini"), generated once and cached."""
    settings = check_cifar_det_scale(scale)
    check_choice("CIFAR-Det split", split, SPLITS)
    source = load_classification(settings.source, SOURCE_SPLIT[split])
    sha256 = cifar_det_sha256(settings, split, seed, source.sha256)
    images_path, json_path = cifar_det_paths(scale, split, seed, sha256)
    cached = _read_cached(images_path, json_path)
    if cached is None:
        images, coco = generate_cifar_det(source, settings, dict(settings.canvases)[split], seed, split, progress,
                                          workers)
        _write_cache(images_path, json_path, images, coco)
    else:
        images, coco = cached
    categories, label_of = sorted_categories(coco)
    index = coco_from_dict(coco)
    image_ids = [image["id"] for image in coco["images"]]
    return DetectionDataset(
        images=images,
        annotation_file=json_path,
        targets=[image_targets(index, image_id, label_of) for image_id in image_ids],
        image_ids=image_ids,
        categories=categories,
        sha256=sha256,
        source=f"CIFAR-Det {scale}/{split} (generator v{GENERATOR_VERSION}, seed {seed}) from {source.source}",
    )


def _read_cached(images_path: Path, json_path: Path) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The cached canvases and COCO dict, or None (with a warning if damaged) when they must be generated."""
    if not (images_path.exists() and json_path.exists()):
        return None
    try:
        images, coco = np.load(images_path, allow_pickle=False), read_coco_json(json_path)
        if len(coco["images"]) != len(images):
            raise GradpathError(f"{json_path.name} lists {len(coco['images'])} images, the array holds {len(images)}")
    except (OSError, ValueError) as err:  # GradpathError is a ValueError
        warnings.warn(f"CIFAR-Det cache {images_path.with_suffix('')} is damaged ({err}); generating it again")
        return None
    return images, coco


def _write_cache(images_path: Path, json_path: Path, images: np.ndarray, coco: dict[str, Any]) -> None:
    """Write the canvases and their JSON atomically (JSON last, so its presence means complete)."""
    buffer = io.BytesIO()
    np.save(buffer, images, allow_pickle=False)
    try:
        atomic_write_bytes(images_path, buffer.getvalue())
        atomic_write_bytes(json_path, json.dumps(coco, separators=(",", ":")).encode())
    except OSError as err:
        raise GradpathError(
            f"cannot write the CIFAR-Det cache {images_path.parent}: {err}; set GRADPATH_CACHE"
        ) from err


def build_cifar_det(scale: str) -> Path:
    """Generate (or reuse) both CIFAR-Det splits of `scale` with seed 0, in one process per CPU core
    (at most `BUILD_WORKERS`); returns the train split's JSON."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(BUILD_WORKERS, cores)
    train = load_cifar_det(scale, "train", workers=workers)
    load_cifar_det(scale, "val", workers=workers)
    return train.annotation_file


def cifar_det_stats(dataset: DetectionDataset) -> pd.DataFrame:
    """Object counts per class (rows, plus "all") and COCO size range (columns, plus "all") from the annotations."""
    coco = read_coco_json(dataset.annotation_file)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    table = pd.DataFrame({
        "class": [names[a["category_id"]] for a in coco["annotations"]],
        "size": [area_range(a["area"]) for a in coco["annotations"]],
    })
    counts = pd.crosstab(pd.Categorical(table["class"], categories=dataset.class_names),
                         pd.Categorical(table["size"], categories=list(AREA_RANGES)),
                         margins=True, margins_name="all", dropna=False)
    counts.index.name, counts.columns.name = "class", "size"
    return counts
