"""One source for metric names: a metric added to `vitcls.metrics.METRICS` reaches summary.json, the
checkpoint monitor, vitcls-compare and vitcls-predict's metrics.json without another edit."""

from __future__ import annotations

import json

import pytest
from conftest import compose_config, train_in_process
from torchmetrics.classification import MulticlassSpecificity

from vitcls import metrics
from vitcls.config.validation import check_monitor
from vitcls.errors import ConfigError

ADDED = "specificity_macro"


@pytest.fixture
def added_metric(monkeypatch):
    monkeypatch.setitem(
        metrics.METRICS, ADDED, lambda num_classes: MulticlassSpecificity(num_classes=num_classes, average="macro")
    )
    return ADDED


def test_an_added_metric_is_everywhere(added_metric, image_folder_factory, tmp_path):
    from vitcls.compare import compare
    from vitcls.inference.export_dir import export_checkpoint
    from vitcls.inference.files import expand_inputs, folder_metrics, predict_files
    from vitcls.inference.predictor import Predictor

    root = image_folder_factory({"a": 6, "b": 6})
    sweep = tmp_path / "sweep"
    summary = train_in_process(
        sweep / "0", f"data.root={root}", "trainer.max_epochs=1", f"monitor=val/{added_metric}"
    )
    assert added_metric in summary["test"] and summary["monitor"] == f"val/{added_metric}"
    written = json.loads((sweep / "0" / "summary.json").read_text())
    assert 0.0 <= written["test"][added_metric] <= 1.0

    table, _ = compare(sweep, metric=f"val/{added_metric}", resamples=50)
    assert f"ranked by val/{added_metric}" in table.splitlines()[0]

    export = export_checkpoint(summary["best_ckpt"], tmp_path / "export")
    predictor = Predictor.from_pretrained(export, device="cpu", num_workers=0)
    files = expand_inputs([str(root / "test")])
    _, probabilities = predict_files(predictor, files, top_k=1, batch_size=4, progress=False)
    report = folder_metrics(predictor, files, probabilities, tmp_path / "predict", str(export))
    assert report["test"][added_metric] == pytest.approx(written["test"][added_metric], abs=1e-6)


def test_the_monitor_must_be_a_validation_metric_of_the_collection(added_metric):
    check_monitor(f"val/{added_metric}")
    check_monitor("val/loss")
    for bad in ("test/f1_macro", "val/f2", "f1_macro"):
        with pytest.raises(ConfigError, match="monitor"):
            check_monitor(bad)


def test_the_default_monitor_is_a_collection_name():
    names = {f"val/{name}" for name in metrics.metric_names()}
    assert compose_config("train").monitor in names
