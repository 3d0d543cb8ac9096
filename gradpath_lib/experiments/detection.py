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

from ..prose import join_words
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


def size_range_sentence(stats: pd.DataFrame) -> str:
    """What `cifar_det_table`'s "all" rows say about COCO's size ranges: per split, how many small,
    medium and large objects there are, and which ranges are missing (a range missing from the
    val split has no AP: the detection tables show — for it), in one clause when every split
    misses the same ranges."""
    from ..data.cifar_det import AREA_RANGES

    ranges = list(AREA_RANGES)
    totals = stats[stats["class"] == "all"].set_index("split")[ranges].astype(int)
    counts = "; ".join(f"{split}: " + join_words([f"{totals.loc[split, r]} {r}" for r in ranges]) + " objects"
                       for split in totals.index)
    missing = {split: [r for r in ranges if totals.loc[split, r] == 0] for split in totals.index}
    if not any(missing.values()):
        return f"At this scale, {counts}: every COCO size range occurs in every split."
    def measured(absent: list[str]) -> str:
        return f"AP{''.join(r[0] for r in absent)} cannot be measured (the detection tables show — for it)"

    shared = next(iter(missing.values()))
    if shared and all(absent == shared for absent in missing.values()):  # the same ranges missing everywhere
        nobody = "neither split has" if len(missing) == 2 else "no split has"
        consequences = ["the detectors never train on such objects"] if "train" in missing else []
        consequences += [measured(shared)] if "val" in missing else []
        return (f"At this scale, {counts}. Not every size range occurs: {nobody} {join_words(shared, 'or')} objects"
                + (", so " + join_words(consequences) if consequences else "") + ".")
    notes = []
    for split, absent in missing.items():
        if absent:
            consequence = f"so {measured(absent)}" if split == "val" else "so the detectors never train on such objects"
            notes.append(f"the {split} split has no {join_words(absent, 'or')} objects, {consequence}")
    return f"At this scale, {counts}. Not every size range occurs: " + "; ".join(notes) + "."


def stop_gradient_table(frame: pd.DataFrame, costs: pd.DataFrame, scale: str) -> pd.DataFrame:
    """Table 3 (detection form): costs and APs (`detection_table`) beside each detector's longest
    shortest and longest gradient path (`classification.path_lengths`, the same analysis)."""
    from ..detection_tables import detection_table
    from .classification import path_lengths

    table = detection_table(frame, costs, MAIN_APS)
    return table.merge(path_lengths(list(table["model"]), scale), on="model", how="left")


def _path_change(what: str, before: int, after: int) -> str:
    """ "raises the longest path from 13 to 14", "keeps the longest path at 13", "cuts ... from 55 to 39"."""
    if after == before:
        return f"keeps {what} at {before}"
    return f"{'raises' if after > before else 'cuts'} {what} from {before} to {after}"


def stop_gradient_path_text(table: pd.DataFrame) -> str:
    """What each stop does to YOLOR-CSP's gradient paths, from `stop_gradient_table`'s last two
    columns (in layers): the identity stop and the block stop against the unmodified detector, and
    whether the identity stop's shortest paths stay shorter than its depth (each length stated once)."""
    paths = table.set_index("model")[["longest shortest path", "longest path"]].astype(int)
    base = paths.loc["yolor-csp"]
    parts = []
    for model, name in (("yolor-csp-sg-identity", "the identity stop"), ("yolor-csp-sg-block", "the block stop")):
        row = paths.loc[model]
        parts.append(f"{name} (`{model}`) "
                     + _path_change("the longest shortest gradient path", base["longest shortest path"],
                                    row["longest shortest path"])
                     + " and " + _path_change("the longest path", base["longest path"], row["longest path"]))
    text = "In our detectors at this preset (path lengths in layers, against `yolor-csp`): " + "; ".join(parts) + "."
    identity = paths.loc["yolor-csp-sg-identity"]
    if identity["longest shortest path"] < identity["longest path"]:  # the lengths are stated just above
        text += (" So the identity stop does not make the shortest paths as long as the network is deep: its longest "
                 "shortest path stays below its longest path.")
    return text


def finished_record(runs: list[Run], model: str) -> dict[str, Any] | None:
    """The record of `model`'s first run that ended ok, or None."""
    return next((record for config, record in runs
                 if config["model"] == model and record is not None and record["status"] == "ok"), None)


def recorded_samples(runs: list[Run], model: str) -> list[dict[str, Any]] | None:
    """The `sample_predictions` of `model`'s first run that ended ok; None when there is no such record
    or it predates sample predictions."""
    record = finished_record(runs, model)
    return None if record is None else record["metrics"].get("sample_predictions")


def prediction_counts(samples: Sequence[dict[str, Any]]) -> list[int]:
    """How many detections each recorded canvas of `samples` holds (all score at least the recorded
    threshold, `train.detect.SAMPLE_SCORE`)."""
    return [len(sample["detections"]) for sample in samples]


def prediction_caption(model: str, samples: Sequence[dict[str, Any]], score: float) -> str:
    """The line above `model`'s prediction picture: how many detections scoring at least `score` it shows
    on each canvas, or plainly that it shows none."""
    counts = prediction_counts(samples)
    if not any(counts):
        return f"**{model}** finds nothing scoring ≥ {score:g} on the {len(counts)} canvases."
    per_canvas = join_words([str(n) for n in counts])
    return (f"**{model}**: {per_canvas} detection{'s' if counts != [1] else ''} scoring ≥ {score:g} on the "
            f"{len(counts)} canvas{'es' if len(counts) > 1 else ''} ({sum(counts)} in all).")


def prediction_figure(runs: list[Run], model: str) -> Any:
    """`model`'s recorded detections on the first val canvases (the `sample_predictions` of its first run
    that ended ok) drawn on the run's CIFAR-Det split; None when no such record holds them."""
    from ..data.cifar_det import load_cifar_det
    from ..train.det_plots import plot_predictions

    samples = recorded_samples(runs, model)
    if samples is None:
        return None
    record = finished_record(runs, model)
    val = load_cifar_det(record["config"]["scale"], "val", progress=False)
    return plot_predictions(samples, val, columns=len(samples))


def show_predictions(ctx: Setup, runs: list[Run], models: Sequence[str]) -> list[Path]:
    """Draw, save (as `<chapter>_predictions_<model>`) and show, under its `prediction_caption`, the
    `prediction_figure` of each model whose recorded samples hold a detection in chapter `ctx`; then
    name the models that found nothing (no picture: it would show the bare canvases), and those it
    could not draw and why; returns the saved figures."""
    import matplotlib.pyplot as plt

    from ..notebook import show_markdown
    from ..train.detect import SAMPLE_SCORE

    saved, unfinished, predating, empty = [], [], [], []
    for model in models:
        samples = recorded_samples(runs, model)
        if samples is None:
            (unfinished if finished_record(runs, model) is None else predating).append(model)
            continue
        if not any(prediction_counts(samples)):
            empty.append(model)
            continue
        figure = prediction_figure(runs, model)
        show_markdown(prediction_caption(model, samples, SAMPLE_SCORE))
        saved.append(ctx.save_figure(figure, f"{ctx.chapter.name}_predictions_{model}"))
        plt.show()
        plt.close(figure)
    if empty:
        show_markdown(f"**No detection scoring ≥ {SAMPLE_SCORE:g} on any recorded canvas:** "
                      + ", ".join(f"`{m}`" for m in empty)
                      + ". These detectors find nothing at this scale's training, so no picture is drawn for them.")
    if unfinished:
        show_markdown("**No finished run recorded for:** " + ", ".join(f"`{m}`" for m in unfinished) + ".")
    if predating:
        show_markdown("**Records that predate sample predictions:** " + ", ".join(f"`{m}`" for m in predating)
                      + ". Rerun them with `gradpath train --force` to add them.")
    return saved


def runs_in_points(runs: list[Run], metric: str) -> list[Run]:
    """Copies of `runs` whose record histories give `metric` (an AP fraction) in points, like the
    tables (x `detection_tables.POINTS`); other values and missing records stay as they are."""
    from ..detection_tables import POINTS

    scaled: list[Run] = []
    for config, record in runs:
        if record is not None and record.get("metrics", {}).get("history"):
            history = [{**epoch, metric: None if epoch.get(metric) is None else epoch[metric] * POINTS}
                       for epoch in record["metrics"]["history"]]
            record = {**record, "metrics": {**record["metrics"], "history": history}}
        scaled.append((config, record))
    return scaled


def show_box_ap_curves(ctx: Setup, runs: list[Run]) -> Path:
    """Draw, save (as `<chapter>_box_ap`) and show every run's box AP, in points like the tables, at each
    evaluated epoch (the history of its record: every `eval_every`-th epoch and the final evaluation);
    returns the figure's path."""
    import matplotlib.pyplot as plt

    from ..figures.curves import training_curves

    figure = training_curves(runs_in_points(runs, "bbox_AP"),
                             "bbox_AP", "Box AP on the validation canvases during training (EMA weights)",
                             ylabel="box AP (COCOeval, points: 0 to 100)")
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
