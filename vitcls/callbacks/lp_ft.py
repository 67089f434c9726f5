"""Linear probing, then fine-tuning (LP-FT, Kumar et al. 2022): a frozen backbone for the first epochs.

The optimizer is built once, over everything `model.train_blocks`/`model.bitfit` lets train. During the
probe epochs the backbone's parameters stop requiring gradients, so they get none and the optimizer skips
them (no update, no weight decay, no moment state); at the first fine-tuning epoch they require gradients
again. An adapter's parameters are frozen and unfrozen with the backbone. The lr schedule runs
over the whole fit. Stateless apart from the epoch counter, so a resumed run lands in the right stage.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.strategies import DDPStrategy

from vitcls.errors import ConfigError


class LinearProbeThenFineTune(L.Callback):
    def __init__(self, probe_epochs: int = 1):
        if probe_epochs < 1:
            raise ConfigError(f"callbacks.lp_ft.probe_epochs must be at least 1, got {probe_epochs}")
        self.probe_epochs = probe_epochs
        self._trainable: dict[str, bool] = {}
        self._frozen_parts: list = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        strategy = trainer.strategy
        if isinstance(strategy, DDPStrategy) and not strategy._ddp_kwargs.get("find_unused_parameters"):
            raise ConfigError(
                "callbacks.lp_ft under DDP: the frozen backbone gets no gradients during the probe epochs; "
                "set trainer.strategy=ddp_find_unused_parameters_true"
            )
        self._trainable = {name: p.requires_grad for name, p in pl_module.net.feature_parameters()}
        self._frozen_parts = list(pl_module.frozen_backbone_parts)
        if not any(self._trainable.values()):
            raise ConfigError(
                "callbacks.lp_ft needs a backbone or an adapter that trains: model.train_blocks=none freezes "
                "the backbone and adapter=none adds nothing"
            )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        probing = trainer.current_epoch < self.probe_epochs
        for name, parameter in pl_module.net.feature_parameters():
            parameter.requires_grad_(self._trainable[name] and not probing)
        pl_module.frozen_backbone_parts = [pl_module.net.backbone] if probing else list(self._frozen_parts)
        pl_module.train()  # re-applies eval mode to the parts that are frozen now

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for name, parameter in pl_module.net.feature_parameters():
            parameter.requires_grad_(self._trainable[name])
        pl_module.frozen_backbone_parts = list(self._frozen_parts)
