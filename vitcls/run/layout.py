"""The run directory: what a run writes where.

    <run_dir>/config.yaml            the resolved config (`.hydra/` keeps the composed one and the overrides)
    <run_dir>/summary.json           written last: a run with one has finished
    <run_dir>/FAILED.json            a run that stopped with an error (for vitcls-compare and sweeps)
    <run_dir>/metrics.csv            per-epoch metrics (CSV logger)
    <run_dir>/val_predictions.csv    per-image predictions of the tested weights (vitcls.reporting.predictions_csv)
    <run_dir>/test_predictions.csv
    <run_dir>/test_confusion_matrix.png/.csv
    <run_dir>/checkpoints/           epoch_NNN.ckpt (best), last.ckpt, interrupted.ckpt; selected.ckpt (several heads)
    <run_dir>/hpc_ckpt_N.ckpt        written by Lightning when SLURM signals a requeue
    <run_dir>/previous_attempts/N/   what an earlier attempt left, when the run started again from scratch
  several heads (a head bank) also:
    <run_dir>/bank.json, bank.csv, bank.png   every head: settings, the overrides that train it alone, best epoch,
                                              val and test metrics; the one selected on validation
    <run_dir>/heads/<NN>/            per head: val/test predictions, test confusion matrix, head.safetensors
  with probes (k-NN, logistic regression on the cached features):
    <run_dir>/probes/<name>/         val/test predictions, probe.json (the chosen hyperparameter, every candidate)
    (a bank lists them in bank.json beside the heads; a lone run in probes.json)
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vitcls.io import write_json_atomic
from vitcls.untrusted import saved_during_validation

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
FAILURE_FILE = "FAILED.json"
METRICS_FILE = "metrics.csv"
PREDICTIONS_FILES = {"val": "val_predictions.csv", "test": "test_predictions.csv"}
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
INTERRUPTED_CHECKPOINT = "interrupted.ckpt"
# Files only a started run writes: Hydra's own .hydra/ and log file do not count.
RUN_OUTPUTS = (CONFIG_FILE, SUMMARY_FILE, METRICS_FILE, CHECKPOINT_DIR)
# Written by a ModelCheckpoint after every validation, and when a run is interrupted (SIGTERM, Ctrl+C).
RESUME_CANDIDATES = (LAST_CHECKPOINT, INTERRUPTED_CHECKPOINT)
# Lightning's SLURM requeue checkpoints, in the run directory itself (the trainer's default_root_dir).
HPC_CHECKPOINTS = "hpc_ckpt_*.ckpt"
PREVIOUS_ATTEMPTS_DIR = "previous_attempts"
SELECTED_CHECKPOINT = "selected.ckpt"
BANK_FILE = "bank.json"
BANK_CSV = "bank.csv"
BANK_FIGURE = "bank.png"
HEADS_DIR = "heads"
HEAD_WEIGHTS = "head.safetensors"
PROBES_DIR = "probes"
PROBE_FILE = "probe.json"
PROBES_TABLE = "probes.json"


def head_dir_name(index: int, count: int) -> str:
    return f"{index:0{len(str(max(count - 1, 1)))}d}"


def resume_checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoints a run can resume from: last.ckpt, interrupted.ckpt and SLURM's hpc_ckpt_N.ckpt."""
    directory = run_dir / CHECKPOINT_DIR
    found = [directory / name for name in RESUME_CANDIDATES if (directory / name).is_file()]
    return found + sorted(run_dir.glob(HPC_CHECKPOINTS))


def newest_resume_checkpoint(run_dir: Path) -> Path | None:
    """The newest resume checkpoint, passing over any taken part-way through a validation."""
    found = sorted(resume_checkpoints(run_dir), key=lambda path: path.stat().st_mtime, reverse=True)
    return next((path for path in found if not saved_during_validation(path)), None)


def run_dir_of_checkpoint(checkpoint: Path) -> Path:
    """<run_dir>/checkpoints/x.ckpt -> <run_dir>."""
    return checkpoint.resolve().parent.parent


def record_failure(run_dir: Path, error: BaseException, overrides: Sequence[str]) -> Path:
    """<run_dir>/FAILED.json: what went wrong, for `vitcls-compare` and for whoever reads the sweep."""
    return write_json_atomic(
        run_dir / FAILURE_FILE,
        {
            "error_type": type(error).__name__,
            "message": str(error),
            "overrides": list(overrides),
            "traceback": traceback.format_exception(type(error), error, error.__traceback__),
        },
    )


def clear_failure(run_dir: Path) -> None:
    """An earlier failed attempt in this run directory has been redone successfully."""
    (run_dir / FAILURE_FILE).unlink(missing_ok=True)


def summary_paths(run_dir: Path) -> dict[str, Any]:
    """The `paths` entry of summary.json for the files every run writes."""
    paths = {"run_dir": str(run_dir), "config": str(run_dir / CONFIG_FILE)}
    if (run_dir / METRICS_FILE).exists():
        paths["metrics_csv"] = str(run_dir / METRICS_FILE)
    return paths
