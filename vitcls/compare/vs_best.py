"""Testing several designs against the best one: Holm's correction, a label per design, a one-line verdict.

The design ranked first (on validation) is compared with every other design on the test split: one
two-sided p-value each. Those p-values form one family, so they are Holm-adjusted (step-down, controls the
family-wise error rate without assuming independence). A design is then labelled:

  best                   the design ranked first
  better / worse         Holm-adjusted p < alpha, in the direction of the test difference
  not distinguishable    Holm-adjusted p >= alpha: the test found no difference at alpha. That is not evidence
                         that the two are equal (an equivalence test would need a margin that matters for the
                         task, which the numbers alone do not give)
  unknown                no p-value (nothing measured the error: no per-image predictions, or one seed and no
                         seed variance to borrow)

Plain floats and strings in, plain values out: any table of designs (one sweep, a leaderboard across datasets)
can call `holm`, `label`, `against_best` and `verdict`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from vitcls.compare.stats import SIGNIFICANCE

BEST = "best"
BETTER = "better"
WORSE = "worse"
NOT_DISTINGUISHABLE = "not distinguishable"
UNKNOWN = "unknown"
LABELS = (BEST, BETTER, NOT_DISTINGUISHABLE, WORSE, UNKNOWN)
CORRECTION = "Holm"
_NAMES_IN_VERDICT = 5  # designs named per group of the verdict; beyond that "and N more"


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the order given. nan (no test) stays nan and does not count in the family.

    With the m p-values sorted p(1) <= ... <= p(m): adjusted p(i) = max over j <= i of min(1, (m - j + 1) p(j)).
    Rejecting where adjusted p < alpha is Holm's step-down procedure at family-wise level alpha.
    """
    tested = sorted((p, index) for index, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[index] = running
    return adjusted


def label(p_adjusted: float, advantage: float, alpha: float = SIGNIFICANCE) -> str:
    """A design's label against the best from its adjusted p-value and its `advantage` over the best (its test
    score minus the best's, sign flipped for a metric to minimise: > 0 means it did better)."""
    if math.isnan(p_adjusted) or math.isnan(advantage):
        return UNKNOWN
    if p_adjusted >= alpha or advantage == 0.0:
        return NOT_DISTINGUISHABLE
    return BETTER if advantage > 0 else WORSE


@dataclass(frozen=True)
class VsBest:
    """One design tested against the best."""

    name: str
    advantage: float  # its score minus the best's, > 0 when it did better (whatever the metric's direction)
    p_raw: float  # two-sided, uncorrected; nan when untested
    p_holm: float  # Holm-adjusted over the family of tests against the same best
    label: str


def against_best(
    names: Sequence[str], advantages: Sequence[float], p_values: Sequence[float], alpha: float = SIGNIFICANCE
) -> list[VsBest]:
    """The designs other than the best (one family of tests): Holm-adjusted p-values and labels."""
    if not len(names) == len(advantages) == len(p_values):
        raise ValueError(f"{len(names)} names, {len(advantages)} advantages and {len(p_values)} p-values")
    adjusted = holm(p_values)
    return [VsBest(name, advantage, p, p_holm, label(p_holm, advantage, alpha))
            for name, advantage, p, p_holm in zip(names, advantages, p_values, adjusted, strict=True)]


def by_label(results: Sequence[VsBest]) -> dict[str, list[str]]:
    """{label: design names} for every label but `best`, in the order given (empty lists included)."""
    return {name: [r.name for r in results if r.label == name] for name in LABELS if name != BEST}


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_NAMES_IN_VERDICT])
    return shown + (f" and {len(names) - _NAMES_IN_VERDICT} more" if len(names) > _NAMES_IN_VERDICT else "")


def _seeds(n_seeds: Sequence[int]) -> str:
    low, high = min(n_seeds), max(n_seeds)
    if low == high:
        return f"{low} seed{'s' if low != 1 else ''} each"
    return f"{low}-{high} seeds"


def verdict(
    best: str,
    results: Sequence[VsBest],
    n_seeds: Sequence[int],
    *,
    selected_on: str,
    tested_on: str,
    alpha: float = SIGNIFICANCE,
) -> str:
    """One line a reader can quote, e.g. "head=mlp best on val/f1_macro; on test/f1_macro not distinguishable
    from head=cosine; better than head=linear; no p-value for head=mean (3 seeds each, Holm-corrected over 2
    tests, alpha 0.05)". "better than X": X is labelled worse; "worse than X": X is labelled better.

    `results`: every other design of the family (from `against_best`); `n_seeds`: the seeds of every design in
    it, the best included; `selected_on`: what ranked them; `tested_on`: the metric of the p-values.
    """
    if not results:
        return f"{best} best on {selected_on}; no other design to test it against"
    groups = by_label(results)
    parts = []
    if groups[NOT_DISTINGUISHABLE]:
        parts.append(f"not distinguishable from {_names(groups[NOT_DISTINGUISHABLE])}")
    if groups[WORSE]:
        parts.append(f"better than {_names(groups[WORSE])}")
    if groups[BETTER]:
        parts.append(f"worse than {_names(groups[BETTER])}")
    if groups[UNKNOWN]:
        parts.append(f"no p-value for {_names(groups[UNKNOWN])}")
    tests = sum(not math.isnan(r.p_raw) for r in results)
    how = (f"{_seeds(n_seeds)}, {CORRECTION}-corrected over {tests} test{'s' if tests != 1 else ''}, "
           f"alpha {alpha:g}")
    return f"{best} best on {selected_on}; on {tested_on} " + "; ".join(parts) + f" ({how})"
