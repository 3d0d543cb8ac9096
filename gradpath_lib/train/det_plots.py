"""Pictures of a detector's predictions (boxes, classes, scores and masks) on validation canvases."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.detection import DetectionDataset
from ..data.detection_plots import draw_detections
from .det_data import to_float
from .detect import predict

SHOW_SCORE = 0.3  # detections below this score are left out of the picture (COCO eval keeps them)


def plot_predictions(model: nn.Module, dataset: DetectionDataset, n: int = 6, columns: int = 3) -> Any:
    """A figure of the first `n` canvases of `dataset` with `model`'s detections scoring at least SHOW_SCORE."""
    import matplotlib.pyplot as plt

    n = min(n, len(dataset.images))
    device = next(model.parameters()).device
    images = np.asarray(dataset.images[:n])
    detections = predict(model, to_float(torch.from_numpy(images).to(device)))
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.4 * rows), squeeze=False)
    for index, ax in enumerate(axes.flat):
        if index >= n:
            ax.set_axis_off()
            continue
        found = detections[index]
        shown = (found.scores >= SHOW_SCORE).cpu().numpy()
        draw_detections(ax, images[index], found.boxes.cpu().numpy()[shown], found.labels.cpu().numpy()[shown],
                        dataset.class_names, masks=found.masks.cpu().numpy()[shown], scores=found.scores.cpu().numpy()[shown])
    fig.tight_layout()
    return fig
