"""LP-FT: the backbone stays fixed (and in eval mode) for the probe epochs, then trains."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import compose_config, tiny_module
from torch.utils.data import DataLoader, TensorDataset

from vitcls.callbacks.lp_ft import LinearProbeThenFineTune
from vitcls.config import instantiate_dict_group
from vitcls.errors import ConfigError
from vitcls.models.lightning_module import ClassifierModule


def tiny_classifier(train_blocks="all") -> ClassifierModule:
    return tiny_module(
        "linear",
        train_blocks=train_blocks,
        backbone={"depth": 2},
        optimizer={"_target_": "vitcls.models.optim.create_optimizer", "lr": 1e-2},
        scheduler=None,
    )


class RecordStages(L.Callback):
    """Backbone/head weights at the end of each epoch, and the backbone's mode during training."""

    def __init__(self):
        self.states, self.backbone_training, self.optimized = [], {}, set()

    def on_fit_start(self, trainer, pl_module):
        self.states.append(self.snapshot(pl_module))
        self.optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.backbone_training.setdefault(trainer.current_epoch, pl_module.net.backbone.training)

    def on_train_epoch_end(self, trainer, pl_module):
        self.states.append(self.snapshot(pl_module))

    @staticmethod
    def snapshot(module):
        return {name: p.detach().clone() for name, p in module.named_parameters()}


def changed(before, after, prefix):
    return any(not torch.equal(before[n], after[n]) for n in before if n.startswith(prefix))


def test_backbone_is_frozen_for_the_probe_epochs_then_trains():
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, 3, 32, 32, generator=generator), torch.arange(16) % 3)
    module, recorder = tiny_classifier(), RecordStages()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[LinearProbeThenFineTune(probe_epochs=2), recorder],
    )
    trainer.fit(module, DataLoader(data, batch_size=8))

    initial, *after_epoch = recorder.states
    # the optimizer holds the backbone from the start, so fine-tuning needs no new param groups
    assert {id(p) for p in module.net.backbone.parameters()} <= recorder.optimized
    for epoch in (0, 1):
        assert not changed(initial, after_epoch[epoch], "net.backbone."), f"backbone moved in probe epoch {epoch}"
        assert changed(initial if epoch == 0 else after_epoch[0], after_epoch[epoch], "net.heads.0.")
        assert recorder.backbone_training[epoch] is False
    assert changed(after_epoch[1], after_epoch[2], "net.backbone.")
    assert recorder.backbone_training[2] is True
    assert all(p.requires_grad for p in module.net.backbone.parameters())


def test_a_frozen_backbone_cannot_be_fine_tuned():
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        callbacks=[LinearProbeThenFineTune(probe_epochs=1)],
    )
    data = TensorDataset(torch.randn(4, 3, 32, 32), torch.arange(4) % 3)
    with pytest.raises(ConfigError, match="train_blocks=none"):
        trainer.fit(tiny_classifier(train_blocks="none"), DataLoader(data, batch_size=4))


def test_lp_ft_composes_with_the_default_callbacks():
    cfg = compose_config(
        "train", ["callbacks=lp_ft", "callbacks.lp_ft.probe_epochs=3", "paths.output_dir=out"]
    )
    callbacks = instantiate_dict_group(cfg.callbacks)
    lp_ft = [c for c in callbacks if isinstance(c, LinearProbeThenFineTune)]
    assert len(lp_ft) == 1 and lp_ft[0].probe_epochs == 3
    assert any(type(c).__name__ == "ModelCheckpoint" for c in callbacks)
