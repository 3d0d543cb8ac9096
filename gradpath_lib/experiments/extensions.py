"""The two extension chapters: LW-DNA (the Heterogeneity Hypothesis) and Deeply Shared Filter Bases.

LW-DNA compares, at equal total epochs, each baseline (regular widths), its LW-DNA network
(Taylor-scored shrink of the 2x widened net to the baseline's FLOPs) and the random-channel
control at the same FLOPs; besides the paper's claims, it judges whether the Taylor score beats
the random control. DSFB compares resnet-dsfb (one shared basis per stage, as the
paper describes it), the double-shared network whose numbers the paper prints, the no-penalty
ablation and the depth-matched and parameter-matched plain ResNets, and shows per-block gradient norms through
training and the shared bases' gradient timestamps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import pandas as pd

from ..paper import LWDNA_PAPER, STATED, Claim, claims, references
from ..tables import Run, record_value
from . import Chapter, register_chapter
from .classification import classification_frame, classification_runs, summary_table

LWDNA_MODELS = ("resnet", "elan")  # elan: the gradient-path network whose channels slice cleanly
LWDNA_SCORES = ("taylor", "random")
DSFB_MODELS = ("resnet-dsfb", "resnet-dsfb-double", "resnet-dsfb-noreg", "resnet-dsfb-depth-ref",
               "resnet-dsfb-param-ref")


# smoke only: two epochs (one search, one shrunk) and one scoring batch keep the chapter to CPU
# seconds; baseline and LW-DNA always share the recipe, so the epoch budgets stay equal. At smoke
# widths one channel of the smoke resnet's stem-tied group costs 12.5 % of its FLOPs, more than the
# default FLOPs tolerance, so the smoke runs allow a miss of up to one such channel.
SMOKE_RECIPE = {"epochs": 2}
SMOKE_LWDNA = {"score_batches": 1, "tolerance": 0.15}


def lwdna_runs(scale: str, seeds: list[int]) -> list[dict[str, Any]]:
    """Per model and seed: the baseline classify run and one LW-DNA run per score."""
    from ..train.classify import classify_config
    from ..train.lwdna import lwdna_config

    recipe = SMOKE_RECIPE if scale == "smoke" else {}
    settings = SMOKE_LWDNA if scale == "smoke" else {}
    return [config for model in LWDNA_MODELS for seed in seeds for config in (
        classify_config(model, scale, seed, **recipe),
        *(lwdna_config(model, scale, seed, score=s, **settings, **recipe) for s in LWDNA_SCORES))]


def lwdna_label(config: dict[str, Any]) -> str:
    """Row label: the model for a baseline, `<model> lwdna-<score>` for an LW-DNA run."""
    return f"{config['model']} lwdna-{config['lwdna']['score']}" if config["task"] == "lwdna" else config["model"]


def lwdna_frame(runs: list[Run]) -> pd.DataFrame:
    """One row per run (labelled by `lwdna_label`): params, MFLOPs, top-1 (%)."""
    return classification_frame(runs, label=lwdna_label)


def lwdna_claims() -> list[Claim]:
    """Per model: the paper's LW-DNA claims (subject: the Taylor-scored network), then whether the
    Taylor score beats the random-channel control at the same FLOPs."""
    return [claim for model in LWDNA_MODELS for claim in (
        *(dataclasses.replace(c, id=f"{c.id}-{model}", text=c.text.replace("LW-DNA", f"{model} LW-DNA"),
                              subject=f"{model} lwdna-taylor", baseline=model) for c in claims("lwdna")),
        score_claim(model))]


def score_claim(model: str) -> Claim:
    """Taylor-scored LW-DNA on `model` is more accurate than the random-channel control at the same FLOPs."""
    return Claim(f"lwdna-score-{model}", "lwdna",
                 f"{model} LW-DNA with the Taylor score is more accurate than random channels at the same FLOPs",
                 f"{model} lwdna-taylor", f"{model} lwdna-random", "top1", "higher", STATED,
                 "implied: channels are kept by their score", LWDNA_PAPER)


def lwdna_widths(runs: list[Run]) -> dict[str, pd.DataFrame]:
    """Per model, the per-layer widths of one seed: baseline (uniform), widened and each score's find."""
    widths: dict[str, pd.DataFrame] = {}
    for config, record in runs:
        summary = record_value(record, "lwdna") if record and record["status"] == "ok" else None
        if config["task"] != "lwdna" or not summary:
            continue
        frame = widths.setdefault(config["model"], pd.DataFrame({
            "layer": summary["layers"], "baseline": summary["baseline_widths"], "widened": summary["wide_widths"]}))
        column = f"lwdna-{config['lwdna']['score']}"
        if column not in frame:  # the first recorded seed stands for the model
            frame[column] = summary["widths"]
    return widths


def widths_figure(widths: dict[str, pd.DataFrame]) -> Any:
    """Per-layer output widths of the found architectures against the uniform (baseline) one."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(widths) or 1, 1, figsize=(9, 3 * max(1, len(widths))), squeeze=False)
    for ax, (model, frame) in zip(axes[:, 0], widths.items()):
        for column, style in (("baseline", "k-"), ("widened", "k:"), ("lwdna-taylor", "o-"), ("lwdna-random", "x--")):
            if column in frame:
                ax.plot(range(len(frame)), frame[column], style, label=column, markersize=4)
        ax.set(title=f"{model}: conv output widths", xlabel="conv layer (data-path order)", ylabel="channels")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def dsfb_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Ours (params, MFLOPs, top-1) beside the DSFB paper's CIFAR-10 numbers."""
    ours = summary_table(frame, ["params", "mflops", "top1"])
    paper_rows = {"resnet-dsfb-double": "ResNet56-S16U1", "resnet-dsfb-depth-ref": "ResNet-56"}
    refs = {(r.paper_model, r.metric): r.value for r in references("dsfb")}
    ours["paper model"] = [paper_rows.get(m, "—") for m in ours["model"]]
    ours["paper params (M)"] = [refs.get((paper_rows.get(m), "params_m"), "—") for m in ours["model"]]
    ours["paper top-1 (%)"] = [round(100 - refs[(paper_rows[m], "error")], 2) if (paper_rows.get(m), "error") in refs
                               else "—" for m in ours["model"]]
    return ours


def gradient_norms(runs: list[Run], models: Sequence[str] = ("resnet-dsfb", "resnet-dsfb-noreg")) -> pd.DataFrame:
    """Long frame of the per-block gradient norms (model, seed, epoch, block, norm) of `models`."""
    rows = []
    for config, record in runs:
        if config["model"] in models and record and record["status"] == "ok":
            for entry in record["metrics"]["history"]:
                for block, norm in enumerate(entry.get("block_grad_norm", [])):
                    rows.append({"model": config["model"], "seed": config["seed"], "epoch": entry["epoch"],
                                 "block": block, "norm": norm})
    return pd.DataFrame(rows, columns=["model", "seed", "epoch", "block", "norm"])


def gradient_norms_figure(norms: pd.DataFrame) -> Any:
    """Mean |dL/d(block output)| per block at the first, middle and last epoch, with and without the penalty."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    epochs = sorted(norms["epoch"].unique())
    picked = sorted({epochs[0], epochs[len(epochs) // 2], epochs[-1]}) if epochs else []
    for (model, epoch), group in norms[norms["epoch"].isin(picked)].groupby(["model", "epoch"]):
        mean = group.groupby("block")["norm"].mean()
        ax.plot(mean.index, mean.values, "-" if model == "resnet-dsfb" else "--", label=f"{model}, epoch {epoch}")
    ax.set(xlabel="residual block (input side first)", ylabel="mean gradient norm", yscale="log",
           title="Gradient reaching each block's output")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def shared_basis_paths(scale: str) -> pd.DataFrame:
    """Structural gradient paths of each shared basis of resnet-dsfb: positions and timestamps."""
    from ..analysis import analyze_model
    from ..models.registry import create_model

    params = analyze_model(create_model("resnet-dsfb", scale)).parameters
    shared = params[params["module"].str.contains(r"shared_bases\.\d+$")].copy()
    shared["n_timestamps"] = shared["timestamps"].map(len)
    return shared[["module", "positions", "n_timestamps", "shortest", "longest", "combination_size"]]


register_chapter(Chapter("lwdna", "LW-DNA: layer-wise differentiated widths by shrinking a widened network",
                         lwdna_runs, 120))
register_chapter(Chapter("dsfb", "Deeply shared filter bases and gradient paths",
                         classification_runs(DSFB_MODELS), 130))
