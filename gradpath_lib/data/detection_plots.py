"""Pictures of detection data: canvases with their instance masks, boxes and class names.

`draw_detections` draws ground truth or predictions on one matplotlib axis (pass `scores` for
predictions); `plot_detection_samples` shows the first canvases of a dataset. The class names are
placed when the figure is drawn (`BoxLabels`), with the final layout and resolution: each stays
inside its canvas and off the labels already placed, where the canvas leaves room. matplotlib is
imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .detection import DetectionDataset

MASK_ALPHA = 0.45  # opacity of the mask overlay
CLASS_COLOURS = "tab10"  # matplotlib colormap, one colour per class (cycled beyond ten)
LABEL_FONTSIZE = 6  # points
LABEL_PAD = 0.5  # points of coloured background around a label's text


def label_position(box: tuple[float, float, float, float], size: tuple[float, float],
                   canvas: tuple[float, float, float, float],
                   placed: Sequence[tuple[float, float, float, float]]) -> tuple[float, float]:
    """The top-left corner (x, y) for a label of `size` (width, height) naming `box` (x0, y0, x1, y1),
    all in one coordinate system whose y grows downwards (image rows). Candidates, in order: just
    above the box, inside its top edge, just below it, inside its bottom edge, then every height of
    the canvas from the box's top outwards; each is shifted sideways into `canvas` (x0, y0, x1, y1).
    The first candidate inside the canvas that overlaps none of the `placed` rectangles
    (x0, y0, x1, y1) wins; when none is free (a crowded canvas), the first one inside the canvas."""
    (bx0, by0, bx1, by1), (width, height), (cx0, cy0, cx1, cy1) = box, size, canvas

    def inside(x: float, y: float) -> tuple[float, float]:
        return min(max(x, cx0), max(cx1 - width, cx0)), min(max(y, cy0), max(cy1 - height, cy0))

    tops = [by0 - height, by0, by1, by1 - height]
    steps = int((cy1 - cy0 - height) // (height / 2)) + 1 if cy1 - cy0 > height else 1
    tops += sorted((cy0 + k * height / 2 for k in range(steps)), key=lambda y: abs(y - by0))
    candidates = [inside(bx0, top) for top in tops]
    for x, y in candidates:
        if all(x + width <= px0 or px1 <= x or y + height <= py0 or py1 <= y for px0, py0, px1, py1 in placed):
            return x, y
    return candidates[0]


def _box_labels_artist() -> type:
    """The `BoxLabels` artist class (built on first use, so that importing this module needs no matplotlib)."""
    from matplotlib.artist import Artist
    from matplotlib.text import Text

    class BoxLabels(Artist):
        """Class-name labels of the boxes on one image axis, placed at draw time by `label_position`
        (in display pixels, from the axis's final transform); `placed` keeps the last drawing's
        label rectangles (display pixels, x0, y0, x1, y1 with y downwards) for inspection."""

        def __init__(self, ax: Any, specs: list[tuple[tuple[float, ...], str, Any]],
                     extent: tuple[float, float, float, float]) -> None:
            super().__init__()
            self.axes, self.specs, self.extent = ax, specs, extent
            self.set_figure(ax.figure)
            self.set_zorder(4)
            self.placed: list[tuple[float, float, float, float]] = []

        def get_window_extent(self, renderer: Any = None) -> Any:
            """The canvas's extent on the display: the labels never leave it."""
            from matplotlib.transforms import Bbox

            x0, y0, x1, y1 = self.extent
            corners = self.axes.transData.transform([(x0, y0), (x1, y1)])
            return Bbox.from_extents(*corners.min(axis=0), *corners.max(axis=0))

        def draw(self, renderer: Any) -> None:
            if not self.get_visible():
                return
            flip = self.figure.bbox.height  # display y grows upwards; label_position wants rows (downwards)

            def to_rows(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
                (ax0, ay0), (ax1, ay1) = self.axes.transData.transform([(x0, y0), (x1, y1)])
                return min(ax0, ax1), flip - max(ay0, ay1), max(ax0, ax1), flip - min(ay0, ay1)

            canvas = to_rows(*self.extent)
            pad = renderer.points_to_pixels(LABEL_PAD)
            self.placed = []
            for box, text, colour in self.specs:
                label = Text(0, 0, text, fontsize=LABEL_FONTSIZE, color="white", ha="left", va="top",
                             transform=None, bbox={"facecolor": colour, "edgecolor": "none", "pad": LABEL_PAD})
                label.set_figure(self.figure)
                extent = label.get_window_extent(renderer)
                size = (extent.width + 2 * pad, extent.height + 2 * pad)
                x, y = label_position(to_rows(*box), size, canvas, self.placed)
                self.placed.append((x, y, x + size[0], y + size[1]))
                label.set_position((x + pad, flip - y - pad))
                label.draw(renderer)
            self.stale = False

    return BoxLabels


def draw_detections(
    ax: Any,
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    masks: np.ndarray | None = None,
    scores: np.ndarray | None = None,
) -> Any:
    """Draw an image (H, W, 3) with masks (K, H, W), xyxy boxes (K, 4) and class names (+ scores) on `ax`;
    returns the labels' `BoxLabels` artist (their places are chosen when the figure is drawn)."""
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
    specs = []
    for k, (box, label) in enumerate(zip(boxes, labels)):
        colour = colours(int(label) % colours.N)
        x0, y0, x1, y1 = (float(v) for v in box)
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1))
        text = class_names[int(label)] + ("" if scores is None else f" {float(scores[k]):.2f}")
        specs.append(((x0 - 0.5, y0 - 0.5, x1 - 0.5, y1 - 0.5), text, colour))
    height, width = image.shape[:2]
    artist = _box_labels_artist()(ax, specs, (-0.5, -0.5, width - 0.5, height - 0.5))
    ax.add_artist(artist)
    ax.set_axis_off()
    return artist
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
