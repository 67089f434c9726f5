"""The benchmark-suite leaderboard: constructed predictions on a few datasets where the answer is known."""

from __future__ import annotations

import csv
import itertools
import json
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from sklearn.metrics import accuracy_score, f1_score

from vitcls.compare.leaderboard import Entry, FewShotEntry, leaderboard
from vitcls.compare.leaderboard_figures import few_shot_chart, leaderboard_chart
from vitcls.compare.leaderboard_outputs import markdown_text, write_leaderboard
from vitcls.compare.vs_best import BEST, BETTER, NOT_DISTINGUISHABLE, UNKNOWN, WORSE
from vitcls.errors import ConfigError, VitclsError
from vitcls.reporting.predictions_csv import Predictions

CLASSES = 4
N = 300  # images per split


def predictions(true, pred, prefix) -> Predictions:
    true, pred = np.asarray(true), np.asarray(pred)
    return Predictions(tuple(f"{prefix}/{i:05d}" for i in range(len(true))), true, pred, np.full(len(true), 0.7))


def wrong_on(true, images) -> np.ndarray:
    """The true labels, wrong on `images` (indices)."""
    pred = np.array(true)
    pred[images] = (pred[images] + 1) % CLASSES
    return pred


def score(metric, p: Predictions) -> float:
    if metric == "acc":
        return float(accuracy_score(p.true, p.pred))
    return float(f1_score(p.true, p.pred, average="macro", zero_division=0))


class Suite:
    """Datasets with fixed val and test labels; designs given by which images they get wrong."""

    def __init__(self, datasets, metric="acc", seed=0):
        rng = np.random.default_rng(seed)
        self.metric = metric
        self.labels = {d: {split: rng.integers(0, CLASSES, N) for split in ("val", "test")} for d in datasets}

    def entry(self, dataset, design, val_wrong, test_wrong, protocol="knn", seed=0) -> Entry:
        found = {split: predictions(self.labels[dataset][split], wrong_on(self.labels[dataset][split], wrong),
                                    f"{dataset}/{split}")
                 for split, wrong in (("val", val_wrong), ("test", test_wrong))}
        return Entry(dataset, design, protocol, seed, score(self.metric, found["val"]),
                     score(self.metric, found["test"]), found["val"], found["test"], CLASSES)


def by_name(board):
    return {row["name"]: row for row in board["rows"]}


def errors(count, start=0):
    return np.arange(start, start + count)


@pytest.fixture(scope="module")
def known():
    """Three datasets, four one-seed knn designs (seed-free). Val errors rank A first on a and b, B first on c;
    test errors: B is far better than A on `a`, wrong on the same images as A on `b`, far worse on `c`, and
    better on the mean; C is worse than A everywhere (wrong on A's images and more); D is A exactly, listed
    after it (ties on val)."""
    suite = Suite(["a", "b", "c"])
    val = {"A": (10, 10, 10), "B": (40, 20, 5), "C": (30, 30, 30), "D": (10, 10, 10)}  # B best on c's val
    test = {"A": (60, 30, 30), "B": (5, 30, 80), "C": (120, 90, 90), "D": (60, 30, 30)}
    entries = [suite.entry(d, design, errors(val[design][i]), errors(test[design][i]))
               for design in ("A", "B", "C", "D") for i, d in enumerate(["a", "b", "c"])]
    board = leaderboard(entries, metric="acc", resamples=500, seed_free_protocols=("knn",))
    return suite, entries, board, val, test


def test_ranked_by_mean_val_with_mean_rank_by_hand_even_where_test_disagrees(known):
    _, _, board, val, test = known
    rows = by_name(board)
    # mean val errors: A 10, D 10 (a tie: listed after A), B 21.7, C 30. Mean test errors: B 38.3, A 40: B is
    # first on test, third on val, and val ranks.
    assert rows["B"]["mean_test"] > rows["A"]["mean_test"]
    assert [row["name"] for row in board["rows"]] == ["A", "D", "B", "C"]
    assert [row["rank"] for row in board["rows"]] == [1, 2, 3, 4]
    # ranks by val per dataset: a: A 1, D 2, C 3, B 4; b: A 1, D 2, B 3, C 4; c: B 1, A 2, D 3, C 4
    assert rows["A"]["mean_rank"] == pytest.approx((1 + 1 + 2) / 3)
    assert rows["D"]["mean_rank"] == pytest.approx((2 + 2 + 3) / 3)
    assert rows["B"]["mean_rank"] == pytest.approx((4 + 3 + 1) / 3)
    assert rows["C"]["mean_rank"] == pytest.approx((3 + 4 + 4) / 3)
    for name, row in rows.items():
        assert row["mean_val"] == pytest.approx(1 - np.mean(val[name]) / N)
        assert row["mean_test"] == pytest.approx(1 - np.mean(test[name]) / N)
        assert [row["datasets"][d]["test"] for d in "abc"] == pytest.approx([1 - e / N for e in test[name]])
    assert board["best"] == "A"
    assert board["ranked_by"] == "val/acc, mean over datasets"


def test_wins_ties_and_losses_against_the_best_by_hand(known):
    rows = by_name(known[2])
    assert (rows["B"]["wins"], rows["B"]["not_distinguishable"], rows["B"]["losses"]) == (1, 1, 1)
    assert [rows["B"]["datasets"][d]["vs_best"] for d in "abc"] == [BETTER, NOT_DISTINGUISHABLE, WORSE]
    assert (rows["C"]["wins"], rows["C"]["not_distinguishable"], rows["C"]["losses"]) == (0, 0, 3)
    assert (rows["D"]["wins"], rows["D"]["not_distinguishable"], rows["D"]["losses"]) == (0, 3, 0)
    assert rows["A"]["vs_best"] == BEST and rows["A"]["wins"] is None
    assert all(row["unknown"] == 0 for name, row in rows.items() if name != "A")


def test_the_test_on_the_mean_is_paired(known):
    rows = by_name(known[2])
    # D is A on every image: no difference on any resample
    assert rows["D"]["p_vs_best_raw"] == 1.0 and rows["D"]["vs_best"] == NOT_DISTINGUISHABLE
    # C is wrong on A's images and more, on every dataset: worse
    assert rows["C"]["vs_best"] == WORSE and rows["C"]["p_vs_best_holm"] < 1e-6


def test_a_small_consistent_difference_is_found_because_the_images_are_paired_across_datasets():
    """E is wrong on A's images plus 2 more on each dataset. Unpaired, their means are well within each other's
    error; paired, the 6 images over the three datasets show E worse on the mean (z about sqrt(6)), though 2
    images on one dataset alone do not (z about sqrt(2))."""
    suite = Suite(["a", "b", "c"], seed=1)
    entries = [suite.entry(d, design, errors(20), errors(45 + extra))
               for design, extra in (("A", 0), ("E", 2)) for d in "abc"]
    rows = by_name(leaderboard(entries, metric="acc", resamples=1000, seed_free_protocols=("knn",)))
    a, e = rows["A"], rows["E"]
    standard_errors = [(row["mean_test_ci"][1] - row["mean_test_ci"][0]) / 2 / 1.96 for row in (a, e)]
    unpaired_z = (a["mean_test"] - e["mean_test"]) / math.hypot(*standard_errors)
    assert unpaired_z < 0.5
    assert e["vs_best"] == WORSE and e["p_vs_best_raw"] < 0.05
    assert (e["wins"], e["not_distinguishable"], e["losses"]) == (0, 3, 0)


def test_the_interval_of_the_mean_over_datasets_covers_the_truth():
    """Designs right on each image with probability p_d: the interval of the mean acc over datasets holds the
    mean of the p_d about 95% of the time, and its half-width is 1.96 * the binomial standard error."""
    p = {"a": 0.9, "b": 0.7, "c": 0.8}
    rng = np.random.default_rng(0)
    covered, ratios = 0, []
    repetitions = 60
    for repetition in range(repetitions):
        entries = []
        for d, accuracy in p.items():
            true = rng.integers(0, CLASSES, N)
            for design in ("A", "B"):
                pred = np.where(rng.random(N) < accuracy, true, (true + 1) % CLASSES)
                found = predictions(true, pred, f"{repetition}/{d}")
                entries.append(Entry(d, design, "knn", 0, 0.5, score("acc", found), None, found, CLASSES))
        row = leaderboard(entries, metric="acc", resamples=300, seed_free_protocols=("knn",))["rows"][0]
        low, high = row["mean_test_ci"]
        covered += low <= np.mean(list(p.values())) <= high
        standard_error = math.sqrt(sum(a * (1 - a) / N for a in p.values())) / len(p)
        ratios.append((high - low) / 2 / (1.96 * standard_error))
    assert covered / repetitions >= 0.85
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.1)


def test_seed_variance_is_own_pooled_seed_free_or_none_and_said():
    suite = Suite(["a", "b"], metric="f1_macro")
    entries = [suite.entry(d, "A", errors(20), errors(30 + 5 * seed), "head", seed) for d in "ab" for seed in (0, 1, 2)]
    entries += [suite.entry(d, "B", errors(25), errors(40), "head") for d in "ab"]
    entries += [suite.entry(d, "K", errors(30), errors(50), "knn") for d in "ab"]
    rows = by_name(leaderboard(entries, resamples=300, seed_free_protocols=("knn",)))
    assert rows["A"]["datasets"]["a"]["seed_variance"] == "own" and rows["A"]["n_seeds"] == 3
    assert rows["B"]["seed_variance"] == "pooled" and rows["K"]["seed_variance"] == "seed-free"
    # without the knn protocol declared seed-free, K borrows too; with no design of several seeds, nothing does
    alone = [e for e in entries if e.design != "A"]
    rows = by_name(leaderboard(alone, resamples=300))
    assert rows["K"]["seed_variance"] == "none" and rows["K"]["vs_best"] == UNKNOWN
    assert rows["K"]["unknown"] == 2 and rows["K"]["mean_test_ci"] is not None  # the images alone


def test_a_failed_dataset_is_listed_marked_and_left_out(known):
    suite, entries, _, _, test = known
    board = leaderboard(entries, metric="acc", resamples=200, seed_free_protocols=("knn",),
                        failed={"c": "CUDA out of memory"})
    assert board["datasets"] == ["a", "b", "c"] and board["datasets_in_means"] == ["a", "b"]
    assert board["failed"] == {"c": "CUDA out of memory"}
    rows = by_name(board)
    assert rows["B"]["mean_test"] == pytest.approx(1 - np.mean(test["B"][:2]) / N)
    assert "c" not in rows["B"]["datasets"]
    assert rows["B"]["wins"] + rows["B"]["not_distinguishable"] + rows["B"]["losses"] == 2
    assert "over 2 datasets" in board["verdict"]
    text = markdown_text(board)
    assert "c (FAILED)" in text and "c: CUDA out of memory" in text and "left out of every mean" in text
    fig = leaderboard_chart(board)
    (ax, _, _) = fig.axes
    assert any(patch.get_gid() == "failed:c" for patch in ax.patches)
    assert "c (FAILED)" in [label.get_text() for label in ax.get_xticklabels()]


def test_a_design_missing_a_dataset_is_shown_but_not_ranked(known):
    _, entries, _, _, _ = known
    board = leaderboard([e for e in entries if not (e.design == "B" and e.dataset == "c")], metric="acc",
                        resamples=200, seed_free_protocols=("knn",))
    row = by_name(board)["B"]
    assert row["rank"] is None and row["mean_test"] is None and row["missing"] == ["c"]
    assert board["rows"][-1]["name"] == "B" and "B (missing c)" in " ".join(board["notes"])


def test_few_shot_mean_and_t_interval_match_scipy():
    rng = np.random.default_rng(0)
    runs = [FewShotEntry("a", "A", "logreg", shots, draw, seed, 0.5, float(rng.uniform(0.3, 0.7)))
            for shots in (10, 1, 5) for draw in range(3) for seed in (0, 1)]
    runs.append(FewShotEntry("b", "A", "logreg", 2, 0, 0, 0.5, 0.4))
    suite = Suite(["a"], metric="f1_macro")
    board = leaderboard([suite.entry("a", "A", errors(5), errors(5), "logreg")], runs, resamples=100, alpha=0.1)
    curve = board["few_shot"]["a"]["A"]
    assert list(curve) == ["1", "5", "10"]
    for shots, found in curve.items():
        values = [run.test for run in runs if run.dataset == "a" and run.shots == int(shots)]
        low, high = scipy_stats.t.interval(0.9, len(values) - 1, loc=np.mean(values), scale=scipy_stats.sem(values))
        assert found["mean"] == pytest.approx(np.mean(values))
        assert found["ci"] == pytest.approx([low, high])
        assert (found["n"], found["draws"], found["seeds"]) == (6, 3, 2)
    assert board["few_shot"]["b"]["A"]["2"]["ci"] is None  # one run: no interval


def test_the_json_csv_and_markdown_hold_the_leaderboard(known, tmp_path):
    suite, entries, _, _, _ = known
    few = [FewShotEntry("a", design, "knn", shots, draw, 0, 0.5, 0.5 + 0.01 * shots + 0.01 * draw)
           for design in ("A", "B") for shots in (1, 4, 16) for draw in range(2)]
    board = leaderboard(entries, few, metric="acc", resamples=200, seed_free_protocols=("knn",))
    files = write_leaderboard(board, tmp_path)
    assert set(files) == {"json", "csv", "markdown", "png", "few_shot/a"}
    assert files["few_shot/a"].name == "few_shot_a.png" and files["png"].stat().st_size > 0
    found = json.loads(files["json"].read_text())
    assert {"datasets", "ranked_by", "rows", "verdict", "few_shot", "failed", "method"} <= set(found)
    for row in found["rows"]:
        assert {"design", "protocol", "datasets", "mean_val", "mean_test", "mean_test_ci", "mean_rank", "wins",
                "not_distinguishable", "losses", "n_seeds", "p_vs_best_holm", "vs_best"} <= set(row)
        for cell in row["datasets"].values():
            assert {"val", "test", "test_ci"} <= set(cell) and len(cell["test_ci"]) == 2
    assert found["verdict"].startswith("A best on mean val/acc over 3 datasets; on mean test/acc")
    assert "better than C" in found["verdict"] and "not distinguishable from D" in found["verdict"]
    table = list(csv.DictReader(files["csv"].open()))
    assert [row["name"] for row in table] == ["A", "D", "B", "C"]
    assert float(table[2]["a/test"]) == pytest.approx(by_name(board)["B"]["datasets"]["a"]["test"])
    text = files["markdown"].read_text()
    assert f"**Verdict:** {board['verdict']}" in text and "Holm" in text and "paired" in text
    assert "| 3 | B | knn |" in text and "1/1/1" in text


def many_designs(count):
    suite = Suite(["a", "b"], metric="f1_macro")
    names = [f"vit_{size}_patch{patch}_{res}.dinov2" for size in ("small", "base", "large", "giant")
             for patch in (14, 16) for res in (224, 256, 384, 448, 518)][:count]
    entries = [suite.entry(d, name, errors(i % 7 + 3), errors((i * 5) % 11 + 3), "knn")
               for i, name in enumerate(names) for d in "ab"]
    few = [FewShotEntry("a", name, "knn", shots, 0, seed, 0.5, 0.3 + 0.01 * i + 0.02 * shots + 0.01 * seed)
           for i, name in enumerate(names) for shots in (1, 2, 5, 10) for seed in (0, 1)]
    return leaderboard(entries, few, resamples=50, seed_free_protocols=("knn",), failed={"z": "no images"})


def test_the_figure_grows_with_the_designs_and_keeps_every_label_apart():
    large = many_designs(40)
    fig = leaderboard_chart(large)
    assert fig.get_size_inches()[1] >= leaderboard_chart(many_designs(5)).get_size_inches()[1] + 35 * 0.25
    fig.draw_without_rendering()
    ax, side, _ = fig.axes
    labels = [label.get_text() for label in ax.get_yticklabels()]
    assert labels == [f"{row['rank']}. {row['name']} (knn)" for row in large["rows"]] and len(labels) == 40
    assert len(side.get_yticklabels()) == 40
    for axis in (ax.get_yticklabels(), side.get_yticklabels(), ax.get_xticklabels()):
        boxes = [label.get_window_extent() for label in axis]
        assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))
    assert [label.get_text() for label in ax.get_xticklabels()] == ["a", "b", "z (FAILED)", "mean over 2"]

    curves = few_shot_chart(large, "a")
    curves.draw_without_rendering()
    (plot,) = curves.axes
    assert plot.get_xscale() == "log"
    assert [label.get_text() for label in plot.get_xticklabels()] == ["1", "2", "5", "10"]
    assert len([line for line in plot.lines if (line.get_gid() or "").startswith("few_shot:")]) == 40
    (legend,) = curves.legends
    assert len(legend.get_texts()) == 40
    assert not legend.get_window_extent().overlaps(plot.get_window_extent())


def test_bad_input_gets_a_clear_error():
    suite = Suite(["a"], metric="f1_macro")
    good = suite.entry("a", "A", errors(5), errors(5))
    with pytest.raises(ConfigError, match="protocol 'probe'"):
        leaderboard([Entry("a", "A", "probe", 0, good.val, good.test, None, None, CLASSES)])
    with pytest.raises(VitclsError, match="predictions give"):
        leaderboard([Entry("a", "A", "knn", 0, good.val, good.test + 0.1, good.val_predictions,
                           good.test_predictions, CLASSES)])
    other = good.test_predictions
    shifted = Predictions(tuple(p.replace("a/", "a2/") for p in other.paths), other.true, other.pred, other.true_score)
    with pytest.raises(VitclsError, match="other images"):
        leaderboard([good, Entry("a", "B", "knn", 0, good.val, good.test, None, shifted, CLASSES)])
    with pytest.raises(VitclsError, match="listed twice"):
        leaderboard([good, good])
    with pytest.raises(ConfigError, match="not a metric"):
        leaderboard([good], metric="top5")
