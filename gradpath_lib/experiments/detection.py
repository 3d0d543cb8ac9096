"""The detection chapters: CIFAR-Det (the dataset), Tables 5, 6, 7, 8 and Table 3 (detection form).

Every detector of every table is trained with the scale's one detection recipe
(`gradpath_lib.train.detect.detect_config`), so a network that appears in several tables is one
run, recorded once and shared (YOLOR-v3 is the baseline of four of them). The tables come from
`gradpath_lib.detection_tables`; the paper's claims and their verdicts from `tables.verdict_frame`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..tables import Run
from . import Chapter, no_runs, register_chapter

TABLE5_MODELS = ("yolor-v3", "yolor-prn")
TABLE6_MODELS = ("yolor-v3", "yolor-csp", "yolor-csp-first", "yolor-csp-last")
TABLE7_MODELS = ("yolor-v3", "yolor-elan", "yolor-elan-b1n1s", "yolor-elan-b2n2")
TABLE3_DETECTION_MODELS = ("yolor-csp", "yolor-csp-sg-identity", "yolor-csp-sg-block")
TABLE8_MODELS = ("yolor-v3", "yolor-prn", "yolor-csp", "yolor-elan", "yolov5")
# The AP columns each table shows (keys of detection_tables.AP_COLUMNS).
MAIN_APS = ("ap_box", "ap50_box", "ap75_box", "ap_mask", "ap50_mask", "ap75_mask")
SIZE_APS = ("aps_box", "apm_box", "apl_box", "aps_mask", "apm_mask", "apl_mask")
SAMPLE_CANVASES = 8  # canvases shown per CIFAR-Det split
PREDICTION_CANVASES = 3  # val canvases shown per detector in the Table 8 pictures


def detection_runs(models: Sequence[str]) -> Any:
    """A `Chapter.runs` function: one `detect` run per model and seed, with the scale's recipe."""
    def runs(scale: str, seeds: list[int]) -> list[dict[str, Any]]:
        from ..train.detect import detect_config

        return [detect_config(model, scale, seed) for model in models for seed in seeds]

    return runs


def cifar_det_overview(scale: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Object counts per split, class and COCO size range, and a figure of sample canvases (with
    their masks, boxes and classes) per split, for CIFAR-Det at `scale` (smoke or mini)."""
    from ..data.cifar_det import SPLITS, cifar_det_stats, load_cifar_det
    from ..data.detection_plots import plot_detection_samples

    stats, figures = [], {}
    for split in SPLITS:
        dataset = load_cifar_det(scale, split, progress=False)
        counts = cifar_det_stats(dataset).reset_index()
        stats.append(counts.assign(split=split)[["split", *counts.columns]])
        figures[split] = plot_detection_samples(dataset, count=SAMPLE_CANVASES)
    table = pd.concat(stats, ignore_index=True)
    table.columns.name = None
    return table, figures


def prediction_figures(runs: list[Run], models: Sequence[str], results_dir: str | Path) -> tuple[dict[str, Any], list[str]]:
    """Pictures of each model's detections on the first val canvases, from its first recorded
    seed's saved weights; also the models without saved weights (their pictures are not drawn)."""
    from ..data.cifar_det import load_cifar_det
    from ..train.det_plots import plot_predictions
    from ..train.detect import load_trained_detector

    figures, lacking = {}, []
    val = None
    for model in models:
        recorded = [config for config, record in runs if config["model"] == model and record
                    and record["status"] == "ok"]
        detector = load_trained_detector(recorded[0], results_dir) if recorded else None
        if detector is None:
            lacking.append(model)
            continue
        if val is None:
            val = load_cifar_det(recorded[0]["scale"], "val", progress=False)
        figures[model] = plot_predictions(detector, val, n=PREDICTION_CANVASES, columns=PREDICTION_CANVASES)
    return figures, lacking


register_chapter(Chapter("cifar_det", "CIFAR-Det: a detection and segmentation set from CIFAR images", no_runs, 140))
register_chapter(Chapter("table5", "Table 5: the layer level, YOLOR-PRN vs YOLOR-v3",
                         detection_runs(TABLE5_MODELS), 150))
register_chapter(Chapter("table6", "Table 6: the stage level, YOLOR-CSP and its fusions vs YOLOR-v3",
                         detection_runs(TABLE6_MODELS), 160))
register_chapter(Chapter("table7", "Table 7: the network level, ELAN stack settings vs YOLOR-v3",
                         detection_runs(TABLE7_MODELS), 170))
register_chapter(Chapter("table3_detection", "Table 3: stop gradient on the YOLOR-CSP detector",
                         detection_runs(TABLE3_DETECTION_MODELS), 175))
register_chapter(Chapter("table8", "Table 8: the gradient-path designs compared",
                         detection_runs(TABLE8_MODELS), 180))
