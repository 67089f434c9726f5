"""The run directory: what a run writes where, refusing to write over another run, finding checkpoints.

    <run_dir>/config.yaml            the resolved config (`.hydra/` keeps the composed one and the overrides)
    <run_dir>/summary.json           written last: a run with one has finished
    <run_dir>/FAILED.json            a run that stopped with an error (for vitcls-compare and sweeps)
    <run_dir>/metrics.csv            per-epoch metrics (CSV logger)
    <run_dir>/val_predictions.csv    per-image predictions of the tested checkpoint (vitcls.predictions)
    <run_dir>/test_predictions.csv
    <run_dir>/checkpoints/           epoch_NNN.ckpt (best), last.ckpt, interrupted.ckpt
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vitcls.errors import ConfigError
from vitcls.io import write_json_atomic

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


def check_run_dir(output_dir: Path, resuming: bool, overwrite: bool) -> None:
    """Refuse to write a new run over a finished or started one, unless resuming or asked to."""
    if resuming or overwrite:
        return
    used = [name for name in RUN_OUTPUTS if (output_dir / name).exists()]
    if used:
        raise ConfigError(
            f"the run directory {output_dir} already holds a run ({', '.join(used)}). Choose another "
            "hydra.run.dir, resume it with ckpt_path=<its checkpoint>, or pass overwrite=true to replace it."
        )


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """`last` -> the newer of <output_dir>/checkpoints/{last,interrupted}.ckpt; a path must exist."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        directory = output_dir / CHECKPOINT_DIR
        found = [directory / name for name in RESUME_CANDIDATES if (directory / name).is_file()]
        if not found:
            raise ConfigError(
                f"ckpt_path=last: no {' or '.join(RESUME_CANDIDATES)} in {directory}. To resume a run, run in its "
                "directory: python train.py <same overrides> hydra.run.dir=<old run dir> ckpt_path=last"
            )
        return str(max(found, key=lambda path: path.stat().st_mtime))
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError(f"ckpt_path: checkpoint not found: {path.resolve()}")
    return str(path)


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
