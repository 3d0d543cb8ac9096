"""From detection run records to the detection chapters' tables: COCO APs (in points, like the
paper) per run, and each detector's cost at its run input and at the paper's 640x640, relative
to YOLOR-v3.

Records hold COCOeval's APs as fractions (`bbox_AP`, `segm_AP75`, ...); `detection_frame` turns
them into the columns the claims of `gradpath_lib.paper` name (`ap_box`, `ap_mask`, `ap75_mask`,
...). Costs are structural: `detection_costs` counts them on the meta device (no compute), with
the same FLOP counter as the records (FLOPs = 2 x multiply-accumulates).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import pandas as pd

from .errors import GradpathError
from .models.cost import cost_table
from .models.yolor import BASELINE, PAPER_INPUT
from .paper import CLAIMS, STATED_DELTA, Claim, references
from .prose import join_words
from .tables import Run, readable, runs_frame, summarize

PRESET_MODELS = ("yolor-v3", "yolor-csp", "yolor-elan")  # the paper preset's cross-check (book/scale_out.md)
POINTS = 100.0  # records hold AP as a fraction; the tables show AP points like the paper
# table column -> COCOeval summary name in the record (bbox_* for boxes, segm_* for masks)
AP_COLUMNS = {
    f"{name.lower()}_{kind}": f"{iou_type}_{name}"
    for kind, iou_type in (("box", "bbox"), ("mask", "segm"))
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl")
}
AP_FORMAT = "{:.2f}"  # two decimals: small AP differences (as at the smoke scale) stay visible
STATED_PERCENT = re.compile(r"\s*([+-]?\d+(?:\.\d+)?)\s*%")  # "-26 % computation" -> -26


def detection_frame(runs: list[Run]) -> pd.DataFrame:
    """One row per detection run: status, params, FLOPs (run input) and every COCO AP in points."""
    frame = runs_frame(runs, metrics=AP_COLUMNS)
    frame[list(AP_COLUMNS)] *= POINTS
    return frame


def detection_costs(models: Sequence[str], scale: str) -> pd.DataFrame:
    """Per model at `scale`'s preset: params (M), GFLOPs at the run input and at 640, and their
    ratios to YOLOR-v3 (`-0.22` = 22 % less)."""
    names = list(dict.fromkeys([BASELINE, *models]))
    counted = cost_table(scale, names=names).loc[names]  # detectors: their scale's canvas and 640
    table = pd.DataFrame({
        "model": names,
        "params (M)": counted["params"].to_numpy() / 1e6,
        "GFLOPs (run input)": counted["flops"].to_numpy() / 1e9,
        f"GFLOPs ({PAPER_INPUT})": counted[f"flops_{PAPER_INPUT}"].to_numpy(dtype=float) / 1e9,
    })
    for column, label in (("params (M)", "params"), ("GFLOPs (run input)", "FLOPs"),
                          (f"GFLOPs ({PAPER_INPUT})", f"FLOPs ({PAPER_INPUT})")):
        table[f"{label} vs {BASELINE}"] = table[column] / table[column].iloc[0] - 1
    return table.set_index("model").loc[list(models)].reset_index()


def detection_table(frame: pd.DataFrame, costs: pd.DataFrame, ap_columns: Sequence[str]) -> pd.DataFrame:
    """Per model: run status, its costs (`detection_costs`, as text; changes vs YOLOR-v3 as "ΔFLOPs", ...)
    and 'mean ± std' over seeds of `ap_columns` (named for display: `ap75_mask` -> "AP75 mask")."""
    ours = readable(summarize(frame, ap_columns), {c: AP_FORMAT for c in ap_columns}).rename(columns={"label": "model"})
    table = ours[["model", "status"]].merge(_cost_text(costs), on="model", how="left").merge(
        ours.drop(columns="status"), on="model", how="left")
    return table.rename(columns={c: _ap_name(c) for c in ap_columns})


def baseline_cost_sentence(scale: str) -> str:
    """The costs the Δ columns are relative to, for a table without a YOLOR-v3 row: its params and
    GFLOPs (run input and 640) at `scale`'s preset (`detection_costs`)."""
    row = detection_costs([BASELINE], scale).iloc[0]
    return (f"Δparams and ΔFLOPs are relative to `{BASELINE}` (not a row of this table), which at the "
            f"`{scale}` preset has {row['params (M)']:.3g} M parameters and {row['GFLOPs (run input)']:.3g} "
            f"GFLOPs at the run input ({row[f'GFLOPs ({PAPER_INPUT})']:.3g} at {PAPER_INPUT}×{PAPER_INPUT}).")


def costs_by_preset(models: Sequence[str], scales: Sequence[str] | None = None) -> dict[str, pd.DataFrame]:
    """`detection_costs` of `models` at every scale's preset (default: all of `gradpath_lib.scales.SCALES`),
    counted on the meta device (seconds, no training)."""
    from .scales import SCALES

    return {scale: detection_costs(models, scale) for scale in (scales or SCALES)}


def preset_changes_table(by_preset: Mapping[str, pd.DataFrame], column: str) -> pd.DataFrame:
    """One row per model, one column per preset: its change vs YOLOR-v3 in `column` ("params",
    "FLOPs", ... as in `detection_costs`'s "<column> vs yolor-v3"), as a signed percentage."""
    name = f"{column} vs {BASELINE}"
    frames = [costs.set_index("model")[name].rename(scale) for scale, costs in by_preset.items()]
    table = pd.concat(frames, axis=1).map(lambda v: f"{v:+.1%}")
    table.columns = [f"Δ{column} ({scale})" for scale in table.columns]
    return table.rename_axis("model").reset_index()


def cheapest_by_preset(by_preset: Mapping[str, pd.DataFrame], subject: str, column: str = "params (M)") -> str:
    """Which model has the lowest `column` (of `detection_costs`) at each preset of `by_preset`
    (`costs_by_preset`), and whether that is `subject` at all of them, some or none."""
    parts, cheapest_at = [], []
    for scale, costs in by_preset.items():
        values = costs.set_index("model")[column]
        best = str(values.idxmin())
        if best == subject:
            cheapest_at.append(scale)
            parts.append(f"{scale}: `{best}` ({values[best]:.3g})")
        else:
            parts.append(f"{scale}: `{best}` ({values[best]:.3g}, `{subject}` {values[subject]:.3g})")
    text = f"The lowest {column} of these detectors, per preset: " + "; ".join(parts) + ". "
    if len(cheapest_at) == len(by_preset):
        return text + f"`{subject}` is the cheapest at every preset."
    if not cheapest_at:
        return text + f"`{subject}` is the cheapest at no preset."
    others = [scale for scale in by_preset if scale not in cheapest_at]
    return (text + f"So whether `{subject}` is the cheapest depends on the preset's widths and depths: it is at "
            + join_words(cheapest_at) + ", not at " + join_words(others, "or") + ".")


def _cost_text(costs: pd.DataFrame) -> pd.DataFrame:
    """The costs as text, changes vs YOLOR-v3 as signed percentages under short names ("ΔFLOPs (640)")."""
    shown = costs.copy()
    for column in shown.columns[1:]:
        ratio = column.endswith(f"vs {BASELINE}")
        shown[column] = [f"{v:+.1%}" if ratio else f"{v:.3g}" for v in shown[column]]
    return shown.rename(columns=_change_name)


def _change_name(column: str) -> str:
    """ "FLOPs (640) vs yolor-v3" -> "ΔFLOPs (640)"; other names as they are."""
    suffix = f" vs {BASELINE}"
    return "Δ" + column.removesuffix(suffix) if column.endswith(suffix) else column


def _ap_name(column: str) -> str:
    metric, kind = column.split("_")
    return f"AP{metric[2:]} {kind}"


def stated_fraction(claim: Claim) -> float:
    """The change a claim's paper text opens with, as a fraction ("-26 % computation" -> -0.26)."""
    match = STATED_PERCENT.match(claim.paper.replace("\u2212", "-"))
    if match is None:
        raise GradpathError(f"claim {claim.id!r} states no percentage: {claim.paper!r}")
    return float(match.group(1)) / 100


def stated_cost_comparison(costs: pd.DataFrame, claims: Sequence[Claim]) -> str:
    """A sentence putting our FLOPs change vs YOLOR-v3 (`detection_costs`, run input) beside the
    percentage each stated-delta FLOPs claim among `claims` gives (the verdicts judge only its sign)."""
    ratios = costs.set_index("model")[f"FLOPs vs {BASELINE}"]
    stated = [c for c in claims if c.metric == "flops" and c.relative and c.kind == STATED_DELTA
              and c.baseline == BASELINE]
    if not stated:
        raise GradpathError(f"none of these claims states a FLOPs change vs {BASELINE}")
    parts = []
    for claim in stated:
        if claim.subject not in ratios.index:
            raise GradpathError(f"claim {claim.id!r} is about {claim.subject!r}, which has no costs here; "
                                f"models with costs: {', '.join(ratios.index)}")
        ours, paper = float(ratios[claim.subject]), stated_fraction(claim)
        size = "larger" if ours < paper else "smaller"
        parts.append(f"`{claim.subject}` {ours:+.1%} against the paper's {claim.paper}, "
                     f"a cut {abs(ours - paper) * 100:.1f} points {size} than stated")
    return f"FLOPs vs {BASELINE} at this scale's preset: " + "; ".join(parts) + "."


def paper_references(table: str) -> pd.DataFrame:
    """The numbers printed for `table` (README / official configs), one row per model and metric."""
    rows = [{"paper model": r.paper_model, "ours": r.ours or "—", "metric": r.metric, "value": r.value,
             "source": r.source} for r in references(table)]
    return pd.DataFrame(rows, columns=["paper model", "ours", "metric", "value", "source"])


def paper_preset_comparison(models: Sequence[str] = PRESET_MODELS) -> pd.DataFrame:
    """Our paper-scale preset of `models` at 640x640 beside what the paper's sources print for them
    (the official configs of Table 6's cross-check; where there is none, the FLOPs change a claim
    states), with the mini preset's FLOPs change for comparison. "ΔFLOPs" is the change vs YOLOR-v3
    (-0.22 = 22 % less)."""
    flops, change = f"GFLOPs ({PAPER_INPUT})", "ΔFLOPs"
    paper = detection_costs(models, "paper").set_index("model")
    mini = detection_costs(models, "mini").set_index("model")
    printed = {(r.ours, r.metric): r for r in references("table6")}
    stated = {c.subject: c for c in CLAIMS
              if c.metric == "flops" and c.relative and c.kind == STATED_DELTA and c.baseline == BASELINE}
    rows = []
    for name in models:
        config = printed.get((name, "gflops"))
        if config is not None:
            official_change = None if name == BASELINE else config.value / printed[BASELINE, "gflops"].value - 1
        else:
            official_change = stated_fraction(stated[name]) if name in stated else None
        rows.append({
            "model": name,
            "params (M)": paper.loc[name, "params (M)"],
            flops: paper.loc[name, flops],
            change: paper.loc[name, f"FLOPs ({PAPER_INPUT}) vs {BASELINE}"],
            "official params (M)": printed[name, "params_m"].value if config is not None else None,
            f"official {flops}": config.value if config is not None else None,
            f"official {change}": official_change,
            f"mini {change}": mini.loc[name, f"FLOPs vs {BASELINE}"],
        })
    return pd.DataFrame(rows)
