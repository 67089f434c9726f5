"""Resuming a run: which checkpoint `ckpt_path=last` means, and the RNG states that make a resume exact.

Lightning's checkpoint holds the model, optimizer, lr scheduler, epoch and step; the training order is a
function of (data.shuffle_seed, epoch) (see `vitcls.data.datamodule`). What it lacks are the random number
generators (dropout, drop-path, augmentation), which `RestoreRNGStates` adds.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.callbacks import Callback, OnExceptionCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vitcls.errors import ConfigError

log = logging.getLogger(__name__)

# Written by a ModelCheckpoint after every validation, and by InterruptedCheckpoint when a run is
# interrupted (SIGTERM, Ctrl+C, an error): conf/callbacks/default.yaml.
RESUME_CANDIDATES = ("last.ckpt", "interrupted.ckpt")


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """`last` -> the newer of <output_dir>/checkpoints/{last,interrupted}.ckpt; a path must exist."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        directory = output_dir / "checkpoints"
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


def collect_rng_states() -> dict[str, Any]:
    """Lightning's RNG snapshot with numpy's key array as a tensor: loadable with torch.load(weights_only=True)."""
    states = _collect_rng_states()
    name, keys, position, has_gauss, gauss = states["numpy"]
    states["numpy"] = (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss)
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    name, keys, position, has_gauss, gauss = states["numpy"]
    _set_rng_states({**states, "numpy": (name, keys.numpy().astype(np.uint32), position, has_gauss, gauss)})


class RestoreRNGStates(Callback):
    """Store the RNG states (torch, CUDA, numpy, random) in each checkpoint; restore them when training resumes.

    They are restored when training starts (after the sanity check, which also draws random numbers): from
    there on, a resumed run draws the same random numbers as the uninterrupted run did after the checkpoint.
    This relies on the training DataLoader drawing its seeds from its own generator (see
    `vitcls.data.datamodule`): a resumed run creates its first iterator at another point than the
    uninterrupted run.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint["rng_states"] = collect_rng_states()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._pending = checkpoint.get("rng_states")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None


class InterruptedCheckpoint(OnExceptionCheckpoint):
    """Lightning's OnExceptionCheckpoint, minus the one case where saving would hang: an error on one process
    of a multi-process run. Saving ends in a barrier that the other ranks, waiting in the step's gradient
    all-reduce, never reach, so the job would hang until the process-group timeout (30 minutes) instead of
    failing. That run resumes from last.ckpt. SIGTERM and Ctrl+C reach every rank, and the ranks stop
    together and save as usual."""

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        every_rank_stops = isinstance(exception, (KeyboardInterrupt, SIGTERMException))
        if trainer.world_size > 1 and not every_rank_stops:
            log.warning(
                "not saving %s after an error on one of %d processes: the others may be waiting in a collective; "
                "resume from last.ckpt", self.ckpt_path, trainer.world_size
            )
            return
        super().on_exception(trainer, pl_module, exception)
