"""Resume: a run stopped (SIGKILL, SIGTERM, Ctrl+C, a SLURM requeue) and resumed ends exactly like an
uninterrupted run, with the default data settings (DataLoader worker processes) and with random augmentation.

The signals are real, sent by the training process to itself at a chosen step (`fault_injection.SignalAt`), so
each test stops at the same place every time.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAST_OVERRIDES, REPO_ROOT, make_image_folder

from vitcls.errors import ConfigError
from vitcls.run.plan import resolve_ckpt_path

EPOCHS = 3
STEPS_PER_EPOCH = 6  # 30 training images, 6 held out for validation, batches of 4
TESTS_DIR = Path(__file__).resolve().parent
# The defaults of conf/data/folder.yaml: worker processes (as many as the CPUs allow), persistent.
DEFAULT_DATA = ["data.num_workers=null"]
AUGMENTED = [*DEFAULT_DATA, "data.train_augment={hflip:0.5,scale:[0.5,1.0]}"]
SETTINGS = {"default data settings": DEFAULT_DATA, "with augmentation": AUGMENTED}
# Validation in three batches, so that a run can stop in the middle of it. The reference of such a run evaluates
# in the same batches: a loss averaged over other batches may differ in its last bit.
SMALL_EVAL_BATCHES = [*DEFAULT_DATA, "data.eval_batch_size=2"]
REFERENCE_SETTINGS = {**SETTINGS, "small eval batches": SMALL_EVAL_BATCHES}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume") / "images"
    for index, split in enumerate(("train", "test")):
        make_image_folder(root, {"a": 10, "b": 10, "c": 10}, split, seed=5 + index)
    return root


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


def signal_at(name: str, step: int, marker: Path, key: str = "stop", **options) -> list[str]:
    """Overrides adding a callback that sends signal `name` to the training process at `step`, once."""
    return [
        f"+callbacks.{key}._target_=fault_injection.SignalAt",
        f"+callbacks.{key}.signal_name={name}",
        f"+callbacks.{key}.step={step}",
        f"+callbacks.{key}.marker={marker}",
        *(f"+callbacks.{key}.{option}={value}" for option, value in options.items()),
    ]


def run(command, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
        env={**os.environ, "PYTHONPATH": str(TESTS_DIR), **(env or {})},
    )


def run_to_end(command, env=None) -> subprocess.CompletedProcess:
    result = run(command, env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


_references: dict[str, Path] = {}


@pytest.fixture(scope="module")
def reference(folder, tmp_path_factory):
    """The uninterrupted run of a setting, trained once per module."""

    def trained(setting: str) -> Path:
        if setting not in _references:
            run_dir = tmp_path_factory.mktemp("reference") / "run"
            run_to_end(train_command(folder, run_dir, *REFERENCE_SETTINGS[setting]))
            _references[setting] = run_dir
        return _references[setting]

    return trained


def read_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def epoch_rows(rows: list[dict], column: str) -> dict[int, dict]:
    """The last row of each epoch that has `column` (the epoch-level values)."""
    return {int(row["epoch"]): row for row in rows if row.get(column)}


def assert_same_run(reference_dir: Path, resumed_dir: Path) -> None:
    """Same test metrics, steps, final weights, optimizer moments and per-epoch metrics, bit for bit."""
    reference = json.loads((reference_dir / "summary.json").read_text())
    resumed = json.loads((resumed_dir / "summary.json").read_text())
    assert resumed["test"] == reference["test"]
    assert resumed["best_epoch"] == reference["best_epoch"]
    assert (resumed["epochs_trained"], resumed["global_steps"]) == (
        reference["epochs_trained"], reference["global_steps"]
    )
    final = [torch.load(d / "checkpoints/last.ckpt", weights_only=True) for d in (reference_dir, resumed_dir)]
    assert final[0]["epoch"] == EPOCHS - 1
    for key, value in final[0]["state_dict"].items():
        assert torch.equal(value, final[1]["state_dict"][key]), key
    moments = [c["optimizer_states"][0]["state"] for c in final]
    for index, state in moments[0].items():
        assert torch.equal(state["exp_avg"], moments[1][index]["exp_avg"]), index
    rows = [read_rows(reference_dir), read_rows(resumed_dir)]
    for column in ("val/f1_macro", "train/loss_epoch"):
        expected, got = (epoch_rows(r, column) for r in rows)
        assert sorted(got) == list(range(EPOCHS)), column
        for epoch, row in expected.items():
            for name, value in row.items():
                if name.startswith(column.split("/")[0] + "/") and value:
                    assert got[epoch][name] == value, (epoch, name)


def assert_started_from(run_dir: Path, rows_before: int, checkpoint: str, first_step: int) -> None:
    """The resumed process continued from `checkpoint`: it appended rows from `first_step` on, and the run
    has one validation row per epoch (a fresh start would have added another one for epoch 0)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from"] == str(run_dir / checkpoint)
    rows = read_rows(run_dir)
    appended = [row for row in rows[rows_before:] if row.get("step")]
    assert min(int(row["step"]) for row in appended) == first_step
    assert min(int(row["epoch"]) for row in appended if row.get("epoch")) == first_step // STEPS_PER_EPOCH
    assert sorted(int(row["epoch"]) for row in rows if row.get("val/f1_macro")) == list(range(EPOCHS))


@pytest.mark.slow
@pytest.mark.parametrize("setting", SETTINGS)
def test_killed_after_its_first_checkpoint_and_resumed_ends_bitwise_like_an_uninterrupted_run(
    setting, folder, reference, tmp_path
):
    run_dir, marker = tmp_path / "run", tmp_path / "killed"
    stop = signal_at("SIGKILL", STEPS_PER_EPOCH + 2, marker)
    killed = run(train_command(folder, run_dir, *SETTINGS[setting], *stop))
    assert killed.returncode == -signal.SIGKILL and marker.is_file()
    assert torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)["epoch"] == 0
    assert not (run_dir / "summary.json").exists()
    rows_before = len(read_rows(run_dir))

    run_to_end(train_command(folder, run_dir, *SETTINGS[setting], *stop, "ckpt_path=last"))
    assert_started_from(run_dir, rows_before, "checkpoints/last.ckpt", first_step=STEPS_PER_EPOCH)
    assert_same_run(reference(setting), run_dir)


@pytest.mark.slow
def test_sigterm_in_the_middle_of_an_epoch_saves_where_it_stopped_and_the_resume_is_exact(
    folder, reference, tmp_path
):
    run_dir, marker = tmp_path / "run", tmp_path / "terminated"
    stop = signal_at("SIGTERM", STEPS_PER_EPOCH + 3, marker)
    stopped = run(train_command(folder, run_dir, *AUGMENTED, *stop))
    output = stopped.stdout + stopped.stderr
    assert stopped.returncode == 128 + signal.SIGTERM  # preempted, not finished: the scheduler can tell
    assert "ckpt_path=last" in output and "weights_only` was not set" not in output
    interrupted = torch.load(run_dir / "checkpoints/interrupted.ckpt", weights_only=True)
    assert interrupted["global_step"] == STEPS_PER_EPOCH + 3
    assert interrupted["ImageFolderDataModule"]["train_position"]["batches_done"] == 3
    assert resolve_ckpt_path("last", run_dir) == str(run_dir / "checkpoints/interrupted.ckpt")
    rows_before = len(read_rows(run_dir))

    resumed = run_to_end(train_command(folder, run_dir, *AUGMENTED, *stop, "ckpt_path=last"))
    assert "not resumable" not in resumed.stdout + resumed.stderr
    assert_started_from(run_dir, rows_before, "checkpoints/interrupted.ckpt", first_step=STEPS_PER_EPOCH + 3)
    assert_same_run(reference("with augmentation"), run_dir)
    assert not (run_dir / "checkpoints/interrupted.ckpt").exists()  # removed when the run completed


@pytest.mark.slow
def test_ctrl_c_stops_after_the_batch_with_status_130_and_a_resume_hint(folder, reference, tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "interrupted"
    stop = signal_at("SIGINT", STEPS_PER_EPOCH + 4, marker)
    stopped = run(train_command(folder, run_dir, *DEFAULT_DATA, *stop))
    output = stopped.stdout + stopped.stderr
    assert stopped.returncode == 128 + signal.SIGINT
    assert f"stopped by Ctrl+C; resume with: python train.py <the same overrides> hydra.run.dir={run_dir} " \
           "ckpt_path=last" in output
    assert "weights_only` was not set" not in output
    assert torch.load(run_dir / "checkpoints/interrupted.ckpt", weights_only=True)["global_step"] == (
        STEPS_PER_EPOCH + 4
    )
    run_to_end(train_command(folder, run_dir, *DEFAULT_DATA, *stop, "ckpt_path=last"))
    assert_same_run(reference("default data settings"), run_dir)


@pytest.mark.slow
def test_stopped_during_validation_it_resumes_from_last_ckpt_and_validates_that_epoch(folder, reference, tmp_path):
    """Lightning would resume a checkpoint taken mid-validation past the rest of it: the last epoch would have
    no validation and the run no best checkpoint. So none is saved there; last.ckpt repeats the epoch."""
    run_dir, marker = tmp_path / "run", tmp_path / "terminated"
    stop = signal_at("SIGTERM", EPOCHS * STEPS_PER_EPOCH, marker, in_validation="true")
    stopped = run(train_command(folder, run_dir, *SMALL_EVAL_BATCHES, *stop))
    assert stopped.returncode == 128 + signal.SIGTERM and "validation batch 0" in marker.read_text()
    assert not (run_dir / "checkpoints/interrupted.ckpt").exists()

    run_to_end(train_command(folder, run_dir, *SMALL_EVAL_BATCHES, *stop, "ckpt_path=last"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_ckpt"] is not None
    assert_same_run(reference("small eval batches"), run_dir)


@pytest.mark.slow
def test_a_requeued_slurm_job_resumes_from_its_hpc_checkpoint_without_extra_arguments(folder, reference, tmp_path):
    """SLURM faked by its environment variables and an `scontrol` that records the requeue; Lightning's SLURM
    environment saves hpc_ckpt_1.ckpt on SIGUSR1 and requeues, then the job is killed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol_calls"
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {
        "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "vitcls", "SLURM_NTASKS": "1", "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    run_dir = tmp_path / "run"
    step = STEPS_PER_EPOCH + 2
    signals = [
        *signal_at("SIGUSR1", step, tmp_path / "usr1", key="requeue"),
        *signal_at("SIGKILL", step, tmp_path / "kill", key="preempt"),
    ]
    command = train_command(folder, run_dir, *AUGMENTED, *signals)
    assert run(command, env=slurm).returncode == -signal.SIGKILL
    assert calls.read_text().split() == ["requeue", "4242"]
    assert (run_dir / "hpc_ckpt_1.ckpt").is_file() and (run_dir / "config.yaml").is_file()
    rows_before = len(read_rows(run_dir))

    result = run_to_end(command, env={**slurm, "SLURM_RESTART_COUNT": "1"})  # the same command, as SLURM reruns it
    assert "requeued SLURM job: resumes from hpc_ckpt_1.ckpt" in result.stdout + result.stderr
    assert_started_from(run_dir, rows_before, "hpc_ckpt_1.ckpt", first_step=step)
    assert_same_run(reference("with augmentation"), run_dir)


def test_ckpt_path_last_without_a_checkpoint_says_how_to_resume(tmp_path):
    with pytest.raises(ConfigError, match=r"hydra.run.dir=<old run dir> ckpt_path=last"):
        resolve_ckpt_path("last", tmp_path)
    with pytest.raises(ConfigError, match="checkpoint not found"):
        resolve_ckpt_path(str(tmp_path / "missing.ckpt"), tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert resolve_ckpt_path("last", tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")
