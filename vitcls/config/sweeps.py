"""A multirun's names and places: the group name of its jobs (trackers show them side by side under it), and where a
job's directory is: its number, or, when the sweep is resumed, the directory of the earlier job with the same
overrides (`.hydra/overrides.yaml`), whatever its number was."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
GROUP_MAX_CHARS = 128  # W&B's limit on a group name
# Settings that say how to run a job, not which job it is: a resumed sweep adds resume=true to every job.
RUN_CONTROL_SETTINGS = ("resume", "resume_failed", "ckpt_path", "overwrite", "continue_on_failure")


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


def sweep_label(task_name: str, choices: dict[str, Any]) -> str:
    """What a sweep runs: its `sweep=` config, else its `suite=` or `experiment=`, else the task name."""
    return str(choices.get("sweep") or choices.get("suite") or choices.get("experiment") or task_name)


def sweep_group_name(label: str, sweep_dir: str | Path) -> str:
    """`heads_2026-01-01_12-00-00`: the sweep's label and its directory name (the sweep's date by default)."""
    name = Path(sweep_dir).name
    group = name if name.startswith(label) else f"{label}_{name}"
    return group[:GROUP_MAX_CHARS]
