"""Checkpoints and export directories of earlier vitcls versions load and predict as they did then.

tests/fixtures/legacy_v0.ckpt was written by vitcls 0.1 (commit 7beb010, before the network and the
LightningModule were split): a 1-block ViT at 32 px with an MLP head on `cls+mean` features, classes apple and
kiwi; legacy_v0.json holds the logits that 0.1's `load_classifier` gave for a fixed input
(torch.manual_seed(0); torch.rand(2, 3, 32, 32)).

tests/fixtures/legacy_v02.ckpt and legacy_v02_export/ were written by vitcls 0.2 (commit 143ae76, one head
per network: `tap` and `head` in its config, `head.*` and `prompts.*` in its state dict, export format 2): a
1-block, width-32 ViT at 32 px with a VPT adapter (2 prompts) and an MLP head on `cls+mean`, classes apple and
kiwi; legacy_v02.json holds the logits 0.2 gave for the same fixed input.
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
    FORMAT_VERSION,
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
CHECKPOINT_V02 = FIXTURES / "legacy_v02.ckpt"
EXPORT_V02 = FIXTURES / "legacy_v02_export"
EXPECTED_V02 = json.loads((FIXTURES / "legacy_v02.json").read_text())


def fixed_input(expected=EXPECTED) -> torch.Tensor:
    torch.manual_seed(expected["input_seed"])
    return torch.rand(*expected["input_shape"])


def expected_logits(expected=EXPECTED) -> torch.Tensor:
    return torch.tensor(expected["logits"])


def test_the_fixture_is_an_old_format_checkpoint():
    checkpoint = torch.load(CHECKPOINT, weights_only=True)
    assert "_target_" in checkpoint["hyper_parameters"]["head"]
    assert all(key.startswith(("backbone.", "head.")) for key in checkpoint["state_dict"])


def test_an_old_checkpoint_loads_as_a_lightning_module_with_the_same_outputs():
    module, _ = ClassifierModule.from_checkpoint(CHECKPOINT)
    assert module.class_names == EXPECTED["class_names"]
    [head] = module.net.config["heads"]
    assert head["head"]["name"] == "mlp"
    assert head["tap"] == {"features": "cls+mean", "last_k": 4}
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
    config = read_config(out)
    assert config["format_version"] == FORMAT_VERSION
    assert [head["head"]["name"] for head in config["model"]["heads"]] == ["mlp"]
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
    assert [head["tap"]["features"] for head in upgraded["model"]["heads"]] == ["cls+mean"]
    with torch.no_grad():
        torch.testing.assert_close(net(fixed_input()), expected_logits(), rtol=0, atol=1e-6)


# --- vitcls 0.2: one head per network, visual prompts under `prompts.*`, export format 2 -------------------
def assert_is_the_v02_network(config: dict) -> None:
    """Today's config of the 0.2 fixtures' network: one MLP head on cls+mean, the VPT adapter."""
    [head] = config["heads"]
    assert head["head"]["name"] == "mlp" and head["head"]["hidden_dims"] == [16]
    assert head["tap"] == {"features": "cls+mean", "last_k": 4}
    assert config["adapter"] == {"name": "vpt", "num_prompts": 2, "deep": False}
    assert config["class_names"] == EXPECTED_V02["class_names"]


def test_the_v02_fixtures_are_in_the_old_format():
    checkpoint = torch.load(CHECKPOINT_V02, weights_only=True)
    net = checkpoint["hyper_parameters"]["net"]
    assert "heads" not in net and {"tap", "head"} <= set(net)
    keys = {key.split(".")[1] for key in checkpoint["state_dict"]}
    assert keys == {"backbone", "head", "prompts"}
    config = json.loads((EXPORT_V02 / CONFIG_FILE).read_text())
    assert config["format_version"] == 2 and "heads" not in config["model"]


def test_a_v02_checkpoint_loads_as_a_lightning_module_with_the_same_outputs():
    module, checkpoint = ClassifierModule.from_checkpoint(CHECKPOINT_V02)
    assert checkpoint["epoch"] == 1
    assert module.class_names == EXPECTED_V02["class_names"] and module.num_heads == 1
    assert_is_the_v02_network(module.net.config)
    assert module.hparams.train_blocks == "none"
    prompts = torch.load(CHECKPOINT_V02, weights_only=True)["state_dict"]["net.prompts.tokens"]
    torch.testing.assert_close(module.net.adapter_module.tokens, prompts, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(module(fixed_input(EXPECTED_V02)), expected_logits(EXPECTED_V02), rtol=0,
                                   atol=1e-6)


def test_a_v02_checkpoint_loads_as_a_plain_network_with_the_same_outputs():
    net, _ = ImageClassifier.from_checkpoint(CHECKPOINT_V02)
    assert_is_the_v02_network(net.config)
    with torch.no_grad():
        torch.testing.assert_close(net(fixed_input(EXPECTED_V02)), expected_logits(EXPECTED_V02), rtol=0,
                                   atol=1e-6)


def test_a_v02_export_directory_loads_with_the_same_outputs():
    net, config = load_exported_network(EXPORT_V02)
    assert_is_the_v02_network(config["model"])
    with torch.no_grad():
        torch.testing.assert_close(net(fixed_input(EXPECTED_V02)), expected_logits(EXPECTED_V02), rtol=0,
                                   atol=1e-6)


def test_a_v02_export_directory_predicts_with_the_same_outputs():
    predictor = Predictor.from_pretrained(EXPORT_V02, device="cpu")
    assert predictor.class_names == EXPECTED_V02["class_names"]
    torch.testing.assert_close(predictor.logits(fixed_input(EXPECTED_V02)), expected_logits(EXPECTED_V02),
                               rtol=0, atol=1e-6)


def test_a_v02_checkpoint_exports_in_todays_format_and_predicts(tmp_path):
    out = export_checkpoint(CHECKPOINT_V02, tmp_path / "export")
    config = json.loads((out / CONFIG_FILE).read_text())
    assert config["format_version"] == FORMAT_VERSION
    assert_is_the_v02_network(config["model"])
    predictor = Predictor.from_pretrained(out, device="cpu")
    torch.testing.assert_close(predictor.logits(fixed_input(EXPECTED_V02)), expected_logits(EXPECTED_V02),
                               rtol=0, atol=1e-6)


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
