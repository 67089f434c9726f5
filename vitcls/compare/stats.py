"""Uncertainty of a design's score, and whether two designs really differ.

A design's score is the mean over its seeds of each run's metric. Two sources of error: which images the
split happens to hold (estimated by resampling the images: the variance of the seed-mean over bootstrap
resamples) and which seeds were drawn (the variance over seeds / n_seeds). The interval is
mean +- t * sqrt(both), with Welch-Satterthwaite degrees of freedom. Every run scored on the same images
(same paths) gets the same resamples, so the difference of two designs is resampled image by image: a paired
test. Runs on other images (a swept data.split_seed) are resampled independently.

One seed cannot show how much seeds vary. A one-seed design borrows the seed variance pooled over the designs
of its comparison that have several seeds (`pooled_seed_variance`); with none to borrow from, its interval
holds the image sampling alone and it gets no p-value (`p_value_of_difference` returns nan). Without per-image
predictions the images' share of the error is not measured either: the interval comes from the seeds alone
and there is no p-value.

A bootstrap of a split without errors (or without a right answer) has no spread. So the interval of acc
always contains the Wilson score interval of the accuracy on the split's images, and that of another count
metric (f1, precision, recall) reaches at least as far on each side of its mean as that Wilson interval does
around the accuracy (`image_floor`): at 0 errors on n images, acc is [n / (n + z^2), 1], not [1, 1].

Metrics are recomputed on each resample from per-class counts (true, predicted, correct), vectorised over
resamples, with the definitions of `vitcls.metrics` (tests check them against that torchmetrics collection);
a metric added there without a counts formula here is recomputed by its torchmetrics object per resample.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy import stats as scipy_stats

from vitcls.errors import ConfigError
from vitcls.reporting.predictions_csv import Predictions

SIGNIFICANCE = 0.05  # alpha of the tests
CONFIDENCE = 1.0 - SIGNIFICANCE  # of the intervals: 0.95
DEFAULT_RESAMPLES = 2000
_INDICES_PER_CHUNK = 4_000_000  # resample indices held at once (chunks of resamples x images)

Counts = tuple[np.ndarray, np.ndarray, np.ndarray]  # true positives, true count, predicted count: (b, C) each


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.zeros(np.broadcast_shapes(numerator.shape, denominator.shape))
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _macro(per_class: np.ndarray, n_true: np.ndarray, n_pred: np.ndarray) -> np.ndarray:
    # Over the classes that occur in the targets or the predictions (torchmetrics, zero_division=0).
    present = (n_true + n_pred) > 0
    return _ratio((per_class * present).sum(-1), present.sum(-1))


def _weighted(per_class: np.ndarray, n_true: np.ndarray) -> np.ndarray:
    return _ratio((per_class * n_true).sum(-1), n_true.sum(-1))


def _precision(tp, n_true, n_pred):
    return _ratio(tp, n_pred)


def _recall(tp, n_true, n_pred):
    return _ratio(tp, n_true)


def _f1(tp, n_true, n_pred):
    return _ratio(2 * tp, n_true + n_pred)


# name -> f(tp, n_true, n_pred) -> (b,), for the names of vitcls.metrics.METRICS
COUNT_METRICS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
    "acc": lambda tp, n_true, n_pred: _ratio(tp.sum(-1), n_true.sum(-1)),
    "f1_macro": lambda tp, n_true, n_pred: _macro(_f1(tp, n_true, n_pred), n_true, n_pred),
    "f1_weighted": lambda tp, n_true, n_pred: _weighted(_f1(tp, n_true, n_pred), n_true),
    "precision_macro": lambda tp, n_true, n_pred: _macro(_precision(tp, n_true, n_pred), n_true, n_pred),
    "precision_weighted": lambda tp, n_true, n_pred: _weighted(_precision(tp, n_true, n_pred), n_true),
    "recall_macro": lambda tp, n_true, n_pred: _macro(_recall(tp, n_true, n_pred), n_true, n_pred),
    "recall_weighted": lambda tp, n_true, n_pred: _weighted(_recall(tp, n_true, n_pred), n_true),
}


def class_counts(true: np.ndarray, pred: np.ndarray, num_classes: int, indices: np.ndarray) -> Counts:
    """Per-class counts on each row of `indices` (b, n): the images of one resample each."""
    b = len(indices)
    offsets = (np.arange(b) * num_classes)[:, None]
    t, p = true[indices], pred[indices]

    def count(labels: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
        flat = (labels + offsets).ravel()
        weights = None if where is None else where.ravel().astype(np.float64)
        return np.bincount(flat, weights=weights, minlength=b * num_classes).reshape(b, num_classes)

    return count(t, t == p), count(t), count(p)


def metric_on_resamples(
    name: str, predictions: Predictions, num_classes: int, indices: np.ndarray, counts: Counts | None
) -> np.ndarray:
    """The metric on each resample (row of `indices`)."""
    if name == "loss":  # cross-entropy of the stored probabilities
        return -np.log(np.clip(predictions.true_score[indices], 1e-12, None)).mean(axis=1)
    if name in COUNT_METRICS and counts is not None:
        return COUNT_METRICS[name](*counts)
    return _torchmetrics_on_resamples(name, predictions, num_classes, indices)


def _torchmetrics_on_resamples(name: str, predictions: Predictions, num_classes: int, indices: np.ndarray):
    import torch

    from vitcls.metrics import METRICS

    metric = METRICS[name](num_classes)
    values = []
    for row in indices:
        metric.reset()
        metric.update(torch.from_numpy(predictions.pred[row]), torch.from_numpy(predictions.true[row]))
        values.append(float(metric.compute()))
    return np.asarray(values)


class Resampler:
    """Bootstrap resamples of images: the same ones for every run scored on the same images, run after run.

    The resamples of an image set are drawn from a generator seeded by (seed, its sorted paths), in chunks,
    so no index matrix is kept and the numbers do not depend on the order runs are read in.
    """

    def __init__(self, resamples: int = DEFAULT_RESAMPLES, seed: int = 0):
        if resamples < 2:
            raise ConfigError(f"--bootstrap {resamples}: at least 2 resamples are needed (default {DEFAULT_RESAMPLES})")
        self.resamples = resamples
        self.seed = seed

    def _generator(self, paths: Sequence[str]) -> np.random.Generator:
        digest = hashlib.sha256("\n".join(paths).encode()).digest()
        return np.random.default_rng([self.seed, int.from_bytes(digest[:8], "little")])

    def replicates(self, predictions: Predictions, metrics: Sequence[str], num_classes: int) -> dict[str, np.ndarray]:
        """{metric: (resamples,)} for one run's predictions on one split."""
        n = len(predictions)
        if n == 0:
            return {name: np.full(self.resamples, np.nan) for name in metrics}
        generator = self._generator(predictions.paths)
        chunk = max(1, _INDICES_PER_CHUNK // n)
        out: dict[str, list[np.ndarray]] = {name: [] for name in metrics}
        for start in range(0, self.resamples, chunk):
            indices = generator.integers(0, n, size=(min(chunk, self.resamples - start), n))
            counts = class_counts(predictions.true, predictions.pred, num_classes, indices)
            for name in metrics:
                out[name].append(metric_on_resamples(name, predictions, num_classes, indices, counts))
        return {name: np.concatenate(parts) for name, parts in out.items()}

    def replicates_of_runs(
        self, runs: Sequence[Predictions], metrics: Sequence[str], num_classes: int
    ) -> list[dict[str, np.ndarray]]:
        """`replicates` of each of several runs scored on the same images, equal to calling it run by run.

        The resamples are drawn once; each is counted as how many times it holds each image (its multiplicity),
        and a run's per-class counts are the multiplicities summed over its images of each class (a sparse
        product), so a further run costs a fraction of a `replicates` call.
        """
        if not runs:
            return []
        paths = runs[0].paths
        if any(run.paths != paths for run in runs[1:]):
            raise ValueError("replicates_of_runs: the runs are scored on different images")
        n = len(paths)
        if n == 0 or any(name != "loss" and name not in COUNT_METRICS for name in metrics):
            return [self.replicates(run, metrics, num_classes) for run in runs]
        generator = self._generator(paths)
        chunk = max(1, _INDICES_PER_CHUNK // n)
        images = np.arange(n)

        def indicator(labels: np.ndarray, weights: np.ndarray) -> sparse.csr_matrix:  # (classes, images)
            return sparse.csr_matrix((weights, (labels, images)), shape=(num_classes, n))

        ones = np.ones(n)
        per_run = [(indicator(run.true, (run.true == run.pred).astype(np.float64)), indicator(run.true, ones),
                    indicator(run.pred, ones), -np.log(np.clip(run.true_score, 1e-12, None)))
                   for run in runs]
        out: list[dict[str, list[np.ndarray]]] = [{name: [] for name in metrics} for _ in runs]
        for start in range(0, self.resamples, chunk):
            rows = min(chunk, self.resamples - start)
            indices = generator.integers(0, n, size=(rows, n))
            flat = (indices + (np.arange(rows) * n)[:, None]).ravel()
            multiplicity = np.ascontiguousarray(np.bincount(flat, minlength=rows * n).reshape(rows, n).T, np.float64)
            for (*indicators, losses), found in zip(per_run, out, strict=True):
                counts = tuple(np.asarray(matrix @ multiplicity).T for matrix in indicators)
                for name in metrics:
                    found[name].append(losses @ multiplicity / n if name == "loss" else COUNT_METRICS[name](*counts))
        return [{name: np.concatenate(parts) for name, parts in found.items()} for found in out]


@dataclass(frozen=True)
class Estimate:
    """A design's score: mean and spread over seeds, and a CONFIDENCE interval for the mean."""

    mean: float
    std: float  # over seeds (ddof=1); nan with one seed
    ci_low: float
    ci_high: float
    n: int


@dataclass(frozen=True)
class SeedVariance:
    """How much one seed's score varies around its design's mean (a variance), with its degrees of freedom."""

    variance: float
    df: float


def pooled_seed_variance(point_sets: Iterable[Sequence[float]]) -> SeedVariance | None:
    """The seed variance pooled over the designs with two or more seeds: sum((n - 1) s^2) / sum(n - 1), with
    sum(n - 1) degrees of freedom (it assumes seeds vary about as much in every design). None when no design
    has two seeds."""
    squares, df = 0.0, 0
    for points in point_sets:
        values = np.asarray(points, dtype=np.float64)
        if len(values) >= 2:
            squares += float(values.var(ddof=1)) * (len(values) - 1)
            df += len(values) - 1
    return SeedVariance(squares / df, float(df)) if df else None


SeedTerm = tuple[float, float]  # (variance of a mean from the spread over seeds, its degrees of freedom)


def seed_term(points: Sequence[float], pooled: SeedVariance | None) -> SeedTerm | None:
    """The seed term of the mean of `points`: from the design's own seeds when it has two or more, else the
    pooled variance; None for one seed and nothing pooled."""
    values = np.asarray(points, dtype=np.float64)
    if len(values) >= 2:
        return float(values.var(ddof=1)) / len(values), float(len(values) - 1)
    if pooled is not None:
        return pooled.variance, pooled.df
    return None


def _welch_df(image_variance: float, seed_terms: Sequence[SeedTerm]) -> float:
    """Welch-Satterthwaite degrees of freedom of image_variance (taken as known) + the seed terms."""
    total = image_variance + sum(v for v, _ in seed_terms)
    denominator = sum(v * v / df for v, df in seed_terms if v > 0 and math.isfinite(df))
    return math.inf if denominator == 0 else total * total / denominator


def _normal_quantile(alpha: float = SIGNIFICANCE) -> float:
    return float(scipy_stats.norm.ppf(1.0 - alpha / 2))


def _t_quantile(df: float, alpha: float = SIGNIFICANCE) -> float:
    return _normal_quantile(alpha) if math.isinf(df) else float(scipy_stats.t.ppf(1.0 - alpha / 2, df))


def half_width(image_variance: float, seed_terms: Sequence[SeedTerm], alpha: float = SIGNIFICANCE) -> float:
    """Half the width of the 1 - alpha interval of a mean whose error has a bootstrap image variance and seed
    terms: t * sqrt(image_variance + sum of the seed variances), Welch-Satterthwaite degrees of freedom."""
    variance = image_variance + sum(v for v, _ in seed_terms)
    return _t_quantile(_welch_df(image_variance, seed_terms), alpha) * math.sqrt(variance)


def p_value(difference: float, image_variance: float, seed_terms: Sequence[SeedTerm]) -> float:
    """Two-sided p-value of a difference of means != 0, its error made of the bootstrap variance of the
    difference (the images resampled in pairs) and the seed terms of both sides."""
    variance = image_variance + sum(v for v, _ in seed_terms)
    if variance <= 0.0:
        return 1.0 if difference == 0.0 else 0.0
    statistic = abs(difference) / math.sqrt(variance)
    df = _welch_df(image_variance, seed_terms)
    survival = scipy_stats.norm.sf(statistic) if math.isinf(df) else scipy_stats.t.sf(statistic, df)
    return float(min(1.0, 2.0 * survival))


def wilson_interval(successes: float, n: float, alpha: float = SIGNIFICANCE) -> tuple[float, float]:
    """The 1 - alpha (default CONFIDENCE) Wilson score interval of a proportion: `successes` of `n` (a mean
    over seeds may be fractional). At 0 successes it is [0, z^2 / (n + z^2)], at n successes [n / (n + z^2), 1]."""
    z = _normal_quantile(alpha)
    p = min(max(successes / n, 0.0), 1.0)
    scale = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / scale
    half = z / scale * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def image_floor(
    metric: str, mean: float, accuracy: float | None, n_images: int | None, alpha: float = SIGNIFICANCE
) -> tuple[float, float] | None:
    """An interval that the interval of `metric` (mean `mean`) must contain, from the accuracy on `n_images`
    images: for acc its Wilson interval; for another count metric (f1, precision, recall) the same distances
    from its mean on either side. None where it does not apply (the loss, unknown n or accuracy)."""
    if metric not in COUNT_METRICS or not n_images or accuracy is None or math.isnan(mean):
        return None
    low, high = wilson_interval(accuracy * n_images, n_images, alpha)
    if metric == "acc":
        return low, high
    accuracy = min(max(accuracy, 0.0), 1.0)
    return mean - (accuracy - low), mean + (high - accuracy)


def estimate(
    points: Sequence[float],
    replicates: np.ndarray | None,
    bounds: tuple[float, float],
    *,
    pooled: SeedVariance | None = None,
    contains: tuple[float, float] | None = None,
    alpha: float = SIGNIFICANCE,
) -> Estimate:
    """`points`: each seed's metric; `replicates`: (seeds, resamples) of it on resampled images, or None
    (then the interval comes from the seeds alone, and there is none for one seed); `pooled`: the seed
    variance a one-seed design borrows (without it, its interval holds the image sampling alone);
    `contains`: an interval the result must contain (`image_floor`); a 1 - alpha interval, clipped to
    `bounds`."""
    values = np.asarray(points, dtype=np.float64)
    n = len(values)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, math.nan, 0)
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if n > 1 else math.nan
    if replicates is None and n < 2:
        return Estimate(mean, std, math.nan, math.nan, n)
    term = seed_term(values, pooled) or (0.0, math.inf)
    image_variance = 0.0 if replicates is None else float(np.asarray(replicates).mean(axis=0).var(ddof=1))
    half = half_width(image_variance, [term], alpha)
    low, high = mean - half, mean + half
    if contains is not None:
        low, high = min(low, contains[0]), max(high, contains[1])
    return Estimate(mean, std, max(bounds[0], low), min(bounds[1], high), n)


def p_value_of_difference(
    points_a: Sequence[float],
    replicates_a: np.ndarray | None,
    points_b: Sequence[float],
    replicates_b: np.ndarray | None,
    *,
    pooled: SeedVariance | None = None,
) -> float:
    """Two-sided p-value of mean(a) != mean(b), the images resampled in pairs. nan when the error cannot be
    measured: a side without per-image predictions, or with one seed and no `pooled` seed variance."""
    a, b = np.asarray(points_a, dtype=np.float64), np.asarray(points_b, dtype=np.float64)
    if len(a) == 0 or len(b) == 0 or replicates_a is None or replicates_b is None:
        return math.nan
    seed_terms = [seed_term(a, pooled), seed_term(b, pooled)]
    if None in seed_terms:
        return math.nan
    image_variance = float(
        (np.asarray(replicates_a).mean(axis=0) - np.asarray(replicates_b).mean(axis=0)).var(ddof=1)
    )
    return p_value(float(a.mean() - b.mean()), image_variance, seed_terms)
