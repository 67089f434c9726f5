"""vitcls-compare on hand-made sweeps: designs over seeds, selection on validation, intervals and p-values,
tuning inside a design, Optuna sweeps, learning curves, failed and unfinished jobs, bad input."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from sweep_builder import make_job, noisy

from vitcls.cli.compare import main
from vitcls.compare import compare


def read_rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def by_design(path):
    return {row["design"]: row for row in read_rows(path)}


@pytest.fixture
def labels():
    rng = np.random.default_rng(0)
    return rng.integers(0, 3, 120), rng.integers(0, 3, 240)  # val, test


def test_identical_predictions_are_not_distinguishable_with_p_one(tmp_path, labels):
    val, test = labels
    rng = np.random.default_rng(1)
    seeds = [{"val": (val, noisy(val, 0.7, rng)), "test": (test, noisy(test, 0.7, rng))} for _ in range(2)]
    for job, (head, seed) in enumerate((h, s) for h in ("linear", "mlp") for s in (1, 2)):
        make_job(tmp_path / "sweep", str(job), [f"head={head}", f"seed={seed}"], seeds[seed - 1])
    compare(tmp_path / "sweep")
    rows = by_design(tmp_path / "sweep" / "compare.csv")
    other = rows["head=mlp"] if rows["head=linear"]["rank"] == "1" else rows["head=linear"]
    assert float(other["p_vs_best_raw"]) == pytest.approx(1.0) and float(other["p_vs_best_holm"]) == 1.0
    assert float(other["diff_vs_best"]) == 0.0
    assert other["vs_best"] == "not distinguishable" and other["seed_variance"] == "own"
    assert {row["n_seeds"] for row in rows.values()} == {"2"}


def test_right_wherever_the_other_is_wrong_is_significant(tmp_path, labels):
    val, test = labels
    rng = np.random.default_rng(2)
    for seed in (1, 2):
        weaker = {"val": (val, noisy(val, 0.8, rng)), "test": (test, noisy(test, 0.8, rng))}
        # right on every image where the weaker one is wrong, and where it is right too
        stronger = {split: (true, true.copy()) for split, (true, _) in weaker.items()}
        make_job(tmp_path / "sweep", f"{seed}0", ["head=linear", f"seed={seed}"], weaker)
        make_job(tmp_path / "sweep", f"{seed}1", ["head=mlp", f"seed={seed}"], stronger)
    compare(tmp_path / "sweep")
    rows = by_design(tmp_path / "sweep" / "compare.csv")
    assert rows["head=mlp"]["rank"] == "1" and rows["head=mlp"]["vs_best"] == "best"
    assert rows["head=mlp"]["p_vs_best_raw"] == rows["head=mlp"]["p_vs_best_holm"] == ""
    assert float(rows["head=linear"]["p_vs_best_raw"]) < 0.01
    assert rows["head=linear"]["vs_best"] == "worse" and float(rows["head=linear"]["diff_vs_best"]) < 0


def seed_sweep(sweep, labels, accuracies, seeds=(1, 2, 3), per_job_paths=True, rng_seed=0):
    """Jobs head x seed; each seed's accuracy drawn around the head's, per split."""
    val, test = labels
    rng = np.random.default_rng(rng_seed)
    job = 0
    for head, (val_acc, test_acc) in accuracies.items():
        for seed in seeds:
            shift = rng.normal(0, 0.02)
            overrides = ["data.root=/photos", f"head={head}", f"seed={seed}"]
            if per_job_paths:
                overrides += [f"hydra.run.dir=/runs/{job}", f"paths.output_dir=/runs/{job}",
                              f"logger.wandb.save_dir=/runs/{job}"]
            make_job(sweep, str(job), overrides, {"val": (val, noisy(val, val_acc + shift, rng)),
                                                  "test": (test, noisy(test, test_acc + shift, rng))})
            job += 1
    return sweep


def test_seeds_and_per_job_paths_do_not_split_a_design(tmp_path, labels):
    sweep = seed_sweep(tmp_path / "sweep", labels, {"linear": (0.7, 0.7), "mlp": (0.8, 0.8)})
    text, _ = compare(sweep)
    rows = read_rows(sweep / "compare.csv")
    assert [(r["design"], r["n_seeds"]) for r in rows] == [("head=mlp", "3"), ("head=linear", "3")]
    report = json.loads((sweep / "compare.json").read_text())
    assert report["design_keys"] == ["head"]
    assert [d["jobs"] for d in report["designs"]] == [["3", "4", "5"], ["0", "1", "2"]]
    # the table's mean and std are those of the three runs' summaries
    for design in report["designs"]:
        values = [json.loads((sweep / job / "summary.json").read_text())["test"]["acc"] for job in design["jobs"]]
        assert design["test_acc_mean"] == pytest.approx(np.mean(values))
        assert design["test_acc_std"] == pytest.approx(np.std(values, ddof=1))
        assert design["test_acc_ci_low"] < design["test_acc_mean"] < design["test_acc_ci_high"]
    assert "| 1 | head=mlp | 3 |" in text


def test_ranking_uses_validation_never_test(tmp_path, labels):
    # mlp is better on val, linear much better on test: the ranking follows val
    sweep = seed_sweep(tmp_path / "sweep", labels, {"linear": (0.6, 0.95), "mlp": (0.9, 0.6)}, seeds=(1, 2))
    text, _ = compare(sweep)
    rows = read_rows(sweep / "compare.csv")
    assert [(r["rank"], r["design"]) for r in rows] == [("1", "head=mlp"), ("2", "head=linear")]
    assert float(rows[1]["test_f1_macro_mean"]) > float(rows[0]["test_f1_macro_mean"])
    assert list(rows[0])[4:8] == ["val_f1_macro_mean", "val_f1_macro_std", "val_f1_macro_ci_low",
                                  "val_f1_macro_ci_high"]
    assert "ranked by val/f1_macro (selection on validation" in text
    jobs = read_rows(sweep / "compare_jobs.csv")
    assert [j["head"] for j in jobs[:2]] == ["mlp", "mlp"]  # the per-job table ranks by val too
    compare(sweep, metric="val/loss")
    assert json.loads((sweep / "compare.json").read_text())["ranking_metric"] == "val/loss"


def test_ranking_by_a_test_metric_is_refused_unless_insisted_on(tmp_path, labels, capsys):
    sweep = seed_sweep(tmp_path / "sweep", labels, {"linear": (0.6, 0.95), "mlp": (0.9, 0.6)}, seeds=(1,))
    with pytest.raises(SystemExit) as exit_info:
        main([str(sweep), "--metric", "test/acc"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "--metric test/acc would select on the test split" in error and "--allow-test-selection" in error
    assert not (sweep / "compare.csv").exists()

    main([str(sweep), "--metric", "test/acc", "--allow-test-selection"])
    assert "SELECTED ON TEST by test/acc" in capsys.readouterr().out
    assert [r["design"] for r in read_rows(sweep / "compare.csv")] == ["head=linear", "head=mlp"]
    assert json.loads((sweep / "compare.json").read_text())["selected_on"] == "test"


def test_failed_and_unfinished_jobs_are_listed(tmp_path, labels):
    sweep = seed_sweep(tmp_path / "sweep", labels, {"linear": (0.7, 0.7)}, seeds=(1, 2))
    make_job(sweep, "2", ["data.root=/photos", "head=mlp", "seed=1"],
             failure={"error_type": "NonFiniteLossError", "message": "training loss is nan at step 4\nmore"})
    make_job(sweep, "3", ["data.root=/photos", "head=mlp", "seed=2"])  # still running
    make_job(sweep, "4", ["data.root=/photos", "head=linear", "seed=3"])  # killed
    text, _ = compare(sweep)
    rows = by_design(sweep / "compare.csv")
    assert (rows["head=linear"]["n_seeds"], rows["head=linear"]["n_unfinished"]) == ("2", "1")
    assert (rows["head=mlp"]["n_seeds"], rows["head=mlp"]["n_unfinished"], rows["head=mlp"]["rank"]) == ("0", "2", "")
    assert "- 2 (head=mlp, seed=1): failed: NonFiniteLossError: training loss is nan at step 4\n" in text
    assert "- 3 (head=mlp, seed=2): incomplete\n" in text and "- 4 (head=linear, seed=3): incomplete\n" in text
    unfinished = json.loads((sweep / "compare.json").read_text())["unfinished"]
    assert [(u["job"], u["status"]) for u in unfinished] == [("4", "incomplete"), ("2", "failed"), ("3", "incomplete")]
    jobs = {j["job"]: j for j in read_rows(sweep / "compare_jobs.csv")}
    assert jobs["2"]["status"] == "failed" and jobs["2"]["error"].startswith("NonFiniteLossError")


def test_nested_overrides_make_readable_design_names(tmp_path, labels):
    val, test = labels
    rng = np.random.default_rng(3)
    for job, overrides in enumerate([["head=linear"], ["head=mlp", "head.hidden_dims=[256, 128]"],
                                     ["head=mlp", "+head.norm=layernorm", "head.hidden_dims=[64]"]]):
        make_job(tmp_path / "sweep", str(job), [*overrides, "optim.lr=0.001"],
                 {"val": (val, noisy(val, 0.7, rng)), "test": (test, noisy(test, 0.7, rng))})
    compare(tmp_path / "sweep")
    assert set(by_design(tmp_path / "sweep" / "compare.csv")) == {
        "head=linear", "head=mlp(hidden_dims=[256,128])", "head=mlp(hidden_dims=[64], norm=layernorm)"}


def test_tuning_picks_each_designs_lr_on_validation(tmp_path, labels):
    val, test = labels
    rng = np.random.default_rng(4)
    # val: linear best at 1e-3, mlp at 1e-4. Test prefers the other lr each time: it must not matter.
    accuracy = {("linear", "0.001"): (0.8, 0.6), ("linear", "0.0001"): (0.6, 0.9),
                ("mlp", "0.001"): (0.65, 0.95), ("mlp", "0.0001"): (0.85, 0.7)}
    job = 0
    for (head, lr), (val_acc, test_acc) in accuracy.items():
        for seed in (1, 2):
            make_job(tmp_path / "sweep", str(job), [f"head={head}", f"optim.lr={lr}", f"seed={seed}"],
                     {"val": (val, noisy(val, val_acc, rng)), "test": (test, noisy(test, test_acc, rng))})
            job += 1
    compare(tmp_path / "sweep", tune=["optim.lr"])
    rows = by_design(tmp_path / "sweep" / "compare.csv")
    assert set(rows) == {"head=linear", "head=mlp"}
    assert rows["head=linear"]["optim.lr"] == "0.001" and rows["head=mlp"]["optim.lr"] == "0.0001"
    assert rows["head=mlp"]["rank"] == "1" and rows["head=mlp"]["n_seeds"] == "2"
    report = json.loads((tmp_path / "sweep" / "compare.json").read_text())
    mlp = next(d for d in report["designs"] if d["design"] == "head=mlp")
    assert mlp["jobs"] == ["6", "7"]
    expected = np.mean([json.loads((tmp_path / "sweep" / j / "summary.json").read_text())["test"]["f1_macro"]
                        for j in ("6", "7")])
    assert mlp["test_f1_macro_mean"] == pytest.approx(expected)
    assert [c["tuned"]["optim.lr"] for c in mlp["candidates"]] == ["0.001", "0.0001"]


def test_an_optuna_sweep_is_one_design_whose_searched_keys_are_tuned(tmp_path, labels):
    val, test = labels
    rng = np.random.default_rng(5)
    sweep = tmp_path / "sweep"
    val_accuracies = [0.6, 0.85, 0.7]
    for job, (lr, val_acc) in enumerate(zip(("0.00013", "0.0042", "0.021"), val_accuracies, strict=True)):
        make_job(sweep, str(job), [f"optim.head_lr={lr}", f"head.dropout=0.{job}", "data.root=/photos"],
                 {"val": (val, noisy(val, val_acc, rng)), "test": (test, noisy(test, 0.7, rng))})
    (sweep / "optimization_results.yaml").write_text("name: optuna\nbest_params:\n  optim.head_lr: 0.0042\n")
    text, _ = compare(sweep)
    (row,) = read_rows(sweep / "compare.csv")
    assert (row["optim.head_lr"], row["head.dropout"], row["n_seeds"]) == ("0.0042", "0.1", "1")
    report = json.loads((sweep / "compare.json").read_text())
    assert report["sweeper"] == "optuna" and report["tuned_keys"] == ["optim.head_lr", "head.dropout"]
    assert len(report["designs"][0]["candidates"]) == 3
    assert "tuned within each design on val/f1_macro: optim.head_lr, head.dropout" in text


def test_learning_curves_along_the_training_set_size(tmp_path, labels):
    val, test = labels
    rng = np.random.default_rng(6)
    job = 0
    for k, base in (("5", 0.5), ("10", 0.65), ("50", 0.85)):
        for head, bonus in (("linear", 0.0), ("mlp", 0.05)):
            for seed in (1, 2):
                make_job(tmp_path / "sweep", str(job), [f"data.train_per_class={k}", f"head={head}", f"seed={seed}"],
                         {"val": (val, noisy(val, base + bonus, rng)), "test": (test, noisy(test, base + bonus, rng))})
                job += 1
    compare(tmp_path / "sweep", x="data.train_per_class", resamples=400)
    rows = read_rows(tmp_path / "sweep" / "compare.csv")
    assert [(r["data.train_per_class"], r["design"], r["rank"]) for r in rows] == [
        ("5", "head=mlp", "1"), ("5", "head=linear", "2"), ("10", "head=mlp", "1"), ("10", "head=linear", "2"),
        ("50", "head=mlp", "1"), ("50", "head=linear", "2")]
    means = [float(r["test_f1_macro_mean"]) for r in rows if r["design"] == "head=mlp"]
    assert means == sorted(means)
    with Image.open(tmp_path / "sweep" / "compare.png") as figure:
        assert figure.width > 600


def test_csv_json_and_markdown_hold_the_same_numbers(tmp_path, labels):
    sweep = seed_sweep(tmp_path / "sweep", labels, {"linear": (0.7, 0.7), "mlp": (0.75, 0.75)})
    text, files = compare(sweep)
    rows = read_rows(files["csv"])
    report = json.loads(files["json"].read_text())
    for row, design in zip(rows, report["designs"], strict=True):
        for column, value in row.items():
            if value and column not in ("design", "vs_best", "seed_variance"):
                assert float(value) == design[column], column
        mean, std, low, high = (design[f"val_f1_macro_{s}"] for s in ("mean", "std", "ci_low", "ci_high"))
        assert f"{mean:.3f} ± {std:.3f} [{low:.3f}, {high:.3f}]" in text
    assert files["markdown"].read_text() == text
    with Image.open(files["png"]) as chart:
        assert chart.width > 300 and chart.height > 200


def test_a_finished_job_is_never_failed_and_one_without_a_best_checkpoint_is_flagged_not_ranked(tmp_path, labels):
    val, test = labels
    rng = np.random.default_rng(2)

    def splits(accuracy):
        return {"val": (val, noisy(val, accuracy, rng)), "test": (test, noisy(test, accuracy, rng))}

    sweep = tmp_path / "sweep"
    make_job(sweep, "0", ["data.root=/photos", "head=linear"], splits(0.8))
    # finished, then refused by a re-run that wrote FAILED.json beside its summary (older vitcls did)
    make_job(sweep, "1", ["data.root=/photos", "head=mlp"], splits(0.7),
             failure={"error_type": "ConfigError", "message": "already holds a run"})
    # tested on its last weights: its validation never ran, whatever its scores. (Named as a resumed sweep
    # names a job that never ran when its number is another job's directory.)
    make_job(sweep, "1_1", ["data.root=/photos", "head=cosine"], splits(0.95), extra_summary={"best_ckpt": None})
    compare(sweep)
    jobs = read_rows(sweep / "compare_jobs.csv")
    assert [(j["job"], j["status"]) for j in jobs] == [("0", "ok"), ("1", "ok"), ("1_1", "no best checkpoint")]
    assert jobs[-1]["rank"] == "" and jobs[-1]["test/acc"]  # shown, not ranked
    designs = by_design(sweep / "compare.csv")
    assert [designs[d]["rank"] for d in ("head=linear", "head=mlp", "head=cosine")] == ["1", "2", ""]
    unfinished = json.loads((sweep / "compare.json").read_text())["unfinished"]
    assert [(u["job"], u["status"]) for u in unfinished] == [("1_1", "no best checkpoint")]


def test_without_predictions_the_intervals_come_from_the_seeds(tmp_path, labels):
    sweep = seed_sweep(tmp_path / "sweep", labels, {"linear": (0.7, 0.7), "mlp": (0.75, 0.75)})
    for path in sweep.glob("*/*_predictions.csv"):
        path.unlink()
    text, _ = compare(sweep)
    report = json.loads((sweep / "compare.json").read_text())
    for design in report["designs"]:
        mean, std = design["test_acc_mean"], design["test_acc_std"]
        half = 4.302652729911275 * std / np.sqrt(3)  # t(0.975, df=2)
        assert design["test_acc_ci_low"] == pytest.approx(max(0.0, mean - half))
        assert design["test_acc_ci_high"] == pytest.approx(min(1.0, mean + half))
        # as the note says: no p-value, the label unknown (the seeds alone would miss the images' share)
        assert design["vs_best"] == ("best" if design["rank"] == 1 else "unknown")
        assert design["p_vs_best_raw"] is None and design["p_vs_best_holm"] is None
    assert "No per-image predictions in jobs 0, 1, 2, 3, 4, 5" in text
    assert "they are not tested against the best (p-values blank, vs_best unknown)" in text
    (verdict,) = report["verdicts"]
    assert verdict["unknown"] == ["head=linear"] and verdict["tests"] == 0


def test_runs_from_before_the_val_object_rank_by_their_best_val_score(tmp_path, labels):
    sweep = seed_sweep(tmp_path / "sweep", labels, {"linear": (0.9, 0.7), "mlp": (0.6, 0.7)}, seeds=(1,))
    for summary_file in sweep.glob("*/summary.json"):
        summary = json.loads(summary_file.read_text())
        del summary["val"]
        summary_file.write_text(json.dumps(summary))
    compare(sweep)
    assert [r["design"] for r in read_rows(sweep / "compare.csv")] == ["head=linear", "head=mlp"]


def test_per_job_prints_the_job_table(tmp_path, labels, capsys):
    sweep = seed_sweep(tmp_path / "sweep", labels, {"linear": (0.7, 0.7), "mlp": (0.8, 0.8)}, seeds=(1, 2))
    main([str(sweep), "--per-job"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| rank | job | head | seed | status | val/f1_macro | test/acc |")
    assert len(lines) == 2 + 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{missing}"], "sweep directory not found"),
        (["{empty}"], "no jobs in"),
        (["{sweep}", "--metric", "val/f2"], "--metric val/f2: not a metric; choose one of val/acc, val/f1_macro"),
        (["{sweep}", "--tune", "optim.lr"], "--tune optim.lr: not a setting that varies between the jobs of"),
        (["{sweep}", "--x", "data.train_per_class"], "--x data.train_per_class: not a setting that varies"),
        (["{sweep}", "--bootstrap", "1"], "--bootstrap 1: at least 2 resamples"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, labels, capsys, args, message):
    sweep = seed_sweep(tmp_path / "sweep", labels, {"linear": (0.7, 0.7)}, seeds=(1, 2))
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "sweep": sweep}
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(**paths) for a in args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def holm_by_hand(p_values):
    """Holm's adjusted p-values, straight from the definition: sort, multiply the i-th smallest by (m - i + 1),
    carry the running maximum, cap at 1."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for position, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - position) * p_values[index]))
        adjusted[index] = running
    return adjusted


@pytest.fixture
def labelled_sweep(tmp_path):
    """Designs ranked by val in this order, each of whose test results a label is known for: 2 seeds each on the
    same 400 test images, but `single` (one seed) and `no_predictions` (its prediction files deleted)."""
    rng = np.random.default_rng(0)
    val, test = rng.integers(0, 3, 200), rng.integers(0, 3, 400)
    best_test = [noisy(test, 0.8, rng) for _ in range(2)]
    designs = {
        "mlp": (0.95, best_test),
        "same_on_test": (0.9, [p.copy() for p in best_test]),  # the best's very predictions: p = 1
        "weaker": (0.85, [noisy(test, 0.6, rng) for _ in range(2)]),
        "perfect_on_test": (0.8, [test.copy(), test.copy()]),  # ranked lower on val, never wrong on test
        "single": (0.75, [noisy(test, 0.79, rng)]),
        "no_predictions": (0.7, [noisy(test, 0.8, rng) for _ in range(2)]),
    }
    sweep, job = tmp_path / "sweep", 0
    for head, (val_acc, test_predictions) in designs.items():
        for seed, pred in enumerate(test_predictions, start=1):
            make_job(sweep, str(job), [f"head={head}", f"seed={seed}"],
                     {"val": (val, noisy(val, val_acc, rng)), "test": (test, pred)})
            if head == "no_predictions":
                for path in (sweep / str(job)).glob("*_predictions.csv"):
                    path.unlink()
            job += 1
    return sweep


def test_labels_holm_and_the_verdict_on_constructed_predictions(labelled_sweep, capsys):
    main([str(labelled_sweep), "--bootstrap", "500"])
    printed = capsys.readouterr().out
    rows = by_design(labelled_sweep / "compare.csv")
    labels = {name.removeprefix("head="): row["vs_best"] for name, row in rows.items()}
    assert labels == {"mlp": "best", "same_on_test": "not distinguishable", "weaker": "worse",
                      "perfect_on_test": "better", "single": "not distinguishable", "no_predictions": "unknown"}
    assert float(rows["head=perfect_on_test"]["diff_vs_best"]) > 0 > float(rows["head=weaker"]["diff_vs_best"])
    assert {name: row["seed_variance"] for name, row in rows.items()}["head=single"] == "pooled"
    assert rows["head=no_predictions"]["p_vs_best_raw"] == rows["head=no_predictions"]["p_vs_best_holm"] == ""

    # Holm over the four designs with a p-value, as computed by hand from the raw ones
    tested = [name for name, row in rows.items() if row["p_vs_best_raw"]]
    assert len(tested) == 4
    expected = holm_by_hand([float(rows[name]["p_vs_best_raw"]) for name in tested])
    assert [float(rows[name]["p_vs_best_holm"]) for name in tested] == pytest.approx(expected)
    for name in tested:  # the labels follow the corrected p-value, not the raw one
        significant = float(rows[name]["p_vs_best_holm"]) < 0.05
        assert (rows[name]["vs_best"] != "not distinguishable") == significant

    verdict = ("head=mlp best on val/f1_macro; on test/f1_macro not distinguishable from head=same_on_test, "
               "head=single; better than head=weaker; worse than head=perfect_on_test; no p-value for "
               "head=no_predictions (1-2 seeds, Holm-corrected over 4 tests, alpha 0.05)")
    assert f"Verdict: {verdict}\n" in printed
    assert f"Verdict: {verdict}\n" in (labelled_sweep / "compare.md").read_text()
    report = json.loads((labelled_sweep / "compare.json").read_text())
    (found,) = report["verdicts"]
    assert found["text"] == verdict and found["best"] == "head=mlp" and found["tests"] == 4
    assert found["better"] == ["head=perfect_on_test"] and found["worse"] == ["head=weaker"]
    assert found["not_distinguishable"] == ["head=same_on_test", "head=single"]
    assert found["unknown"] == ["head=no_predictions"] and report["multiple_testing"] == "holm"
    header = next(line for line in printed.splitlines() if line.startswith("| rank"))
    assert "| seed_variance | diff_vs_best | p_vs_best_raw | p_vs_best_holm | vs_best |" in header
    assert "Holm-corrected for the 4 designs tested against the same best" in printed
    assert "seed_variance pooled: a design with one seed borrows the seed variance pooled" in printed


def test_one_seed_everywhere_leaves_every_design_untested(tmp_path, labels):
    sweep = seed_sweep(tmp_path / "sweep", labels, {"linear": (0.7, 0.6), "mlp": (0.9, 0.95), "cosine": (0.8, 0.8)},
                       seeds=(1,))
    text, _ = compare(sweep)
    rows = read_rows(sweep / "compare.csv")
    assert [(r["design"], r["seed_variance"], r["vs_best"], r["p_vs_best_raw"]) for r in rows] == [
        ("head=mlp", "none", "best", ""), ("head=cosine", "none", "unknown", ""),
        ("head=linear", "none", "unknown", "")]
    assert "seed_variance none: one seed, and no design of its comparison has several" in text
    assert ("Verdict: head=mlp best on val/f1_macro; on test/f1_macro no p-value for head=cosine, head=linear "
            "(1 seed each, Holm-corrected over 0 tests, alpha 0.05)") in text
    # the intervals still hold the image sampling
    assert all(float(r["test_acc_ci_low"]) < float(r["test_acc_mean"]) < float(r["test_acc_ci_high"]) for r in rows)


def test_a_one_seed_design_borrows_the_pooled_seed_variance(tmp_path, labels):
    from scipy import stats as scipy_stats
    from sweep_builder import CLASSES

    from vitcls.compare.stats import Resampler
    from vitcls.reporting.predictions_csv import read_predictions

    sweep = seed_sweep(tmp_path / "sweep", labels, {"mlp": (0.9, 0.8), "linear": (0.8, 0.78)}, seeds=(1, 2, 3))
    val, test = labels
    rng = np.random.default_rng(9)
    make_job(sweep, "6", ["data.root=/photos", "head=cosine", "seed=1"],
             {"val": (val, noisy(val, 0.7, rng)), "test": (test, noisy(test, 0.78, rng))})
    compare(sweep, resamples=400)
    report = json.loads((sweep / "compare.json").read_text())
    cosine = next(d for d in report["designs"] if d["design"] == "head=cosine")
    assert cosine["seed_variance"] == "pooled" and cosine["n_seeds"] == 1
    values = {d["design"]: [json.loads((sweep / j / "summary.json").read_text())["test"]["f1_macro"]
                            for j in d["jobs"]] for d in report["designs"]}
    pooled = (np.var(values["head=mlp"], ddof=1) + np.var(values["head=linear"], ddof=1)) / 2  # 2 + 2 df
    # its interval: its own image variance (the same resamples as compare's) + the pooled seed variance,
    # Welch-Satterthwaite df = (image + pooled)^2 / (pooled^2 / 4)
    predictions = read_predictions(sweep / "6" / "test_predictions.csv", CLASSES)
    image = Resampler(400).replicates(predictions, ["f1_macro"], 3)["f1_macro"].var(ddof=1)
    df = (image + pooled) ** 2 / (pooled**2 / 4)
    half = scipy_stats.t.ppf(0.975, df) * np.sqrt(image + pooled)
    assert cosine["test_f1_macro_ci_low"] == pytest.approx(cosine["test_f1_macro_mean"] - half)
    assert cosine["test_f1_macro_ci_high"] == pytest.approx(cosine["test_f1_macro_mean"] + half)
    assert 0.0 < cosine["p_vs_best_raw"] <= 1.0


def test_zero_and_all_errors_give_the_wilson_interval_of_the_images(tmp_path, labels):
    from scipy import stats as scipy_stats

    val, test = labels
    for job, (head, right) in enumerate((("perfect", True), ("hopeless", False))):
        for seed in (1, 2):
            pred = {split: true.copy() if right else (true + 1) % 3 for split, true in (("val", val), ("test", test))}
            make_job(tmp_path / "sweep", f"{job}{seed}", [f"head={head}", f"seed={seed}"],
                     {split: (true, pred[split]) for split, true in (("val", val), ("test", test))})
    compare(tmp_path / "sweep", resamples=200)
    rows = by_design(tmp_path / "sweep" / "compare.csv")
    n = len(test)
    for head, correct in (("perfect", n), ("hopeless", 0)):
        row = rows[f"head={head}"]
        wilson = scipy_stats.binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert float(row["test_acc_ci_low"]) == pytest.approx(wilson.low)
        assert float(row["test_acc_ci_high"]) == pytest.approx(wilson.high)
        # f1_macro (1 or 0 here too) reaches as far as the accuracy's interval
        assert float(row["test_f1_macro_ci_high"]) - float(row["test_f1_macro_ci_low"]) == pytest.approx(
            wilson.high - wilson.low)
    assert float(rows["head=perfect"]["test_acc_ci_low"]) == pytest.approx(n / (n + 1.959963984540054**2))
    val_wilson = scipy_stats.binomtest(len(val), len(val)).proportion_ci(method="wilson")
    assert float(rows["head=perfect"]["val_f1_macro_ci_low"]) == pytest.approx(val_wilson.low)


def test_the_header_counts_designs_seeds_and_jobs(tmp_path, labels):
    sweep = seed_sweep(tmp_path / "sweep", labels, {"linear": (0.7, 0.7), "mlp": (0.8, 0.8)})
    text, _ = compare(sweep, resamples=100)
    assert text.startswith(f"Designs of {sweep} (2 designs, 3 seeds each, 6 jobs), ranked by val/f1_macro")
    counts = json.loads((sweep / "compare.json").read_text())["counts"]
    assert (counts["designs"], counts["seeds_min"], counts["seeds_max"], counts["jobs"]) == (2, 3, 3, 6)


def make_bank_job(sweep, name, heads, labels, overrides=()):
    """A finished head-bank run: one job directory, a bank.json listing `heads` (name -> accuracy), each with
    its own prediction files."""
    from sweep_builder import CLASSES, images, predictions_with, sklearn_metrics

    from vitcls.compare.runs import BANK_FILE
    from vitcls.reporting.predictions_csv import write_predictions

    val, test = labels
    rng = np.random.default_rng(len(heads))
    job = make_job(sweep, name, list(overrides), {"val": (val, val), "test": (test, test)})
    entries = []
    for index, (head, accuracy) in enumerate(heads.items()):
        entry = {"name": f"head={head}", "overrides": [f"head={head}"], "status": "ok", "files": {},
                 "params": {"trainable": 10 * (index + 1)}}
        for split, true in (("val", val), ("test", test)):
            pred = noisy(true, accuracy, rng)
            file = f"heads/{index}/{split}_predictions.csv"
            probabilities = predictions_with(true, pred, len(CLASSES))
            write_predictions(job / file, images(split, true), probabilities, CLASSES)
            entry["files"][f"{split}_predictions"] = file
            entry[split] = sklearn_metrics(true, pred, probabilities)
        entries.append(entry)
    (job / BANK_FILE).write_text(json.dumps({"heads": entries}))
    return job


def test_the_header_of_a_head_bank_counts_one_job_and_many_designs(tmp_path, labels):
    heads = {"linear": 0.7, "mlp": 0.8, "cosine": 0.75}
    bank = make_bank_job(tmp_path, "bank", heads, labels)
    text, _ = compare(bank, resamples=100)
    assert text.startswith(f"Designs of {bank} (3 designs, 1 seed each, 1 job (a head-bank run)), ranked by")
    sweep = tmp_path / "banks"
    for seed in (1, 2):
        make_bank_job(sweep, str(seed), heads, labels, overrides=[f"seed={seed}"])
    text, _ = compare(sweep, resamples=100)
    assert text.startswith(f"Designs of {sweep} (3 designs, 2 seeds each, 2 jobs (head-bank runs)), ranked by")
    counts = json.loads((sweep / "compare.json").read_text())["counts"]
    assert (counts["designs"], counts["jobs"], counts["head_bank_jobs"]) == (3, 2, 2)
