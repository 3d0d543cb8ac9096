"""Table 1 (the SparseNet table, on our own networks): structural metrics per model, their
Spearman rank correlation with accuracy, and the verdicts on the table's claims.

The structural columns come from `analyze_model` (see `paths` for the definitions); params and
FLOPs from `gradpath_lib.models.cost`; accuracy from the run records (a classification runs frame,
`gradpath_lib.experiments.classification.classification_frame`), averaged over seeds per model.
`table1` assembles all three tables; the correlation claims are judged by
`gradpath_lib.verdicts.judge_correlation`, the pairwise ones by `gradpath_lib.verdicts.judge`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from ..errors import GradpathError
from ..paper import CorrelationClaim, claims, correlation_claims
from ..tables import NOT_AVAILABLE, VERDICT_COLUMNS, verdict_frame
from ..verdicts import CorrelationVerdict, judge_correlation
from .paths import analyze_model

STRUCTURAL_METRICS = ("longest_shortest_path", "longest_path", "aggregated_features_mean",
                      "aggregated_features_max", "combination_size_mean", "distinct_combinations_mean")
TABLE1_MODELS = ("plain", "resnet", "prn", "densenet", "sparsenet", "csp-resnet", "elan")
INPUT_SHAPE = (3, 32, 32)  # CIFAR-sized classifiers



def structural_table(model_names: Sequence[str] = TABLE1_MODELS, scale: str = "mini") -> pd.DataFrame:
    """One row per registered model at `scale`: STRUCTURAL_METRICS, params and FLOPs."""
    from ..models import create_model
    from ..models.cost import count_flops, count_params

    rows = []
    for name in model_names:
        model = create_model(name, scale)
        network = analyze_model(model, INPUT_SHAPE).network
        rows.append({"model": name, **{m: network[m] for m in STRUCTURAL_METRICS},
                     "params": count_params(model), "flops": count_flops(model, INPUT_SHAPE)})
    return pd.DataFrame(rows)


def rank_correlations(
    table: pd.DataFrame, accuracy: str = "top1", metrics: Sequence[str] = STRUCTURAL_METRICS + ("params", "flops")
) -> pd.DataFrame:
    """Spearman rho (and its p-value) of each metric with the `accuracy` column, over the rows
    where accuracy is known; rho is NaN when a column is constant or fewer than 3 rows remain."""
    from scipy.stats import spearmanr

    known = table.dropna(subset=[accuracy])
    rows = []
    for metric in metrics:
        if len(known) < 3 or known[metric].nunique() < 2 or known[accuracy].nunique() < 2:
            rho, p_value = float("nan"), float("nan")
        else:
            result = spearmanr(known[metric], known[accuracy])
            rho, p_value = float(result.statistic), float(result.pvalue)
        rows.append({"metric": metric, "spearman_rho": rho, "p_value": p_value, "n_models": len(known)})
    return pd.DataFrame(rows)


def mean_accuracy(frame: pd.DataFrame, accuracy: str = "top1") -> pd.DataFrame:
    """Per model of a runs frame (its `label`): `mean <accuracy>` over seeds and `seeds`, the
    number of runs with a value (diverged and missing runs have none)."""
    grouped = frame.groupby("label", sort=False)[accuracy]
    means = pd.DataFrame({f"mean {accuracy}": grouped.mean(), "seeds": grouped.count()})
    return means.rename_axis("model").reset_index()


def _rho_text(verdict: CorrelationVerdict) -> str:
    """`rho +0.43, p 0.34` (or the not-available mark when rho is undefined)."""
    if not math.isfinite(verdict.rho):
        return NOT_AVAILABLE
    return f"rho {verdict.rho:+.2f}, p {verdict.p_value:.2g}"


def correlation_verdict_frame(
    to_judge: Sequence[CorrelationClaim], correlations: pd.DataFrame, seeds: int
) -> pd.DataFrame:
    """One row per correlation claim in `tables.verdict_frame`'s columns, judged from a
    `rank_correlations` table; `seeds` is the fewest seeds behind a network's mean accuracy."""
    by_metric = correlations.set_index("metric")
    rows = []
    for claim in to_judge:
        if claim.metric not in by_metric.index:
            raise GradpathError(f"correlation claim {claim.id!r}: metric {claim.metric!r} is not in the rank "
                                f"correlations; valid metrics: {', '.join(by_metric.index)}")
        row = by_metric.loc[claim.metric]
        verdict = judge_correlation(row.spearman_rho, row.p_value, claim.direction,
                                    n_models=int(row.n_models), seeds=seeds)
        rows.append({"claim": claim.text, "kind": claim.kind, "paper": claim.paper, "ours": _rho_text(verdict),
                     "verdict": verdict.verdict, "why": verdict.reason,
                     "n": f"{verdict.n_models} networks, >= {seeds} seed(s) each"})
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)


@dataclass(frozen=True)
class Table1:
    """Table 1's three tables: structure beside accuracy, rank correlations, verdicts."""

    table: pd.DataFrame  # per model: status, top-1 mean ± std, STRUCTURAL_METRICS, params, FLOPs
    correlations: pd.DataFrame  # `rank_correlations` of each metric with the mean top-1
    verdicts: pd.DataFrame  # the pairwise claims of `paper.claims("table1")`, then the correlation claims


def table1(frame: pd.DataFrame, scale: str, model_names: Sequence[str] = TABLE1_MODELS) -> Table1:
    """Table 1 from a classification runs frame (top-1 in %) for the models built at `scale`."""
    from ..experiments.classification import PERCENT, summary_table

    structure = structural_table(model_names, scale)
    accuracy = structure[["model"]].merge(mean_accuracy(frame), on="model", how="left")
    correlations = rank_correlations(structure.merge(accuracy, on="model"), "mean top1")
    known = accuracy.dropna(subset=["mean top1"])
    seeds = int(known["seeds"].min()) if len(known) else 0
    pairwise = verdict_frame(claims("table1"), frame.assign(error=PERCENT - frame["top1"]))
    verdicts = pd.concat([pairwise, correlation_verdict_frame(correlation_claims("table1"), correlations, seeds)],
                         ignore_index=True)
    table = summary_table(frame, ["top1"]).merge(structure, on="model", how="left")
    return Table1(table, correlations, verdicts)
