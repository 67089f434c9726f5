"""Faults injected through the config (`loss._target_=fault_injection.NonFiniteLoss`), not by editing vitcls."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn


class NonFiniteLoss(nn.CrossEntropyLoss):
    """Cross-entropy that turns NaN on the training calls listed in `nan_calls` (0-based; -1: all of them)."""

    def __init__(self, nan_calls: list[int], **kwargs):
        super().__init__(**kwargs)
        self.nan_calls = set(nan_calls)
        self.training_calls = 0

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        loss = super().forward(logits, targets)
        if not self.training:  # validation and test losses stay real
            return loss
        call = self.training_calls
        self.training_calls += 1
        return loss * float("nan") if (call in self.nan_calls or -1 in self.nan_calls) else loss


class FailOnRankZero(Callback):
    """Raises on global rank 0 at training batch `at_batch` of the first epoch; the other ranks go on into the
    gradient all-reduce, where they would wait forever for rank 0."""

    def __init__(self, enabled: bool = True, at_batch: int = 0):
        self.enabled = enabled
        self.at_batch = at_batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.enabled and trainer.global_rank == 0 and batch_idx == self.at_batch:
            raise RuntimeError("injected failure on rank 0")


class SignalAt(Callback):
    """Sends `signal_name` (SIGTERM, SIGINT, SIGKILL) to this process at the end of training step `step` (the
    global step, counted over the whole run), or with `in_validation`, at the end of the first validation
    batch after that step; with `job`, only in that job of a Hydra multirun. Once: `marker` records that it
    was sent, so that the resumed run, composed with the same settings, goes on."""

    def __init__(self, signal_name: str, step: int, marker: str, in_validation: bool = False, job: int | None = None):
        self.signal_name = signal_name
        self.step = step
        self.marker = Path(marker)
        self.in_validation = in_validation
        self.job = job

    def _this_job(self) -> bool:
        from hydra.core.hydra_config import HydraConfig

        return self.job is None or HydraConfig.get().job.num == self.job

    def _send(self, trainer, where: str) -> None:
        if trainer.global_step >= self.step and not self.marker.exists() and self._this_job():
            self.marker.write_text(f"{self.signal_name} at step {trainer.global_step}, {where}\n")
            os.kill(os.getpid(), getattr(signal, self.signal_name))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self.in_validation and trainer.global_step == self.step:
            self._send(trainer, f"training batch {batch_idx}")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx=0) -> None:
        if self.in_validation and not trainer.sanity_checking:
            self._send(trainer, f"validation batch {batch_idx}")


class DrawRandomNumbers(Callback):
    """Draws `count` numbers from the global torch generator when training starts: every random number drawn after
    it (dropout masks) comes from another place in the stream."""

    def __init__(self, count: int = 1):
        self.count = count

    def on_train_start(self, trainer, pl_module) -> None:
        import torch

        torch.rand(self.count)
