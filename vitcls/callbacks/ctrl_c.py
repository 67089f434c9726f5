"""Ctrl+C during training stops the run as SIGTERM does: after the current batch, every rank together, with
`checkpoints/interrupted.ckpt` saved at that batch (which a resume continues from exactly).

Lightning's own Ctrl+C handling stops wherever the KeyboardInterrupt lands, in the middle of a step, and
exits with status 1. Here the first Ctrl+C hands over to Lightning's SIGTERM handling; a second one
interrupts at once. `vitcls.cli.hydra_job` then exits with status 130 (128 + SIGINT) and says how to resume.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)

_received = False


def ctrl_c_received() -> bool:
    """Whether a Ctrl+C (SIGINT) stopped training in this process."""
    return _received


class StopOnCtrlC(Callback):
    def __init__(self) -> None:
        self._previous: Any = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        global _received
        _received = False
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous = signal.signal(signal.SIGINT, self._stop_after_this_batch)

    def _stop_after_this_batch(self, signum: int, frame: FrameType | None) -> None:
        global _received
        _received = True
        self._restore()  # a second Ctrl+C interrupts at once
        stop_as_on_sigterm = signal.getsignal(signal.SIGTERM)  # Lightning's, while it trains
        if not callable(stop_as_on_sigterm):
            raise KeyboardInterrupt
        log.warning("Ctrl+C: stopping after this batch and saving checkpoints/interrupted.ckpt (Ctrl+C again: at once)")
        stop_as_on_sigterm(signal.SIGTERM, frame)

    def _restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()
