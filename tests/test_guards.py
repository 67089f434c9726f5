"""A NaN/infinite training loss stops the run (naming the step and the last checkpoint) or skips the update."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import FAST_OVERRIDES, compose_config

from vitcls.callbacks.nonfinite_loss import NonFiniteLossError
from vitcls.cli.train import run_training as run
from vitcls.models.classifier import ImageClassifier

# 2 classes x 10 images, 20% test then 20% val held out: 13 train images, batch 4: 3 steps per epoch
FOLDER = {"a": 10, "b": 10}


def train(output_dir, root, nan_calls, *overrides):
    return run(
        compose_config(
            "train",
            [
                f"paths.output_dir={output_dir}",
                f"data.root={root}",
                *FAST_OVERRIDES,
                "loss._target_=fault_injection.NonFiniteLoss",
                f"+loss.nan_calls={nan_calls}",
                *overrides,
            ],
        )
    )


def test_nan_loss_stops_the_run_naming_the_step_and_the_last_good_checkpoint(image_folder_factory, tmp_path):
    root = image_folder_factory(FOLDER, splits=("train",))
    with pytest.raises(NonFiniteLossError) as caught:
        train(tmp_path / "run", root, "[5]", "trainer.max_epochs=3")
    message = str(caught.value)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert "loss is nan at step 5 (epoch 1, batch 2)" in message
    assert f"Last good checkpoint: {last}" in message and last.is_file()
    assert torch.load(last, weights_only=True)["epoch"] == 0  # written before the NaN, not after
    assert not (tmp_path / "run" / "summary.json").exists()


def test_skip_leaves_the_weights_untouched_by_non_finite_batches(image_folder_factory, tmp_path, caplog):
    root = image_folder_factory(FOLDER, splits=("train",))
    with caplog.at_level(logging.WARNING, logger="vitcls.callbacks.nonfinite_loss"):
        summary = train(
            tmp_path / "run",
            root,
            "[-1]",
            "trainer.max_epochs=1",
            "callbacks.nonfinite_loss.action=skip",
            "model.train_blocks=none",
        )
    assert caplog.text.count("skipping this update") == summary["global_steps"] == 3
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    torch.manual_seed(42)  # run() seeds before building the module: same initial weights
    fresh = ImageClassifier(
        backbone={"name": "vit_tiny_patch16_224", "img_size": 32},
        head={"name": "linear"},
        class_names=["a", "b"],
    )
    for key, value in fresh.head.state_dict().items():
        assert torch.equal(state[f"net.heads.0.{key}"], value), key  # every update was skipped: no step, no decay


def test_skip_only_drops_the_bad_updates(image_folder_factory, tmp_path):
    root = image_folder_factory(FOLDER, splits=("train",))
    summary = train(
        tmp_path / "run", root, "[1]", "trainer.max_epochs=1", "callbacks.nonfinite_loss.action=skip"
    )
    state = torch.load(summary["best_ckpt"], weights_only=True)["state_dict"]
    assert all(torch.isfinite(value).all() for value in state.values() if value.is_floating_point())
    assert summary["test"]["loss"] == pytest.approx(summary["test"]["loss"])  # finite, not NaN


def test_unknown_action_is_a_config_error():
    from vitcls.callbacks.nonfinite_loss import NonFiniteLossGuard
    from vitcls.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"callbacks.nonfinite_loss.action must be one of \['error', 'skip'\]"
    ):
        NonFiniteLossGuard("ignore")
