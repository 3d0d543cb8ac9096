"""The classification chapters: what Tables 2, 3 (classification form) and 4 train, and the
tables they show; plus the architecture chapter (Figs. 2-6, no training).

Every table puts ours (mean ± std over seeds) beside the paper's printed numbers where there are
any, and `tables.verdict_frame` judges the paper's claims from the same runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from ..paper import references
from ..tables import Run, readable, runs_frame, summarize
from . import Chapter, no_runs, register_chapter

TABLE2_MODELS = ("resnet", "csp-resnet", "resnext", "csp-resnext", "darknet", "csp-darknet",
                 "densenet", "csp-densenet")
TABLE3_MODELS = ("resnet-deep", "resnet-sg-identity", "resnet-sg-block", "plain-deep")
TABLE4_MODELS = ("vovnet", "vovnet-deep", "vovnet-deep-planned", "vovnet-deep-planned-csp")
PERCENT = 100.0  # records hold accuracy as a fraction; tables show percent like the paper
# How each number is shown: column -> format of its mean (and std).
FORMATS = {"params": "{:,.0f}", "mflops": "{:.2f}", "top1": "{:.1f}", "train_loss": "{:.3f}"}


def classification_runs(models: Sequence[str]) -> Any:
    """A `Chapter.runs` function: one `classify` run per model and seed."""
    def runs(scale: str, seeds: list[int]) -> list[dict[str, Any]]:
        from ..train.classify import classify_config

        return [classify_config(model, scale, seed) for model in models for seed in seeds]

    return runs


def classification_frame(runs: list[Run], label: Callable[[dict[str, Any]], str] | None = None) -> pd.DataFrame:
    """One row per run (row group: `label(config)`, default the model): status, params, MFLOPs,
    top-1 (%), final train loss."""
    frame = runs_frame(runs, metrics={"top1": "test_acc", "train_loss": "train_loss"}, label=label)
    frame["top1"] *= PERCENT
    frame["mflops"] = frame["flops"] / 1e6
    return frame


def summary_table(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Per model: status and 'mean ± std' of `columns` over seeds, in the chapter's order."""
    return readable(summarize(frame, columns), {c: FORMATS[c] for c in columns}).rename(columns={"label": "model"})


def table2(frame: pd.DataFrame) -> pd.DataFrame:
    """Table 2: ours (params, MFLOPs, top-1) beside the CSPNet README's ImageNet numbers."""
    ours = summary_table(frame, ["params", "mflops", "top1"])
    paper = pd.DataFrame([
        {"model": r.ours, "paper model": r.paper_model, f"paper {r.metric}": r.value}
        for r in references("table2")
    ]).groupby(["model", "paper model"], sort=False).first().reset_index()
    paper = paper.rename(columns={"paper params_m": "paper params (M)", "paper bflops": "paper BFLOPs",
                                  "paper top1": "paper top-1 (%)"})
    return ours.merge(paper, on="model", how="left")


def table3(frame: pd.DataFrame, path_lengths: pd.DataFrame) -> pd.DataFrame:
    """Table 3 (classification form): gradient path lengths beside top-1 and the final loss."""
    return summary_table(frame, ["params", "top1", "train_loss"]).merge(path_lengths, on="model", how="left")


def table4(frame: pd.DataFrame, path_lengths: pd.DataFrame) -> pd.DataFrame:
    """Table 4: convergence (status, step of divergence), top-1, cost and gradient path lengths."""
    table = summary_table(frame, ["params", "mflops", "top1", "train_loss"])
    first_bad = frame.groupby("label", sort=False)["diverged_at_step"].min()
    table.insert(2, "first diverged step", [_step(first_bad.get(m)) for m in table["model"]])
    return table.merge(path_lengths, on="model", how="left")


def _step(value: Any) -> str:
    return "—" if value is None or pd.isna(value) else str(int(value))


def path_lengths(models: Sequence[str], scale: str) -> pd.DataFrame:
    """Per model at `scale`: the longest shortest gradient path and the longest gradient path."""
    from ..analysis.paths import analyze_model
    from ..models.registry import create_model

    rows = []
    for model in models:
        network = analyze_model(create_model(model, scale)).network
        rows.append({"model": model, "longest shortest path": network["longest_shortest_path"],
                     "longest path": network["longest_path"]})
    return pd.DataFrame(rows)


register_chapter(Chapter("architecture", "Figures 2-6: the architectures, drawn from the models", no_runs, 15))
register_chapter(Chapter("table3_classification", "Table 3: stop gradient on deep residual networks",
                         classification_runs(TABLE3_MODELS), 45))
register_chapter(Chapter("table2", "Table 2: CSPNet applied to popular backbones",
                         classification_runs(TABLE2_MODELS), 50))
register_chapter(Chapter("table4", "Table 4: deep VoVNet and gradient path planning",
                         classification_runs(TABLE4_MODELS), 70))
