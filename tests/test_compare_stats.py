"""The statistics of vitcls-compare: metrics on resamples, interval coverage, paired p-values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from vitcls.compare.stats import (
    COUNT_METRICS,
    Resampler,
    SeedVariance,
    class_counts,
    estimate,
    half_width,
    image_floor,
    metric_on_resamples,
    p_value,
    p_value_of_difference,
    pooled_seed_variance,
    wilson_interval,
)
from vitcls.compare.vs_best import against_best, holm, label, verdict
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
    no_seed_spread = SeedVariance(0.0, 4.0)  # one seed each: it must be borrowed from somewhere
    assert p_value_of_difference(point, same, point, same, pooled=no_seed_spread) == 1.0
    # three seeds each, identical prediction sets: the spread over seeds is the same on both sides
    seeds = [np.where(rng.random(150) < 0.7, true, (true + 1) % 3) for _ in range(3)]
    points = [float((s == true).mean()) for s in seeds]
    replicates = np.stack([resampler.replicates(predictions(true, s), ["acc"], 3)["acc"] for s in seeds])
    assert p_value_of_difference(points, replicates, points, replicates) == pytest.approx(1.0)
    # right on every image where `pred` is wrong (and where it is right)
    better = resampler.replicates(predictions(true, true), ["acc"], 3)["acc"][None]
    assert p_value_of_difference([1.0], better, point, same, pooled=no_seed_spread) < 0.01


def test_without_predictions_or_a_seed_variance_there_is_no_p_value():
    rng = np.random.default_rng(3)
    replicates = rng.normal(0.8, 0.02, (3, 200))
    three, one = [0.78, 0.8, 0.82], [0.7]
    assert np.isnan(p_value_of_difference(three, None, three, replicates))  # one side without predictions
    assert np.isnan(p_value_of_difference(three, None, [0.7, 0.72, 0.71], None))  # seeds alone miss the images
    # one seed: its seed variance is unknown unless borrowed
    assert np.isnan(p_value_of_difference(one, replicates[:1], three, replicates))
    assert not np.isnan(p_value_of_difference(one, replicates[:1], three, replicates, pooled=SeedVariance(1e-4, 4)))


def test_a_one_seed_design_against_three_seeds_with_the_pooled_variance_by_hand():
    from scipy import stats as scipy_stats

    rng = np.random.default_rng(4)
    one, three = [0.74], [0.78, 0.81, 0.80]
    replicates_one, replicates_three = rng.normal(0.74, 0.02, (1, 500)), rng.normal(0.8, 0.02, (3, 500))
    others = [[0.6, 0.64], [0.7, 0.69, 0.75]]
    pooled = pooled_seed_variance([one, three, *others])
    # by hand: the sum of squares about each design's mean over the summed degrees of freedom (one seed: none)
    squares = sum(((np.asarray(x) - np.mean(x)) ** 2).sum() for x in (three, *others))
    assert pooled.variance == pytest.approx(squares / (2 + 1 + 2)) and pooled.df == 5
    assert pooled_seed_variance([one, [0.5]]) is None

    image = (replicates_one.mean(axis=0) - replicates_three.mean(axis=0)).var(ddof=1)
    seed_one, seed_three = pooled.variance, np.var(three, ddof=1) / 3
    total = image + seed_one + seed_three
    df = total**2 / (seed_one**2 / 5 + seed_three**2 / 2)
    expected = 2 * scipy_stats.t.sf(abs(0.74 - np.mean(three)) / np.sqrt(total), df)
    found = p_value_of_difference(one, replicates_one, three, replicates_three, pooled=pooled)
    assert found == pytest.approx(expected)
    # the single seed's own spread, taken as zero, would have claimed more certainty
    assert found > p_value_of_difference(one, replicates_one, three, replicates_three, pooled=SeedVariance(0.0, 5))


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


def test_holm_on_a_hand_computed_example_and_as_the_step_down_procedure():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.3, 0.6]) == pytest.approx([0.6, 0.6]) and holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])
    adjusted = holm([0.01, float("nan"), 0.04])  # an untested design is no part of the family
    assert adjusted[0] == pytest.approx(0.02) and np.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.04)
    assert holm([]) == []
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.uniform(0, 0.1, rng.integers(1, 12)) ** rng.uniform(0.5, 2)
        for alpha in (0.01, 0.05, 0.1):
            # Holm's procedure: reject the i-th smallest while p(i) <= alpha / (m - i), i from 0; stop at the first not
            rejected = set()
            for i, index in enumerate(np.argsort(p)):
                if p[index] > alpha / (len(p) - i):
                    break
                rejected.add(int(index))
            assert {i for i, q in enumerate(holm(list(p))) if q <= alpha} == rejected


def test_labels_follow_the_corrected_p_value_and_the_direction():
    assert label(0.01, +0.02) == "better" and label(0.01, -0.02) == "worse"
    assert label(0.05, -0.02) == label(0.3, 0.1) == "not distinguishable"
    assert label(float("nan"), 0.1) == label(0.01, float("nan")) == "unknown"
    # raw 0.03 and 0.04 are each below 0.05, but not after Holm (0.06, 0.06)
    results = against_best(["a", "b", "c"], [-0.1, 0.1, -0.01], [0.03, 0.04, float("nan")])
    assert [r.label for r in results] == ["not distinguishable", "not distinguishable", "unknown"]
    assert [r.p_holm for r in results][:2] == pytest.approx([0.06, 0.06])
    results = against_best(["a", "b"], [-0.1, 0.1], [0.001, 0.02])
    assert [r.label for r in results] == ["worse", "better"]
    line = verdict("m", results, [3, 3, 3], selected_on="val/acc", tested_on="test/acc")
    assert line == "m best on val/acc; on test/acc better than a; worse than b (3 seeds each, Holm-corrected over " \
                   "2 tests, alpha 0.05)"
    assert verdict("m", [], [2], selected_on="val/acc", tested_on="test/acc") == \
        "m best on val/acc; no other design to test it against"


@pytest.mark.parametrize("n", [1, 20, 240, 1714])
def test_the_wilson_interval_equals_scipys_at_0_and_n_errors(n):
    from scipy import stats as scipy_stats

    for correct in sorted({0, 1, n // 2, n - 1, n}):
        expected = scipy_stats.binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(correct, n) == pytest.approx((expected.low, expected.high))
    z2 = scipy_stats.norm.ppf(0.975) ** 2
    assert wilson_interval(n, n) == pytest.approx((n / (n + z2), 1.0))
    assert wilson_interval(0, n) == pytest.approx((0.0, z2 / (n + z2)))


@pytest.mark.parametrize("all_right", [True, False], ids=["0-errors", "n-errors"])
def test_a_split_without_errors_or_without_a_right_answer_gets_an_interval_of_nonzero_width(all_right):
    from scipy import stats as scipy_stats

    rng = np.random.default_rng(5)
    true = rng.integers(0, 3, 300)
    pred = true if all_right else (true + 1) % 3
    replicates = Resampler(300).replicates(predictions(true, pred), ["acc", "f1_macro"], 3)
    assert np.ptp(replicates["acc"]) == 0.0  # the bootstrap alone sees no spread
    wilson = scipy_stats.binomtest(300 if all_right else 0, 300).proportion_ci(method="wilson")
    value = 1.0 if all_right else 0.0
    for metric in ("acc", "f1_macro"):
        found = estimate([value], replicates[metric][None], (0.0, 1.0),
                         contains=image_floor(metric, value, value, 300))
        assert (found.ci_low, found.ci_high) == pytest.approx((wilson.low, wilson.high))
    # the floor only widens: an interval already wider keeps its ends
    wide = estimate([0.8, 0.7, 0.9], None, (0.0, 1.0), contains=image_floor("acc", 0.8, 0.8, 300))
    assert wide.mean - wide.ci_low == pytest.approx(4.302652729911275 * 0.1 / np.sqrt(3))
    assert image_floor("loss", 0.1, 1.0, 300) is None and image_floor("acc", 1.0, 1.0, None) is None


def test_half_width_p_value_and_wilson_at_another_alpha_against_scipy():
    from scipy import stats as scipy_stats

    image_variance, terms = 0.0004, [(0.0009, 2.0), (0.0001, 4.0)]
    total = image_variance + 0.0009 + 0.0001
    df = total**2 / (0.0009**2 / 2 + 0.0001**2 / 4)
    assert half_width(image_variance, terms, alpha=0.1) == pytest.approx(
        scipy_stats.t.ppf(0.95, df) * np.sqrt(total))
    assert p_value(0.05, image_variance, terms) == pytest.approx(2 * scipy_stats.t.sf(0.05 / np.sqrt(total), df))
    assert p_value(0.0, 0.0, [(0.0, np.inf)]) == 1.0
    expected = scipy_stats.binomtest(30, 100).proportion_ci(confidence_level=0.9, method="wilson")
    assert wilson_interval(30, 100, alpha=0.1) == pytest.approx((expected.low, expected.high))


def test_replicates_of_several_runs_equal_those_run_by_run():
    rng = np.random.default_rng(3)
    true = rng.integers(0, 5, 400)
    runs = [predictions(true, np.where(rng.random(400) < accuracy, true, rng.integers(0, 5, 400)),
                        rng.uniform(0.05, 1.0, 400))
            for accuracy in (0.9, 0.6, 0.3)]
    resampler = Resampler(resamples=250)
    names = ["acc", "f1_macro", "precision_weighted", "recall_macro", "loss"]
    together = resampler.replicates_of_runs(runs, names, 5)
    for run, found in zip(runs, together, strict=True):
        alone = resampler.replicates(run, names, 5)
        for name in names:
            if name == "loss":  # summed in another order
                assert found[name] == pytest.approx(alone[name], rel=1e-12)
            else:
                assert np.array_equal(found[name], alone[name]), name
    with pytest.raises(ValueError, match="different images"):
        resampler.replicates_of_runs([runs[0], predictions(true, true, prefix="other")], ["acc"], 5)
