"""The run directory: what a run writes where, what to do in a directory that holds a run, finding checkpoints.

    <run_dir>/config.yaml            the resolved config (`.hydra/` keeps the composed one and the overrides)
    <run_dir>/summary.json           written last: a run with one has finished
    <run_dir>/FAILED.json            a run that stopped with an error (for vitcls-compare and sweeps)
    <run_dir>/metrics.csv            per-epoch metrics (CSV logger)
    <run_dir>/val_predictions.csv    per-image predictions of the tested checkpoint (vitcls.predictions)
    <run_dir>/test_predictions.csv
    <run_dir>/checkpoints/           epoch_NNN.ckpt (best), last.ckpt, interrupted.ckpt
    <run_dir>/hpc_ckpt_N.ckpt        written by Lightning when SLURM signals a requeue
    <run_dir>/previous_attempts/N/   what an earlier attempt left, when the run started again from scratch
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from vitcls.checkpoints import saved_during_validation
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
# Lightning's SLURM requeue checkpoints, in the run directory itself (the trainer's default_root_dir).
HPC_CHECKPOINTS = "hpc_ckpt_*.ckpt"
PREVIOUS_ATTEMPTS_DIR = "previous_attempts"
OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
# Settings that say how to run a job, not which job it is: a resumed sweep adds resume=true to every job.
RUN_CONTROL_SETTINGS = ("resume", "resume_failed", "ckpt_path", "overwrite", "continue_on_failure")


class JobSkipped(Exception):  # noqa: N818 (not an error: the job has nothing to do)
    """A resumed job that is left as it is (a failed job with resume_failed=false)."""


class RunDirInUse(ConfigError):
    """The run directory holds another run; nothing of this run was written into it."""


def check_run_dir(output_dir: Path, resuming: bool, overwrite: bool, in_multirun: bool = False) -> None:
    """Refuse to write a new run over a finished or started one, unless resuming or asked to."""
    if resuming or overwrite:
        return
    used = [name for name in RUN_OUTPUTS if (output_dir / name).exists()]
    if not used:
        return
    if in_multirun:
        raise RunDirInUse(
            f"the job directory {output_dir} already holds a run ({', '.join(used)}). To go on with that sweep, "
            "run it again with resume=true (finished jobs are skipped, interrupted ones resume, failed and "
            "missing ones run); or choose another hydra.sweep.dir, or pass overwrite=true to run every job anew."
        )
    raise RunDirInUse(
        f"the run directory {output_dir} already holds a run ({', '.join(used)}). Choose another "
        "hydra.run.dir, resume it with ckpt_path=last (or resume=true, which also leaves a finished run as it "
        "is), or pass overwrite=true to replace it."
    )


def resume_checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoints a run can resume from: last.ckpt, interrupted.ckpt and SLURM's hpc_ckpt_N.ckpt."""
    directory = run_dir / CHECKPOINT_DIR
    found = [directory / name for name in RESUME_CANDIDATES if (directory / name).is_file()]
    return found + sorted(run_dir.glob(HPC_CHECKPOINTS))


def newest_resume_checkpoint(run_dir: Path) -> Path | None:
    """The newest resume checkpoint, passing over any taken part-way through a validation."""
    found = sorted(resume_checkpoints(run_dir), key=lambda path: path.stat().st_mtime, reverse=True)
    return next((path for path in found if not saved_during_validation(path)), None)


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """`last` -> the newest of last.ckpt, interrupted.ckpt and hpc_ckpt_N.ckpt of output_dir; a path must exist."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        newest = newest_resume_checkpoint(output_dir)
        if newest is None:
            raise ConfigError(
                f"ckpt_path=last: no {' or '.join(RESUME_CANDIDATES)} in {output_dir / CHECKPOINT_DIR} (nor "
                f"{HPC_CHECKPOINTS} in {output_dir}). To resume a run, run in its directory: python train.py "
                "<same overrides> hydra.run.dir=<old run dir> ckpt_path=last"
            )
        return str(newest)
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError(f"ckpt_path: checkpoint not found: {path.resolve()}")
    return str(path)


def slurm_requeued(run_dir: Path) -> bool:
    """A SLURM job started again in its run directory: SLURM counts the restart, or Lightning saved there
    for a requeue."""
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
    return (restarts.isdigit() and int(restarts) > 0) or any(run_dir.glob(HPC_CHECKPOINTS))


@dataclass(frozen=True)
class RunPlan:
    """What a run does in its directory: `start` (from scratch), `resume` (from `ckpt_path`) or `skip`."""

    action: str
    ckpt_path: str | None = None
    reason: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RunPlan:
        return cls(**json.loads(text))


def plan_run(
    output_dir: Path,
    ckpt_path: str | None = None,
    *,
    resume: bool = False,
    resume_failed: bool = True,
    overwrite: bool = False,
    in_multirun: bool = False,
) -> RunPlan:
    """Decide from the directory's contents alone, so that every rank of a DDP run decides the same.

    `resume` (and `ckpt_path=last` in a multirun, and a requeued SLURM job): a finished run (summary.json) is
    skipped; a failed one (FAILED.json) starts again, or is skipped with `resume_failed=false`; one with a
    checkpoint resumes from the newest; any other starts. Otherwise `ckpt_path` resumes from a checkpoint, and a
    directory that holds a run is refused unless `overwrite`.
    """
    if ckpt_path and ckpt_path != "last":
        return RunPlan("resume", resolve_ckpt_path(ckpt_path, output_dir), "ckpt_path")
    requeued = slurm_requeued(output_dir)
    if ckpt_path == "last" and not (resume or in_multirun or requeued):
        return RunPlan("resume", resolve_ckpt_path(ckpt_path, output_dir), "ckpt_path=last")
    if resume or requeued or ckpt_path == "last":
        why = "requeued SLURM job" if requeued and not resume else "resume=true"
        if (output_dir / SUMMARY_FILE).is_file():
            return RunPlan("skip", reason=f"finished ({SUMMARY_FILE}); left as it is")
        if (output_dir / FAILURE_FILE).is_file():
            if not resume_failed:
                return RunPlan("skip", reason=f"failed earlier ({FAILURE_FILE}); kept as it is (resume_failed=false)")
            return RunPlan("start", reason=f"failed earlier ({FAILURE_FILE}): runs again from the start")
        newest = newest_resume_checkpoint(output_dir)
        if newest is not None:
            return RunPlan("resume", str(newest), f"{why}: resumes from {newest.name}")
        return RunPlan("start", reason=f"{why}: no checkpoint yet, starts")
    check_run_dir(output_dir, resuming=False, overwrite=overwrite, in_multirun=in_multirun)
    return RunPlan("start")


def set_aside_previous_attempt(run_dir: Path) -> Path | None:
    """Move what an earlier attempt left (summary, failure, metrics, checkpoints) to previous_attempts/N/, so
    that a run starting again from scratch neither appends to nor is mistaken for it. Nothing is deleted."""
    leftovers = [run_dir / name for name in (*RUN_OUTPUTS, FAILURE_FILE) if (run_dir / name).exists()]
    leftovers += sorted(run_dir.glob(HPC_CHECKPOINTS))
    if not leftovers:
        return None
    attempts = run_dir / PREVIOUS_ATTEMPTS_DIR
    number = 1 + max((int(p.name) for p in attempts.glob("*") if p.name.isdigit()), default=0)
    target = attempts / str(number)
    target.mkdir(parents=True)
    for path in leftovers:
        shutil.move(str(path), str(target / path.name))
    return target


def resume_hint(run_dir: Path, sweep_dir: Path | None = None) -> str:
    """How to go on with an interrupted run (or, inside a multirun, the sweep)."""
    if sweep_dir is not None:
        return (f"go on with the sweep: python train.py -m <the same overrides> hydra.sweep.dir={sweep_dir} "
                "resume=true")
    if newest_resume_checkpoint(run_dir) is None:
        return f"no checkpoint yet; start again with: python train.py <the same overrides> hydra.run.dir={run_dir} " \
               "resume=true"
    return f"resume with: python train.py <the same overrides> hydra.run.dir={run_dir} ckpt_path=last"


def _job_identity(overrides: Sequence[str]) -> list[str]:
    def key(override: str) -> str:
        return override.split("=", 1)[0].lstrip("+~")

    return sorted(o for o in overrides if key(o) not in RUN_CONTROL_SETTINGS)


def sweep_job_subdir(sweep_dir: Path, overrides: Sequence[str], job_num: int, resume: bool) -> str:
    """The directory of a multirun job under sweep_dir: its number, or, when the sweep is resumed, the directory
    of an earlier job with the same overrides (`.hydra/overrides.yaml`), whatever its number was."""
    if resume and sweep_dir.is_dir():
        wanted = _job_identity(overrides)
        for recorded in sorted(sweep_dir.glob(f"*/{OVERRIDES_FILE}")):
            if _job_identity(OmegaConf.to_container(OmegaConf.load(recorded))) == wanted:
                return recorded.parent.parent.name
        name, suffix = str(job_num), 1
        while (sweep_dir / name / OVERRIDES_FILE).exists():  # another job's directory: not to be written into
            name, suffix = f"{job_num}_{suffix}", suffix + 1
        return name
    return str(job_num)


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
