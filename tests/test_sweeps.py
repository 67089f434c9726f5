"""Hydra multirun sweeps on CPU: one run directory per job, failures recorded, W&B runs per job, comparison."""

from __future__ import annotations

import csv
import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CONF_DIR, FAST_OVERRIDES, REPO_ROOT, compose_config
from conftest import build_module_of as build_module
from omegaconf import OmegaConf
from wandb_records import offline_runs, read_offline_run

TINY = [
    *FAST_OVERRIDES,
    "data.batch_size=4",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.num_sanity_val_steps=0",
]


@pytest.fixture
def wandb_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))


def run_script(*args, expect_rc=0, env=None):
    result = subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == expect_rc, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def read_csv(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_two_by_two_sweep_gives_four_jobs_four_wandb_runs_and_a_comparison(
    image_folder_factory, tmp_path, wandb_offline
):
    root = image_folder_factory({"a": 5, "b": 5, "c": 5})
    sweep = tmp_path / "sweep"
    run_script(
        "train.py",
        "-m",
        f"data.root={root}",
        "head=linear,mlp",
        "head.dropout=0.0,0.1",
        "logger=wandb",
        *TINY,
        f"hydra.sweep.dir={sweep}",
    )

    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    summaries = {p.name: json.loads((p / "summary.json").read_text()) for p in jobs}
    expected_names = {
        "0": "head=linear,head.dropout=0.0",
        "1": "head=linear,head.dropout=0.1",
        "2": "head=mlp,head.dropout=0.0",
        "3": "head=mlp,head.dropout=0.1",
    }

    # W&B: one finished run per job, all in the sweep's group, named after what differs
    runs = {run.directory.parents[1].name: run for run in offline_runs(sweep)}
    assert sorted(runs) == ["0", "1", "2", "3"]
    assert len({run.run["run_id"] for run in runs.values()}) == 4
    for job, run in runs.items():
        assert run.run["run_group"] == "train_sweep"  # the task name and the sweep directory's name
        assert run.config["design"] == run_config_design(expected_names[job])
        assert run.run["display_name"] == expected_names[job]
        assert run.exit_code == 0
        assert run.run["run_id"] == (sweep / job / "wandb_run_id").read_text().strip()
        head, dropout = expected_names[job].split(",")
        target = {"head=linear": "vitcls.models.heads.LinearHead", "head=mlp": "vitcls.models.heads.MLPHead"}[
            head
        ]
        assert run.config["head._target_"] == target
        assert run.config["head.dropout"] == float(dropout.split("=")[1])
        assert run.config["optim.lr"] == pytest.approx(2e-4)
        assert run.config["model.name"] == "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
        assert ("head.hidden_dims" in run.config) == (head == "head=mlp")
        assert {"train/loss_epoch", "val/acc", "val/f1_macro", "test/acc", "test/f1_macro"} <= run.metric_keys
        assert run.history[-1]["test/confusion_matrix_image._type"] == "image-file"
        assert "_wandb.visualize.test/confusion_matrix" in run.config

        # the confusion matrix table holds the counts of test_confusion_matrix.csv
        counts = {
            (row["true\\pred"], predicted): int(count)
            for row in read_csv(sweep / job / "test_confusion_matrix.csv")
            for predicted, count in row.items()
            if predicted != "true\\pred"
        }
        cells = run.table("test/confusion_matrix_table")
        assert {(actual, predicted): count for actual, predicted, count in cells["data"]} == counts

        # predictions table: one row per test image (15 < 64), with thumbnail, labels and score
        table = run.table("test/predictions")
        assert table["columns"] == ["image", "path", "true_label", "pred_label", "score", "correct"]
        assert len(table["data"]) == summaries[job]["num_samples"]["test"] == 15
        for image, path, true_label, pred_label, score, correct in table["data"]:
            assert image == "Image"
            assert Path(path).parent.name == true_label
            assert 0.0 < score <= 1.0 and correct == (true_label == pred_label)
        images = [p for p in run.artifact_files("testpredictions") if p.startswith("media/images/")]
        assert len(images) == 15  # one thumbnail per row (the images differ: no deduplication)
        accuracy = sum(row[5] for row in table["data"]) / len(table["data"])
        assert accuracy == pytest.approx(summaries[job]["test"]["acc"], abs=1e-6)

    # offline comparison: one row per design (no seeds here: one job each), ranked by the validation metric
    result = run_script("-m", "vitcls.cli.compare", str(sweep), "--metric", "val/loss")
    rows = read_csv(sweep / "compare.csv")
    by_val_loss = sorted(summaries, key=lambda job: summaries[job]["val"]["loss"])
    assert [row["design"] for row in rows] == [run_config_design(expected_names[job]) for job in by_val_loss]
    assert [row["rank"] for row in rows] == ["1", "2", "3", "4"]
    for row, job in zip(rows, by_val_loss, strict=True):
        assert row["n_seeds"] == "1"
        assert float(row["test_acc_mean"]) == pytest.approx(summaries[job]["test"]["acc"])
        assert float(row["val_loss_mean"]) == pytest.approx(summaries[job]["val"]["loss"])
    jobs = read_csv(sweep / "compare_jobs.csv")
    assert {(row["head"], row["head.dropout"]) for row in jobs} == {
        ("linear", "0.0"),
        ("linear", "0.1"),
        ("mlp", "0.0"),
        ("mlp", "0.1"),
    }
    assert "data.root" not in jobs[0]  # the same in every job
    markdown_rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(markdown_rows) == 1 + 1 + 4  # header, separator, four designs
    assert (sweep / "compare.png").stat().st_size > 0


def run_config_design(job_name: str) -> str:
    """head=mlp,head.dropout=0.1 -> head=mlp(dropout=0.1)"""
    return job_name.replace(",head.dropout=", "(dropout=") + ")"


@pytest.mark.slow
def test_a_failing_job_is_recorded_and_the_sweep_goes_on(image_folder_factory, tmp_path, wandb_offline):
    root = image_folder_factory({"a": 6, "b": 6})  # two training batches of 4
    sweep = tmp_path / "sweep"
    # optim.lr=1e36: after the first optimizer step the activations overflow, so the second training loss is NaN
    run_script(
        "train.py",
        "-m",
        f"data.root={root}",
        "optim.lr=1e36,1e-3",
        "logger=wandb",
        *TINY,
        f"hydra.sweep.dir={sweep}",
    )

    failure = json.loads((sweep / "0" / "FAILED.json").read_text())
    assert failure["error_type"] == "NonFiniteLossError"
    assert "training loss is nan" in failure["message"]
    assert "optim.lr=1e+36" in failure["overrides"]  # as Hydra writes the swept value
    assert any("nonfinite_loss.py" in frame for frame in failure["traceback"])
    assert not (sweep / "0" / "summary.json").exists()
    assert (sweep / "1" / "summary.json").is_file() and not (sweep / "1" / "FAILED.json").exists()

    runs = {run.directory.parents[1].name: run for run in offline_runs(sweep)}
    assert runs["0"].exit_code == 1 and runs["1"].exit_code == 0
    assert runs["0"].run["run_id"] != runs["1"].run["run_id"]
    assert "test/acc" in runs["1"].metric_keys and "test/acc" not in runs["0"].metric_keys

    result = run_script("-m", "vitcls.cli.compare", str(sweep))
    rows = read_csv(sweep / "compare.csv")
    assert [(row["design"], row["rank"], row["n_seeds"], row["n_unfinished"]) for row in rows] == [
        ("optim.lr=0.001", "1", "1", "0"),
        ("optim.lr=1e+36", "", "0", "1"),
    ]
    jobs = read_csv(sweep / "compare_jobs.csv")
    assert [(row["job"], row["status"]) for row in jobs] == [("1", "ok"), ("0", "failed")]
    assert jobs[1]["val/f1_macro"] == "" and jobs[1]["error"].startswith("NonFiniteLossError: the training loss is nan")
    assert "- 0 (optim.lr=1e+36): failed: NonFiniteLossError: the training loss is nan" in result.stdout


@pytest.mark.slow
def test_a_multirun_names_its_sweep_dir_at_launch_and_the_next_commands_at_the_end(image_folder_factory, tmp_path):
    root = image_folder_factory({"a": 5, "b": 5})
    logs = tmp_path / "logs"  # the default sweep directory: <log_dir>/train/multiruns/<time of launch>
    launched = run_script("train.py", "-m", f"data.root={root}", "head=linear,mlp", f"paths.log_dir={logs}", *TINY)
    (sweep,) = (logs / "train" / "multiruns").iterdir()
    lines = launched.stdout.splitlines()
    launch = lines.index(f"sweep directory: {sweep}")
    assert launch < min(i for i, line in enumerate(lines) if "Launching 2 jobs" in line)
    end = lines.index(f"sweep finished: {sweep}")
    resume, compare = (line.split(": ", 1)[1] for line in lines[end + 1:end + 3])
    assert compare == f"vitcls-compare {sweep}"

    # the printed command goes on with this sweep: both jobs are finished, so nothing runs again
    summaries = {job: (job / "summary.json").read_bytes() for job in (sweep / "0", sweep / "1")}
    words = shlex.split(resume)
    assert words[:3] == ["python", "train.py", "-m"] and words[-2:] == [f"hydra.sweep.dir={sweep}", "resume=true"]
    resumed = run_script(*words[1:])
    assert f"sweep directory: {sweep}" in resumed.stdout.splitlines()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert {job: (job / "summary.json").read_bytes() for job in summaries} == summaries
    run_script("-m", "vitcls.cli.compare", str(sweep))
    assert len(read_csv(sweep / "compare.csv")) == 2


def test_without_continue_on_failure_the_sweep_stops_at_the_first_failure(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_script(
        "train.py",
        "-m",
        f"data.root={tmp_path / 'missing_a'},{tmp_path / 'missing_b'}",
        "continue_on_failure=false",
        f"hydra.sweep.dir={sweep}",
        expect_rc=2,
    )
    assert "missing_a" in result.stdout + result.stderr
    assert json.loads((sweep / "0" / "FAILED.json").read_text())["error_type"] == "DatasetLayoutError"
    assert not (sweep / "1").exists()


def test_a_single_run_that_fails_exits_non_zero_and_leaves_a_marker(tmp_path):
    run_dir = tmp_path / "run"
    result = run_script(
        "train.py", f"data.root={tmp_path / 'missing'}", f"hydra.run.dir={run_dir}", expect_rc=2
    )
    assert "Traceback" not in result.stdout + result.stderr
    failure = json.loads((run_dir / "FAILED.json").read_text())
    assert failure["error_type"] == "DatasetLayoutError" and str(tmp_path / "missing") in failure["message"]


def test_every_job_of_the_head_sweep_composes(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        params = compose("train", ["sweep=heads"], return_hydra_config=True).hydra.sweeper.params
    assert set(params) >= {"head", "seed"}
    overrides = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    choices = [[f"{o.key_or_group}={value}" for value in o.sweep_string_iterator()] for o in overrides]
    jobs = list(itertools.product(*choices))
    assert len(jobs) == 12
    for job in jobs:
        cfg = compose_config("train", ["sweep=heads", f"paths.output_dir={tmp_path}", *job,
                                       "model.pretrained=false", "model.img_size=32", "+model.depth=2"])
        assert cfg.data.root.endswith("fruits360-10")
        assert build_module(cfg, class_names=["a", "b", "c"]).eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


@pytest.mark.parametrize("sweep", sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml")))
def test_a_sweep_without_multirun_is_refused_with_the_fix(tmp_path, sweep):
    run_dir = tmp_path / "run"
    result = run_script(
        "train.py", f"sweep={sweep}", f"data.root={tmp_path / 'missing'}", f"hydra.run.dir={run_dir}", expect_rc=2
    )
    output = result.stdout + result.stderr
    assert f"sweep={sweep} runs a sweep of jobs: add -m (python train.py -m sweep={sweep}" in output
    assert "Traceback" not in output
    assert json.loads((run_dir / "FAILED.json").read_text())["error_type"] == "ConfigError"
    assert not (run_dir / "checkpoints").exists()


def jobs_by_settings(sweep_dir: Path) -> dict[tuple[str, ...], Path]:
    """{the job's swept settings: its directory}."""
    jobs = {}
    for overrides_file in sweep_dir.glob("*/.hydra/overrides.yaml"):
        swept = sorted(o for o in OmegaConf.load(overrides_file) if o.startswith(("head=", "head.dropout=")))
        jobs[tuple(swept)] = overrides_file.parents[1]
    return jobs


def job_files(job_dir: Path) -> dict[str, tuple[bytes, int]]:
    """Everything a finished job wrote, with its modification time."""
    names = ["summary.json", "metrics.csv", "config.yaml", "wandb_run_id", "test_confusion_matrix.csv"]
    paths = [job_dir / name for name in names] + sorted((job_dir / "checkpoints").iterdir())
    return {str(p.relative_to(job_dir)): (p.read_bytes(), p.stat().st_mtime_ns) for p in paths}


@pytest.mark.slow
def test_a_sweep_killed_in_its_third_job_goes_on_with_resume_true(image_folder_factory, tmp_path, wandb_offline):
    root = image_folder_factory({"a": 5, "b": 5, "c": 5})
    tests_dir = str(Path(__file__).resolve().parent)  # fault_injection
    settings = [f"data.root={root}", *TINY, "trainer.max_epochs=2", "logger=wandb"]
    env = {"PYTHONPATH": tests_dir}

    def sweep_command(sweep_dir, marker, *extra, heads="head=linear,mlp"):
        kill = [  # SIGKILL to the whole multirun in job 2 (the third), after its first checkpoint; once per marker
            "+callbacks.kill._target_=fault_injection.SignalAt", "+callbacks.kill.signal_name=SIGKILL",
            "+callbacks.kill.step=3", "+callbacks.kill.job=2", f"+callbacks.kill.marker={marker}",
        ]
        return ["train.py", "-m", *settings, heads, "head.dropout=0.0,0.1", *kill, *extra, f"hydra.sweep.dir={sweep_dir}"]

    reference, sweep, sent = tmp_path / "reference", tmp_path / "sweep", tmp_path / "sent"
    already_sent = tmp_path / "already_sent"
    already_sent.write_text("the uninterrupted sweep: same settings, no signal\n")
    run_script(*sweep_command(reference, already_sent), env=env)
    run_script(*sweep_command(sweep, sent), env=env, expect_rc=-signal.SIGKILL)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2"]
    assert (sweep / "2" / "checkpoints" / "last.ckpt").is_file() and not (sweep / "2" / "summary.json").exists()
    finished = {job: job_files(sweep / job) for job in ("0", "1")}
    run_id = (sweep / "2" / "wandb_run_id").read_text()

    # the same command again is refused, naming the fix; nothing is written into the finished jobs
    refused = run_script(*sweep_command(sweep, sent), env=env, expect_rc=2)
    message = refused.stdout + refused.stderr
    assert "run it again with resume=true" in message and "hydra.run.dir" not in message
    assert not list(sweep.glob("*/FAILED.json"))

    # resumed, with the head values in another order: jobs are found by their overrides, not their number
    resumed = run_script(*sweep_command(sweep, sent, "resume=true", heads="head=mlp,linear"), env=env)
    log = resumed.stdout + resumed.stderr
    assert log.count("finished (summary.json); left as it is") == 2
    assert f"{sweep / '2'}: resume=true: resumes from last.ckpt" in log
    assert log.count(": resume=true: no checkpoint yet, starts") == 1  # the fourth job, which never ran
    for job, files in finished.items():
        assert job_files(sweep / job) == files, job  # not retrained, not retested, not rewritten
    expected, got = jobs_by_settings(reference), jobs_by_settings(sweep)
    assert len(got) == 4 and set(got) == set(expected)
    for settings_of_job, job_dir in expected.items():
        summary = json.loads((got[settings_of_job] / "summary.json").read_text())
        assert summary["test"] == json.loads((job_dir / "summary.json").read_text())["test"], settings_of_job
    assert json.loads((sweep / "2" / "summary.json").read_text())["resumed_from"] == str(
        sweep / "2" / "checkpoints" / "last.ckpt"
    )
    # the resumed job continued its W&B run: both attempts logged under one id, the second one finished
    assert (sweep / "2" / "wandb_run_id").read_text() == run_id
    # (the killed attempt's offline file may end before W&B wrote its run record, so only the last one is read)
    attempts = sorted((sweep / "2").glob("**/wandb/offline-run-*"))  # named by start time
    assert len(attempts) == 2
    resumed = read_offline_run(attempts[-1])
    assert resumed.run["run_id"] == run_id.strip()
    assert resumed.exit_code == 0 and "test/acc" in resumed.metric_keys

    run_script("-m", "vitcls.cli.compare", str(sweep))
    assert [row["status"] for row in read_csv(sweep / "compare_jobs.csv")] == ["ok"] * 4


def test_a_missing_sweeper_plugin_is_one_line_saying_what_to_install(monkeypatch):
    from vitcls.cli import hydra_job

    monkeypatch.setitem(hydra_job.SWEEPER_PLUGINS, "optuna", ("hydra_plugins.not_installed_sweeper", "optuna"))
    for argv in (["-m", "sweep=head_search", "data.root=/x"], ["-m", "hydra/sweeper=optuna", "optim.lr=interval(0.1,1)"]):
        with pytest.raises(hydra_job.ConfigError, match=r"the optuna sweeper is a Hydra plugin that is not installed: "
                                                        r"pip install 'vitcls\[optuna\]'"):
            hydra_job.check_sweeper_plugin(argv, CONF_DIR)
    hydra_job.check_sweeper_plugin(["-m", "sweep=heads"], CONF_DIR)  # a grid needs no plugin


def test_the_optuna_search_optimises_the_validation_metric():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for monitor, direction in (("val/f1_macro", "maximize"), ("val/loss", "minimize")):
            cfg = compose("train", ["sweep=head_search", f"monitor={monitor}"], return_hydra_config=True)
            assert cfg.hydra.sweeper.direction == direction
        assert set(cfg.hydra.sweeper.params) == {"optim.head_lr", "optim.weight_decay", "head.dropout"}
        assert "optuna" in cfg.hydra.sweeper._target_.lower()


@pytest.mark.slow
def test_an_optuna_search_runs_and_compare_reads_its_trials(image_folder_factory, tmp_path):
    root = image_folder_factory({"a": 6, "b": 6})
    sweep = tmp_path / "search"
    run_script("train.py", "-m", "sweep=head_search", f"data.root={root}", "hydra.sweeper.n_trials=3",
               *FAST_OVERRIDES, "trainer.max_epochs=1", f"feature_cache.dir={tmp_path / 'cache'}",
               f"hydra.sweep.dir={sweep}")
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    summaries = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}
    assert len(summaries) == 3
    assert results.best_value == pytest.approx(max(s["best_val_score"] for s in summaries.values()))
    run_script("-m", "vitcls.cli.compare", str(sweep))
    report = json.loads((sweep / "compare.json").read_text())
    assert report["sweeper"] == "optuna" and report["design_keys"] == []
    assert set(report["tuned_keys"]) == {"optim.head_lr", "optim.weight_decay", "head.dropout"}
    (design,) = report["designs"]
    assert len(design["candidates"]) == 3 and design["n_seeds"] == 1
    (best_job,) = design["jobs"]
    assert summaries[best_job]["best_val_score"] == pytest.approx(results.best_value)
    assert float(design["optim.head_lr"]) == pytest.approx(results.best_params["optim.head_lr"])
