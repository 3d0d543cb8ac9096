"""The paper-scale runs as documented configs, and a dry run that checks them without training.

- **ImageNet-1k** (Table 2 as in CSPNet; Table 4 in the library's classification form): the
  classifiers at their `paper` presets with a 1000-class head, the `paper` recipe of
  `gradpath_lib.train.recipes` (SGD 0.1 per 256 images, 100 epochs, cosine), 224x224 inputs.
  Data layout: `<data dir>/imagenet/{train,val}/<wnid>/*.JPEG` (the usual class-folder layout, with
  the validation images sorted into their class folders), checked by `data.imagenet.imagenet_problems`,
  the same check the trainer's ImageNet loader makes before it streams the images.
- **MS COCO 2017** (Tables 3 and 5-8): the YOLOR detectors at their `paper` presets (80 classes),
  the detection `paper` recipe of `gradpath_lib.train.detect` (300 epochs, batch 64, 640x640).
  Data layout: `<data dir>/coco/annotations/instances_{train,val}2017.json` and
  `<data dir>/coco/{train,val}2017/*.jpg`, as distributed by cocodataset.org.
  The paper's Table 4 (deep VoVNet) is a COCO experiment too; the registry has no VoVNet detector
  backbone, so its paper-scale config here is the ImageNet classification form the book uses.

`check_paper` is the dry run behind `gradpath check-paper`: every config is normalized, every model
is built at its paper preset (its parameters counted, FLOPs on request), and the data layout is
checked under the data directory (`GRADPATH_DATA`); a missing or malformed piece raises one error
naming every problem found and the expected layout. The command prints the models it built before
that error, so that a machine without the data still checks the builds. Nothing is trained; the ImageNet configs train
with `gradpath train --model NAME --scale paper` (or `ensure_run`) once the data is in place.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data.coco import COCO_DIRNAME, COCO_SPLITS, PAPER_COCO_CONFIG, coco_paths
from .data.detection import read_coco_json
from .data.imagenet import CROP_SIZE, IMAGENET_DIRNAME, MISSING_SHOWN, imagenet_problems
from .data.paths import data_dir
from .errors import GradpathError, check_choice
from .models.cost import count_flops, count_params
from .models.registry import create_model, model_kwargs
from .runs import normalize_config
from .store import run_id
from .train.classify import classify_config
from .train.detect import detect_config

COCO_INPUT = PAPER_COCO_CONFIG["input_size"]


@dataclass(frozen=True)
class PaperTable:
    """One table of the paper at the paper scale: its dataset and the registry models it trains."""

    title: str
    dataset: str  # "imagenet" or "coco"
    models: tuple[str, ...]


PAPER_TABLES: dict[str, PaperTable] = {
    "table2": PaperTable("CSPNet applied to popular backbones (ImageNet, as in the CSPNet paper)", "imagenet",
                         ("resnet", "csp-resnet", "resnext", "csp-resnext", "darknet", "csp-darknet",
                          "densenet", "csp-densenet")),
    "table3": PaperTable("Stop gradient on YOLOR-CSP (COCO)", "coco",
                         ("yolor-csp", "yolor-csp-sg-identity", "yolor-csp-sg-block")),
    "table4": PaperTable("Deep VoVNet and gradient path planning (ImageNet form; the paper's is COCO)", "imagenet",
                         ("vovnet", "vovnet-deep", "vovnet-deep-planned", "vovnet-deep-planned-csp")),
    "table5": PaperTable("Layer level: YOLOR-PRN vs YOLOR-v3 (COCO)", "coco", ("yolor-v3", "yolor-prn")),
    "table6": PaperTable("Stage level: YOLOR-CSP and its fusions vs YOLOR-v3 (COCO)", "coco",
                         ("yolor-v3", "yolor-csp", "yolor-csp-first", "yolor-csp-last")),
    "table7": PaperTable("Network level: ELAN stack settings vs YOLOR-v3 (COCO)", "coco",
                         ("yolor-v3", "yolor-elan", "yolor-elan-b1n1s", "yolor-elan-b2n2")),
    "table8": PaperTable("YOLOR-v3, -PRN, -CSP, -ELAN and YOLOv5 compared (COCO)", "coco",
                         ("yolor-v3", "yolor-prn", "yolor-csp", "yolor-elan", "yolov5")),
}


def paper_configs(table: str, seeds: Sequence[int] = (0,)) -> list[dict[str, Any]]:
    """The run configs of paper `table` (one per model and seed), ready for `ensure_run`."""
    check_choice("paper table", table, PAPER_TABLES)
    spec = PAPER_TABLES[table]
    if spec.dataset == "imagenet":
        return [classify_config(model, "paper", seed) for model in spec.models for seed in seeds]
    return [detect_config(model, "paper", seed) for model in spec.models for seed in seeds]


def coco_problems(root: Path, num_classes: int) -> list[str]:
    """What is missing or wrong in a COCO 2017 layout under `root` (empty: all fine)."""
    problems = []
    for split in COCO_SPLITS:
        annotation_file, image_dir = coco_paths(root, split)
        if not annotation_file.is_file():
            problems.append(f"missing annotation file {annotation_file}")
        if not image_dir.is_dir():
            problems.append(f"missing image folder {image_dir} (expected {split}2017/*.jpg)")
        if not (annotation_file.is_file() and image_dir.is_dir()):
            continue
        try:
            dataset = read_coco_json(annotation_file)
        except GradpathError as err:
            problems.append(str(err))
            continue
        if len(dataset["categories"]) != num_classes:
            problems.append(f"{annotation_file} has {len(dataset['categories'])} categories, the models expect "
                            f"{num_classes}")
        present = set(os.listdir(image_dir))
        missing = sorted(image["file_name"] for image in dataset["images"] if image["file_name"] not in present)
        if missing:
            problems.append(f"{len(missing)} image(s) listed in {annotation_file.name} are not in {image_dir}, "
                            f"e.g. {missing[:MISSING_SHOWN]}")
    return problems


DATASET_CHECKS = {"imagenet": (IMAGENET_DIRNAME, imagenet_problems), "coco": (COCO_DIRNAME, coco_problems)}
INPUT_SIZES = {"imagenet": CROP_SIZE, "coco": COCO_INPUT}


def paper_runs(tables: Sequence[str] | None = None,
               models: Sequence[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(table, config) of every run of `tables` (default: all), only of `models` if given; raises
    GradpathError for an unknown table or a model none of the tables trains, listing the valid ones."""
    names = list(tables or PAPER_TABLES)
    for name in names:
        check_choice("paper table", name, PAPER_TABLES)
    valid = list(dict.fromkeys(model for name in names for model in PAPER_TABLES[name].models))
    unknown = [model for model in models or () if model not in valid]
    if unknown:
        raise GradpathError(f"model(s) {', '.join(unknown)} not in tables {', '.join(names)}; their models: "
                            f"{', '.join(valid)}")
    return [(name, config) for name in names for config in paper_configs(name)
            if models is None or config["model"] in models]


def model_rows(runs: Sequence[tuple[str, dict[str, Any]]], flops: bool = False) -> list[dict[str, Any]]:
    """Build every model of `runs` at its paper preset: one row per run (table, model, dataset, params,
    FLOPs at the paper input size with `flops`, else None)."""
    costs: dict[str, tuple[int, int | None]] = {}  # run id -> (params, FLOPs): a model shared by tables is built once
    rows = []
    for name, config in runs:
        dataset = PAPER_TABLES[name].dataset
        key = run_id(normalize_config(config))
        if key not in costs:
            model = create_model(config["model"], "paper", **config["model_kwargs"])
            size = INPUT_SIZES[dataset]
            costs[key] = count_params(model), count_flops(model, (3, size, size)) if flops else None
        params, model_flops = costs[key]
        rows.append({"table": name, "model": config["model"], "dataset": dataset, "params": params,
                     "flops": model_flops})
    return rows


def check_data(runs: Sequence[tuple[str, dict[str, Any]]], root: str | Path | None = None) -> None:
    """Raise GradpathError naming every missing or malformed piece of the data `runs` need under
    `root` (default: the data directory)."""
    root = data_dir() if root is None else Path(root)
    problems = []
    for dataset in sorted({PAPER_TABLES[name].dataset for name, _ in runs}):
        dirname, problems_of = DATASET_CHECKS[dataset]
        classes = {model_kwargs(c["model"], "paper", **c["model_kwargs"])["num_classes"]
                   for name, c in runs if PAPER_TABLES[name].dataset == dataset}
        problems += [f"{dataset}: {p}" for n in sorted(classes) for p in problems_of(root / dirname, n)]
    if problems:
        raise GradpathError(f"paper-scale data is not ready under {root} (set GRADPATH_DATA to the folder holding "
                            f"{IMAGENET_DIRNAME}/ and {COCO_DIRNAME}/; see the book's scale-out section):\n  - "
                            + "\n  - ".join(problems))


def check_paper(
    tables: Sequence[str] | None = None,
    *,
    models: Sequence[str] | None = None,
    root: str | Path | None = None,
    flops: bool = False,
) -> list[dict[str, Any]]:
    """Dry-run the paper-scale configs of `tables` (default: all), optionally only `models`.

    Builds every model (`model_rows`), then checks the data of every dataset they need under `root`
    (`check_data`); returns one row per model (table, model, dataset, params, FLOPs or None).
    Raises GradpathError naming every missing or malformed piece of data.
    """
    runs = paper_runs(tables, models)
    rows = model_rows(runs, flops)
    check_data(runs, root)
    return rows
