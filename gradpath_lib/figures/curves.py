"""Training curves from run records: one line per run, a cross where a run diverged."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..tables import Run, record_value

# matplotlib's tab10 ("C0".."C9"), then black and Dark2's colours least like tab10's: a model's
# colour is fixed by its place in the registry (`model_colour`), so that it is the same on every page
PALETTE = (*(f"C{k}" for k in range(10)), "black", "#e7298a", "#e6ab02", "#7570b3", "#a6761d", "#66a61e")


def model_colour(model: str) -> Any:
    """The colour of registered model `model` in every figure of curves: by its place in the
    registry of its task (so one detector has one colour on every page)."""
    from ..models.registry import get_entry, model_names

    return PALETTE[model_names(get_entry(model).task).index(model) % len(PALETTE)]


def training_curves(runs: Sequence[Run], metric: str = "train_loss", title: str = "", ylabel: str = "") -> Any:
    """A matplotlib figure of `metric` per epoch (from each record's history), one colour per model
    (`model_colour`); epochs where the metric was not measured (None) are left out of the line."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    shown: set[str] = set()
    for config, record in runs:
        if record is None:
            continue
        history = record_value(record, "history") or []
        measured = [(n, epoch[metric]) for n, epoch in enumerate(history, 1) if epoch.get(metric) is not None]
        label = None if config["model"] in shown else config["model"]  # one legend entry per model
        shown.add(config["model"])
        colour = model_colour(config["model"])
        ax.plot([n for n, _ in measured], [v for _, v in measured],
                color=colour, lw=1.2, alpha=0.8, label=label, marker="o", ms=2.5)
        if record["status"] == "diverged":
            ax.plot([len(history)], [ax.get_ylim()[1]], marker="x", color=colour, ms=9, mew=2)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel or metric.replace("_", " "))
    ax.set_title(title or f"{metric.replace('_', ' ')} per epoch (x: diverged)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
