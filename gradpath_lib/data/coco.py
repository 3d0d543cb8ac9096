"""MS COCO 2017 instances for the paper scale, as a `DetectionDataset`.

Expected layout under `root` (by default `$GRADPATH_DATA/coco`, see `default_coco_root`):
`annotations/instances_{split}2017.json` and `{split}2017/*.jpg`, as distributed by cocodataset.org. The annotation file is checked when loaded (readable JSON,
required keys, known image and category ids, boxes inside their images; errors name the file
and the problem). Images and targets are lazy: at the paper scale an image is read from disk and
its masks are decoded only when indexed, i.e. per batch, since COCO does not fit in memory (the
detection trainer streams it: `gradpath_lib.train.det_data.StreamedDetections`).
Crowd regions (iscrowd=1) are left out of the training targets; COCOeval still uses them from
the annotation file to ignore detections on crowds.

Paper-scale detection config (`PAPER_COCO_CONFIG`): 640x640 input and 300 epochs. The paper's
text does not state its schedule; 300 epochs is the schedule of the YOLOR / YOLOv7 training
recipes whose models it modifies, and is an assumption of ours.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import GradpathError, check_choice
from .checksums import file_checksum
from .detection import DetectionDataset, coco_from_dict, image_targets, read_coco_json, sorted_categories
from .paths import data_dir

COCO_SPLITS = ("train", "val")
COCO_DIRNAME = "coco"
PAPER_COCO_CONFIG = {"input_size": 640, "epochs": 300, "train_split": "train", "eval_split": "val"}


class LazyImages(Sequence):
    """The images of a COCO split, read as uint8 (H, W, 3) RGB when indexed, of the (height, width)
    `sizes` their annotation file gives (checked when read)."""

    def __init__(self, paths: list[Path], sizes: list[tuple[int, int]]):
        self.paths, self.sizes = paths, sizes

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
        except OSError as err:
            raise GradpathError(f"cannot read COCO image {path}: {err}") from err
        height, width = self.sizes[index]
        if pixels.shape[:2] != (height, width):
            raise GradpathError(f"COCO image {path} is {pixels.shape[1]}x{pixels.shape[0]} px but its annotation "
                                f"file says {width}x{height}")
        return pixels


class LazyTargets(Sequence):
    """The training targets of a COCO split (boxes, labels, masks), decoded when indexed."""

    def __init__(self, coco: Any, image_ids: list[int], label_of: dict[int, int]):
        self.coco, self.image_ids, self.label_of = coco, image_ids, label_of

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return image_targets(self.coco, self.image_ids[index], self.label_of)


def default_coco_root() -> Path:
    """Where COCO 2017 is looked for unless a root is given: `<data dir>/coco`."""
    return data_dir() / COCO_DIRNAME


def coco_paths(root: str | Path, split: str) -> tuple[Path, Path]:
    """The annotation file and image folder of a COCO 2017 split under `root`."""
    check_choice("COCO split", split, COCO_SPLITS)
    root = Path(root)
    return root / "annotations" / f"instances_{split}2017.json", root / f"{split}2017"


def load_coco(root: str | Path | None, split: str) -> DetectionDataset:
    """COCO 2017 `split` ("train" or "val") under `root` (None: `default_coco_root()`), read lazily."""
    root = default_coco_root() if root is None else Path(root)
    annotation_file, image_dir = coco_paths(root, split)
    if not image_dir.is_dir():
        raise GradpathError(f"COCO image folder {image_dir} does not exist; expected {split}2017/*.jpg under {root}")
    dataset = read_coco_json(annotation_file)
    categories, label_of = sorted_categories(dataset)
    image_ids = [image["id"] for image in dataset["images"]]
    file_names = [image.get("file_name", f"{image['id']:012d}.jpg") for image in dataset["images"]]
    sizes = [(int(image["height"]), int(image["width"])) for image in dataset["images"]]
    return DetectionDataset(
        images=LazyImages([image_dir / name for name in file_names], sizes),
        annotation_file=annotation_file,
        targets=LazyTargets(coco_from_dict(dataset), image_ids, label_of),
        image_ids=image_ids,
        categories=categories,
        sha256=file_checksum(annotation_file),
        source=f"MS COCO 2017 {split} ({annotation_file.name})",
    )

