"""From run records to the DataFrames every chapter shows: one row per run, mean ± std over
seeds per network, what is missing, and the paper's claims with their verdicts.

A chapter gets `(config, record or None)` pairs (see `gradpath_lib.notebook.Setup.collect`) and
calls `runs_frame` on them; a run that was never recorded has status `missing`. Metric columns
hold a value only for runs with status `ok`: a run that diverged has no accuracy, and shows as
`diverged` (its `converged` column is 0) instead of a number.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import GradpathError
from .paper import Claim
from .scales import check_scale
from .store import atomic_write_bytes
from .verdicts import INCONCLUSIVE, judge

MISSING = "missing"
NOT_AVAILABLE = "—"  # shown where a value does not exist (missing, diverged or one seed)
VERDICT_COLUMNS = ["claim", "kind", "paper", "ours", "ours / paper", "verdict", "why", "n"]  # of verdict_frame
RUN_COLUMNS = ("label", "model", "seed", "status", "params", "flops", "converged", "diverged_at_step",
               "wall_time_s", "device_name", "run_id")

Run = tuple[dict[str, Any], "dict[str, Any] | None"]


def record_value(record: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted `path` of a record, looked up in `record["metrics"]` first, then at
    the top level (e.g. "test_top1", "bbox.AP", "params"); None when absent."""
    for root in (record.get("metrics", {}), record):
        value: Any = root
        for key in path.split("."):
            if not isinstance(value, Mapping) or key not in value:
                value = None
                break
            value = value[key]
        if value is not None:
            return value
    return None


def runs_frame(
    runs: Iterable[Run],
    metrics: Mapping[str, str] | None = None,
    label: Callable[[dict[str, Any]], str] | None = None,
) -> pd.DataFrame:
    """One row per run: RUN_COLUMNS plus one column per `metrics` entry (column -> record path).

    `label` names each run's row group (default: its model); metric values are kept for runs
    with status `ok` only.
    """
    metrics = dict(metrics or {})
    rows = []
    for config, record in runs:
        status = record["status"] if record else MISSING
        ok = status == "ok"
        row = {
            "label": label(config) if label else config["model"],
            "model": config["model"],
            "seed": config["seed"],
            "status": status,
            "params": record.get("params") if record else None,
            "flops": record.get("flops") if record else None,
            "converged": math.nan if record is None else float(ok),
            "diverged_at_step": record.get("diverged_at_step") if record else None,
            "wall_time_s": record.get("wall_time_s") if record else None,
            "device_name": record.get("provenance", {}).get("device_name") if record else None,
            "run_id": record["run_id"] if record else None,
        }
        for column, path in metrics.items():
            row[column] = _number(record_value(record, path)) if ok else math.nan
        rows.append(row)
    frame = pd.DataFrame(rows, columns=[*RUN_COLUMNS, *metrics])
    for column in ("params", "flops", "converged", "diverged_at_step", "wall_time_s", *metrics):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan


def status_summary(statuses: Iterable[str]) -> str:
    """'3 ok', '1 ok, 2 diverged', '3 missing': the statuses of one row group, counted."""
    counts = pd.Series(list(statuses)).value_counts()
    order = ["ok", "diverged", "failed", MISSING]
    return ", ".join(f"{counts[s]} {s}" for s in order if s in counts)


def summarize(frame: pd.DataFrame, columns: Sequence[str], by: str = "label") -> pd.DataFrame:
    """Per row group (in first-appearance order): status summary and, for each column,
    `<col>_mean`, `<col>_std` (sample std, NaN with fewer than two values) and `<col>_n`."""
    unknown = sorted(set(columns) - set(frame.columns))
    if unknown:
        raise GradpathError(f"unknown table column(s) {unknown}; valid columns: {', '.join(frame.columns)}")
    rows = []
    for key, group in frame.groupby(by, sort=False):
        row: dict[str, Any] = {by: key, "runs": len(group), "status": status_summary(group["status"])}
        for column in columns:
            values = group[column].dropna()
            row[f"{column}_mean"] = values.mean() if len(values) else math.nan
            row[f"{column}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
            row[f"{column}_n"] = len(values)
        rows.append(row)
    return pd.DataFrame(rows)


def mean_std_text(mean: float, std: float, fmt: str = "{:.2f}") -> str:
    """'76.60 ± 0.31', or '76.60' for a single value, or '—' when there is none."""
    if mean is None or not math.isfinite(mean):
        return NOT_AVAILABLE
    if std is None or not math.isfinite(std):
        return fmt.format(mean)
    return f"{fmt.format(mean)} ± {fmt.format(std)}"


def readable(summary: pd.DataFrame, formats: Mapping[str, str], by: str = "label") -> pd.DataFrame:
    """The summary as text for display: the label, status and 'mean ± std' per formatted column."""
    out = summary[[by, "status"]].copy()
    for column, fmt in formats.items():
        out[column] = [mean_std_text(m, s, fmt) for m, s in
                       zip(summary[f"{column}_mean"], summary[f"{column}_std"])]
    return out


def seed_spread_note(frame: pd.DataFrame, what: str = "cell", unit: str = "network", column: str | None = None,
                     by: str = "label") -> str:
    """A sentence saying what a 'mean ± std over seeds' `what` of a table holds, computed from the
    runs frame: how many seeds each row group (`by`, a `unit`) has with a value (of `column`;
    without one, the runs with status `ok`), and that one seed shows a single value."""
    if column is not None:
        frame = frame.dropna(subset=[column])
    elif "status" in frame.columns:
        frame = frame[frame["status"] == "ok"]
    seeds = frame.groupby(by, sort=False)["seed"].nunique()
    if seeds.empty:
        return f"No run has a value, so no {what} has one."
    fewest, most = int(seeds.min()), int(seeds.max())
    if most == 1:
        return (f"Each {unit} has one seed here, so each {what} is that run's value and no spread is shown "
                "(a mean ± standard deviation needs two seeds or more).")
    count = f"{fewest}" if fewest == most else f"{fewest} to {most}"
    note = f"Each {what} is the mean ± sample standard deviation over the seeds of its {unit} ({count} here)"
    if fewest == 1:
        note += f"; a {unit} with one seed shows its single value"
    return note + "."


def missing_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """The runs of `frame` that are not recorded (label, model, seed)."""
    return frame.loc[frame["status"] == MISSING, ["label", "model", "seed"]].reset_index(drop=True)


def verdict_frame(claims: Sequence[Claim], frame: pd.DataFrame) -> pd.DataFrame:
    """One row per claim: the claim, where its paper value comes from, the paper's value,
    ours (the measured difference), ours / paper (its size as a multiple of the paper's
    difference, where the paper gives one and the verdict is not inconclusive: the verdict judges
    the sign only, and an inconclusive difference is seed noise), the verdict of
    `gradpath_lib.verdicts` and its reason."""
    rows = []
    for claim in claims:
        subject = _values(frame, claim.subject, claim.metric)
        baseline = _values(frame, claim.baseline, claim.metric)
        if claim.relative and baseline:
            scale = sum(baseline) / len(baseline)
            subject, baseline = [v / scale - 1 for v in subject], [v / scale - 1 for v in baseline]
        verdict = judge(subject, baseline, claim.direction, tolerance=claim.tolerance,
                        deterministic=claim.deterministic)
        rows.append({
            "claim": claim.text,
            "kind": claim.kind,
            "paper": claim.paper,
            "ours": _difference_text(verdict.diff, verdict.margin, claim.relative),
            "ours / paper": math.nan if verdict.verdict == INCONCLUSIVE else _size_ratio(verdict.diff, claim.paper_delta),
            "verdict": verdict.verdict,
            "why": verdict.reason,
            "n": f"{verdict.n_subject} vs {verdict.n_baseline}",
        })
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)


def _size_ratio(diff: float, paper_delta: float | None) -> float:
    """Our difference as a multiple of the paper's (1: as large; negative: the other way), rounded
    to two decimals; NaN where the paper gives no number or ours is missing."""
    if not paper_delta or not math.isfinite(diff):
        return math.nan
    return round(diff / paper_delta, 2)


def _values(frame: pd.DataFrame, label: str, metric: str) -> list[float]:
    if metric not in frame.columns:
        raise GradpathError(f"claim metric {metric!r} is not a column of the runs frame; "
                            f"valid columns: {', '.join(frame.columns)}")
    return frame.loc[frame["label"] == label, metric].dropna().tolist()


def _difference_text(diff: float, margin: float, relative: bool) -> str:
    if not math.isfinite(diff):
        return NOT_AVAILABLE
    text = f"{diff:+.1%}" if relative else f"{diff:+.2f}"  # points (top-1, AP) to two decimals
    if text in ("-0.00", "-0.0%"):  # a difference that rounds to zero has no sign
        text = "+" + text[1:]
    if margin and math.isfinite(margin):
        text += f" (margin {margin:.1%})" if relative else f" (margin {margin:.2f})"
    return text


def output_dir(results_dir: str | Path, scale: str, kind: str) -> Path:
    """`<results_dir>/<scale>/<kind>/` (kind: tables, figures, notebooks), created if needed."""
    folder = Path(results_dir) / check_scale(scale) / kind
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GradpathError(f"cannot create {folder} ({err.strerror or err}); give a writable --results-dir") from err
    return folder


def save_table(table: pd.DataFrame, results_dir: str | Path, scale: str, name: str) -> Path:
    """Write `table` to `<results_dir>/<scale>/tables/<name>.csv` and return the path."""
    path = output_dir(results_dir, scale, "tables") / f"{name}.csv"
    atomic_write_bytes(path, table.to_csv(index=False).encode())
    return path
