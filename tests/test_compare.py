"""vitcls-compare on hand-made sweep directories: varied settings, ranking, failed and unfinished jobs."""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

from vitcls.cli.compare import main


def make_job(sweep, name, overrides, test=None, failure=None, best_ckpt="checkpoints/epoch_002.ckpt"):
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if test is not None:
        (job / "summary.json").write_text(
            json.dumps({"test": test, "epochs_trained": 3, "wall_time_s": 12.5, "best_ckpt": best_ckpt})
        )
    if failure is not None:
        (job / "FAILED.json").write_text(json.dumps(failure))
    return job


@pytest.fixture
def sweep(tmp_path):
    sweep = tmp_path / "sweep"
    common = ["data.root=/photos", "trainer.max_epochs=3"]
    make_job(
        sweep, "0", [*common, "head=linear", "head.dropout=0.0"], {"f1_macro": 0.70, "acc": 0.80, "loss": 0.5}
    )
    make_job(
        sweep, "1", [*common, "head=linear", "head.dropout=0.1"], {"f1_macro": 0.90, "acc": 0.85, "loss": 0.7}
    )
    make_job(
        sweep,
        "2",
        [*common, "head=mlp", "head.dropout=0.0"],
        failure={"error_type": "FloatingPointError", "message": "training loss is nan at step 4"},
    )
    make_job(
        sweep, "10", [*common, "head=mlp", "head.dropout=0.1"], {"f1_macro": 0.80, "acc": 0.90, "loss": 0.2}
    )
    make_job(sweep, "11", [*common, "head=mlp", "head.dropout=0.2"])  # still running: no summary yet
    return sweep


def read_rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_jobs_are_ranked_by_the_metric_with_failed_and_unfinished_ones_last(sweep, capsys):
    main([str(sweep)])
    rows = read_rows(sweep / "compare.csv")
    assert [(r["rank"], r["job"], r["status"]) for r in rows] == [
        ("1", "1", "ok"),
        ("2", "10", "ok"),
        ("3", "0", "ok"),
        ("", "2", "failed"),
        ("", "11", "incomplete"),
    ]
    assert list(rows[0])[:5] == ["rank", "job", "head", "head.dropout", "status"]  # only what varies
    assert rows[0]["f1_macro"] == "0.9000" and rows[0]["acc"] == "0.8500" and rows[0]["epochs"] == "3"
    assert (
        rows[3]["error"] == "FloatingPointError: training loss is nan at step 4" and rows[3]["f1_macro"] == ""
    )
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].startswith("| rank | job | head | head.dropout | status | f1_macro |")
    assert (sweep / "compare.md").read_text() in printed
    with Image.open(sweep / "compare.png") as chart:
        assert chart.width > 300 and chart.height > 200


def test_a_finished_job_is_never_failed_and_one_without_a_best_checkpoint_is_flagged_not_ranked(tmp_path):
    sweep = tmp_path / "sweep"
    common = ["data.root=/photos"]
    make_job(sweep, "0", [*common, "head=linear"], {"f1_macro": 0.70})
    # finished, then refused by a re-run that wrote FAILED.json beside its summary (older vitcls did)
    make_job(sweep, "1", [*common, "head=mlp"], {"f1_macro": 0.60},
             failure={"error_type": "ConfigError", "message": "already holds a run"})
    # tested on its last weights: its validation never ran, whatever its test score. (Named as a resumed sweep
    # names a job that never ran when its number is another job's directory.)
    make_job(sweep, "1_1", [*common, "head=cosine"], {"f1_macro": 0.99}, best_ckpt=None)
    main([str(sweep)])
    rows = read_rows(sweep / "compare.csv")
    assert [(r["rank"], r["job"], r["status"], r["f1_macro"]) for r in rows] == [
        ("1", "0", "ok", "0.7000"),
        ("2", "1", "ok", "0.6000"),
        ("", "1_1", "no best checkpoint", "0.9900"),
    ]


def test_loss_is_minimised_and_other_metrics_can_be_chosen(sweep, tmp_path):
    out = tmp_path / "report"
    main([str(sweep), "--metric", "test/loss", "--out", str(out)])
    assert [r["job"] for r in read_rows(out / "compare.csv")][:3] == ["10", "0", "1"]
    main([str(sweep), "--metric", "acc", "--out", str(out)])
    assert [r["job"] for r in read_rows(out / "compare.csv")][:3] == ["10", "1", "0"]
    main([str(sweep), "--metric", "acc", "--minimize", "--out", str(out)])
    assert [r["job"] for r in read_rows(out / "compare.csv")][:3] == ["0", "1", "10"]
    assert not (sweep / "compare.csv").exists()


def test_run_directories_without_hydra_overrides_compare_by_their_config(tmp_path):
    sweep = tmp_path / "runs"
    for name, lr, f1 in (("a", 1e-3, 0.6), ("b", 1e-4, 0.7)):
        (sweep / name).mkdir(parents=True)
        (sweep / name / "config.yaml").write_text(
            f"optim:\n  lr: {lr}\n  betas: [0.9, 0.999]\npaths:\n  output_dir: {sweep / name}\n"
        )
        (sweep / name / "summary.json").write_text(json.dumps({"test": {"f1_macro": f1}, "best_ckpt": "x.ckpt"}))
    main([str(sweep)])
    rows = read_rows(sweep / "compare.csv")
    assert [(r["job"], r["optim.lr"]) for r in rows] == [("b", "0.0001"), ("a", "0.001")]
    assert "paths.output_dir" not in rows[0] and "optim.betas" not in rows[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{missing}"], "sweep directory not found"),
        (["{empty}"], "no jobs in"),
        (
            ["{sweep}", "--metric", "f2"],
            "--metric f2: not in the summaries; choose one of acc, f1_macro, loss",
        ),
    ],
)
def test_bad_input_is_one_clear_line(sweep, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "sweep": sweep}
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(**paths) for a in args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
