"""Faults injected through the config (`loss._target_=fault_injection.NonFiniteLoss`), not by editing vitcls."""

from __future__ import annotations

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
