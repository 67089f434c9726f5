"""Checkpoints are untrusted input: a checkpoint crafted to run code on load is refused, and nothing runs."""

from __future__ import annotations

import builtins
import os
import sys

import pytest
import torch
from conftest import FAST_OVERRIDES, compose_config, run_cli

from vitcls.cli.train import run_training as run
from vitcls.errors import ConfigError
from vitcls.untrusted import UnsafeCheckpointError, load_checkpoint


class RunsCodeOnLoad:
    """Unpickling this calls open(marker, "w"): the file appears if, and only if, the code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def malicious_checkpoint(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "malicious.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "payload": RunsCodeOnLoad(marker)}, path)
    return path, marker


def test_the_payload_is_real(malicious_checkpoint):
    path, marker = malicious_checkpoint
    torch.load(path, weights_only=False)  # what an unsafe loader would do
    assert marker.exists()


def test_load_checkpoint_refuses_it_and_nothing_runs(malicious_checkpoint):
    path, marker = malicious_checkpoint
    with pytest.raises(UnsafeCheckpointError, match=rf"ckpt_path: refused to load {path}.*could run code"):
        load_checkpoint(path)
    assert not marker.exists()


def test_eval_refuses_it_with_a_clear_message(malicious_checkpoint, tmp_path):
    path, marker = malicious_checkpoint
    result = run_cli(
        "eval.py", f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'eval'}", expect_success=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "refused to load" in output and "Traceback" not in output
    assert not marker.exists()


def test_resuming_from_it_is_refused_before_training(malicious_checkpoint, image_folder_factory, tmp_path):
    path, marker = malicious_checkpoint
    root = image_folder_factory({"a": 6, "b": 6})
    cfg = compose_config(
        "train",
        [f"paths.output_dir={tmp_path / 'run'}", f"data.root={root}", *FAST_OVERRIDES, f"ckpt_path={path}"],
    )
    with pytest.raises(UnsafeCheckpointError):
        run(cfg)
    assert not marker.exists()
    assert not (tmp_path / "run" / "checkpoints").exists()


class Calls:
    """Unpickling this calls `function(*args)`."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return (self.function, self.args)


# (function, its arguments given the marker path, the name the user is told). os lives in `posix` on Linux;
# torch refuses os/posix/sys as blocked modules and anything else as not allowlisted, in other words.
PAYLOADS = {
    "os.system": (os.system, lambda marker: (f"touch {marker}",), f"{os.system.__module__}.system"),
    "builtins.exec": (builtins.exec, lambda marker: (f"open({str(marker)!r}, 'w').close()",), "builtins.exec"),
    "os.mkdir (blocked module)": (os.mkdir, lambda marker: (str(marker),), f"{os.system.__module__}.mkdir"),
    # sys.getrecursionlimit: harmless if run, and never patched (W&B replaces sys.exit while a run is open)
    "sys (blocked module)": (sys.getrecursionlimit, lambda marker: (), "sys.getrecursionlimit"),
}


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_checkpoint_that_carries_code_is_named_as_such_not_as_corrupt(payload, tmp_path):
    function, arguments, reference = PAYLOADS[payload]
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": Calls(function, *arguments(marker))}, path)
    with pytest.raises(UnsafeCheckpointError) as refused:
        load_checkpoint(path)
    message = str(refused.value)
    assert f"holds a pickled reference to {reference}," in message and "could run code" in message
    assert "not a readable" not in message and "corrupt" not in message
    assert not marker.exists()
    if payload != "sys (blocked module)":  # the payload is real: an unsafe load runs it
        torch.load(path, weights_only=False)
        assert marker.exists()


def test_a_weights_file_that_carries_code_is_named_too(tmp_path):
    from vitcls.models.backbone import create_backbone

    marker = tmp_path / "code_ran"
    path = tmp_path / "weights.pth"
    torch.save({"cls_token": torch.zeros(1, 1, 192), "x": Calls(os.system, f"touch {marker}")}, path)
    with pytest.raises(UnsafeCheckpointError, match=rf"model.weights: refused to load {path}: .* {os.system.__module__}.system"):
        create_backbone("vit_tiny_patch16_224", weights=str(path), img_size=32)
    assert not marker.exists()


def test_truncated_or_foreign_files_are_named(tmp_path):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(
        ConfigError, match=f"ckpt_path: .*{garbage.name} is not a readable PyTorch checkpoint"
    ):
        load_checkpoint(garbage)
    truncated = tmp_path / "truncated.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(100)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ConfigError, match="is not a readable PyTorch checkpoint .*RuntimeError"):
        load_checkpoint(truncated)
    plain = tmp_path / "plain.ckpt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(ConfigError, match="not a Lightning checkpoint"):
        load_checkpoint(plain)
    with pytest.raises(ConfigError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_weights_file_that_does_not_fit_the_model_names_both(tmp_path):
    from vitcls.models.backbone import create_backbone

    wrong = tmp_path / "other_arch.pth"
    torch.save({"cls_token": torch.zeros(1, 1, 7), "blocks.0.norm1.weight": torch.zeros(7)}, wrong)
    with pytest.raises(
        ConfigError, match=rf"model.weights={wrong} does not load into model.name='vit_tiny_patch16_224'"
    ):
        create_backbone("vit_tiny_patch16_224", weights=str(wrong), img_size=32)


def test_weights_file_that_runs_code_is_refused(malicious_checkpoint):
    from vitcls.models.backbone import create_backbone

    path, marker = malicious_checkpoint
    with pytest.raises(UnsafeCheckpointError, match="model.weights: refused to load .* io.open"):
        create_backbone("vit_tiny_patch16_224", weights=str(path), img_size=32)
    assert not marker.exists()
