"""Pictures of a detector's recorded predictions (boxes, classes, scores and masks) on validation canvases.

The predictions are a run record's `sample_predictions` (see `gradpath_lib.train.detect`): COCO
result records with RLE masks, so drawing them needs the canvases but not the weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..data.detection import DetectionDataset, decode_rles
from ..data.detection_plots import draw_detections
from ..errors import GradpathError


def sample_arrays(sample: dict[str, Any], dataset: DetectionDataset) -> tuple[np.ndarray, ...]:
    """(canvas (H, W, 3), xyxy boxes (K, 4), labels (K,), masks (K, H, W), scores (K,)) of one recorded sample."""
    label_of = {category["id"]: label for label, category in enumerate(dataset.categories)}
    found = sample["detections"]
    unknown = sorted({d["category_id"] for d in found} - set(label_of))
    if sample["image_id"] not in dataset.image_ids or unknown:
        raise GradpathError(f"recorded sample predictions of image {sample['image_id']} "
                            f"(unknown categories: {unknown or 'none'}) do not belong to this dataset's canvases; "
                            "the data changed since the run: rerun it with `gradpath train --force`")
    image = np.asarray(dataset.images[dataset.image_ids.index(sample["image_id"])])
    boxes = np.array([d["bbox"] for d in found], dtype=np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    labels = np.array([label_of[d["category_id"]] for d in found], dtype=np.int64)
    masks = decode_rles([d["segmentation"] for d in found], *image.shape[:2])
    scores = np.array([d["score"] for d in found], dtype=np.float64)
    return image, boxes, labels, masks, scores


def plot_predictions(samples: list[dict[str, Any]], dataset: DetectionDataset, columns: int = 3) -> Any:
    """A figure of recorded sample predictions (one per canvas) drawn on their canvases of `dataset`."""
    import matplotlib.pyplot as plt

    rows = -(-len(samples) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.4 * rows), squeeze=False)
    for index, ax in enumerate(axes.flat):
        if index >= len(samples):
            ax.set_axis_off()
            continue
        image, boxes, labels, masks, scores = sample_arrays(samples[index], dataset)
        draw_detections(ax, image, boxes, labels, dataset.class_names, masks=masks, scores=scores)
    fig.tight_layout()
    return fig
