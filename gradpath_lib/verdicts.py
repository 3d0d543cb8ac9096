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

A *correlation claim* (Table 1) says that a structural metric does or does not track accuracy
across networks. It is judged from the Spearman rank correlation `rho` of the metric with the
networks' mean accuracy and its two-sided p-value (`SIGNIFICANCE` = 0.05; `STRONG_RHO` = 0.5):

- `tracks` (the metric rises with accuracy): **reproduced** if `rho > 0` and `p < 0.05`;
  **not reproduced** otherwise if `rho < 0.5` (the association is weak or negative);
  **inconclusive** if `rho >= 0.5` without significance (a strong trend too few networks confirm).
- `does not track`: **reproduced** if `|rho| < 0.5`; **not reproduced** if `|rho| >= 0.5` and
  `p < 0.05`; **inconclusive** if `|rho| >= 0.5` without significance.

Either is **inconclusive** when rho is undefined (a constant metric or accuracy), when fewer than
`MIN_MODELS` networks have an accuracy (an exact rank test on four cannot reach p < 0.05), or when
a network's mean accuracy rests on fewer than `MIN_SEEDS` seeds (one seed cannot rank networks
apart from seed noise). With a handful of networks, `|rho| < 0.5` means "no strong association
shows", not "no association": the reason column says which rule decided.
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

TRACKS = "tracks"
DOES_NOT_TRACK = "does not track"
CORRELATION_DIRECTIONS = (TRACKS, DOES_NOT_TRACK)
SIGNIFICANCE = 0.05  # two-sided p-value below which a rank correlation counts
STRONG_RHO = 0.5  # |rho| from which a rank correlation counts as a strong association
MIN_MODELS = 5  # the fewest networks with which an exact rank test can reach p < SIGNIFICANCE


@dataclass(frozen=True)
class Verdict:
    """The outcome of one claim: the verdict, the measured difference and why."""

    verdict: str
    diff: float  # mean(subject) - mean(baseline); NaN when a side has no value
    margin: float  # MARGIN_STDS x pooled seed std (0 for deterministic metrics)
    n_subject: int
    n_baseline: int
    reason: str


@dataclass(frozen=True)
class CorrelationVerdict:
    """The outcome of one correlation claim: the verdict, the rank correlation and why."""

    verdict: str
    rho: float  # Spearman rank correlation of the metric with accuracy (NaN: undefined)
    p_value: float
    n_models: int
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


def judge_correlation(
    rho: float, p_value: float, direction: str, *, n_models: int, seeds: int
) -> CorrelationVerdict:
    """Apply the module's correlation rule; `seeds` is the fewest seeds behind a network's accuracy."""
    check_choice("correlation claim direction", direction, CORRELATION_DIRECTIONS)
    if not (_finite(rho) and _finite(p_value)):
        reason = "rho undefined (a constant metric or accuracy, or fewer than 3 networks)"
        return CorrelationVerdict(INCONCLUSIVE, rho, p_value, n_models, reason)
    if n_models < MIN_MODELS:
        reason = f"needs >= {MIN_MODELS} networks with an accuracy (has {n_models})"
        return CorrelationVerdict(INCONCLUSIVE, rho, p_value, n_models, reason)
    if seeds < MIN_SEEDS:
        reason = f"needs >= {MIN_SEEDS} seeds per network (has {seeds})"
        return CorrelationVerdict(INCONCLUSIVE, rho, p_value, n_models, reason)
    decide = _decide_tracks if direction == TRACKS else _decide_does_not_track
    verdict, reason = decide(rho, p_value < SIGNIFICANCE)
    return CorrelationVerdict(verdict, rho, p_value, n_models, reason)


def _decide_tracks(rho: float, significant: bool) -> tuple[str, str]:
    if rho > 0 and significant:
        return REPRODUCED, f"rho > 0 with p < {SIGNIFICANCE:g}"
    if rho < STRONG_RHO:
        return NOT_REPRODUCED, f"rho < {STRONG_RHO:g} and not significantly positive"
    return INCONCLUSIVE, f"rho >= {STRONG_RHO:g} but p >= {SIGNIFICANCE:g}"


def _decide_does_not_track(rho: float, significant: bool) -> tuple[str, str]:
    if abs(rho) < STRONG_RHO:
        return REPRODUCED, f"|rho| < {STRONG_RHO:g}"
    if significant:
        return NOT_REPRODUCED, f"|rho| >= {STRONG_RHO:g} with p < {SIGNIFICANCE:g}"
    return INCONCLUSIVE, f"|rho| >= {STRONG_RHO:g} but p >= {SIGNIFICANCE:g}"
