"""End-to-end runs on CPU: train -> run directory -> eval.py reproduces the test metrics."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import yaml
from conftest import FAST_OVERRIDES, compose_config, make_image_folder, run_cli, train_in_process
from sklearn import metrics as skm

from vitcls.cli.train import run_training as run
from vitcls.metrics import metric_names


@pytest.mark.slow
@pytest.mark.data
def test_fruits_run_writes_the_run_directory_and_eval_reproduces_it(fruits_root, tmp_path):
    run_dir = tmp_path / "train"
    summary = train_in_process(
        run_dir, "data=fruits360", f"data.root={fruits_root}", "data.batch_size=32", "model=vit_tiny",
        "head=mlp", "optim.lr=1e-3", "trainer.max_epochs=2", "trainer.limit_train_batches=12",
    )
    # run directory contents
    for name in ("config.yaml", "metrics.csv", "summary.json", "test_confusion_matrix.png",
                 "test_confusion_matrix.csv", "checkpoints/last.ckpt"):
        assert (run_dir / name).is_file(), name
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["class_names"] == sorted(p.name for p in (fruits_root / "train").iterdir())
    assert set(metric_names()) <= set(on_disk["test"])
    assert summary["test"] == on_disk["test"]
    assert on_disk["best_epoch"] in (0, 1)
    assert on_disk["num_samples"] == {"train": 2560, "val": 640, "test": 1714}
    best = torch.load(on_disk["best_ckpt"], map_location="cpu", weights_only=True)
    assert best["hyper_parameters"]["net"]["class_names"] == on_disk["class_names"]
    assert best["epoch"] == on_disk["best_epoch"]
    with open(run_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len([r for r in rows if r.get("val/f1_macro")]) == 2
    assert any(r.get("test/acc") for r in rows)
    with open(run_dir / "test_confusion_matrix.csv") as handle:
        counts = [list(map(int, row[1:])) for row in list(csv.reader(handle))[1:]]
    assert np.asarray(counts).sum() == 1714
    assert on_disk["test"]["acc"] == pytest.approx(np.trace(counts) / 1714, abs=1e-6)
    assert on_disk["test"]["acc"] > 0.3  # 10 classes: chance is 0.1

    # eval.py on the best checkpoint reproduces train.py's test metrics
    eval_dir = tmp_path / "eval"
    run_cli("eval.py", f"ckpt_path={on_disk['best_ckpt']}", f"hydra.run.dir={eval_dir}",
            "trainer=cpu", "data.num_workers=0", "gallery.num_images=8")
    report = json.loads((eval_dir / "eval.json").read_text())
    for name in metric_names():
        assert report["test"][name] == pytest.approx(on_disk["test"][name], abs=1e-6), name
    for name in ("prediction_gallery.png", "report.md", "report_per_class.csv", "test_confusion_matrix.png"):
        assert (eval_dir / name).is_file(), name
    assert len(report["per_class"]) == 10

    # ...and both equal scikit-learn on the per-image predictions eval.py wrote
    with open(eval_dir / "predictions.csv") as handle:
        predictions = list(csv.DictReader(handle))
    assert len(predictions) == 1714
    y_true = [p["true_label"] for p in predictions]
    y_pred = [p["pred_label"] for p in predictions]
    assert report["test"]["acc"] == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=1e-6)
    assert report["test"]["f1_macro"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"), abs=1e-6)
    assert report["test"]["f1_weighted"] == pytest.approx(
        skm.f1_score(y_true, y_pred, average="weighted"), abs=1e-6)


def test_demo_experiment_generates_synthetic_data_and_trains(tmp_path):
    summary = train_in_process(
        tmp_path / "run", "experiment=demo", f"paths.data_dir={tmp_path / 'data'}", "trainer.max_epochs=2",
        "data.source.train_per_class=8", "data.source.test_per_class=4",
    )
    assert (tmp_path / "data" / "synthetic-fruit-shapes" / "train").is_dir()
    assert summary["class_names"] == ["apple", "banana", "grape", "lemon", "orange", "strawberry"]
    assert summary["num_samples"]["test"] == 24
    assert summary["epochs_trained"] == 2


def test_same_seed_gives_the_same_metrics(image_folder_factory, tmp_path):
    root = image_folder_factory({"red": 12, "green": 12, "blue": 12},
                                colours={"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)})
    args = [f"data.root={root}", "data.batch_size=8", "trainer.max_epochs=2", "head=mlp", "head.dropout=0.2"]
    first = train_in_process(tmp_path / "a", *args)
    second = train_in_process(tmp_path / "b", *args)
    assert first["test"] == second["test"]
    weights = [torch.load(s["best_ckpt"], weights_only=True)["state_dict"] for s in (first, second)]
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
    third = train_in_process(tmp_path / "c", *args, "seed=7")
    third_weights = torch.load(third["best_ckpt"], weights_only=True)["state_dict"]
    assert not torch.equal(third_weights["net.heads.0.fc.weight"], weights[0]["net.heads.0.fc.weight"])


def test_frozen_backbone_trains_only_the_head(image_folder_factory, tmp_path):
    root = image_folder_factory({"a": 6, "b": 6})
    summary = train_in_process(tmp_path / "run", f"data.root={root}", "model.train_blocks=none", "trainer.max_epochs=1",
                               "callbacks.model_checkpoint.save_last=false")
    state = torch.load(summary["best_ckpt"], weights_only=True)["state_dict"]
    from vitcls.models.classifier import ImageClassifier

    torch.manual_seed(42)  # run() seeds before building the module: same initial backbone
    fresh = ImageClassifier(backbone={"name": "vit_tiny_patch16_224", "img_size": 32},
                            head={"name": "linear"}, class_names=["a", "b"])
    for key, value in fresh.backbone.state_dict().items():
        assert torch.equal(state[f"net.backbone.{key}"], value), key
    head_parameters = 192 * 2 + 2
    assert summary["params"] == {"total": sum(p.numel() for p in fresh.parameters()), "trainable": head_parameters}
    logged = yaml.safe_load((tmp_path / "run" / "hparams.yaml").read_text())  # the CSV logger's hyperparameters
    assert logged["params/trainable"] == head_parameters and logged["train_blocks"] == "none"


def test_cli_reports_a_missing_folder_before_building_a_model(tmp_path):
    result = run_cli("train.py", f"data.root={tmp_path / 'missing'}", f"hydra.run.dir={tmp_path / 'run'}",
                     expect_success=False)
    output = result.stdout + result.stderr
    assert result.returncode == 2
    assert str(tmp_path / "missing") in output and "ROOT/train/<class_name>" in output
    assert "Traceback" not in output
    assert "Total params" not in output  # no model was built


def test_eval_refuses_data_with_other_classes(image_folder_factory, tmp_path):
    root = image_folder_factory({"a": 4, "b": 4})
    summary = train_in_process(tmp_path / "run", f"data.root={root}", "trainer.max_epochs=1")
    other = tmp_path / "other"
    make_image_folder(other, {"a": 2, "c": 2}, "train")
    make_image_folder(other, {"a": 2, "c": 2}, "test")
    result = run_cli("eval.py", f"ckpt_path={summary['best_ckpt']}", f"data.root={other}",
                     f"hydra.run.dir={tmp_path / 'eval'}", expect_success=False)
    output = result.stdout + result.stderr
    assert result.returncode == 2
    assert "missing in the data: ['b']" in output and "unknown to the model: ['c']" in output
    assert not (tmp_path / "eval" / "eval.json").exists()


@pytest.mark.slow
def test_multirun_gives_each_job_its_own_run_directory(image_folder_factory, tmp_path):
    root = image_folder_factory({"a": 4, "b": 4})
    sweep_dir = tmp_path / "sweep"
    run_cli("train.py", "-m", f"data.root={root}", "head=linear,mlp", "debug=limit", *FAST_OVERRIDES,
            f"hydra.sweep.dir={sweep_dir}")
    summaries = {job: json.loads((sweep_dir / job / "summary.json").read_text()) for job in ("0", "1")}
    assert {s["paths"]["run_dir"] for s in summaries.values()} == {str(sweep_dir / "0"), str(sweep_dir / "1")}
    heads = [[entry["head"]["name"] for entry in
              torch.load(s["best_ckpt"], weights_only=True)["hyper_parameters"]["net"]["heads"]]
             for s in summaries.values()]
    assert sorted(heads) == [["linear"], ["mlp"]]


@pytest.mark.slow
@pytest.mark.data
def test_tutorial_recipe_runs_offline_from_a_local_weights_file(fruits_root, tmp_path):
    """The tutorial experiment as is (ViT-B/16 at 224 px), with the hub replaced by a weights file."""
    import timm
    from safetensors.torch import save_file

    weights = tmp_path / "vit_base_in21k.safetensors"
    torch.manual_seed(1)
    source = timm.create_model("vit_base_patch16_224.augreg_in21k", pretrained=False)
    save_file(source.state_dict(), weights)
    summary = run(compose_config("train", [
        f"paths.output_dir={tmp_path / 'run'}", "experiment=tutorial", f"data.root={fruits_root}",
        f"model.weights={weights}", "trainer=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "data.num_workers=0",
        "trainer.enable_progress_bar=false",
    ]))
    checkpoint = torch.load(summary["best_ckpt"], weights_only=True)
    assert checkpoint["hyper_parameters"]["net"]["backbone"]["name"] == "vit_base_patch16_224.augreg_in21k"
    [entry] = checkpoint["hyper_parameters"]["net"]["heads"]
    assert entry["tap"]["features"] == "cls"
    assert checkpoint["datamodule_hyper_parameters"]["crop_pct"] == 1.0
    assert checkpoint["state_dict"]["net.backbone.pos_embed"].shape == (1, 197, 768)
    assert checkpoint["state_dict"]["net.heads.0.fc.weight"].shape == (10, 768)
    assert summary["global_steps"] == 2
