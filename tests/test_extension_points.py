"""Extension points: a logger and an adapter added from outside the package, each one class (tests/toy_extensions.py)
and one YAML file (written here into a config directory on Hydra's search path), with no edit to vitcls."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import FAST_OVERRIDES, make_image_folder, run_cli

TESTS_DIR = Path(__file__).resolve().parent
ENV = {"PYTHONPATH": str(TESTS_DIR)}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ext") / "images"
    for index, split in enumerate(("train", "test")):
        make_image_folder(root, {"a": 8, "b": 8, "c": 8}, split, seed=index)
    return root


@pytest.fixture(scope="module")
def user_conf(tmp_path_factory) -> Path:
    """The user's own config directory: conf/logger/recording.yaml and conf/adapter/channel_scale.yaml."""
    conf = tmp_path_factory.mktemp("my_conf")
    (conf / "logger").mkdir()
    (conf / "logger" / "recording.yaml").write_text(
        "defaults:\n  - csv\nrecording:\n  _target_: toy_extensions.RecordingLogger\n"
        "  path: ${paths.output_dir}/recorded.json\n")
    (conf / "adapter").mkdir()
    (conf / "adapter" / "channel_scale.yaml").write_text(
        "# @package _global_\nadapter:\n  _target_: toy_extensions.ChannelScale\n  init: 1.0\nmodel:\n"
        "  train_blocks: none\n")
    return conf


def train(folder: Path, conf: Path, run_dir: Path, *overrides: str):
    return run_cli("train.py", f"data.root={folder}", f"hydra.run.dir={run_dir}", f"hydra.searchpath=[file://{conf}]",
                   *FAST_OVERRIDES, "trainer.max_epochs=2", *overrides, env=ENV)


def read_rows(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_a_logger_of_ones_own_receives_what_the_run_reports(folder, user_conf, tmp_path):
    run_dir = tmp_path / "lone"
    train(folder, user_conf, run_dir, "logger=recording")
    record = json.loads((run_dir / "recorded.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    results = record["results"]
    assert record["config"]["seed"] == 42 and record["config"]["params/trainable"] == summary["params"]["trainable"]
    assert any("val/f1_macro" in m for m in record["metrics"])  # Lightning's metrics, as for any logger
    assert results["summary"]["test"] == summary["test"] and results["class_names"] == summary["class_names"]
    (head,) = results["heads"]
    rows = read_rows(run_dir / "test_predictions.csv")
    assert results["test_samples"] == [row["path"] for row in rows]
    assert [round(max(p), 6) for p in head["test_probabilities"]] == [float(row["score"]) for row in rows]
    assert sum(map(sum, head["test_confusion"])) == len(rows)
    assert Path(results["figures"]["test_confusion_matrix"]).is_file()


def test_a_logger_of_ones_own_receives_the_table_of_a_banks_heads(folder, user_conf, tmp_path):
    run_dir = tmp_path / "bank"
    train(folder, user_conf, run_dir, "logger=recording", "bank=default", "bank.heads=[linear,cosine]")
    results = json.loads((run_dir / "recorded.json").read_text())["results"]
    bank = json.loads((run_dir / "bank.json").read_text())
    assert [row["name"] for row in results["table"]] == [h["name"] for h in sorted(bank["heads"], key=lambda h: h["rank"])]
    assert results["selected"] == bank["selected"]["name"] and Path(results["figures"]["bank"]).is_file()
    assert [h["test"] for h in results["heads"]] == [h["test"] for h in bank["heads"]]


@pytest.mark.slow
def test_an_adapter_of_ones_own_trains_exports_and_predicts(folder, user_conf, tmp_path):
    run_dir = tmp_path / "adapted"
    train(folder, user_conf, run_dir, "adapter=channel_scale", "optim.lr=0.05")
    summary = json.loads((run_dir / "summary.json").read_text())
    width, classes = 192, 3
    assert summary["params"]["trainable"] == width + (width + 1) * classes  # the scales and the linear head
    out = tmp_path / "export"
    run_cli("vitcls/cli/export.py", summary["best_ckpt"], str(out), "--imports", "toy_extensions", env=ENV)
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["adapter"] == {"name": "channel_scale", "init": 1.0, "module": "toy_extensions"}
    predicted = tmp_path / "predicted.csv"
    run_cli("vitcls/cli/predict.py", str(out), str(folder / "test"), "--output", str(predicted), "--imports",
            "toy_extensions", "--num-workers", "0", "--no-progress", env=ENV)
    expected = {row["path"]: row["pred_label"] for row in read_rows(run_dir / "test_predictions.csv")}
    got = {row["path"]: row["label"] for row in read_rows(predicted)}
    assert got == expected
    refused = run_cli("vitcls/cli/predict.py", str(out), str(folder / "test"), expect_success=False, env=ENV)
    assert refused.returncode == 2 and "--imports toy_extensions" in refused.stderr
