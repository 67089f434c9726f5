"""The training system around the network: loss, metrics per split, optimisation, and what trains.

`ClassifierModule` holds an `ImageClassifier` (vitcls.models.classifier) as `net`. Its arguments are plain
data, saved in every checkpoint, so a checkpoint alone rebuilds both:
  net:          an ImageClassifier config (backbone, tap, head, class_names, adapter)
  train_blocks, bitfit: how much of the backbone trains (vitcls.models.trainable); an adapter's parameters
                always train
  compile:      torch.compile the feature tap
  optimizer:    a Hydra node for `vitcls.models.optim.create_optimizer` (called with backbone, head, prompts)
  scheduler:    a Hydra node for `vitcls.models.optim.create_scheduler` (called with optimizer,
                total_steps), or None for a constant lr
  loss:         a Hydra node with `_target_` (default: cross-entropy)
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra.utils
import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric, MetricCollection

from vitcls.checkpoints import load_checkpoint
from vitcls.distributed import gather_in_dataset_order
from vitcls.errors import ConfigError
from vitcls.metrics import classification_metrics, confusion_matrix_metric
from vitcls.models import legacy
from vitcls.models.classifier import ImageClassifier
from vitcls.models.trainable import apply_trainability, count_parameters

SPLITS = ("train", "val", "test")
# The checkpoint entry of the train metrics of an epoch interrupted part-way.
TRAIN_EPOCH_STATE = "train_epoch_metric_states"
EVALUATION_SPLITS = ("val", "test")
PROGRESS_BAR_METRICS = ("val/acc", "val/f1_macro")
# What the batches hold: images, the features a feature cache computed from them (vitcls.data.feature_cache), or
# the tokens entering the first trainable block (vitcls.data.prefix_cache).
INPUT_KINDS = ("images", "features", "tokens")


class ClassifierModule(L.LightningModule):
    def __init__(
        self,
        net: dict[str, Any],
        train_blocks: str | int = "all",
        bitfit: bool = False,
        compile: bool = False,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        loss: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.net = ImageClassifier(**net)
        self.hparams.net = self.net.config  # with the feature tap resolved (`auto` -> cls or tokens)
        self.hparams.optimizer = optimizer or {"_target_": "vitcls.models.optim.create_optimizer", "_partial_": True}
        self.criterion = hydra.utils.instantiate(loss or {"_target_": "torch.nn.CrossEntropyLoss"})
        self.frozen_backbone_parts = apply_trainability(
            self.net.backbone, train_blocks, bitfit, self.net.adapter_parameters()
        )
        # Frozen parts in eval mode from the start: Lightning keeps the modules' modes as it finds them at fit
        # start (it no longer calls .train()), so drop-path would otherwise draw and drop in frozen blocks.
        self.train()
        if compile:
            self.net.compile_feature_tap()
        self.inputs = "images"
        self.tokens_enter_block: int | None = None

        num_classes = len(self.class_names)
        metrics = classification_metrics(num_classes)
        # ModuleDict keys must not shadow nn.Module attributes ("train"), hence the suffix.
        self.metrics = nn.ModuleDict({f"{split}_split": metrics.clone(prefix=f"{split}/") for split in SPLITS})
        self.confusion = nn.ModuleDict(
            {f"{split}_split": confusion_matrix_metric(num_classes) for split in EVALUATION_SPLITS}
        )
        # The mean loss per image of each split's epoch, synced across ranks like the other metrics.
        self.mean_loss = nn.ModuleDict({f"{split}_split": MeanMetric() for split in SPLITS})
        # Filled at the end of each val/test epoch (synced across ranks): for reports and loggers.
        self.last_confusion: dict[str, Tensor] = {}
        # Softmax rows of the test split (`trainer.test`) and of the val split (`trainer.validate`, not the
        # validations during fit); after the epoch, all ranks' rows in dataset order.
        self.predictions: dict[str, list[Tensor]] = {"val": [], "test": []}

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> tuple[ClassifierModule, dict]:
        """Rebuild the module from a checkpoint alone (no hub access: the pretrained weights are in it).
        Returns the module in eval mode and the raw checkpoint dict. Checkpoints of vitcls 0.1 load too."""
        checkpoint = load_checkpoint(path, "ckpt_path", map_location)
        hparams = legacy.upgrade_hparams(dict(checkpoint["hyper_parameters"]))
        net = hparams["net"]
        hparams["net"] = {**net, "backbone": {**net["backbone"], "pretrained": False, "weights": None}}
        module = cls(**{**hparams, "compile": False})
        module.load_state_dict(legacy.upgrade_state_dict(checkpoint["state_dict"]))
        return module.eval(), checkpoint

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning calls this before it loads the state dict: resuming or testing a vitcls 0.1 checkpoint.
        checkpoint["state_dict"] = legacy.upgrade_state_dict(checkpoint["state_dict"])
        for name, metric in self._train_epoch_metrics():
            for key, value in checkpoint.get(TRAIN_EPOCH_STATE, {}).get(name, {}).items():
                setattr(metric, key, value)
                metric._update_count = 1

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Taken mid-epoch (SIGTERM, Ctrl+C), a checkpoint carries the epoch's train metrics so far, so that the
        # resumed run logs the values of the whole epoch. One process only: under DDP each rank holds its own.
        trainer = self._trainer
        if trainer is None or trainer.world_size > 1 or not trainer.training:
            return
        if trainer.fit_loop.epoch_loop.batch_progress.current.processed < trainer.num_training_batches:
            checkpoint[TRAIN_EPOCH_STATE] = {
                name: {key: value.clone() for key, value in metric.metric_state.items()}
                for name, metric in self._train_epoch_metrics()
            }

    def _train_epoch_metrics(self) -> list[tuple[str, Metric]]:
        return [*self.metrics["train_split"].items(keep_base=True), ("loss", self.mean_loss["train_split"])]

    def expect_inputs(self, kind: str, block: int | None = None) -> None:
        """`features`: the batches hold what `net.features` computes (a feature cache), not images;
        `tokens`: they hold `net.tokens_before(images, block)` (a prefix cache)."""
        if kind not in INPUT_KINDS:
            raise ConfigError(f"inputs must be one of {INPUT_KINDS}, got {kind!r}")
        if (kind == "tokens") != (block is not None):
            raise ConfigError("inputs='tokens' needs the block the tokens enter, and only it does")
        self.inputs = kind
        self.tokens_enter_block = block

    # --- the network -------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return self.net.class_names

    @property
    def data_config(self) -> dict[str, Any]:
        """The backbone's preprocessing (timm data config at the model's actual input size)."""
        return self.net.data_config

    @property
    def parameter_counts(self) -> dict[str, int]:
        """{"total", "trainable"} over backbone, adapter and head."""
        return count_parameters(self.net)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def _logits(self, inputs: Tensor) -> Tensor:
        if self.inputs == "features":
            return self.net.head(inputs)
        if self.inputs == "tokens":
            return self.net.head(self.net.features_from_tokens(inputs, self.tokens_enter_block))
        return self.net(inputs)

    def train(self, mode: bool = True):
        super().train(mode)
        for part in self.frozen_backbone_parts:
            part.eval()  # frozen: no dropout/drop-path noise in the features
        return self

    # --- steps -------------------------------------------------------------------------------
    # A batch is None when every image in it went bad during the run (data.on_bad_image=skip).
    def training_step(self, batch: tuple[Tensor, Tensor] | None, batch_idx: int) -> Tensor | None:
        if batch is None:
            return None
        inputs, targets = batch
        logits = self._logits(inputs)
        loss = self.criterion(logits, targets)
        # A non-finite loss is vitcls.callbacks.nonfinite_loss.NonFiniteLossGuard's to stop or skip; it is not logged.
        if torch.isfinite(loss):
            self.log("train/loss_step", loss, prog_bar=True, batch_size=len(targets))
            self.mean_loss["train_split"].update(loss.detach(), weight=len(targets))
            if targets.ndim == 1:  # no train metrics for soft targets (data.mixup): there is no one true label
                self.metrics["train_split"].update(logits.detach(), targets)
        return loss

    @property
    def test_predictions(self) -> list[Tensor]:
        return self.predictions["test"]

    def _scoring_a_checkpoint(self) -> bool:
        """`trainer.validate` after fitting: its val metrics describe the tested checkpoint. They are returned
        (trainer.callback_metrics) but not sent to the loggers, whose val curves stay one point per epoch."""
        trainer = self._trainer
        return trainer is not None and trainer.state.fn == TrainerFn.VALIDATING

    def _keeps_predictions(self, split: str) -> bool:
        return split == "test" or (split == "val" and self._scoring_a_checkpoint())

    def _evaluation_step(self, split: str, batch: tuple[Tensor, Tensor]) -> Tensor:
        inputs, targets = batch
        logits = self._logits(inputs)
        self.mean_loss[f"{split}_split"].update(self.criterion(logits, targets), weight=len(targets))
        self.metrics[f"{split}_split"].update(logits, targets)
        self.confusion[f"{split}_split"].update(logits, targets)
        if self._keeps_predictions(split):
            self.predictions[split].append(logits.float().softmax(dim=-1).cpu())
        return logits

    def _log_epoch_metrics(self, split: str) -> None:
        """Compute (synced across ranks by torchmetrics), log and reset the split's metrics once per epoch.

        Every rank takes part in the same collectives, in the same order, whether or not it had a batch (a split
        smaller than the number of ranks, a rank whose images all went bad): first whether any rank has
        updates, then the synced values. Nothing is logged when no rank had any (no train metrics for the soft
        targets of data.mixup). Not `self.log(name, metric)` per step: that costs about 2 ms per metric and
        step in Lightning's result bookkeeping, more than a whole step of a head on cached features.
        """
        loss_name = "train/loss_epoch" if split == "train" else f"{split}/loss"
        to_loggers = not self._scoring_a_checkpoint()
        for metrics in (self.metrics[f"{split}_split"], self.mean_loss[f"{split}_split"]):
            if self._updated_on_any_rank(metrics):
                with _without_empty_rank_warning():
                    values = metrics.compute()
                if not isinstance(values, dict):
                    values = {loss_name: values}
                for name, value in values.items():
                    self.log(name, value, prog_bar=name in PROGRESS_BAR_METRICS, logger=to_loggers)
            metrics.reset()

    def _updated_on_any_rank(self, metrics: Metric | MetricCollection) -> bool:
        members = metrics.values() if isinstance(metrics, MetricCollection) else [metrics]
        updated = any(metric.update_called for metric in members)
        if self.trainer.world_size > 1:  # a collective: every rank asks, whatever it holds
            updated = self.trainer.strategy.reduce_boolean_decision(updated, all=False)
        return updated

    def validation_step(self, batch: tuple[Tensor, Tensor] | None, batch_idx: int) -> None:
        if batch is not None:
            self._evaluation_step("val", batch)

    def test_step(self, batch: tuple[Tensor, Tensor] | None, batch_idx: int) -> None:
        if batch is not None:
            self._evaluation_step("test", batch)

    def on_validation_epoch_start(self) -> None:
        if self._keeps_predictions("val"):
            self.predictions["val"] = []

    def on_test_epoch_start(self) -> None:
        self.predictions["test"] = []

    def _gather_predictions(self, split: str) -> None:
        rows = self.predictions[split]
        local = torch.cat(rows) if rows else torch.empty(0, len(self.class_names))
        self.predictions[split] = [gather_in_dataset_order(self, local)]

    def _store_confusion(self, split: str) -> None:
        # compute() syncs the summed counts across ranks (every rank calls it); reset by hand, it is not logged.
        with _without_empty_rank_warning():
            self.last_confusion[split] = self.confusion[f"{split}_split"].compute().cpu()
        self.confusion[f"{split}_split"].reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")
        self._store_confusion("val")
        if self._keeps_predictions("val"):
            self._gather_predictions("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")
        self._store_confusion("test")
        self._gather_predictions("test")

    # --- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        create = hydra.utils.instantiate(self.hparams.optimizer, _partial_=True)
        optimizer = create(self.net.backbone, self.net.head, prompts=self.net.prompts)
        if not self.hparams.scheduler:
            return {"optimizer": optimizer}
        total_steps = int(self.trainer.estimated_stepping_batches)
        scheduler = hydra.utils.instantiate(self.hparams.scheduler, _partial_=True)(optimizer, total_steps=total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler, metric) -> None:
        # timm schedulers are driven by the update count rather than .step()
        scheduler.step_update(num_updates=self.global_step)


@contextlib.contextmanager
def _without_empty_rank_warning() -> Iterator[None]:
    # A rank without batches still takes part in the synced compute(): torchmetrics warns that it computes
    # before any update, which is expected here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The ``compute`` method of metric .* before the ``update``")
        yield
