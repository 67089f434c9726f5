"""The LightningModule: a timm backbone, a head from the registry, a loss, metrics per split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra.utils
import lightning as L
import torch
from torch import Tensor, nn

from vitcls.checkpoints import load_checkpoint
from vitcls.data.transforms import resolve_data_config
from vitcls.distributed import gather_in_dataset_order
from vitcls.errors import ConfigError
from vitcls.metrics import classification_metrics, confusion_matrix_metric
from vitcls.models.backbone import create_backbone
from vitcls.models.features import FeatureTap
from vitcls.models.trainable import apply_trainability, count_parameters

SPLITS = ("train", "val", "test")
PROGRESS_BAR_METRICS = ("val/acc", "val/f1_macro")


class ImageClassifier(L.LightningModule):
    """Backbone -> feature tap (`head.features`) -> head -> logits.

    All constructor arguments are plain dicts/lists (saved in every checkpoint as hyperparameters, so a
    checkpoint alone rebuilds the model and knows its class names):
      backbone:  kwargs of `create_backbone` plus `train_blocks` and `bitfit` (vitcls.models.trainable),
                 and `compile` (torch.compile the backbone)
      head:      a Hydra node with `_target_` naming a `vitcls.models.heads.Head` subclass, plus
                 `features` and `last_k` (vitcls.models.features)
      optimizer: a Hydra node for `vitcls.models.optim.create_optimizer` (called with backbone, head)
      scheduler: a Hydra node for `vitcls.models.optim.create_scheduler` (called with optimizer,
                 total_steps), or None for a constant lr
      loss:      a Hydra node with `_target_` (default: cross-entropy)
    """

    def __init__(
        self,
        backbone: dict[str, Any],
        head: dict[str, Any],
        class_names: list[str],
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        loss: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.hparams.optimizer = optimizer or {"_target_": "vitcls.models.optim.create_optimizer"}
        backbone_kwargs, head_kwargs = dict(backbone), dict(head)
        train_blocks = backbone_kwargs.pop("train_blocks", "all")
        bitfit = bool(backbone_kwargs.pop("bitfit", False))
        for old, new in (("freeze", "model.train_blocks=none"), ("pool", "head.features=cls or mean")):
            if old in backbone_kwargs:
                raise ConfigError(f"model.{old} was replaced: use {new}")
        compile_backbone = bool(backbone_kwargs.pop("compile", False))
        self.class_names = list(class_names)
        num_classes = len(self.class_names)

        self.backbone = create_backbone(**backbone_kwargs)
        self.tap = FeatureTap(self.backbone, head_kwargs.pop("features", "cls"), head_kwargs.pop("last_k", 4))
        self.head = hydra.utils.instantiate(
            head_kwargs, in_features=self.tap.out_features, num_classes=num_classes
        )
        self.tap.check_head(self.head)
        self.criterion = hydra.utils.instantiate(loss or {"_target_": "torch.nn.CrossEntropyLoss"})
        self.frozen_backbone_parts = apply_trainability(self.backbone, train_blocks, bitfit)
        self.data_config = resolve_data_config(self.backbone)
        # The tap calls timm's forward_features/forward_intermediates, not backbone.forward, so the tap is
        # what gets compiled; it holds no weights (state_dict keys and deep copies, e.g. EMA, are unaffected).
        self._run_tap = torch.compile(self.tap) if compile_backbone else self.tap

        metrics = classification_metrics(num_classes)
        # ModuleDict keys must not shadow nn.Module attributes ("train"), hence the suffix.
        self.metrics = nn.ModuleDict({f"{split}_split": metrics.clone(prefix=f"{split}/") for split in SPLITS})
        self.confusion = nn.ModuleDict({f"{split}_split": confusion_matrix_metric(num_classes) for split in ("val", "test")})
        # Filled at the end of each val/test epoch (synced across ranks): for reports and loggers.
        self.last_confusion: dict[str, Tensor] = {}
        # Softmax rows of the test split; after the test epoch, all ranks' rows in dataset order.
        self.test_predictions: list[Tensor] = []
        # True when the batches hold `features(images)` from a feature cache (set by vitcls.train).
        self.inputs_are_features = False

    # --- forward -----------------------------------------------------------------------------
    def features(self, images: Tensor) -> Tensor:
        """What the head consumes. A fully frozen backbone runs without autograd; with some blocks
        frozen, autograd records nothing before the first trainable parameter anyway."""
        backbone_trains = any(p.requires_grad for p in self.backbone.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and backbone_trains):
            return self._run_tap(self.backbone, images)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))

    @property
    def parameter_counts(self) -> dict[str, int]:
        """{"total", "trainable"} over backbone and head."""
        return count_parameters(self)

    def _logits(self, inputs: Tensor) -> Tensor:
        return self.head(inputs) if self.inputs_are_features else self(inputs)

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
        # A non-finite loss is vitcls.guards.NonFiniteLossGuard's to stop or skip; it is not logged.
        if torch.isfinite(loss):
            self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(targets))
            if targets.ndim == 1:  # no train metrics for soft targets (data.mixup): there is no one true label
                self.metrics["train_split"].update(logits.detach(), targets)
        return loss

    def _evaluation_step(self, split: str, batch: tuple[Tensor, Tensor]) -> Tensor:
        inputs, targets = batch
        logits = self._logits(inputs)
        self.log(f"{split}/loss", self.criterion(logits, targets), on_epoch=True, sync_dist=True,
                 batch_size=len(targets))
        self.metrics[f"{split}_split"].update(logits, targets)
        self.confusion[f"{split}_split"].update(logits, targets)
        return logits

    def _log_epoch_metrics(self, split: str) -> None:
        """Compute (synced across ranks by torchmetrics), log and reset the split's metrics once per epoch.

        Not `self.log(name, metric)` per step: that costs about 2 ms per metric and step in Lightning's
        result bookkeeping, more than a whole step of a head on cached features.
        """
        collection = self.metrics[f"{split}_split"]
        if any(metric.update_called for metric in collection.values()):
            for name, value in collection.compute().items():
                self.log(name, value, prog_bar=name in PROGRESS_BAR_METRICS)
        collection.reset()

    def validation_step(self, batch: tuple[Tensor, Tensor] | None, batch_idx: int) -> None:
        if batch is not None:
            self._evaluation_step("val", batch)

    def test_step(self, batch: tuple[Tensor, Tensor] | None, batch_idx: int) -> None:
        if batch is None:
            return
        logits = self._evaluation_step("test", batch)
        self.test_predictions.append(logits.softmax(dim=-1).cpu())

    def on_test_epoch_start(self) -> None:
        self.test_predictions = []

    def _store_confusion(self, split: str) -> None:
        # compute() syncs the summed counts across ranks; reset by hand, it is not logged.
        self.last_confusion[split] = self.confusion[f"{split}_split"].compute().cpu()
        self.confusion[f"{split}_split"].reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")
        self._store_confusion("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")
        self._store_confusion("test")
        local = torch.cat(self.test_predictions) if self.test_predictions else torch.empty(0, len(self.class_names))
        self.test_predictions = [gather_in_dataset_order(self, local)]

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        inputs = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self._logits(inputs).softmax(dim=-1)

    # --- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = hydra.utils.instantiate(self.hparams.optimizer, _partial_=True)(self.backbone, self.head)
        if not self.hparams.scheduler:
            return {"optimizer": optimizer}
        total_steps = int(self.trainer.estimated_stepping_batches)
        scheduler = hydra.utils.instantiate(self.hparams.scheduler, _partial_=True)(optimizer, total_steps=total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler, metric) -> None:
        # timm schedulers are driven by the update count rather than .step()
        scheduler.step_update(num_updates=self.global_step)


def load_classifier(checkpoint_path: str | Path, map_location: str | torch.device = "cpu") -> tuple[ImageClassifier, dict]:
    """Rebuild the classifier from a checkpoint alone (no hub access: pretrained weights are in it).

    Returns the module (eval mode) and the raw checkpoint dict.
    """
    checkpoint = load_checkpoint(checkpoint_path, "ckpt_path", map_location)
    hparams = dict(checkpoint["hyper_parameters"])
    hparams["backbone"] = {**hparams["backbone"], "pretrained": False, "weights": None, "compile": False}
    module = ImageClassifier(**hparams)
    module.load_state_dict(checkpoint["state_dict"])
    return module.eval(), checkpoint
