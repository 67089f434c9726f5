"""Scoring designs: estimates with intervals, the ranking on the selection metric, p-values against the best.

The ranking metric is a validation metric (test only with --allow-test-selection). Whether a design really
differs from the best one is tested on the test split, on the same metric: the design was chosen on val,
its test images had no say in it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from vitcls.compare.designs import Design
from vitcls.compare.runs import Run
from vitcls.compare.stats import SIGNIFICANCE, Estimate, Resampler, estimate, p_value_of_difference
from vitcls.metrics import LOWER_IS_BETTER
from vitcls.reporting.predictions_csv import read_predictions

# Test metrics every design table shows, beside the ranking metric and its test counterpart.
TABLE_TEST_METRICS = ("acc", "f1_macro")

MetricKey = tuple[str, str]  # (split, metric name)


@dataclass(frozen=True)
class Ranking:
    split: str  # "val"; "test" only when selection on test was asked for
    metric: str
    minimize: bool

    @property
    def name(self) -> str:
        return f"{self.split}/{self.metric}"

    @property
    def key(self) -> MetricKey:
        return (self.split, self.metric)

    @property
    def significance(self) -> MetricKey:
        return ("test", self.metric)

    def reported(self) -> list[MetricKey]:
        """The (split, metric) pairs of the design table: ranking metric first, then test metrics."""
        keys = [self.key, self.significance, *(("test", m) for m in TABLE_TEST_METRICS)]
        return list(dict.fromkeys(keys))


@dataclass
class DesignScore:
    design: Design
    estimates: dict[MetricKey, Estimate] = field(default_factory=dict)
    replicates: dict[MetricKey, np.ndarray | None] = field(default_factory=dict)
    points: dict[MetricKey, list[float]] = field(default_factory=dict)
    rank: int | None = None
    p_vs_best: float = math.nan
    tied_with_best: bool | None = None


def bounds(metric: str) -> tuple[float, float]:
    return (0.0, math.inf) if metric in LOWER_IS_BETTER else (0.0, 1.0)


class RunReplicates:
    """Bootstrap replicates of each run's metrics, from its per-image predictions (read once per run/split)."""

    def __init__(self, resampler: Resampler, metrics: dict[str, list[str]]):
        self.resampler = resampler
        self.metrics = metrics  # split -> metric names
        self._cache: dict[tuple[str, str], dict[str, np.ndarray] | None] = {}

    def get(self, run: Run, split: str) -> dict[str, np.ndarray] | None:
        path = run.predictions.get(split)
        key = (str(path or run.directory), split)  # the heads of a bank share a directory, not a predictions file
        if key not in self._cache:
            if path is None or not run.class_names:
                self._cache[key] = None
            else:
                predictions = read_predictions(path, run.class_names)
                self._cache[key] = self.resampler.replicates(predictions, self.metrics[split], len(run.class_names))
        return self._cache[key]


def _score_one(design: Design, keys: Sequence[MetricKey], replicates: RunReplicates) -> DesignScore:
    score = DesignScore(design)
    for split, metric in keys:
        runs = [run for run in design.runs if run.metric(split, metric) is not None]
        points = [run.metric(split, metric) for run in runs]
        per_run = [replicates.get(run, split) for run in runs]
        stacked = np.stack([r[metric] for r in per_run]) if runs and all(r is not None for r in per_run) else None
        score.points[(split, metric)] = points
        score.replicates[(split, metric)] = stacked
        score.estimates[(split, metric)] = estimate(points, stacked, bounds(metric))
    return score


def _rank_group(scores: list[DesignScore], ranking: Ranking) -> None:
    ranked = [s for s in scores if not math.isnan(s.estimates[ranking.key].mean)]
    ranked.sort(key=lambda s: s.estimates[ranking.key].mean, reverse=not ranking.minimize)
    for rank, score in enumerate(ranked, start=1):
        score.rank = rank
    if not ranked:
        return
    best, key = ranked[0], ranking.significance
    best.tied_with_best = True
    for score in ranked[1:]:
        score.p_vs_best = p_value_of_difference(
            score.points[key], score.replicates[key], best.points[key], best.replicates[key]
        )
        score.tied_with_best = None if math.isnan(score.p_vs_best) else score.p_vs_best >= SIGNIFICANCE


def score_designs(designs: Sequence[Design], ranking: Ranking, resampler: Resampler) -> list[DesignScore]:
    """Scores of every design, ranked within each value of the x axis; in x order, then rank order."""
    keys = ranking.reported()
    metrics: dict[str, list[str]] = {}
    for split, metric in keys:
        metrics.setdefault(split, []).append(metric)
    replicates = RunReplicates(resampler, metrics)
    scores = [_score_one(design, keys, replicates) for design in designs]
    groups: dict[str | None, list[DesignScore]] = {}
    for score in scores:
        groups.setdefault(score.design.x, []).append(score)
    ordered: list[DesignScore] = []
    for x_value in sorted(groups, key=x_sort_key):
        group = groups[x_value]
        _rank_group(group, ranking)
        ordered += sorted(group, key=lambda s: (s.rank is None, s.rank or 0))
    return ordered


def x_sort_key(value: str | None) -> tuple:
    """Numbers in numeric order, then anything else as text."""
    if value is None:
        return (0, 0.0, "")
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)
