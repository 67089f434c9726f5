"""Scoring designs: estimates with intervals, the ranking on the selection metric, tests against the best.

The ranking metric is a validation metric (test only with --allow-test-selection). Whether a design really
differs from the best one is tested on the test split, on the same metric: the design was chosen on val,
its test images had no say in it. The tests against one best design are one family: Holm-corrected and
labelled by `vs_best`. One-seed designs borrow the seed variance pooled within their comparison.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from vitcls.compare.designs import Design
from vitcls.compare.runs import Run
from vitcls.compare.stats import (
    Estimate,
    Resampler,
    estimate,
    image_floor,
    p_value_of_difference,
    pooled_seed_variance,
)
from vitcls.compare.vs_best import BEST, VsBest, against_best
from vitcls.metrics import LOWER_IS_BETTER, selection_key
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


# How a design's seed variance was found (the `seed_variance` column): from its own seeds, borrowed (pooled over
# the designs of its comparison with several seeds), or not at all (one seed and nothing to borrow).
OWN, POOLED, NONE = "own", "pooled", "none"


@dataclass
class DesignScore:
    design: Design
    estimates: dict[MetricKey, Estimate] = field(default_factory=dict)
    replicates: dict[MetricKey, np.ndarray | None] = field(default_factory=dict)
    points: dict[MetricKey, list[float]] = field(default_factory=dict)
    floors: dict[MetricKey, tuple[float, float] | None] = field(default_factory=dict)
    rank: int | None = None
    seed_variance: str | None = None  # OWN, POOLED or NONE on the significance metric; None without scores
    diff_vs_best: float = math.nan  # its test score minus the best design's
    p_vs_best_raw: float = math.nan
    p_vs_best_holm: float = math.nan
    vs_best: str | None = None  # a label of vs_best.LABELS; None when not ranked


@dataclass(frozen=True)
class GroupResult:
    """One comparison (all designs, or those of one value of --x): the best and the others tested against it."""

    x: str | None
    best: DesignScore | None
    others: list[DesignScore]
    tests: list[VsBest]


def bounds(metric: str) -> tuple[float, float]:
    return (0.0, math.inf) if metric in LOWER_IS_BETTER else (0.0, 1.0)


class RunReplicates:
    """Bootstrap replicates of each run's metrics, from its per-image predictions (read once per run/split),
    and the number of images they hold."""

    def __init__(self, resampler: Resampler, metrics: dict[str, list[str]]):
        self.resampler = resampler
        self.metrics = metrics  # split -> metric names
        self._cache: dict[tuple[str, str], tuple[dict[str, np.ndarray], int] | None] = {}

    def _read(self, run: Run, split: str) -> tuple[dict[str, np.ndarray], int] | None:
        path = run.predictions.get(split)
        key = (str(path or run.directory), split)  # the heads of a bank share a directory, not a predictions file
        if key not in self._cache:
            if path is None or not run.class_names:
                self._cache[key] = None
            else:
                predictions = read_predictions(path, run.class_names)
                replicates = self.resampler.replicates(predictions, self.metrics[split], len(run.class_names))
                self._cache[key] = (replicates, len(predictions))
        return self._cache[key]

    def get(self, run: Run, split: str) -> dict[str, np.ndarray] | None:
        found = self._read(run, split)
        return None if found is None else found[0]

    def n_images(self, run: Run, split: str) -> int | None:
        """From the predictions file, else from summary.json's num_samples."""
        found = self._read(run, split)
        return found[1] if found is not None else run.num_samples.get(split)


def _collect(design: Design, keys: Sequence[MetricKey], replicates: RunReplicates) -> DesignScore:
    """Each seed's value and bootstrap replicates of every metric, and the floor of its interval."""
    score = DesignScore(design)
    for split, metric in keys:
        runs = [run for run in design.runs if run.metric(split, metric) is not None]
        points = [run.metric(split, metric) for run in runs]
        per_run = [replicates.get(run, split) for run in runs]
        stacked = np.stack([r[metric] for r in per_run]) if runs and all(r is not None for r in per_run) else None
        score.points[(split, metric)] = points
        score.replicates[(split, metric)] = stacked
        accuracies = [run.metric(split, "acc") for run in runs]
        counts = [replicates.n_images(run, split) for run in runs]
        known = bool(runs) and None not in accuracies and None not in counts
        score.floors[(split, metric)] = image_floor(
            metric, float(np.mean(points)) if points else math.nan,
            float(np.mean(accuracies)) if known else None, min(counts) if known else None,
        )
    return score


def _mean_val_loss(runs: Sequence[Run]) -> float | None:
    losses = [loss for run in runs if (loss := run.metric("val", "loss")) is not None]
    return float(np.mean(losses)) if losses else None


def _rank_group(scores: list[DesignScore], ranking: Ranking, keys: Sequence[MetricKey], x: str | None) -> GroupResult:
    pooled = {key: pooled_seed_variance(s.points[key] for s in scores) for key in keys}
    for score in scores:
        for key in keys:
            score.estimates[key] = estimate(score.points[key], score.replicates[key], bounds(key[1]),
                                            pooled=pooled[key], contains=score.floors[key])
        seeds = len(score.points[ranking.significance])
        if seeds:
            score.seed_variance = OWN if seeds >= 2 else POOLED if pooled[ranking.significance] else NONE
    ranked = [s for s in scores if not math.isnan(s.estimates[ranking.key].mean)]
    # vitcls's one selection rule (a bank ranks its heads by it too): at equal scores the lower mean validation
    # loss, then the design seen first.
    order = {id(s): position for position, s in enumerate(scores)}
    ranked.sort(key=lambda s: selection_key(s.estimates[ranking.key].mean, _mean_val_loss(s.design.runs),
                                            order[id(s)], maximize=not ranking.minimize))
    for rank, score in enumerate(ranked, start=1):
        score.rank = rank
    if not ranked:
        return GroupResult(x, None, [], [])
    best, others, key = ranked[0], ranked[1:], ranking.significance
    best.vs_best = BEST
    best.diff_vs_best = 0.0 if best.points[key] else math.nan
    for score in others:
        both = score.points[key] and best.points[key]
        score.diff_vs_best = float(np.mean(score.points[key]) - np.mean(best.points[key])) if both else math.nan
        score.p_vs_best_raw = p_value_of_difference(
            score.points[key], score.replicates[key], best.points[key], best.replicates[key], pooled=pooled[key]
        )
    sign = -1.0 if ranking.minimize else 1.0
    tests = against_best([s.design.name for s in others], [sign * s.diff_vs_best for s in others],
                         [s.p_vs_best_raw for s in others])
    for score, test in zip(others, tests, strict=True):
        score.p_vs_best_holm, score.vs_best = test.p_holm, test.label
    return GroupResult(x, best, others, tests)


def score_designs(
    designs: Sequence[Design], ranking: Ranking, resampler: Resampler
) -> tuple[list[DesignScore], list[GroupResult]]:
    """Scores of every design, ranked within each value of the x axis (in x order, then rank order), and each
    of those comparisons: the best and the others tested against it on test, Holm-corrected within it."""
    keys = ranking.reported()
    metrics: dict[str, list[str]] = {}
    for split, metric in keys:
        metrics.setdefault(split, []).append(metric)
    replicates = RunReplicates(resampler, metrics)
    scores = [_collect(design, keys, replicates) for design in designs]
    groups: dict[str | None, list[DesignScore]] = {}
    for score in scores:
        groups.setdefault(score.design.x, []).append(score)
    ordered: list[DesignScore] = []
    results: list[GroupResult] = []
    for x_value in sorted(groups, key=x_sort_key):
        group = groups[x_value]
        results.append(_rank_group(group, ranking, keys, x_value))
        ordered += sorted(group, key=lambda s: (s.rank is None, s.rank or 0))
    return ordered, results


def x_sort_key(value: str | None) -> tuple:
    """Numbers in numeric order, then anything else as text."""
    if value is None:
        return (0, 0.0, "")
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)
