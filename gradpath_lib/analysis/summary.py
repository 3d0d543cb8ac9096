"""Table 1 (the SparseNet table, on our own networks): structural metrics per model, and their
Spearman rank correlation with accuracy.

The structural columns come from `analyze_model` (see `paths` for the definitions); params and
FLOPs from `gradpath_lib.models.cost`. Accuracy comes from run records and is joined by the caller
on the `model` column.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from .paths import analyze_model

STRUCTURAL_METRICS = ("longest_shortest_path", "longest_path", "aggregated_features_mean",
                      "aggregated_features_max", "combination_size_mean")
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
