"""What reproducing the book costs (`gradpath bench reproduce`) and the recorded benches behind it.

**Workload.** For every chapter at a scale: its runs, the training images they process
(epochs x images per epoch x runs; an epoch is the trainer's full batches, the rest is dropped)
and their training FLOPs, taken as 3 x the forward FLOPs of one input per image (torch's FLOP
counter, FLOPs = 2 x MACs; forward plus a backward of about twice the forward). A probe run
counts its target's training (the probe's single forward pass over the data is left out); an
LW-DNA run is counted at its baseline network's FLOPs (its one widened search epoch costs more).

**Time.** Minutes = images / images-per-second of the model's recorded `gradpath bench train`
(our training loop) on the bench's device; for a detector, the training images/s of its recorded
runs (`detector_speed_table`). A model without either is extrapolated from the median training
FLOP/s the benched models reached; with no bench at all the estimate is 'unmeasured'. Training
only: evaluations (for detectors, COCOeval on the CPU) are not counted, and a detector without
recorded runs is extrapolated from the classifiers' FLOP/s although its steps do more (assignment,
mask loss). Benches are JSON files in `<results>/<scale>/bench/` (`bench train --save` writes
`train-<model>.json`, `bench reproduce --measure` benches every classifier of the book first,
`bench jobs --save` writes `jobs-<model>.json`); the book's performance section reads them.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .errors import GradpathError
from .experiments import chapters, default_seeds
from .scales import check_scale
from .store import atomic_write_bytes
from .tables import output_dir, save_table

TRAIN_FLOPS_PER_FORWARD = 3  # the bench's convention (gradpath_lib.bench)
IMAGENET_TRAIN_IMAGES = 1_281_167  # ILSVRC-2012 training set
COCO_TRAIN_IMAGES = 118_287  # MS COCO 2017 train
IMAGENET_SIDE, COCO_SIDE = 224, 640  # the paper's input sizes
UNMEASURED = "unmeasured"
SECONDS_PER_MINUTE = 60.0


def bench_path(results_dir: str | Path, scale: str, name: str) -> Path:
    """`<results>/<scale>/bench/<name>.json`, where a recorded bench lives."""
    return output_dir(results_dir, scale, "bench") / f"{name}.json"


def save_bench(result: dict[str, Any], results_dir: str | Path, name: str) -> Path:
    """Write a bench result (a JSON-able dict with its `scale`) atomically; returns its path."""
    path = bench_path(results_dir, result["scale"], name)
    atomic_write_bytes(path, (json.dumps(result, indent=1, sort_keys=True) + "\n").encode())
    return path


def recorded_benches(results_dir: str | Path, scale: str, kind: str) -> list[dict[str, Any]]:
    """Every recorded bench `<kind>-*.json` of `scale` (kind: "train" or "jobs"), by file name."""
    folder = Path(results_dir) / check_scale(scale) / "bench"
    benches = []
    for path in sorted(folder.glob(f"{kind}-*.json")):
        try:
            benches.append(json.loads(path.read_text()))
        except (OSError, ValueError) as err:
            raise GradpathError(f"corrupted bench file {path}: {err}; delete it and rerun the bench") from err
    return benches


@dataclass(frozen=True)
class Workload:
    """What one run trains: its network, how many images and the shape of one input."""

    model: str
    scale: str
    model_kwargs: str  # JSON, so the workload is hashable for the FLOP count cache
    train_images: int
    input_shape: tuple[int, int, int]

    def forward_flops(self) -> int:
        """FLOPs of one forward pass on one input (counted on the meta device: no compute)."""
        return _forward_flops(self.model, self.scale, self.model_kwargs, self.input_shape)

    def train_flops(self) -> int:
        """3 x forward FLOPs x training images."""
        return TRAIN_FLOPS_PER_FORWARD * self.forward_flops() * self.train_images


@lru_cache(maxsize=None)
def _forward_flops(model: str, scale: str, model_kwargs: str, input_shape: tuple[int, int, int]) -> int:
    from .models.cost import count_flops
    from .models.registry import create_model

    with torch.device("meta"):
        network = create_model(model, scale, **json.loads(model_kwargs))
    return count_flops(network, input_shape)


def train_set(data: str, scale: str) -> tuple[int, int]:
    """(training images, input side in px) of a dataset name used in run configs."""
    if data == "smoke":
        from .data.smoke import IMAGE_SIZE, SMOKE_SIZES

        return SMOKE_SIZES["train"], IMAGE_SIZE
    if data == "cifar10":
        from .data.cifar10 import SPLIT_SIZES

        return SPLIT_SIZES["train"], 32
    if data == "cifar-det":
        from .data.cifar_det import check_cifar_det_scale

        settings = check_cifar_det_scale(scale)
        return dict(settings.canvases)["train"], settings.canvas
    known = {"imagenet": (IMAGENET_TRAIN_IMAGES, IMAGENET_SIDE), "coco": (COCO_TRAIN_IMAGES, COCO_SIDE)}
    if data not in known:
        raise GradpathError(f"unknown dataset {data!r} in a run config; valid choices: "
                            f"smoke, cifar10, cifar-det, {', '.join(known)}")
    return known[data]


def run_workload(config: dict[str, Any]) -> Workload:
    """The training workload of one run config (a probe run: its target's)."""
    config = config.get("target", config)
    recipe = config["recipe"]
    images, side = train_set(config["data"], config["scale"])
    per_epoch = images // recipe["batch_size"] * recipe["batch_size"]
    return Workload(config["model"], config["scale"], json.dumps(config.get("model_kwargs", {}), sort_keys=True),
                    recipe["epochs"] * per_epoch, (3, side, side))


@dataclass(frozen=True)
class Throughput:
    """Images/s per benched model (and per detector with recorded runs, named in `from_runs`) and the
    median training FLOP/s the benched models reached, on one device."""

    images_per_s: dict[str, float]
    flops_per_s: float | None
    device: str
    from_runs: frozenset[str] = frozenset()

    @classmethod
    def from_benches(cls, benches: Sequence[dict[str, Any]]) -> Throughput:
        """From recorded `bench train` results: our loop's images/s and training FLOP/s."""
        ours = {b["model"]: next(row for row in b["loops"] if row["loop"] == "gradpath") for b in benches}
        return cls(
            images_per_s={model: row["images_per_s"] for model, row in ours.items()},
            flops_per_s=statistics.median(row["train_flops_per_s"] for row in ours.values()) if ours else None,
            device=", ".join(sorted({_device_label(b["device"]) for b in benches})) or UNMEASURED,
        )

    @classmethod
    def from_results(cls, results_dir: str | Path, scale: str) -> Throughput:
        """`from_benches` of the scale's recorded benches, plus each detector's training images/s read
        from its recorded runs (`detector_speed_table`) on a benched device (any device without benches):
        detectors have no bench of their own."""
        benches = recorded_benches(results_dir, scale, "train")
        measured = cls.from_benches(benches)
        devices = {_device_label(b["device"]) for b in benches}
        detectors = detector_speed_table(results_dir, scale)
        if devices:
            detectors = detectors[detectors["device"].isin(devices)]
        if not len(detectors):
            return measured
        speeds = detectors.groupby("model")["images/s (training)"].median().to_dict()
        return cls(images_per_s={**speeds, **measured.images_per_s}, flops_per_s=measured.flops_per_s,
                   device=", ".join(sorted(devices or set(detectors["device"]))), from_runs=frozenset(speeds))

    def seconds(self, workload: Workload) -> tuple[float | None, str]:
        """(estimated seconds, "measured" | "recorded runs" | "extrapolated" | UNMEASURED) of one run's training."""
        if workload.model in self.images_per_s:
            source = "recorded runs" if workload.model in self.from_runs else "measured"
            return workload.train_images / self.images_per_s[workload.model], source
        if self.flops_per_s:
            return workload.train_flops() / self.flops_per_s, "extrapolated"
        return None, UNMEASURED


def _chapter_row(name: str, workloads: list[Workload], throughput: Throughput) -> dict[str, Any]:
    estimates = [throughput.seconds(w) for w in workloads]
    sources = [source for _, source in estimates]
    known = all(seconds is not None for seconds, _ in estimates)
    return {
        "chapter": name,
        "runs": len(workloads),
        "train images": sum(w.train_images for w in workloads),
        "train TFLOP": round(sum(w.train_flops() for w in workloads) / 1e12, 3),
        "est. minutes": round(sum(s for s, _ in estimates) / SECONDS_PER_MINUTE, 2) if known else UNMEASURED,
        "estimate from": ", ".join(f"{sources.count(s)} {s}" for s in dict.fromkeys(sources)),
    }


def reproduce_cost(scale: str, throughput: Throughput, seeds: list[int] | None = None) -> pd.DataFrame:
    """Per chapter with runs, and in total (each distinct run once): runs, images, PFLOP, minutes."""
    seeds = default_seeds(scale) if seeds is None else seeds
    rows, distinct = [], {}
    for chap in chapters():
        configs = chap.runs(scale, seeds)
        if not configs:
            continue
        workloads = [run_workload(c) for c in configs]
        distinct.update({json.dumps(c, sort_keys=True): w for c, w in zip(configs, workloads)})
        rows.append(_chapter_row(chap.name, workloads, throughput))
    rows.append(_chapter_row("total (distinct runs)", list(distinct.values()), throughput))
    table = pd.DataFrame(rows)
    table["device"] = throughput.device
    return table


def classifiers_of_the_book(scale: str, seeds: list[int] | None = None) -> list[str]:
    """Every classification network the chapters train at `scale`, in first-use order."""
    seeds = default_seeds(scale) if seeds is None else seeds
    models = [run_workload(c).model for chap in chapters() for c in chap.runs(scale, seeds)
              if c.get("target", c)["task"] in ("classify", "lwdna")]
    return list(dict.fromkeys(models))


def bench_reproduce(scale: str, *, results_dir: str | Path = "results", measure: bool = False,
                    bench: Callable[[str], dict[str, Any]] | None = None) -> pd.DataFrame:
    """The cost table of `scale`, saved as `<results>/<scale>/tables/bench_reproduce.csv`.

    With `measure`, `bench(model)` (e.g. `bench_train` on this device) is run for every classifier
    of the book first and saved as its `train-<model>.json`; otherwise the recorded benches are used.
    """
    check_scale(scale)
    if measure:
        if bench is None:
            raise GradpathError("bench_reproduce(measure=True) needs the `bench` function to measure with")
        for model in classifiers_of_the_book(scale):
            save_bench(bench(model), results_dir, f"train-{model}")
    table = reproduce_cost(scale, Throughput.from_results(results_dir, scale))
    save_table(table, results_dir, scale, "bench_reproduce")
    return table


def performance_table(results_dir: str | Path, scale: str) -> pd.DataFrame:
    """Per benched model: family, device (CPU numbers labelled so), images/s of our loop and of the
    reference loop, their ratio, fraction of the measured peak, batch, torch and CUDA versions."""
    from .models.registry import get_entry

    rows = []
    for bench in recorded_benches(results_dir, scale, "train"):
        loops = {row["loop"]: row for row in bench["loops"]}
        rows.append({
            "model": bench["model"],
            "family": get_entry(bench["model"]).family,
            "device": _device_label(bench["device"]),
            "batch": bench["batch_size"],
            "images/s (gradpath)": round(loops["gradpath"]["images_per_s"], 1),
            "images/s (reference loop)": round(loops["reference"]["images_per_s"], 1),
            "ratio to reference": round(bench["speedup"], 2),
            "fraction of peak": round(loops["gradpath"]["fraction_of_peak"], 4),
            "peak TFLOP/s": round(bench["peak_flops_per_s"] / 1e12, 3),
            "peak dtype": bench["peak_dtype"],
            "torch": bench["torch"],
            "CUDA": bench.get("cuda"),
        })
    return pd.DataFrame(rows, columns=["model", "family", "device", "batch", "images/s (gradpath)",
                                       "images/s (reference loop)", "ratio to reference", "fraction of peak",
                                       "peak TFLOP/s", "peak dtype", "torch", "CUDA"])


def jobs_table(results_dir: str | Path, scale: str) -> pd.DataFrame:
    """Every recorded `bench jobs` result: model, device (CPU numbers labelled so) and its jobs table."""
    from .bench_jobs import jobs_frame

    parts = [jobs_frame(bench).assign(model=bench["model"], device=_device_label(bench["device"]))
             for bench in recorded_benches(results_dir, scale, "jobs")]
    columns = ["model", "device", "jobs", "total images/s", "scaling vs 1 job", "images/s per job"]
    return pd.concat(parts)[columns] if parts else pd.DataFrame(columns=columns)


COMPILE_COLUMNS = ["model", "device", "variant", "images/s vs eager", "extra first-pass s", "break-even steps",
                   "steps per run", "pays"]


def compile_table(results_dir: str | Path, scale: str) -> pd.DataFrame:
    """Every compiled variant timed by a recorded `bench train --variants ...` (`bench.compile_rows`)."""
    from .bench import compile_rows

    rows = [row | {"device": _device_label(bench["device"])}
            for bench in recorded_benches(results_dir, scale, "train") for row in compile_rows(bench)]
    return pd.DataFrame(rows, columns=COMPILE_COLUMNS)


def compile_summary(results_dir: str | Path, scale: str) -> str:
    """What the recorded benches say about compiling at `scale`, and whether the scale's recipe follows."""
    from .bench import VARIANTS, compile_rows, compile_verdict
    from .train.recipes import recipe_for

    rows = [row for bench in recorded_benches(results_dir, scale, "train") for row in compile_rows(bench)]
    mode = recipe_for(scale)["compile"]
    if not rows:
        return (f"No compiled variant is benched at the {scale} scale yet (`gradpath bench train --model resnet "
                f"--scale {scale} --variants eager compile cudagraphs --save`); its recipe's compile mode is "
                f"\"{mode}\".")
    paying = {VARIANTS[row["variant"]] for row in rows if row["pays"]}
    follows = mode in paying if paying else mode == "off"
    advice = ("The recipe follows the measurement." if follows else
              "The recipe does not follow the measurement yet: changing its compile mode gives every run of the "
              "scale a new id, so they would all be trained again.")
    return " ".join([*(compile_verdict(row, scale) for row in rows),
                     f"The {scale} recipe's compile mode is \"{mode}\".", advice])


def recorded_cost_table(results_dir: str | Path, scale: str) -> pd.DataFrame:
    """`reproduce_cost` of `scale` from the benches and detection runs recorded there (no measuring, no
    training)."""
    return reproduce_cost(scale, Throughput.from_results(results_dir, scale))


def _device_label(device: str) -> str:
    return ("CPU: " if device.startswith("cpu") else "GPU: ") + device


DETECTOR_SPEED_COLUMNS = ["model", "device", "runs", "images/s (training)", "train TFLOP/s", "fraction of peak",
                          "training (s)", "evaluation and setup (s)", "wall (s)"]


def detector_speed_table(results_dir: str | Path, scale: str, seeds: list[int] | None = None) -> pd.DataFrame:
    """Per detector of the book with `ok` records at `scale`, medians over its runs (seeds) on each
    device, read from the records: training images/s, the training FLOP/s that means (3 x forward
    FLOPs of one canvas) and its fraction of the peak a `bench train` measured on the same device
    (empty without one), and a run's seconds spent training, in everything else (evaluations with
    COCOeval on the CPU, data and model setup) and in all."""
    from .run_pool import recorded

    seeds = default_seeds(scale) if seeds is None else seeds
    configs = {json.dumps(c, sort_keys=True): c for chap in chapters() for c in chap.runs(scale, seeds)
               if c["task"] == "detect"}
    peaks = {b["device"]: b["peak_flops_per_s"] for b in recorded_benches(results_dir, scale, "train")}
    rows = []
    for config in configs.values():
        record = recorded(config, results_dir)
        if record is None or record["status"] != "ok":
            continue
        device = record["provenance"]["device_name"]
        train_s = sum(epoch["train_s"] for epoch in record["metrics"]["history"])
        flops_per_s = record["metrics"]["images_per_s"] * TRAIN_FLOPS_PER_FORWARD * record["flops"]
        rows.append({
            "model": config["model"],
            "device": _device_label(device),
            "images/s (training)": record["metrics"]["images_per_s"],
            "train TFLOP/s": flops_per_s / 1e12,
            "fraction of peak": flops_per_s / peaks[device] if device in peaks else None,
            "training (s)": train_s,
            "evaluation and setup (s)": record["wall_time_s"] - train_s,
            "wall (s)": record["wall_time_s"],
        })
    if not rows:
        return pd.DataFrame(columns=DETECTOR_SPEED_COLUMNS)
    runs = pd.DataFrame(rows)
    grouped = runs.groupby(["model", "device"], sort=False)
    table = grouped.median(numeric_only=False).reset_index()
    table.insert(2, "runs", grouped.size().to_numpy())
    return table[DETECTOR_SPEED_COLUMNS].round({"images/s (training)": 1, "train TFLOP/s": 4, "fraction of peak": 4,
                                                "training (s)": 1, "evaluation and setup (s)": 1, "wall (s)": 1})
