"""EMA of the weights: Lightning's EMAWeightAveraging, with checkpoints that test on the EMA weights."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn


class EMAWeights(EMAWeightAveraging):
    """Checkpoints hold the EMA weights in `state_dict` and the raw ones in `current_model_state`.

    Lightning's callback puts the raw weights back into the module whenever a checkpoint is loaded while it
    is alive, which is right for resuming a fit but would make `trainer.test(ckpt_path=best)` after a fit
    score the raw weights: outside fitting the module keeps the loaded `state_dict`, the EMA weights.
    Likewise Lightning's callback swaps its (latest) average in for every validation epoch; outside fitting,
    `trainer.validate(ckpt_path=best)` must score the checkpoint it loaded, so no swap there.
    """

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_validation_epoch_end(trainer, pl_module)
