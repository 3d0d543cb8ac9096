"""The spectrum task ("spectrum"): the measured gradient spectrum of one trained classification
run and of the same network at its initial weights.

A spectrum config names its `target`, a `classify` config, trained first
if it is not recorded (see `trained.py`). On the first `batch` test images of the scale's dataset,
`gradpath_lib.analysis.measured` splits every layer's gradient by path length exactly; the record's
`metrics["spectrum"]` holds, for "trained" and "initial" weights, the share of gradient norm that
arrives through paths of each length (`path_length_shares`), so the book draws it from the record
alone. If the target diverged, the spectrum run is recorded as diverged too, without spectra.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..analysis.figures import SPECTRUM_BATCH, measured_spectra, spectrum_batch
from ..runs import TaskContext, TaskResult, register_task
from .classify import classify_config, initial_model
from .trained import trained_target

TASK = "spectrum"
WEIGHTS = ("trained", "initial")


def spectrum_config(model: str, scale: str = "mini", seed: int = 0, batch: int = SPECTRUM_BATCH) -> dict[str, Any]:
    """The spectrum run of `classify_config(model, scale, seed)`."""
    target = classify_config(model, scale, seed)
    return {"task": TASK, "model": model, "scale": scale, "seed": int(seed), "target": target, "batch": int(batch)}


def train_spectrum(config: dict[str, Any], ctx: TaskContext) -> TaskResult:
    """Ensure the target run, then measure both spectra; the trainer of task "spectrum"."""
    record, trained = trained_target(config, ctx)
    base = {"target_run_id": record["run_id"], "target_test_acc": record["metrics"].get("test_acc")}
    dataset_sha256 = record["provenance"].get("dataset_sha256")
    if trained is None:
        return TaskResult("diverged", base, record["params"], record["flops"], dataset_sha256)
    images, labels = spectrum_batch(config["scale"], config["batch"], str(ctx.device))
    networks = {"trained": trained.to(ctx.device), "initial": initial_model(config["target"]).to(ctx.device)}
    spectra = measured_spectra(networks, images, labels)
    spectrum = {weights: rows.drop(columns="model").to_dict("records")
                for weights, rows in spectra.groupby("model", sort=False)}
    return TaskResult("ok", {**base, "spectrum": spectrum}, record["params"], record["flops"], dataset_sha256)


def spectra_frame(records: dict[str, dict[str, Any] | None]) -> pd.DataFrame:
    """Long table (model, weights, timestamp, share) from spectrum records keyed by model name
    (models whose record is missing or diverged are left out)."""
    rows = [{"model": model, "weights": weights, **row}
            for model, record in records.items() if record is not None and record["status"] == "ok"
            for weights in WEIGHTS for row in record["metrics"]["spectrum"][weights]]
    return pd.DataFrame(rows, columns=["model", "weights", "timestamp", "share"])


register_task(TASK, train_spectrum)
