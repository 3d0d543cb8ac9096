"""The detection dataset every detection loader returns, and reading COCO instances files.

Both CIFAR-Det (`cifar_det.py`) and MS COCO 2017 (`coco.py`) are described by a COCO instances
JSON; this module checks such a file (clear errors naming the file and the problem), turns its
annotations into per-image training targets, and encodes masks as COCO RLE. Label `i` (0-based,
what a detector predicts) is the category `categories[i]`, categories sorted by id.

pycocotools is imported inside the functions, so the core library imports without it.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GradpathError

# COCO's object size ranges by pixel area (COCOeval's areaRng): small < 32^2 <= medium < 96^2 <= large.
AREA_RANGES = {"small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, math.inf)}
# A box may stick out of its image by this much (COCO's own boxes are rounded to 0.01 px).
BOX_TOLERANCE_PX = 1.0
REQUIRED_KEYS = {
    "images": ("id", "width", "height"),
    "categories": ("id", "name"),
    "annotations": ("id", "image_id", "category_id", "bbox", "area", "segmentation"),
}


@dataclass(frozen=True)
class DetectionDataset:
    """Images with boxes, labels and instance masks, plus the COCO JSON that is their ground truth."""

    images: np.ndarray | Sequence[np.ndarray]  # uint8 (N, H, W, 3), or a lazy sequence of (H, W, 3)
    annotation_file: Path  # COCO instances JSON (ground truth for COCOeval)
    # per image: "boxes" float32 (K, 4) xyxy px, "labels" int64 (K,), "masks" uint8 (K, H, W)
    targets: Sequence[dict[str, np.ndarray]]
    image_ids: list[int]  # COCO image ids, aligned with images
    categories: list[dict[str, Any]]  # COCO categories, sorted by id; label i is categories[i]
    sha256: str  # checksum identifying the data (generator config + source, or the annotation file)
    source: str  # human-readable provenance

    @property
    def class_names(self) -> list[str]:
        """Category names in label order."""
        return [c["name"] for c in self.categories]

    def category_id(self, label: int) -> int:
        """The COCO category id of the 0-based `label` (what predictions must carry)."""
        return int(self.categories[label]["id"])

    def image_sizes(self) -> list[tuple[int, int]]:
        """(height, width) of every image: the canvases' size, the sizes a lazy sequence lists, or each image's."""
        if isinstance(self.images, np.ndarray):
            return [(int(self.images.shape[1]), int(self.images.shape[2]))] * len(self.images)
        listed = getattr(self.images, "sizes", None)
        return list(listed) if listed is not None else [tuple(np.asarray(image).shape[:2]) for image in self.images]


def area_range(area: float) -> str:
    """The COCO size range ("small", "medium" or "large") of an object's pixel area."""
    return next(name for name, (low, high) in AREA_RANGES.items() if low <= area < high)


def masks_to_rle(masks: np.ndarray) -> list[dict[str, Any]]:
    """COCO RLEs ({"size": [H, W], "counts": str}) of binary masks (K, H, W)."""
    from pycocotools import mask as mask_utils

    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise GradpathError(f"masks_to_rle needs masks of shape (K, H, W), got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    fortran = np.asfortranarray(masks.transpose(1, 2, 0) != 0, dtype=np.uint8)
    return [{"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
            for rle in mask_utils.encode(fortran)]


def read_coco_json(path: str | Path) -> dict[str, Any]:
    """The parsed COCO instances file at `path`, checked; errors name the file and the problem."""
    path = Path(path)
    try:
        dataset = json.loads(path.read_bytes())
    except FileNotFoundError as err:
        raise GradpathError(f"COCO annotation file {path} does not exist") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise GradpathError(f"malformed COCO annotation file {path}: not readable JSON ({err})") from err
    problem = coco_problem(dataset)
    if problem:
        raise GradpathError(f"malformed COCO annotation file {path}: {problem}")
    return dataset


def coco_problem(dataset: Any) -> str | None:
    """What is wrong with a parsed COCO instances dict (first problem found), or None."""
    if not isinstance(dataset, dict):
        return f"the top level is a {type(dataset).__name__}, not an object"
    for section, keys in REQUIRED_KEYS.items():
        entries = dataset.get(section)
        if not isinstance(entries, list):
            return f"missing the list {section!r}"
        for index, entry in enumerate(entries):
            missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
            if missing:
                return f"{section}[{index}] lacks {missing}"
    images = {image["id"]: image for image in dataset["images"]}
    category_ids = {category["id"] for category in dataset["categories"]}
    for ann in dataset["annotations"]:
        if ann["category_id"] not in category_ids:
            return (f"annotation {ann['id']} has unknown category_id {ann['category_id']}; "
                    f"categories are {sorted(category_ids)}")
        image = images.get(ann["image_id"])
        if image is None:
            return f"annotation {ann['id']} refers to image_id {ann['image_id']}, which is not in 'images'"
        problem = _box_problem(ann["bbox"], image["width"], image["height"])
        if problem:
            return f"annotation {ann['id']} (image {ann['image_id']}): {problem}"
    return None


def _box_problem(bbox: Any, width: float, height: float) -> str | None:
    """Why an [x, y, w, h] box is unusable in a `width` x `height` image, or None."""
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
        return f"bbox {bbox!r} is not four numbers [x, y, w, h]"
    x, y, w, h = bbox
    if w < 0 or h < 0:
        return f"bbox {bbox} has a negative size"
    tol = BOX_TOLERANCE_PX
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        return f"bbox {bbox} lies outside the {width}x{height} image"
    return None


def coco_from_dict(dataset: dict[str, Any]) -> Any:
    """A `pycocotools.coco.COCO` index of an already checked instances dict, without its prints."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def image_targets(coco: Any, image_id: int, label_of: dict[int, int]) -> dict[str, np.ndarray]:
    """Training targets of one image: xyxy boxes, 0-based labels and decoded masks; crowd regions left out."""
    image = coco.imgs[image_id]
    height, width = int(image["height"]), int(image["width"])
    anns = [a for a in coco.imgToAnns[image_id] if not a.get("iscrowd", 0)]
    boxes = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    masks = decode_rles([coco.annToRLE(a) for a in anns], height, width)
    labels = np.array([label_of[a["category_id"]] for a in anns], dtype=np.int64)
    return {"boxes": boxes, "labels": labels, "masks": masks}


def decode_rles(rles: list[dict[str, Any]], height: int, width: int) -> np.ndarray:
    """Binary masks uint8 (K, H, W) of COCO RLEs (str or bytes counts)."""
    from pycocotools import mask as mask_utils

    if not rles:
        return np.zeros((0, height, width), np.uint8)
    with warnings.catch_warnings():  # pycocotools' Cython predates numpy 2's copy keyword; harmless
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        return np.ascontiguousarray(mask_utils.decode(rles).transpose(2, 0, 1))


def sorted_categories(dataset: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[int, int]]:
    """The categories sorted by id, and the map category id -> 0-based label."""
    categories = sorted(dataset["categories"], key=lambda c: c["id"])
    return categories, {c["id"]: label for label, c in enumerate(categories)}
