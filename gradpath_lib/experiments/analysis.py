"""The gradient path analysis chapters: Figs. 7-8 (timestamps and sources), Fig. 9 (stop
gradient), Table 1 (the SparseNet view), the measured gradient spectra, and other well-known
designs analysed the same way; and the sentences and tables these chapters compute from the
networks and records (PRN's gradient combinations against ResNet's, the steps between Fig. 7's
timestamps, ties in a measured spectrum's peak, why our SparseNet is larger than our DenseNet)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from ..analysis.figures import SPECTRUM_MODELS, peak_lengths, peak_text
from ..analysis.paths import GradientPathReport
from ..analysis.summary import TABLE1_MODELS
from ..paper import references
from ..tables import Run, runs_frame
from ..train.spectrum import spectrum_config
from . import Chapter, register_chapter
from .classification import FORMATS, PERCENT, classification_runs, no_runs

SPECTRUM_SEEDS = 1  # the spectra are shown for one trained network per architecture


def spectrum_runs(scale: str, seeds: list[int]) -> list[dict[str, Any]]:
    """A `Chapter.runs` function: one spectrum run (trained and initial weights) of each
    SPECTRUM_MODELS network."""
    return [spectrum_config(model, scale, seed) for model in SPECTRUM_MODELS for seed in seeds[:SPECTRUM_SEEDS]]


register_chapter(Chapter("gradient_timestamps", "Figures 7 and 8: gradient timestamps and sources",
                         no_runs, 30))
register_chapter(Chapter("stop_gradient", "Figure 9: stop gradient and gradient path lengths", no_runs, 40))
register_chapter(Chapter("sparsenet_view", "Table 1: path length, aggregation and gradient combination vs accuracy",
                         classification_runs(TABLE1_MODELS), 90))
register_chapter(Chapter("measured_spectra", "Beyond the paper: measured gradient spectra",
                         spectrum_runs, 110))
register_chapter(Chapter("other_designs", "Beyond the paper: gradient paths of other well-known designs",
                         no_runs, 115))


# --- Computed sentences and tables of the analysis chapters ---------------------------------



def combination_comparison(reports: Mapping[str, GradientPathReport], subject: str = "prn",
                           baseline: str = "resnet") -> str:
    """Markdown computed from the reports: `subject`'s mean gradient-combination size per filter
    against `baseline`'s, what that metric counts, and the diversity the paper means (how many
    layers give their channel groups different combinations)."""
    size = {m: reports[m].network["combination_size_mean"] for m in (subject, baseline)}
    split = {m: reports[m].network["split_combination_layers"] for m in (subject, baseline)}
    distinct = {m: reports[m].network["distinct_combinations_mean"] for m in (subject, baseline)}
    if size[subject] < size[baseline]:
        relation = "smaller than"
    elif size[subject] > size[baseline]:
        relation = "larger than"
    else:
        relation = "equal to"
    text = (f"`{subject}`'s mean gradient-combination size per filter is {size[subject]:.3f}, {relation} "
            f"`{baseline}`'s {size[baseline]:.3f}. That metric counts the (timestamp, source) pairs each output "
            "channel receives, averaged over all channels: it is a measure of how many gradients reach a "
            "filter, not of how different the filters' gradients are. ")
    if size[subject] < size[baseline]:
        text += ("A shortcut that reaches only part of a layer's channels, as PRN's masked one does, leaves the "
                 "other channels without the pairs it would bring them, so the mean falls. ")
    n = split[subject]
    layers = ("no weighted layer gives its" if n == 0 else
              f"{n} weighted layer{'' if n == 1 else 's'} give{'s its' if n == 1 else ' their'}")
    text += (f"What the paper calls richer is how the combinations differ between channels: in `{subject}`, "
             f"{layers} channel groups different combinations ({_distinct_text(distinct[subject])}), against "
             f"{'none' if split[baseline] == 0 else split[baseline]} in `{baseline}` "
             f"({_distinct_text(distinct[baseline])}).")
    if split[subject] <= split[baseline]:
        text += f" At this size `{subject}` is not more varied than `{baseline}` by that count either."
    return text


def correlation_rule_text() -> str:
    """Markdown stating the correlation rule exactly as `gradpath_lib.verdicts.judge_correlation`
    applies it, with the module's thresholds."""
    from ..verdicts import MIN_MODELS, MIN_SEEDS, SIGNIFICANCE, STRONG_RHO

    p, r = f"{SIGNIFICANCE:g}", f"{STRONG_RHO:g}"
    return (f"*Tracks* is **reproduced** when rho > 0 and p < {p} (a significant positive correlation); "
            f"**not reproduced** when rho < {r} and the correlation is not significantly positive (rho <= 0, or "
            f"p >= {p}); and **inconclusive** when rho >= {r} but p >= {p} (a strong trend too few networks "
            "confirm). *Does not track* is **reproduced** when "
            f"|rho| < {r}, whatever p; **not reproduced** when |rho| >= {r} and p < {p}; and **inconclusive** "
            f"when |rho| >= {r} but p >= {p}. Before either rule, a claim is **inconclusive** when rho is "
            f"undefined, when fewer than {MIN_MODELS} networks have an accuracy, or when a network's accuracy "
            f"rests on fewer than {MIN_SEEDS} seeds. With a handful of networks, |rho| < {r} says that no strong "
            "association shows, not that there is none.")


def _distinct_text(mean: float) -> str:
    """'1 distinct combination per layer', or the mean count of distinct combinations per layer."""
    if mean == 1:
        return "1 distinct combination per layer"
    return f"{mean:.3g} distinct combinations per layer on average"


def timestamp_gaps(report: GradientPathReport) -> list[int]:
    """The distinct gaps between consecutive gradient timestamps of the network's channel groups."""
    return sorted({b - a for stamps in report.layers.timestamps for a, b in zip(stamps, stamps[1:])})


def timestamps_reading(reports: Mapping[str, GradientPathReport]) -> str:
    """Markdown computed from the reports of Fig. 7: per network, the most timestamps any layer has
    and the steps between a layer's consecutive timestamps, with why the steps of 2 arise."""
    parts = []
    for name, report in reports.items():
        steps = timestamp_gaps(report)
        most = max(len(stamps) for stamps in report.layers.timestamps)
        step_text = ("a single timestamp per layer" if not steps else
                     f"steps of {', '.join(map(str, steps))} between consecutive timestamps")
        parts.append(f"`{name}`: up to {most} timestamps per layer, {step_text}")
    text = "Per network: " + "; ".join(parts) + "."
    if any(2 in timestamp_gaps(r) and 1 not in timestamp_gaps(r) for r in reports.values()):
        text += (" A step of 2 is a dense layer's doing: it is two convolutions (a 1×1, then a 3×3), so a path "
                 "that crosses one more dense layer is two weighted layers longer, and the concatenations give "
                 "every second length, not every length.")
    return text


def spectrum_ties_note(spectra: pd.DataFrame) -> str:
    """A sentence naming the networks whose spectrum has no single peak (or saying that each has one)."""
    tied = {model: peak_lengths(rows.set_index("timestamp").share)
            for model, rows in spectra.groupby("model", sort=False)}
    tied = {m: lengths for m, lengths in tied.items() if len(lengths) > 1}
    if not tied:
        return "Every network's spectrum has a single peak."
    parts = []
    for model, lengths in tied.items():
        share = float(spectra.loc[(spectra.model == model) & (spectra.timestamp == lengths[0]), "share"].iloc[0])
        parts.append(f"`{model}` (lengths {peak_text(lengths).removeprefix('tie: ')} carry {share:.3g} each)")
    return ("No single peak: " + "; ".join(parts) + ". Where a network has one path length per layer and "
            "one layer per length, as a plain network does, every length carries the same share.")


SPECTRUM_RUN_TIME = "spectrum run (s)"  # the spectrum run's own wall time, not the target's training


def spectrum_runs_table(runs: list[Run]) -> pd.DataFrame:
    """One row per spectrum run: model, seed, status, the network's params and MFLOPs (as text, like
    the classification tables), the trained network's test top-1 in percent like every other page,
    and the spectrum run's own wall time (`SPECTRUM_RUN_TIME`, seconds)."""
    frame = runs_frame(runs, metrics={"top-1 (%)": "target_test_acc"})
    table = frame[["model", "seed", "status"]].copy()
    table["params"] = [_formatted(FORMATS["params"], v) for v in frame["params"]]
    table["MFLOPs"] = [_formatted(FORMATS["mflops"], v / 1e6) for v in frame["flops"]]
    table["top-1 (%)"] = (frame["top-1 (%)"] * PERCENT).round(1)
    table[SPECTRUM_RUN_TIME] = frame["wall_time_s"].round(2)
    return table


def _formatted(fmt: str, value: float) -> str:
    """`fmt` applied to `value`, or "—" where there is none (a missing record)."""
    return "—" if pd.isna(value) else fmt.format(value)


def first_step_paths_text(recurrent: pd.DataFrame) -> str:
    """Markdown list from `analysis.designs.recurrent_paths_table`: per design, how many gradient paths
    take the first step's input to the loss and how many weighted layers they cross ("one path of 17
    weighted layers", "32,768 paths of 2 to 17 weighted layers")."""
    lines = []
    for design, row in recurrent[recurrent.step == 0].set_index("design").iterrows():
        count, short, long = int(row["paths"]), int(row["shortest path"]), int(row["longest path"])
        layers = f"{short} weighted layer{'' if short == 1 else 's'}"
        if count == 1:
            paths = f"one path of {layers}"
        elif short == long:
            paths = f"{count:,} paths, each of {layers}"
        else:
            paths = f"{count:,} paths of {short} to {long} weighted layers"
        lines.append(f"- {design}: the first step's input reaches the loss by {paths}.")
    return "\n".join(lines)


def sparse_aggregation_text(layers: tuple[int, ...], dense: str = "densenet", sparse: str = "sparsenet") -> str:
    """How much of the earlier outputs the sparse rule (n-1, n-2, n-4, ...) lets a layer and a
    transition read, against the dense rule, for blocks of `layers` layers: a dense layer n of a
    block aggregates outputs 0..n-1, and the block's transition aggregates as layer `layers` + 1 would."""
    from ..models.blocks import aggregated_inputs

    def kept(n: int) -> tuple[int, int]:
        return len(aggregated_inputs(n, "sparse")), len(aggregated_inputs(n, "dense"))

    layer_share = [s / d for block in layers for s, d in map(kept, range(1, block + 1))]
    transitions = [kept(block + 1) for block in layers]
    if min(layer_share) == 1:
        text = "with so few layers per block every sparse layer still reads every earlier output, as a dense one does"
    else:
        text = (f"a sparse layer here reads {sum(layer_share) / len(layer_share):.0%} of the earlier outputs a dense "
                "layer reads, on average")
    if all(s == d for s, d in transitions):
        return text + f", and so does every transition, so `{sparse}` aggregates exactly as `{dense}` does"
    if len(set(transitions)) == 1:
        s, d = transitions[0]
        return text + f"; a transition reads {s} of the {d} outputs a dense one reads"
    share = sum(s / d for s, d in transitions) / len(transitions)
    return text + f"; a transition reads {share:.0%} of the outputs a dense one reads, on average"


def sparsenet_sizing_note(scale: str, dense: str = "densenet", sparse: str = "sparsenet") -> str:
    """Markdown computed from the registry: our `sparse` and `dense` networks' parameters at
    `scale`, the growth rates and layers per block behind them, how much of the earlier outputs a
    sparse layer aggregates, and why this sizing differs from the SparseNet README's 40-layer pair."""
    from ..models.cost import count_params
    from ..models.dense_nets import DENSENET, SPARSENET
    from ..models.registry import create_model

    params = {m: count_params(create_model(m, scale)) for m in (dense, sparse)}
    growth = {dense: DENSENET[scale]["growth"], sparse: SPARSENET[scale]["growth"]}
    layers = tuple(DENSENET[scale]["layers"])
    printed = {r.paper_model: r.value for r in references("table1") if r.metric == "params_m"}
    relation = "more" if params[sparse] > params[dense] else "fewer"
    reads = sparse_aggregation_text(layers, dense, sparse)
    bc_pair = (f"; the README's own BC pair goes the same way, SparseNet-BC-100-24 at "
               f"{printed['SparseNet-BC-100-24']:g} M against DenseNet-BC-100-12 at {printed['DenseNet-BC-100-12']:g} M"
               if params[sparse] > params[dense] else "")
    ratio = growth[sparse] / growth[dense]
    return (
        f"At this scale our `{sparse}` has {params[sparse]:,} parameters, {relation} than `{dense}`'s "
        f"{params[dense]:,} ({params[sparse] / params[dense] - 1:+.1%}). Both are built from DenseNet-BC layers "
        f"(a 1×1 convolution to 4 × growth channels, then a 3×3 to growth) with {', '.join(map(str, layers))} "
        f"layers per block, and `{sparse}` has {ratio:g} times the growth ({growth[sparse]} against "
        f"{growth[dense]}; the README's SparseNet-40-24 has twice DenseNet-40-12's). Sparse aggregation narrows "
        f"only the inputs of the 1×1 convolutions and of the transitions ({reads}), while the larger growth "
        f"multiplies every 1×1's output by {ratio:g} and every 3×3 by {ratio ** 2:g}. The README's 40-layer nets "
        "are not BC nets: they have 12 layers per block and a 3×3 on the aggregated input, so there the narrower "
        "inputs shrink every convolution. Our sizing thus differs from the README's, and the parameter claim is "
        f"judged on ours{bc_pair}.")
