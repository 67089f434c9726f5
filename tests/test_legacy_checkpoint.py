"""Checkpoints and export directories of vitcls 0.1 (before the network and the LightningModule were split)
load and predict as they did then.

tests/fixtures/legacy_v0.ckpt was written by vitcls 0.1 (commit 7beb010): a 1-block ViT at 32 px with an
MLP head on `cls+mean` features, classes apple and kiwi; legacy_v0.json holds the logits that 0.1's
`load_classifier` gave for a fixed input (torch.manual_seed(0); torch.rand(2, 3, 32, 32)).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_image_folder
from safetensors.torch import save_file

from vitcls.inference.export_dir import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    export_checkpoint,
    load_exported_network,
    read_config,
)
from vitcls.inference.predictor import Predictor
from vitcls.models.classifier import ImageClassifier
from vitcls.models.lightning_module import ClassifierModule

FIXTURES = Path(__file__).parent / "fixtures"
CHECKPOINT = FIXTURES / "legacy_v0.ckpt"
EXPECTED = json.loads((FIXTURES / "legacy_v0.json").read_text())


def fixed_input() -> torch.Tensor:
    torch.manual_seed(EXPECTED["input_seed"])
    return torch.rand(*EXPECTED["input_shape"])


def expected_logits() -> torch.Tensor:
    return torch.tensor(EXPECTED["logits"])


def test_the_fixture_is_an_old_format_checkpoint():
    checkpoint = torch.load(CHECKPOINT, weights_only=True)
    assert "_target_" in checkpoint["hyper_parameters"]["head"]
    assert all(key.startswith(("backbone.", "head.")) for key in checkpoint["state_dict"])


def test_an_old_checkpoint_loads_as_a_lightning_module_with_the_same_outputs():
    module, _ = ClassifierModule.from_checkpoint(CHECKPOINT)
    assert module.class_names == EXPECTED["class_names"]
    assert module.net.config["head"]["name"] == "mlp"
    assert module.net.config["tap"] == {"features": "cls+mean", "last_k": 4}
    assert module.hparams.train_blocks == "all"
    with torch.no_grad():
        torch.testing.assert_close(module(fixed_input()), expected_logits(), rtol=0, atol=1e-6)


def test_an_old_checkpoint_loads_as_a_plain_network_with_the_same_outputs():
    net, checkpoint = ImageClassifier.from_checkpoint(CHECKPOINT)
    assert checkpoint["epoch"] == 0
    with torch.no_grad():
        torch.testing.assert_close(net(fixed_input()), expected_logits(), rtol=0, atol=1e-6)


def test_an_old_checkpoint_exports_and_predicts(tmp_path):
    out = export_checkpoint(CHECKPOINT, tmp_path / "export")
    assert read_config(out)["model"]["head"]["name"] == "mlp"
    predictor = Predictor.from_pretrained(out, device="cpu")
    torch.testing.assert_close(predictor.logits(fixed_input()), expected_logits(), rtol=0, atol=1e-6)


def test_an_old_export_directory_predicts(tmp_path):
    """An export as vitcls 0.1 wrote it: config.json format 1 (the LightningModule's hyperparameters), weights
    under `backbone.` / `head.`."""
    checkpoint = torch.load(CHECKPOINT, weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    directory = tmp_path / "old_export"
    directory.mkdir()
    save_file({k: v.contiguous() for k, v in checkpoint["state_dict"].items()}, directory / WEIGHTS_FILE)
    config = {
        "format": "vitcls-export",
        "format_version": 1,
        "class_names": hparams["class_names"],
        "model": {"backbone": hparams["backbone"], "head": hparams["head"]},
        "preprocessing": {"input_size": [3, 32, 32], "interpolation": "bicubic", "mean": [0.5] * 3,
                          "std": [0.5] * 3, "crop_pct": 0.9, "crop_mode": "center"},
    }
    (directory / CONFIG_FILE).write_text(json.dumps(config))
    net, upgraded = load_exported_network(directory)
    assert upgraded["model"]["tap"]["features"] == "cls+mean"
    with torch.no_grad():
        torch.testing.assert_close(net(fixed_input()), expected_logits(), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_eval_scores_an_old_checkpoint(tmp_path):
    from conftest import run_cli

    root = tmp_path / "images"
    for index, split in enumerate(("train", "test")):
        make_image_folder(root, {"apple": 4, "kiwi": 4}, split, seed=index)
    run_cli("eval.py", f"ckpt_path={CHECKPOINT}", f"data.root={root}", f"hydra.run.dir={tmp_path / 'eval'}",
            "trainer=cpu", "trainer.enable_progress_bar=false", "data.num_workers=0")
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["num_samples"] == 8 and report["class_names"] == ["apple", "kiwi"]
