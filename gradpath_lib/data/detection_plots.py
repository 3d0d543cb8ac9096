"""Pictures of detection data: canvases with their instance masks, boxes and class names.

`draw_detections` draws ground truth or predictions on one matplotlib axis (pass `scores` for
predictions); `plot_detection_samples` shows the first canvases of a dataset. matplotlib is
imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .detection import DetectionDataset

MASK_ALPHA = 0.45  # opacity of the mask overlay
CLASS_COLOURS = "tab10"  # matplotlib colormap, one colour per class (cycled beyond ten)


def draw_detections(
    ax: Any,
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    masks: np.ndarray | None = None,
    scores: np.ndarray | None = None,
) -> None:
    """Draw an image (H, W, 3) with masks (K, H, W), xyxy boxes (K, 4) and class names (+ scores) on `ax`."""
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    colours = colormaps[CLASS_COLOURS]
    overlay = image.astype(np.float32) / 255
    if masks is not None:
        for mask, label in zip(masks, labels):
            colour = np.array(colours(int(label) % colours.N)[:3], dtype=np.float32)
            region = mask.astype(bool)
            overlay[region] = (1 - MASK_ALPHA) * overlay[region] + MASK_ALPHA * colour
    ax.imshow(overlay, interpolation="nearest")
    for k, (box, label) in enumerate(zip(boxes, labels)):
        colour = colours(int(label) % colours.N)
        x0, y0, x1, y1 = (float(v) for v in box)
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1))
        text = class_names[int(label)] + ("" if scores is None else f" {float(scores[k]):.2f}")
        ax.text(x0 - 0.5, y0 - 0.5, text, fontsize=6, color="white", va="bottom",
                bbox={"facecolor": colour, "edgecolor": "none", "pad": 0.5})
    ax.set_axis_off()


def plot_detection_samples(dataset: DetectionDataset, count: int = 8, columns: int = 4) -> Any:
    """A figure of the first `count` images of `dataset` with their ground-truth masks, boxes and classes."""
    import matplotlib.pyplot as plt

    count = min(count, len(dataset.images))
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.2 * rows), squeeze=False)
    for index, ax in enumerate(axes.flat):
        if index < count:
            target = dataset.targets[index]
            draw_detections(ax, np.asarray(dataset.images[index]), target["boxes"], target["labels"],
                            dataset.class_names, masks=target["masks"])
        else:
            ax.set_axis_off()
    fig.tight_layout()
    return fig
