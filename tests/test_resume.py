"""Resume: a training process killed with SIGKILL and resumed ends exactly like an uninterrupted run."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import FAST_OVERRIDES, REPO_ROOT

from vitcls.errors import ConfigError
from vitcls.run_dir import resolve_ckpt_path

EPOCHS = 3


def train_command(root, run_dir, *extra):
    return [
        sys.executable,
        str(REPO_ROOT / "train.py"),
        f"data.root={root}",
        f"hydra.run.dir={run_dir}",
        *FAST_OVERRIDES,
        "data.batch_size=4",
        f"trainer.max_epochs={EPOCHS}",
        "head=mlp",
        "head.dropout=0.3",
        "model.drop_path_rate=0.1",
        "trainer.log_every_n_steps=1",
        *extra,
    ]


def run_to_end(command):
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def checkpoint_epoch(path) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # not written yet, or being written
        return None


def start_and_wait_for_checkpoint(command, checkpoint, epoch) -> subprocess.Popen:
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while (checkpoint_epoch(checkpoint) is None) or checkpoint_epoch(checkpoint) < epoch:
        assert process.poll() is None, "training ended before the checkpoint to interrupt at was written"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return process


@pytest.fixture
def folder(image_folder_factory):
    return image_folder_factory({"a": 10, "b": 10, "c": 10}, splits=("train", "test"), seed=5)


@pytest.mark.slow
def test_run_killed_with_sigkill_and_resumed_ends_bitwise_like_an_uninterrupted_run(folder, tmp_path):
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    run_to_end(train_command(folder, reference_dir))

    process = start_and_wait_for_checkpoint(
        train_command(folder, killed_dir), killed_dir / "checkpoints/last.ckpt", 0
    )
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert not (killed_dir / "summary.json").exists()
    rows_before = (killed_dir / "metrics.csv").read_text().splitlines()

    run_to_end(train_command(folder, killed_dir, "ckpt_path=last"))
    reference = json.loads((reference_dir / "summary.json").read_text())
    resumed = json.loads((killed_dir / "summary.json").read_text())
    assert resumed["resumed_from"] == str(killed_dir / "checkpoints/last.ckpt")
    assert resumed["test"] == reference["test"]
    assert (resumed["epochs_trained"], resumed["global_steps"]) == (
        reference["epochs_trained"],
        reference["global_steps"],
    )
    final = [torch.load(d / "checkpoints/last.ckpt", weights_only=True) for d in (reference_dir, killed_dir)]
    assert final[0]["epoch"] == EPOCHS - 1
    for key, value in final[0]["state_dict"].items():
        assert torch.equal(value, final[1]["state_dict"][key]), key
    moments = [c["optimizer_states"][0]["state"] for c in final]
    for index, state in moments[0].items():
        assert torch.equal(state["exp_avg"], moments[1][index]["exp_avg"]), index

    # the history from before the kill is kept; the resumed epochs are appended
    with open(killed_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) > len(rows_before) - 1
    val_epochs = [int(r["epoch"]) for r in rows if r.get("val/f1_macro")]
    assert val_epochs[0] == 0 and val_epochs[-1] == EPOCHS - 1


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_that_ckpt_path_last_resumes_from(folder, tmp_path):
    run_dir = tmp_path / "run"
    command = train_command(folder, run_dir, "trainer.max_epochs=20")
    process = start_and_wait_for_checkpoint(command, run_dir / "checkpoints/last.ckpt", 0)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 128 + signal.SIGTERM  # preempted, not finished: the scheduler can tell
    interrupted = run_dir / "checkpoints/interrupted.ckpt"
    assert interrupted.is_file()
    state = torch.load(interrupted, weights_only=True)
    assert (
        state["global_step"]
        >= torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)["global_step"]
    )
    assert resolve_ckpt_path("last", run_dir) == str(interrupted)


def test_ckpt_path_last_without_a_checkpoint_says_how_to_resume(tmp_path):
    with pytest.raises(ConfigError, match=r"hydra.run.dir=<old run dir> ckpt_path=last"):
        resolve_ckpt_path("last", tmp_path)
    with pytest.raises(ConfigError, match="checkpoint not found"):
        resolve_ckpt_path(str(tmp_path / "missing.ckpt"), tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert resolve_ckpt_path("last", tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")
