"""A multirun says where it writes: the sweep directory when it starts (before its first job has created it),
and when it ends, how to go on with it and how to compare its jobs. A Hydra callback (conf/hydra/default.yaml)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

# Overrides that the follow-up command sets itself, or that Hydra adds for a multirun.
_REPLACED = ("hydra.sweep.dir", "resume", "hydra.mode")


def sweep_dir_of(config: DictConfig) -> Path:
    return Path(config.hydra.sweep.dir).absolute()


def command_words() -> list[str]:
    """How this process was started: `python train.py` (a script path) or `vitcls-train` (a console script)."""
    script = sys.argv[0]
    return ["python", script] if script.endswith(".py") else [Path(script).name]


def resume_command(config: DictConfig, sweep_dir: Path) -> str:
    """The command that goes on with this sweep: the same overrides, its directory, resume=true."""
    given = [*config.hydra.overrides.hydra, *config.hydra.overrides.task]
    kept = [o for o in given if o.split("=", 1)[0].lstrip("+~") not in _REPLACED]
    return shlex.join([*command_words(), "-m", *kept, f"hydra.sweep.dir={sweep_dir}", "resume=true"])


class SweepMessages(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        print(f"sweep directory: {sweep_dir_of(config)}", flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = sweep_dir_of(config)
        lines = [f"sweep finished: {sweep_dir}"]
        if config.get("task_name") == "train":
            lines += [
                f"  go on with it (jobs that stopped or failed): {resume_command(config, sweep_dir)}",
                f"  compare its designs: vitcls-compare {shlex.quote(str(sweep_dir))}",
            ]
        print("\n".join(lines), flush=True)
