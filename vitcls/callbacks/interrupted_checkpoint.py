"""Saving `checkpoints/interrupted.ckpt` when a run is stopped (SIGTERM, Ctrl+C) or fails."""

from __future__ import annotations

import logging
import os

import lightning as L
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class InterruptedCheckpoint(Checkpoint):
    """Lightning's OnExceptionCheckpoint, with three differences.

    - Not a subclass of it: with one of those in the trainer, Lightning turns `fit(ckpt_path=None)` into
      `ckpt_path="last"`, so a fresh run in a directory that holds a last.ckpt (overwrite=true) would
      silently resume it, and every fresh run warns about it. Resuming is vitcls's decision (`ckpt_path`).
    - No save after an error on one process of a multi-process run: saving ends in a barrier that the other
      ranks, waiting in the step's gradient all-reduce, never reach, so the job would hang until the
      process-group timeout (30 minutes) instead of failing. That run resumes from last.ckpt. SIGTERM and
      Ctrl+C reach every rank, and the ranks stop together and save as usual.
    - No save when stopped during the validation of an epoch: Lightning resumes such a checkpoint past the
      rest of that validation, so the epoch would have no validation (and a run stopped in its last one, no
      best checkpoint). That run resumes from last.ckpt and trains the epoch again, exactly as before.

    The file is removed when the run completes.
    """

    FILE_EXTENSION = ".ckpt"

    def __init__(self, dirpath: str | os.PathLike, filename: str = "interrupted") -> None:
        super().__init__()
        self.dirpath = dirpath
        self.filename = filename

    @property
    def ckpt_path(self) -> str:
        return os.path.join(self.dirpath, self.filename + self.FILE_EXTENSION)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        every_rank_stops = isinstance(exception, (KeyboardInterrupt, SIGTERMException))
        if trainer.world_size > 1 and not every_rank_stops:
            log.warning(
                "not saving %s after an error on one of %d processes: the others may be waiting in a collective; "
                "resume from last.ckpt", self.ckpt_path, trainer.world_size
            )
            return
        # A full checkpoint (optimizer, loops, callbacks) to resume from; weights_only here is about what is saved.
        if trainer.validating:
            log.warning("stopped during validation: not saving %s; resume from last.ckpt", self.ckpt_path)
            return
        trainer.save_checkpoint(self.ckpt_path, weights_only=False)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        trainer.strategy.remove_checkpoint(self.ckpt_path)
