"""Fig. 1's claim tested: does a shallow layer learn more "high-level" (linearly separable)
features when a loss reaches it directly?

Two networks, the same recipe and seeds: `resnet` and `resnet-aux1` (the same ResNet plus an
auxiliary pooled linear head after stage 1, `models.aux_heads`). After training, a linear probe
is fitted on the pooled features of the stem and of every stage of each (`train.probe`,
`gradpath_lib.probes`); the chapter compares probe test accuracy per layer. The paper's claim
("fig1-aux-probe" in `paper.py`) is judged on stage 1's probe accuracy.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..tables import NOT_AVAILABLE, Run, mean_std_text, runs_frame
from . import Chapter, register_chapter

# Row labels of the paper's Fig. 1 claim (subject / baseline in paper.CLAIMS) per network.
LABELS = {"resnet": "no-aux-loss", "resnet-aux1": "aux-loss"}
SHALLOW_LAYER = "stage1"  # where resnet-aux1's auxiliary head sits (aux_stage=1)
PERCENT = 100.0
FIG1_ORDER = 100


def fig1_runs(scale: str, seeds: list[int]) -> list[dict[str, Any]]:
    """One probe run (which trains its target classifier) per network and seed."""
    from ..train.probe import probe_config

    return [probe_config(model, scale, seed) for model in LABELS for seed in seeds]


def fig1_frame(runs: list[Run]) -> pd.DataFrame:
    """One row per run: status, cost, the shallow layer's probe top-1 and the network's top-1 (%)."""
    frame = runs_frame(runs, label=lambda config: LABELS[config["model"]], metrics={
        "shallow_probe_top1": f"probes.{SHALLOW_LAYER}.test_acc", "top1": "target_test_acc"})
    frame[["shallow_probe_top1", "top1"]] *= PERCENT
    return frame


def probe_frame(runs: list[Run]) -> pd.DataFrame:
    """One row per recorded run and probed layer: label, seed, layer, channels, probe top-1 (%)."""
    rows = []
    for config, record in runs:
        if record is None or record["status"] != "ok":
            continue
        for layer, probe in record["metrics"]["probes"].items():
            rows.append({"label": LABELS[config["model"]], "seed": config["seed"], "layer": layer,
                         "channels": probe["channels"], "probe_top1": probe["test_acc"] * PERCENT})
    return pd.DataFrame(rows, columns=["label", "seed", "layer", "channels", "probe_top1"])


def data_path_position(layer: str) -> int:
    """0 for "stem", N for "stageN" (records keep the probes' layers sorted by name)."""
    return 0 if layer == "stem" else int(layer.removeprefix("stage"))


def probe_summary(probes: pd.DataFrame) -> pd.DataFrame:
    """Per label and layer (in data-path order): `mean`, `std` (NaN for one seed) and `count` of the probe top-1."""
    layers = sorted(set(probes["layer"]), key=data_path_position)
    ordered = probes.assign(layer=pd.Categorical(probes["layer"], categories=layers, ordered=True))
    grouped = ordered.groupby(["label", "layer"], sort=True, observed=True)["probe_top1"]
    summary = grouped.agg(["mean", "std", "count"]).reset_index()
    return summary.assign(layer=summary["layer"].astype(str))


def probe_table(probes: pd.DataFrame) -> pd.DataFrame:
    """Per layer: probe top-1 (mean ± std over seeds) without and with the auxiliary loss."""
    summary = probe_summary(probes)
    table = pd.DataFrame({"layer": list(dict.fromkeys(summary["layer"]))})
    for label in LABELS.values():
        part = summary[summary["label"] == label].set_index("layer")
        table[f"probe top-1 (%), {label}"] = [
            mean_std_text(part.at[layer, "mean"], part.at[layer, "std"], "{:.1f}")
            if layer in part.index else NOT_AVAILABLE for layer in table["layer"]]
    return table


def probe_figure(probes: pd.DataFrame) -> Any:
    """Probe test top-1 per layer, mean ± std over seeds, one line per network."""
    import matplotlib.pyplot as plt

    summary = probe_summary(probes)
    figure, axis = plt.subplots(figsize=(5.5, 3.5))
    for label in LABELS.values():
        part = summary[summary["label"] == label]
        axis.errorbar(part["layer"], part["mean"], yerr=part["std"].fillna(0.0),
                      marker="o", capsize=3, label=label)
    axis.set_xlabel("probed layer (globally pooled output)")
    axis.set_ylabel("linear probe test top-1 (%)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    return figure


register_chapter(Chapter("fig1_objective", "Fig. 1's claim tested: the objective decides what a layer learns",
                         fig1_runs, FIG1_ORDER))
