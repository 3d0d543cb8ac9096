"""The probe task ("probe"): linear probes per layer of one trained classification run.

A probe config names its `target`, a `classify` config. Running it
ensures the target run (trained here if it is not recorded, with the same device and results
folder), loads the target's final weights (`store.weights_path`), and fits a ridge probe on the
pooled features of the stem and every stage (`gradpath_lib.probes`). The record's
`metrics["probes"]` holds, per layer, the probe's train and test accuracy and the number of
channels; `params` and `flops` are the target network's. Probing takes one forward pass over the
data, so it has no epochs to checkpoint; its wall time includes the target's training when it
trained it. If the target diverged, the probe run is recorded as diverged too, without probes.
"""

from __future__ import annotations

from typing import Any

from ..probes import RIDGE_L2, probe_model
from ..runs import TaskContext, TaskResult, register_task
from .classify import classify_config, load_resident_data, prepare_model
from .recipes import recipe_from_config
from .trained import trained_target

TASK = "probe"
PROBE_SETTINGS = {"features": "global average pool of the stem and of each stage", "method": "ridge",
                  "l2": RIDGE_L2}


def probe_config(model: str, scale: str = "mini", seed: int = 0, **classify_kwargs: Any) -> dict[str, Any]:
    """The probe run of `classify_config(model, scale, seed, **classify_kwargs)`."""
    target = classify_config(model, scale, seed, **classify_kwargs)
    return {"task": TASK, "model": model, "scale": scale, "seed": int(seed), "target": target,
            "probe": dict(PROBE_SETTINGS)}


def train_probe(config: dict[str, Any], ctx: TaskContext) -> TaskResult:
    """Ensure the target run, then probe its trained layers; the trainer of task "probe"."""
    record, model = trained_target(config, ctx)
    base = {"target_run_id": record["run_id"], "target_test_acc": record["metrics"].get("test_acc")}
    if model is None:
        return TaskResult("diverged", base, record["params"], record["flops"],
                          record["provenance"].get("dataset_sha256"))
    target = config["target"]
    prepare_model(model, ctx.device)
    recipe = recipe_from_config(target["recipe"])
    data = load_resident_data(target, recipe, ctx.device, "probe")
    num_classes = int(data.train.labels.max().item()) + 1
    probes = probe_model(model, data.train, data.test, num_classes, recipe.eval_batch_size)
    return TaskResult("ok", {**base, "probes": probes}, record["params"], record["flops"], data.dataset["sha256"])


register_task(TASK, train_probe)
