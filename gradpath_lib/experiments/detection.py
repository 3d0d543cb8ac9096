"""The detection chapters: CIFAR-Det (the dataset), Tables 5, 6, 7, 8 and Table 3 (detection form).

Every detector of every table is trained with the scale's one detection recipe
(`gradpath_lib.train.detect.detect_config`), so a network that appears in several tables is one
run, recorded once and shared (YOLOR-v3 is the baseline of four of them). The tables come from
`gradpath_lib.detection_tables`; the paper's claims and their verdicts from `tables.verdict_frame`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..tables import Run
from . import Chapter, no_runs, register_chapter

if TYPE_CHECKING:
    from ..notebook import Setup

TABLE5_MODELS = ("yolor-v3", "yolor-prn")
TABLE6_MODELS = ("yolor-v3", "yolor-csp", "yolor-csp-first", "yolor-csp-last")
TABLE7_MODELS = ("yolor-v3", "yolor-elan", "yolor-elan-b1n1s", "yolor-elan-b2n2")
TABLE3_DETECTION_MODELS = ("yolor-csp", "yolor-csp-sg-identity", "yolor-csp-sg-block")
TABLE8_MODELS = ("yolor-v3", "yolor-prn", "yolor-csp", "yolor-elan", "yolov5")
# The AP columns each table shows (keys of detection_tables.AP_COLUMNS).
MAIN_APS = ("ap_box", "ap50_box", "ap75_box", "ap_mask", "ap50_mask", "ap75_mask")
SIZE_APS = ("aps_box", "apm_box", "apl_box", "aps_mask", "apm_mask", "apl_mask")


def detection_runs(models: Sequence[str]) -> Any:
    """A `Chapter.runs` function: one `detect` run per model and seed, with the scale's recipe."""
    def runs(scale: str, seeds: list[int]) -> list[dict[str, Any]]:
        from ..train.detect import detect_config

        return [detect_config(model, scale, seed) for model in models for seed in seeds]

    return runs


def cifar_det_table(scale: str) -> pd.DataFrame:
    """Object counts per split, class (rows, plus "all") and COCO size range (columns, plus "all")
    of CIFAR-Det at `scale` (smoke or mini)."""
    from ..data.cifar_det import SPLITS, cifar_det_stats, load_cifar_det

    stats = []
    for split in SPLITS:
        counts = cifar_det_stats(load_cifar_det(scale, split, progress=False)).reset_index()
        stats.append(counts.assign(split=split)[["split", *counts.columns]])
    table = pd.concat(stats, ignore_index=True)
    table.columns.name = None
    return table


def stop_gradient_table(frame: pd.DataFrame, costs: pd.DataFrame, scale: str) -> pd.DataFrame:
    """Table 3 (detection form): costs and APs (`detection_table`) beside each detector's longest
    shortest and longest gradient path (`classification.path_lengths`, the same analysis)."""
    from ..detection_tables import detection_table
    from .classification import path_lengths

    table = detection_table(frame, costs, MAIN_APS)
    return table.merge(path_lengths(list(table["model"]), scale), on="model", how="left")


def finished_record(runs: list[Run], model: str) -> dict[str, Any] | None:
    """The record of `model`'s first run that ended ok, or None."""
    return next((record for config, record in runs
                 if config["model"] == model and record is not None and record["status"] == "ok"), None)


def prediction_figure(runs: list[Run], model: str) -> Any:
    """`model`'s recorded detections on the first val canvases (the `sample_predictions` of its first run
    that ended ok) drawn on the run's CIFAR-Det split; None when no such record holds them."""
    from ..data.cifar_det import load_cifar_det
    from ..train.det_plots import plot_predictions

    record = finished_record(runs, model)
    if record is None or "sample_predictions" not in record["metrics"]:
        return None
    samples = record["metrics"]["sample_predictions"]
    val = load_cifar_det(record["config"]["scale"], "val", progress=False)
    return plot_predictions(samples, val, columns=len(samples))


def show_predictions(ctx: Setup, runs: list[Run], models: Sequence[str]) -> list[Path]:
    """Draw, save (as `<chapter>_predictions_<model>`) and show each model's `prediction_figure` in
    chapter `ctx`, then name the models it could not draw and why; returns the saved figures."""
    import matplotlib.pyplot as plt

    from ..notebook import show_markdown

    saved, unfinished, predating = [], [], []
    for model in models:
        figure = prediction_figure(runs, model)
        if figure is None:
            (unfinished if finished_record(runs, model) is None else predating).append(model)
            continue
        show_markdown(f"**{model}**")
        saved.append(ctx.save_figure(figure, f"{ctx.chapter.name}_predictions_{model}"))
        plt.show()
        plt.close(figure)
    if unfinished:
        show_markdown("**No finished run recorded for:** " + ", ".join(f"`{m}`" for m in unfinished) + ".")
    if predating:
        show_markdown("**Records that predate sample predictions:** " + ", ".join(f"`{m}`" for m in predating)
                      + ". Rerun them with `gradpath train --force` to add them.")
    return saved


def show_box_ap_curves(ctx: Setup, runs: list[Run]) -> Path:
    """Draw, save (as `<chapter>_box_ap`) and show every run's box AP at each evaluated epoch (the
    history of its record: every `eval_every`-th epoch and the final evaluation); returns the figure's path."""
    import matplotlib.pyplot as plt

    from ..figures.curves import training_curves

    figure = training_curves(runs, "bbox_AP", "Box AP on the validation canvases during training (EMA weights)",
                             ylabel="box AP (COCOeval, 0 to 1)")
    path = ctx.save_figure(figure, f"{ctx.chapter.name}_box_ap")
    plt.show()
    plt.close(figure)
    return path


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
