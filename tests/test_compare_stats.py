"""The statistics of vitcls-compare: metrics on resamples, interval coverage, paired p-values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from vitcls.compare.stats import (
    COUNT_METRICS,
    Resampler,
    class_counts,
    estimate,
    metric_on_resamples,
    p_value_of_difference,
)
from vitcls.metrics import classification_metrics
from vitcls.reporting.predictions_csv import Predictions


def predictions(true, pred, true_score=None, prefix="img") -> Predictions:
    true, pred = np.asarray(true), np.asarray(pred)
    scores = np.full(len(true), 0.7) if true_score is None else np.asarray(true_score, dtype=float)
    return Predictions(tuple(f"{prefix}_{i:05d}" for i in range(len(true))), true, pred, scores)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_from_counts_equal_the_torchmetrics_collection(seed):
    rng = np.random.default_rng(seed)
    num_classes = 6
    true = rng.integers(0, 5, 300)  # class 5 never occurs in the targets...
    pred = np.where(rng.random(300) < 0.6, true, rng.integers(0, 4, 300))  # ...nor 4 and 5 in some predictions
    indices = rng.integers(0, 300, size=(8, 300))
    counts = class_counts(true, pred, num_classes, indices)
    collection = classification_metrics(num_classes)
    for row, index in enumerate(indices):
        collection.reset()
        collection.update(torch.from_numpy(pred[index]), torch.from_numpy(true[index]))
        expected = {name: float(value) for name, value in collection.compute().items()}
        assert set(expected) == set(COUNT_METRICS)
        for name, formula in COUNT_METRICS.items():
            assert formula(*counts)[row] == pytest.approx(expected[name], abs=1e-6), name
        assert COUNT_METRICS["f1_macro"](*counts)[row] == pytest.approx(
            skm.f1_score(true[index], pred[index], average="macro", zero_division=0), abs=1e-9)


def test_a_metric_without_a_counts_formula_is_computed_by_torchmetrics(monkeypatch):
    from torchmetrics.classification import MulticlassSpecificity

    from vitcls import metrics

    monkeypatch.setitem(metrics.METRICS, "specificity_macro",
                        lambda num_classes: MulticlassSpecificity(num_classes=num_classes, average="macro"))
    rng = np.random.default_rng(0)
    true, pred = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    indices = rng.integers(0, 50, size=(5, 50))
    values = metric_on_resamples("specificity_macro", predictions(true, pred), 3, indices, None)
    for value, index in zip(values, indices, strict=True):
        expected = MulticlassSpecificity(num_classes=3, average="macro")(torch.from_numpy(pred[index]),
                                                                          torch.from_numpy(true[index]))
        assert value == pytest.approx(float(expected))
    # the loss: the cross-entropy of the true class's probability
    scores = rng.uniform(0.05, 1.0, 50)
    loss = metric_on_resamples("loss", predictions(true, pred, scores), 3, indices, None)
    assert loss == pytest.approx(-np.log(scores[indices]).mean(axis=1))


def test_runs_on_the_same_images_get_the_same_resamples_others_independent_ones():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 3, 200)
    resampler = Resampler(resamples=300)
    a = resampler.replicates(predictions(true, true), ["acc", "f1_macro"], 3)
    right_half = true.copy()
    right_half[::2] = (true[::2] + 1) % 3
    b = resampler.replicates(predictions(true, right_half), ["acc"], 3)
    c = resampler.replicates(predictions(true, right_half), ["acc"], 3)
    other_images = resampler.replicates(predictions(true, right_half, prefix="other"), ["acc"], 3)
    assert np.all(a["acc"] == 1.0) and a["f1_macro"].shape == (300,)
    assert np.array_equal(b["acc"], c["acc"])  # same images: same resamples
    assert not np.array_equal(b["acc"], other_images["acc"])
    assert abs(np.corrcoef(b["acc"], other_images["acc"])[0, 1]) < 0.2


def test_identical_designs_have_p_one_and_a_dominating_one_p_below_one_percent():
    rng = np.random.default_rng(1)
    true = rng.integers(0, 3, 150)
    pred = np.where(rng.random(150) < 0.7, true, (true + 1) % 3)
    resampler = Resampler(resamples=1000)
    same = resampler.replicates(predictions(true, pred), ["acc"], 3)["acc"][None]
    point = [float((pred == true).mean())]
    assert p_value_of_difference(point, same, point, same) == 1.0
    # three seeds each, identical prediction sets: the spread over seeds is the same on both sides
    seeds = [np.where(rng.random(150) < 0.7, true, (true + 1) % 3) for _ in range(3)]
    points = [float((s == true).mean()) for s in seeds]
    replicates = np.stack([resampler.replicates(predictions(true, s), ["acc"], 3)["acc"] for s in seeds])
    assert p_value_of_difference(points, replicates, points, replicates) == pytest.approx(1.0)
    # right on every image where `pred` is wrong (and where it is right)
    better = resampler.replicates(predictions(true, true), ["acc"], 3)["acc"][None]
    assert p_value_of_difference([1.0], better, point, same) < 0.01
    # nothing measures the error: one seed each, no predictions
    assert np.isnan(p_value_of_difference([0.8], None, [0.7], None))


def simulated_coverage(trials, seeds, images, seed_sd, rng):
    """Share of trials whose interval holds the true mean accuracy over seeds and images.

    P(correct | seed s, image i) = sigmoid(1 + skill_s + difficulty_i), skill ~ N(0, seed_sd),
    difficulty ~ N(0, 1.5): a design whose seeds differ, scored on a finite test split.
    """
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    truth = sigmoid(1 + rng.normal(0, seed_sd, (2000, 1)) + rng.normal(0, 1.5, (1, 2000))).mean()
    resampler = Resampler(resamples=300)
    covered = 0
    for _ in range(trials):
        skills, difficulty = rng.normal(0, seed_sd, seeds), rng.normal(0, 1.5, images)
        correct = rng.random((seeds, images)) < sigmoid(1 + skills[:, None] + difficulty[None])
        true = rng.integers(0, 3, images)
        runs = [predictions(true, np.where(c, true, (true + 1) % 3)) for c in correct]
        points = [float(c.mean()) for c in correct]
        replicates = np.stack([resampler.replicates(run, ["acc"], 3)["acc"] for run in runs])
        found = estimate(points, replicates, (0.0, 1.0))
        covered += found.ci_low <= truth <= found.ci_high
    return covered / trials


@pytest.mark.parametrize(("seeds", "seed_sd"), [(3, 0.4), (1, 0.0)], ids=["3-seeds", "1-seed"])
def test_the_interval_covers_the_true_mean_at_about_its_nominal_rate(seeds, seed_sd):
    coverage = simulated_coverage(trials=300, seeds=seeds, images=150, seed_sd=seed_sd,
                                  rng=np.random.default_rng(12345))
    assert 0.90 <= coverage <= 0.99


def test_an_estimate_without_predictions_uses_the_seeds_and_none_for_one_seed():
    found = estimate([0.7, 0.8, 0.9], None, (0.0, 1.0))
    assert found.mean == pytest.approx(0.8) and found.std == pytest.approx(0.1)
    assert found.mean - found.ci_low == pytest.approx(4.302652729911275 * 0.1 / np.sqrt(3))
    single = estimate([0.7], None, (0.0, 1.0))
    assert np.isnan(single.ci_low) and np.isnan(single.std) and single.n == 1
    assert estimate([0.99, 1.0, 1.0], None, (0.0, 1.0)).ci_high == 1.0  # clipped to the metric's range


def test_runs_sharing_a_directory_are_resampled_from_their_own_predictions(tmp_path):
    # the heads of a bank: one run directory, one predictions file per head
    from types import SimpleNamespace

    from vitcls.compare.runs import Run
    from vitcls.compare.scoring import RunReplicates
    from vitcls.compare.stats import Resampler
    from vitcls.reporting.predictions_csv import write_predictions

    samples = [SimpleNamespace(path=f"img{i}.jpg", label=i % 2) for i in range(40)]
    right = torch.tensor([[1.0, 0.0] if s.label == 0 else [0.0, 1.0] for s in samples])
    runs = []
    for name, probabilities in {"good": right, "bad": right.flip(1)}.items():
        path = write_predictions(tmp_path / f"{name}.csv", samples, probabilities, ["a", "b"])
        runs.append(Run(name=name, directory=tmp_path, settings={}, status="ok", class_names=["a", "b"],
                        predictions={"test": path}))
    replicates = RunReplicates(Resampler(50), {"test": ["acc"]})
    good, bad = (replicates.get(run, "test")["acc"] for run in runs)
    assert np.all(good == 1.0) and np.all(bad == 0.0)
