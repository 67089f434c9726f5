"""What to do in a run directory that may hold a run: start, resume (from which checkpoint), skip, or refuse."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from vitcls.errors import ConfigError
from vitcls.run.layout import (
    CHECKPOINT_DIR,
    FAILURE_FILE,
    HPC_CHECKPOINTS,
    PREVIOUS_ATTEMPTS_DIR,
    RESUME_CANDIDATES,
    RUN_OUTPUTS,
    SUMMARY_FILE,
    newest_resume_checkpoint,
)


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


