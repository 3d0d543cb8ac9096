"""The two extension chapters: LW-DNA (the Heterogeneity Hypothesis) and Deeply Shared Filter Bases.

LW-DNA compares, at equal total epochs on the scale's classification recipe, each baseline
(regular widths), its LW-DNA network (Taylor-scored shrink of the 2x widened net to the
baseline's FLOPs) and the random-channel control searched to the same FLOPs target; besides the
paper's claims, it judges whether the Taylor score beats the random control, and says how far
each run landed from the target and which runs stayed at chance. DSFB compares resnet-dsfb (one
shared basis per stage, as the paper describes it), the double-shared network whose numbers the
paper prints, the no-penalty ablation, the plain ResNet of the same depth and the plain ResNet
whose whole-block depth comes closest to resnet-dsfb's parameters, and shows per-block gradient
norms through training and the shared bases' gradient timestamps."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from ..paper import LWDNA_PAPER, STATED, Claim, claims, references
from ..prose import join_words
from ..tables import Run, record_value
from . import Chapter, register_chapter
from .classification import classification_frame, summary_table

LWDNA_MODELS = ("resnet", "elan")  # elan: the gradient-path network whose channels slice cleanly
LWDNA_SCORES = ("taylor", "random")
DSFB_MODELS = ("resnet-dsfb", "resnet-dsfb-double", "resnet-dsfb-noreg", "resnet-dsfb-depth-ref",
               "resnet-dsfb-param-ref")


# smoke only: one scoring batch keeps the chapter to CPU seconds. The recipe is the scale's own
# classification recipe (the one the other classification chapters use), so a baseline here is the
# same record as there. At smoke widths one channel of the smoke resnet's stem-tied group costs
# 12.5 % of its FLOPs, more than the default FLOPs tolerance, so the smoke runs allow a miss of up
# to one such channel.
SMOKE_LWDNA = {"score_batches": 1, "tolerance": 0.15}


def lwdna_runs(scale: str, seeds: list[int]) -> list[dict[str, Any]]:
    """Per model and seed: the baseline classify run and one LW-DNA run per score, on the scale's recipe."""
    from ..train.classify import classify_config
    from ..train.lwdna import lwdna_config

    settings = SMOKE_LWDNA if scale == "smoke" else {}
    return [config for model in LWDNA_MODELS for seed in seeds for config in (
        classify_config(model, scale, seed),
        *(lwdna_config(model, scale, seed, score=s, **settings) for s in LWDNA_SCORES))]


def lwdna_label(config: dict[str, Any]) -> str:
    """Row label: the model for a baseline, `<model> lwdna-<score>` for an LW-DNA run."""
    return f"{config['model']} lwdna-{config['lwdna']['score']}" if config["task"] == "lwdna" else config["model"]


def lwdna_frame(runs: list[Run]) -> pd.DataFrame:
    """One row per run (labelled by `lwdna_label`): params, MFLOPs, top-1 (%)."""
    return classification_frame(runs, label=lwdna_label)


def lwdna_claims() -> list[Claim]:
    """Per model: the paper's LW-DNA claims (subject: the Taylor-scored network), then whether the
    Taylor score beats the random-channel control searched to the same FLOPs target."""
    return [claim for model in LWDNA_MODELS for claim in (
        *(dataclasses.replace(c, id=f"{c.id}-{model}", text=c.text.replace("LW-DNA", f"{model} LW-DNA"),
                              subject=f"{model} lwdna-taylor", baseline=model) for c in claims("lwdna")),
        score_claim(model))]


def score_claim(model: str) -> Claim:
    """Taylor-scored LW-DNA on `model` is more accurate than the random-channel control of the same FLOPs target."""
    return Claim(f"lwdna-score-{model}", "lwdna",
                 f"{model} LW-DNA with the Taylor score is more accurate than random channels at the same FLOPs target",
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


def lwdna_recipe_note(runs: list[Run]) -> str:
    """Markdown: the epochs every run of the chapter trains (of them, the LW-DNA search epochs) and
    whether that recipe is the scale's classification recipe, the one the other chapters use."""
    from ..train.classify import classify_config

    if not runs:
        return "No run of this chapter is configured."
    epochs = sorted({config["recipe"]["epochs"] for config, _ in runs})
    search = sorted({config["lwdna"]["search_epochs"] for config, _ in runs if config["task"] == "lwdna"})
    one_recipe = len({str(sorted(config["recipe"].items())) for config, _ in runs}) == 1
    own = [config for config, _ in runs
           if config["recipe"] != classify_config(config["model"], config["scale"], config["seed"])["recipe"]]
    text = (f"{'Every run trains' if one_recipe else 'The runs train'} {join_words(map(str, epochs))} "
            f"epoch{'s' if epochs != [1] else ''}")
    first = "epoch" if search == [1] else join_words(map(str, search)) + " epochs"
    text += (f"; an LW-DNA run spends the first {first} on the widened network and the rest on the shrunk one"
             if search else "") + ". "
    if not one_recipe:
        text += "The runs do not all share one recipe. "
    if own:
        text += (f"{join_words(sorted({lwdna_label(c) for c in own}))} use a recipe of this chapter's own, not the "
                 "scale's classification recipe, so their accuracy differs from the same network's on other pages.")
    else:
        text += ("This is the scale's classification recipe, so a baseline here is the same run as on the other "
                 "classification pages.")
    return text


def lwdna_flops_match(runs: list[Run]) -> pd.DataFrame:
    """Per recorded LW-DNA run: the FLOPs target, the FLOPs reached, their gap, the run's tolerance,
    and the parameters against the baseline's (only FLOPs are matched)."""
    rows = []
    for config, record in runs:
        summary = record_value(record, "lwdna") if record and record["status"] == "ok" else None
        if config["task"] != "lwdna" or not summary:
            continue
        target, flops = summary["target_flops"], record["flops"]
        rows.append({"model": lwdna_label(config), "seed": config["seed"], "target MFLOPs": f"{target / 1e6:.3f}",
                     "MFLOPs": f"{flops / 1e6:.3f}", "FLOPs vs target": f"{(flops - target) / target:+.1%}",
                     "tolerance": _percent(config["lwdna"]["tolerance"]), "params": f"{record['params']:,}",
                     "params vs baseline": f"{record['params'] / summary['baseline_params'] - 1:+.1%}"})
    return pd.DataFrame(rows, columns=["model", "seed", "target MFLOPs", "MFLOPs", "FLOPs vs target", "tolerance",
                                       "params", "params vs baseline"])


def lwdna_flops_note(runs: list[Run]) -> str:
    """Markdown: the FLOPs target both scores search for, the tolerance the runs allow (and the
    default), how far below the target the runs landed, and that parameters are not matched."""
    from ..lwdna import FLOPS_TOLERANCE

    lwdna = [(config, record) for config, record in runs if config["task"] == "lwdna"]
    if not lwdna:
        return "No LW-DNA run is configured."
    targets = {config["lwdna"]["target"] for config, _ in lwdna}
    target = ("the baseline's FLOPs" if targets == {"baseline"}
              else "the FLOPs targets " + join_words(sorted(map(str, targets))))
    tolerances = sorted({config["lwdna"]["tolerance"] for config, _ in lwdna})
    text = (f"Taylor score and random control search for the same target, {target}, with the same layer floor "
            f"and residual ties: the search stops at the first channel whose removal brings the network to or "
            f"below the target, and a run that lands more than {join_words(_percent(t) for t in tolerances)} below it "
            f"(the `tolerance` of these runs")
    text += (")" if tolerances == [FLOPS_TOLERANCE] else
             f"; the default is {_percent(FLOPS_TOLERANCE)}, which one channel of the smallest networks can exceed)")
    text += " fails instead of being recorded. "
    gaps = [record["flops"] / summary["target_flops"] - 1 for _, record in lwdna
            if record and record["status"] == "ok" and (summary := record_value(record, "lwdna"))]
    if not gaps:
        return text + "No LW-DNA run is recorded yet."
    text += (f"The recorded runs land between {min(gaps):+.1%} and {max(gaps):+.1%} from the target (the table "
             "below, per run). Only FLOPs are matched: a channel's parameters and "
             "FLOPs depend on its layer's resolution, so networks of equal FLOPs can differ in parameters "
             "(the last column).")
    return text


CHANCE_FACTOR = 1.5  # a top-1 below this many times that of a uniform guess counts as "at chance"


def chance_level_note(runs: list[Run], label: Any = lwdna_label) -> str:
    """Markdown: which row groups (`label(config)`) have a mean top-1 below CHANCE_FACTOR x chance
    (1 / the record's number of classes), i.e. have not started to learn, so that their comparisons
    say nothing; or that none has."""
    tops: dict[str, list[float]] = {}
    chance: dict[str, float] = {}
    for config, record in runs:
        if record and record["status"] == "ok" and record_value(record, "test_acc") is not None:
            name = label(config)
            tops.setdefault(name, []).append(float(record_value(record, "test_acc")))
            chance[name] = 1.0 / record["dataset"]["classes"]
    if not tops:
        return "No run is recorded yet."
    low = {name: sum(v) / len(v) for name, v in tops.items() if sum(v) / len(v) < CHANCE_FACTOR * chance[name]}
    levels = join_words(_percent(c) for c in sorted(set(chance.values())))
    if not low:
        return (f"No network is at chance level: every mean top-1 is above {CHANCE_FACTOR:g} x that of a uniform "
                f"guess ({levels}).")
    return (f"**At chance level:** {join_words(f'`{n}` ({100 * v:.1f}%)' for n, v in low.items())} "
            f"{'is' if len(low) == 1 else 'are'} below {CHANCE_FACTOR:g} x the top-1 of a uniform guess ({levels}): "
            f"{'this network has' if len(low) == 1 else 'these networks have'} not started to learn in this "
            "budget. An accuracy comparison (and its verdict below) between two networks at chance says nothing, "
            "and one against a network that learned shows only that one did not.")


def _percent(fraction: float) -> str:
    """A fraction as a percentage with at most one decimal, e.g. 0.15 -> '15%', 0.025 -> '2.5%'."""
    return f"{100 * fraction:.1f}".removesuffix(".0") + "%"


# The paper scale trains the DSFB paper's own CIFAR-10 setting, as its official train_cifar10.py
# (ssregibility/Net_RL2): 300 epochs of SGD (lr 0.1, momentum 0.9, weight decay 5e-4, batch 256),
# no label smoothing or warm-up; its step decay (x0.1 after epochs 150 and 225) is a cosine here,
# the trainer's schedules being linear or cosine.
DSFB_PAPER_RECIPE = {"epochs": 300, "batch_size": 256, "lr": 0.1, "nesterov": False, "weight_decay": 5e-4,
                     "label_smoothing": 0.0, "warmup_fraction": 0.0, "schedule": "cosine"}


def dsfb_runs(scale: str, seeds: list[int]) -> list[dict[str, Any]]:
    """One classify run per DSFB model and seed; at the paper scale on CIFAR-10 with `DSFB_PAPER_RECIPE`
    (the scale's own ImageNet recipe everywhere else would not be the paper's setting)."""
    from ..train.classify import classify_config

    paper = {"data": "cifar10", **DSFB_PAPER_RECIPE} if scale == "paper" else {}
    return [classify_config(model, scale, seed, **paper) for model in DSFB_MODELS for seed in seeds]


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


def shared_basis_note(paths: pd.DataFrame) -> str:
    """Markdown: how many positions each shared basis (a `shared_basis_paths` frame) is used at and
    how many timestamps it receives gradient at, with the bases that receive the most and the fewest."""
    if paths.empty:
        return "The network has no shared basis."
    most, fewest = paths.loc[paths["n_timestamps"].idxmax()], paths.loc[paths["n_timestamps"].idxmin()]
    return (f"Each shared basis is used at {_range(paths['positions'])} positions (one per layer that uses it) and "
            f"receives gradient at {_range(paths['n_timestamps'])} timestamps. A parameter's timestamps are the "
            "union, over its positions, of the lengths of every gradient path from the loss to that position, "
            "through every choice of block or shortcut downstream; their number depends on how much network "
            "follows the stage, not only on how many layers share the basis: here from "
            f"{most['n_timestamps']} (`{most['module']}`) to {fewest['n_timestamps']} (`{fewest['module']}`).")


def param_ref_note(scale: str, model: str = "resnet-dsfb", reference: str = "resnet-dsfb-param-ref") -> str:
    """Markdown: the blocks per stage of the parameter-matched plain ResNet at `scale`, whether that
    is the count that comes closest to `model`'s parameters, and the parameter gap that remains."""
    from ..models.cost import count_params
    from ..models.registry import create_model, model_kwargs

    blocks, ref_blocks = model_kwargs(model, scale)["blocks"], model_kwargs(reference, scale)["blocks"]
    target = count_params(create_model(model, scale))
    by_blocks = {b: count_params(create_model(reference, scale, blocks=b)) for b in range(1, blocks + 1)}
    closest = min(by_blocks, key=lambda b: abs(by_blocks[b] - target))
    ref = by_blocks[ref_blocks]
    how = ("the number that brings a plain ResNet of these widths closest to it" if closest == ref_blocks else
           f"although {closest} would come closer ({by_blocks[closest]:,} parameters)")
    return (f"`{reference}` has {ref_blocks} blocks per stage against `{model}`'s {blocks}, {how}: "
            f"{ref:,} parameters against {target:,} ({ref / target - 1:+.1%}). Its depth is set in whole blocks, "
            "so it matches the parameter count only as closely as one block per stage allows.")


def printed_count_note(scale: str, model: str = "resnet-dsfb-double", reference: str = "resnet-dsfb-depth-ref") -> str:
    """Markdown: whether `model` at `scale` is the paper's ResNet56-S16U1 on CIFAR-10, its parameter count
    and saving against `reference` beside the printed ones, and why they differ."""
    from ..models.cost import count_params
    from ..models.dsfb import PAPER_SIZE
    from ..models.registry import create_model, model_kwargs

    refs = {(r.paper_model, r.metric): r.value for r in references("dsfb")}
    printed, printed_ref = refs[("ResNet56-S16U1", "params_m")], refs[("ResNet-56", "params_m")]
    ours, ours_ref = (count_params(create_model(name, scale)) for name in (model, reference))
    kwargs = model_kwargs(model, scale)
    differences = [f"`{key}` {kwargs.get(key)} instead of {value}" for key, value in
                   {**PAPER_SIZE, "num_classes": 10}.items() if kwargs.get(key, 10 if key == "num_classes" else None)
                   != value]
    ours_saving, paper_saving = ours / ours_ref - 1, printed / printed_ref - 1
    if differences:
        return (f"At this scale `{model}` is not the paper's CIFAR-10 ResNet56-S16U1 ({', '.join(differences)}): "
                f"its {ours:,} parameters do not compare with the printed {printed} M, nor its saving against "
                f"`{reference}` ({ours_saving:+.1%}) with the paper's ({paper_saving:+.1%}, {printed} vs "
                f"{printed_ref} M). The counts compare only where the network has the paper's size.")
    return (f"At this scale `{model}` has the paper's size: {ours / 1e6:.3f} M parameters against the printed "
            f"{printed} M ({ours / (printed * 1e6) - 1:+.1%}), and a saving against `{reference}` of "
            f"{ours_saving:+.1%} against the paper's {paper_saving:+.1%} ({printed} vs {printed_ref} M). The counts "
            "differ because the official shortcuts pad with zeros where ours are 1×1 projections, and the printed "
            "count leaves out BatchNorm parameters, which ours includes.")


def _range(values: Iterable[int]) -> str:
    """'4' when every value is 4, else '4 to 25'."""
    values = sorted(set(int(v) for v in values))
    return str(values[0]) if len(values) == 1 else f"{values[0]} to {values[-1]}"


register_chapter(Chapter("lwdna", "LW-DNA: layer-wise differentiated widths", lwdna_runs, 120))
register_chapter(Chapter("dsfb", "Deeply shared filter bases", dsfb_runs, 130))
