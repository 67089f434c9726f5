"""Stopping (or skipping) a training step whose loss is NaN or infinite, instead of training on garbage."""

from __future__ import annotations

import logging
import os

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from vitcls.errors import ConfigError, VitclsError

log = logging.getLogger(__name__)

ACTIONS = ("error", "skip")


class NonFiniteLossError(VitclsError, FloatingPointError):
    """The training loss became NaN or infinite (guard action `error`)."""


def last_good_checkpoint(trainer: L.Trainer) -> str | None:
    """The newest checkpoint any ModelCheckpoint wrote (last.ckpt and the best one come from different ones)."""
    paths = {
        path
        for callback in trainer.checkpoint_callbacks
        for path in (getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", ""))
        if path and os.path.isfile(path)
    }
    return max(paths, key=os.path.getmtime, default=None)


class NonFiniteLossGuard(Callback):
    """`action="error"`: stop at the first non-finite loss, naming the step and the last checkpoint.
    `action="skip"`: drop that batch's update (no optimizer step) and go on; `skipped_steps` counts them.

    The decision to skip is taken on every rank together, so DDP replicas stay identical.
    """

    def __init__(self, action: str = "error"):
        if action not in ACTIONS:
            raise ConfigError(
                f"callbacks.nonfinite_loss.action must be one of {list(ACTIONS)}, got {action!r}"
            )
        self.action = action
        self.skipped_steps: list[int] = []
        self._bad_loss = False

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        if torch.isfinite(loss).all():
            return
        where = f"step {trainer.global_step} (epoch {trainer.current_epoch}, batch {trainer.fit_loop.epoch_loop.batch_idx})"
        if self.action == "error":
            checkpoint = last_good_checkpoint(trainer)
            raise NonFiniteLossError(
                f"the training loss is {loss.item()} at {where}. Last good checkpoint: "
                f"{checkpoint or 'none saved yet'}. Lower optim.lr, check the data, or resume from that "
                "checkpoint with ckpt_path=...; callbacks.nonfinite_loss.action=skip skips such batches."
            )
        self._bad_loss = True
        log.warning("training loss is %s at %s: skipping this update", loss.item(), where)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if self.action != "skip":
            return
        skip = trainer.strategy.reduce_boolean_decision(self._bad_loss, all=False)
        self._bad_loss = False
        if skip:
            # AdamW & co. leave parameters without a gradient untouched.
            for group in optimizer.param_groups:
                for param in group["params"]:
                    param.grad = None
            self.skipped_steps.append(trainer.global_step)
