"""Gradient paths of well-known designs outside the papers (`models.reference`), on the paper's
network-level criteria: the chapter *Beyond the paper: other well-known designs*."""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from ..models.cost import count_flops, count_params
from ..models.reference import REFERENCE_NETS, VisionTransformer, reference_net
from .paths import GradientPathReport, analyze_model
from .summary import STRUCTURAL_METRICS


def analyze_design(name: str, input_shape: tuple[int, ...] | None = None) -> GradientPathReport:
    """The structural analysis of the reference design `name` on `input_shape` (default: its
    `ReferenceNet.input_shape`; token ids for GPT-2)."""
    model = reference_net(name)  # an unknown name: the error lists the designs
    ref = REFERENCE_NETS[name]
    return analyze_model(model, input_shape or ref.input_shape, ref.input_dtype)


def design_reports() -> dict[str, GradientPathReport]:
    """The structural analysis of every reference design on its own input."""
    return {name: analyze_design(name) for name in REFERENCE_NETS}


METRIC_NAMES = {  # summary.STRUCTURAL_METRICS, as the table heads them
    "longest_shortest_path": "longest shortest path", "longest_path": "longest path",
    "aggregated_features_mean": "aggregated features (mean)", "aggregated_features_max": "(max)",
    "combination_size_mean": "gradient combinations (mean)",
    "distinct_combinations_mean": "distinct combinations per layer (mean)",
}


def designs_table(reports: dict[str, GradientPathReport]) -> pd.DataFrame:
    """One row per design: its parameters (and whether they equal the public implementation's,
    `ReferenceNet.source`), its input, GFLOPs on that input, weighted layers and the paper's
    network-level metrics (`summary.STRUCTURAL_METRICS`, means rounded to 2 decimals)."""
    rows = []
    for name, report in reports.items():
        with torch.device("meta"):  # counted without computing (or initializing 124M weights)
            model = reference_net(name)
        ref = REFERENCE_NETS[name]
        rows.append({
            "design": name, "params (M)": round(count_params(model) / 1e6, 2),
            "params as published": count_params(model) == ref.params, "input": ref.input_label,
            "GFLOPs": round(count_flops(model, ref.input_shape, ref.input_dtype) / 1e9, 2),
            "weighted layers": report.network["n_weighted_layers"],
            **{METRIC_NAMES[metric]: round(report.network[metric], 2) for metric in STRUCTURAL_METRICS},
        })
    return pd.DataFrame(rows)


VIT_HEADS = {"avg": "mean of the patch tokens", "token": "class token alone"}  # VisionTransformer's pools


def class_token_table(reports: dict[str, GradientPathReport] | None = None) -> pd.DataFrame:
    """ViT-Ti/16 with its head on the mean of the patch tokens and on the class token alone: the
    patch embedding's shortest and longest path, and the network's (the analysis tells the class
    token's position from the patch tokens', so both are exact). `reports` (`design_reports`)
    gives the first: the reference ViT-Ti's head averages the tokens."""
    rows = []
    for pool, head in VIT_HEADS.items():
        if reports and pool == "avg":
            report = reports["vit-tiny"]
        else:
            report = analyze_model(VisionTransformer(pool=pool), REFERENCE_NETS["vit-tiny"].input_shape)
        patch = report.parameters.set_index("module").loc["conv_proj"]
        rows.append({"head reads": head, "patch embedding: shortest path": patch.shortest,
                     "patch embedding: longest path": patch.longest,
                     **{METRIC_NAMES[m]: report.network[m] for m in ("longest_shortest_path", "longest_path")}})
    return pd.DataFrame(rows)


RECURRENT_DESIGNS = {"Elman RNN (tanh)": nn.RNN, "GRU": nn.GRU, "LSTM": nn.LSTM}
SEQUENCE = (16, 8)  # (time steps, features) of the recurrent classifiers' input


class LastStepClassifier(nn.Module):
    """A sequence classifier: a recurrent module `rnn` (batch first) and a Linear head on the
    output of its last time step."""

    def __init__(self, rnn: nn.RNNBase, classes: int = 3):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(rnn.hidden_size * (2 if rnn.bidirectional else 1), classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def recurrent_paths_table(sequence: tuple[int, int] = SEQUENCE, hidden: int = 32) -> pd.DataFrame:
    """Gradient paths through time: for each design of `RECURRENT_DESIGNS` (one layer, `hidden`
    units, in a `LastStepClassifier` on `sequence`) and each time step, the shortest and longest
    gradient path from the loss to that step's input gates (the input Linear `rnn.ih_l0` at that
    step) and the number of paths, beside how many steps lie between it and the last one."""
    steps, features = sequence
    rows = []
    for design, kind in RECURRENT_DESIGNS.items():
        report = analyze_model(LastStepClassifier(kind(features, hidden, batch_first=True)), sequence)
        for g in report.groups:
            if g.position.name == "rnn.ih_l0":
                rows.append({"design": design, "step": g.start, "steps after it": steps - 1 - g.start,
                             "shortest path": min(g.timestamps), "longest path": max(g.timestamps),
                             "paths": g.n_paths})
    return pd.DataFrame(rows)
