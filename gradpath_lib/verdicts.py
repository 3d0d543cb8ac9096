"""The rule that turns recorded runs into a verdict on one of the paper's claims.

A claim compares a *subject* with a *baseline* on one metric, in one direction:

- `higher` / `lower`: the subject's metric is above / below the baseline's;
- `equal`: the two agree within the claim's `tolerance` (in the metric's own unit).

From the runs we take the per-seed values of each side and compute the mean difference
`diff = mean(subject) - mean(baseline)` and the *margin* `MARGIN_STDS x pooled seed std`, where
the pooled std is `sqrt(((n1 - 1) s1^2 + (n2 - 1) s2^2) / (n1 + n2 - 2))`. Then:

- `higher` / `lower`: **reproduced** if `diff` has the claimed sign and `|diff| > margin`;
  **not reproduced** if it has the opposite sign and `|diff| > margin`; **inconclusive** otherwise.
- `equal`: **reproduced** if `|diff| + margin <= tolerance` (the whole band lies inside the
  tolerance); **not reproduced** if `|diff| - margin > tolerance`; **inconclusive** otherwise.

A stochastic metric (accuracy, AP, ...) needs at least `MIN_SEEDS` values on each side, or the
verdict is **inconclusive** (one seed says nothing about seed noise). A deterministic metric
(parameters, FLOPs: the same for every seed) has no spread: its margin is 0 and one value suffices.
Runs that diverged carry no accuracy; a side with no usable value is inconclusive, and the reason
says why. The verdict is computed, never typed by hand.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import check_choice

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)

DIRECTIONS = ("higher", "lower", "equal")
MARGIN_STDS = 2.0  # a difference counts only beyond two pooled seed standard deviations
MIN_SEEDS = 2  # fewer seeds per side cannot tell a difference from seed noise


@dataclass(frozen=True)
class Verdict:
    """The outcome of one claim: the verdict, the measured difference and why."""

    verdict: str
    diff: float  # mean(subject) - mean(baseline); NaN when a side has no value
    margin: float  # MARGIN_STDS x pooled seed std (0 for deterministic metrics)
    n_subject: int
    n_baseline: int
    reason: str


def pooled_std(a: Sequence[float], b: Sequence[float]) -> float:
    """The pooled sample standard deviation of two groups (0 when neither has two values)."""
    dof = len(a) + len(b) - 2
    if dof <= 0:
        return 0.0
    return math.sqrt((_sum_sq_dev(a) + _sum_sq_dev(b)) / dof)


def _sum_sq_dev(values: Sequence[float]) -> float:
    mean = sum(values) / len(values) if values else 0.0
    return sum((v - mean) ** 2 for v in values)


def judge(
    subject: Sequence[float],
    baseline: Sequence[float],
    direction: str,
    *,
    tolerance: float = 0.0,
    deterministic: bool = False,
) -> Verdict:
    """Apply the module's rule to the per-seed values of the subject and the baseline."""
    check_choice("claim direction", direction, DIRECTIONS)
    subject = [float(v) for v in subject if _finite(v)]
    baseline = [float(v) for v in baseline if _finite(v)]
    n_s, n_b = len(subject), len(baseline)
    if not subject or not baseline:
        side = "subject" if not subject else "baseline"
        return Verdict(INCONCLUSIVE, math.nan, math.nan, n_s, n_b, f"no usable {side} run")
    diff = sum(subject) / n_s - sum(baseline) / n_b
    margin = 0.0 if deterministic else MARGIN_STDS * pooled_std(subject, baseline)
    if not deterministic and min(n_s, n_b) < MIN_SEEDS:
        reason = f"needs >= {MIN_SEEDS} seeds per side (has {n_s} and {n_b})"
        return Verdict(INCONCLUSIVE, diff, margin, n_s, n_b, reason)
    verdict, reason = _decide(diff, margin, direction, tolerance)
    return Verdict(verdict, diff, margin, n_s, n_b, reason)


def _decide(diff: float, margin: float, direction: str, tolerance: float) -> tuple[str, str]:
    if direction == "equal":
        if abs(diff) + margin <= tolerance:
            return REPRODUCED, f"|diff| + margin <= tolerance {tolerance:g}"
        if abs(diff) - margin > tolerance:
            return NOT_REPRODUCED, f"|diff| - margin > tolerance {tolerance:g}"
        return INCONCLUSIVE, f"band diff ± margin straddles tolerance {tolerance:g}"
    if abs(diff) <= margin:
        return INCONCLUSIVE, "|diff| within the seed margin"
    claimed_sign = 1 if direction == "higher" else -1
    if math.copysign(1, diff) == claimed_sign:
        return REPRODUCED, f"{direction} by more than the seed margin"
    return NOT_REPRODUCED, f"opposite of {direction}, beyond the seed margin"


def _finite(value: object) -> bool:
    return isinstance(value, numbers.Real) and math.isfinite(value)
