"""The training system around the network, for one head or many: loss, metrics per head and split, each head's best
validation epoch, optimisation, and what trains.

`ClassifierModule` holds an `ImageClassifier` (vitcls.models.classifier) as `net`. With one head it is a lone run:
any part of the backbone may train. With several (a head bank, as DINOv2 trains all its linear classifiers at
once) the backbone is frozen: one loss per head, summed, so one backward gives each head the gradient of its own
loss (the heads share no parameter); each head has its own lr and weight decay, its own gradient clipping, its own
dropout stream, and a non-finite loss stops (or skips) that head only.

Its arguments are plain data, saved in every checkpoint, so a checkpoint alone rebuilds it:
  net:           an ImageClassifier config (backbone, adapter, heads with their taps, class names)
  train_blocks, bitfit: how much of the backbone trains (vitcls.models.trainable); an adapter's parameters
                 always train
  compile:       torch.compile the feature taps
  optimizer:     a Hydra node for `vitcls.models.optim.create_optimizer`
  head_optim:    per head {"lr", "weight_decay"}; None: every head takes the optimizer's head_lr (or lr) and
                 weight_decay
  scheduler:     a Hydra node for `vitcls.models.optim.create_scheduler` (called with optimizer, total_steps),
                 or None for a constant lr
  loss:          a Hydra node with `_target_` (default: cross-entropy)
  monitor:       the validation metric that selects each head's best epoch

Metrics are computed once per epoch from each head's predicted classes and the labels (torchmetrics, synced
across DDP ranks: exact, every image counted once); the loss is the image-weighted mean. One head logs them under
their plain names (`val/f1_macro`, which ModelCheckpoint monitors); several heads log
`head/<name>/<split>/<metric>` to the loggers. The best epoch of each head is the first validation, then every
strict improvement of the monitor (ModelCheckpoint's rule); with several heads the module keeps each head's weights
of that epoch, and `use_best_heads` loads them before the final validation and test.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra.utils
import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn

from vitcls.distributed import gather_in_dataset_order
from vitcls.errors import ConfigError
from vitcls.metrics import better_is, classification_metrics, confusion_matrix_metric
from vitcls.models import legacy
from vitcls.models.classifier import ImageClassifier
from vitcls.models.trainable import apply_trainability, count_parameters
from vitcls.untrusted import load_checkpoint

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
PROGRESS_BAR_METRICS = ("val/acc", "val/f1_macro")
# What the batches hold: images, each distinct tap's features computed from them (a feature cache), or the
# tokens entering the first trainable block (a prefix-token cache).
INPUT_KINDS = ("images", "features", "tokens")
# The checkpoint entry of the train metrics of an epoch interrupted part-way.
TRAIN_EPOCH_STATE = "train_epoch_record"
# The checkpoint entry of what selecting each head's best epoch needs to go on.
SELECTION_STATE = "head_selection"
# Precisions whose gradient scaler is shared by all parameters: one head's overflow would skip every head's step.
SHARED_SCALER_PRECISIONS = ("16-mixed", "16", "16-true")


@dataclass
class EpochRecord:
    """What one epoch of one split accumulates, for every head at once."""

    num_heads: int
    loss_sum: Tensor = field(init=False)
    loss_count: Tensor = field(init=False)
    predicted: list[Tensor] = field(default_factory=list)  # (K, B) class indices
    targets: list[Tensor] = field(default_factory=list)
    probabilities: list[Tensor] = field(default_factory=list)  # (B, K, C), only when the split's are kept

    def __post_init__(self) -> None:
        self.loss_sum = torch.zeros(self.num_heads, dtype=torch.float64)
        self.loss_count = torch.zeros(self.num_heads, dtype=torch.float64)

    def add_losses(self, losses: Tensor, batch_size: int) -> None:
        finite = torch.isfinite(losses).cpu()
        self.loss_sum += torch.where(finite, losses.detach().cpu().double(), 0.0) * batch_size
        self.loss_count += finite.double() * batch_size

    def state(self) -> dict[str, Tensor]:
        return {"loss_sum": self.loss_sum, "loss_count": self.loss_count,
                "predicted": torch.cat(self.predicted, dim=1) if self.predicted else torch.empty(self.num_heads, 0),
                "targets": torch.cat(self.targets) if self.targets else torch.empty(0)}

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> EpochRecord:
        record = cls(len(state["loss_sum"]))
        record.loss_sum, record.loss_count = state["loss_sum"].double(), state["loss_count"].double()
        if state["targets"].numel():
            record.predicted, record.targets = [state["predicted"].long()], [state["targets"].long()]
        return record


class ClassifierModule(L.LightningModule):
    def __init__(
        self,
        net: dict[str, Any],
        train_blocks: str | int = "all",
        bitfit: bool = False,
        compile: bool = False,
        optimizer: dict[str, Any] | None = None,
        head_optim: list[dict[str, float]] | None = None,
        scheduler: dict[str, Any] | None = None,
        loss: dict[str, Any] | None = None,
        monitor: str = "val/f1_macro",
    ):
        super().__init__()
        net = legacy.upgrade_net_config(net)
        several = len(net["heads"]) > 1
        # Kept in checkpoints; sent to the loggers for one head only (a bank's designs are in bank.json, and the CSV
        # logger would rewrite a hparams.yaml of every design each epoch).
        self.save_hyperparameters(logger=not several)
        self.net = ImageClassifier(**net)
        self.hparams.net = self.net.config  # with every tap's `auto` resolved
        self.hparams.optimizer = optimizer or {"_target_": "vitcls.models.optim.create_optimizer", "_partial_": True}
        if head_optim is not None and len(head_optim) != self.net.num_heads:
            raise ConfigError(f"head_optim has {len(head_optim)} entries for {self.net.num_heads} heads")
        self.criterion = hydra.utils.instantiate(loss or {"_target_": "torch.nn.CrossEntropyLoss"})
        self.frozen_backbone_parts = apply_trainability(
            self.net.backbone, train_blocks, bitfit, self.net.adapter_parameters()
        )
        if several and any(p.requires_grad for _, p in self.net.feature_parameters()):
            raise ConfigError(
                "several heads share one backbone, which must not train (model.train_blocks=none, model.bitfit=false, "
                "no adapter): the sum of every head's loss would train it, and no head would be the design it names"
            )
        # Frozen parts in eval mode from the start: Lightning keeps the modules' modes as it finds them at fit start,
        # so drop-path would otherwise draw and drop in frozen blocks.
        self.train()
        if compile:
            self.net.compile_feature_tap()
        self.inputs = "images"
        self.tokens_enter_block: int | None = None

        num_classes = len(self.class_names)
        # ModuleDict keys must not shadow nn.Module attributes ("train"), hence the suffix. One collection per
        # split, updated and computed head after head once per epoch.
        self.metrics = nn.ModuleDict({f"{split}_split": classification_metrics(num_classes) for split in SPLITS})
        self.confusion = confusion_matrix_metric(num_classes)
        self.monitor_name = monitor.removeprefix("val/")
        self.maximize = better_is(monitor) == "max"
        k = self.num_heads
        self.best_score: list[float | None] = [None] * k
        self.best_epoch: list[int | None] = [None] * k
        self.best_state: list[dict[str, Tensor] | None] = [None] * k  # several heads only
        self.stopped: list[str | None] = [None] * k  # why a head stopped training (a non-finite loss)
        self.skipped_steps: list[list[int]] = [[] for _ in range(k)]
        self.history: list[dict[str, float]] = []  # every per-head value logged (several heads), with epoch and step
        # After the final validate/test: per split, per head metrics; (N, K, C) softmax rows; (K, C, C) confusion.
        self.results: dict[str, list[dict[str, float]]] = {}
        self.predictions: dict[str, Tensor] = {}
        self.confusion_matrices: dict[str, Tensor] = {}
        self._records: dict[str, EpochRecord] = {}
        self._nonfinite = torch.zeros(k, dtype=torch.bool)

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> tuple[ClassifierModule, dict]:
        """Rebuild the module from a checkpoint alone (no hub access: the pretrained weights are in it). Returns
        the module in eval mode and the raw checkpoint dict. Checkpoints of earlier vitcls versions load too."""
        checkpoint = load_checkpoint(path, "ckpt_path", map_location)
        hparams = legacy.upgrade_hparams(dict(checkpoint["hyper_parameters"]))
        net = hparams["net"]
        hparams["net"] = {**net, "backbone": {**net["backbone"], "pretrained": False, "weights": None}}
        module = cls(**{**hparams, "compile": False})
        module.load_state_dict(legacy.upgrade_state_dict(checkpoint["state_dict"]))
        return module.eval(), checkpoint

    # --- the network -------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return self.net.class_names

    @property
    def data_config(self) -> dict[str, Any]:
        """The backbone's preprocessing (timm data config at the model's actual input size)."""
        return self.net.data_config

    @property
    def num_heads(self) -> int:
        return self.net.num_heads

    @property
    def names(self) -> list[str]:
        return self.net.head_names

    @property
    def parameter_counts(self) -> dict[str, int]:
        """{"total", "trainable"} over backbone, adapter and every head."""
        return count_parameters(self.net)

    def head_parameter_counts(self, index: int) -> dict[str, int]:
        """What head `index`'s lone run would count: everything but the other heads."""
        others = [head for i, head in enumerate(self.net.heads) if i != index]
        total = count_parameters(self.net)
        for head in others:
            counts = count_parameters(head)
            total = {key: total[key] - counts[key] for key in total}
        return total

    def expect_inputs(self, kind: str, block: int | None = None) -> None:
        """`features`: the batches hold each distinct tap's features (a feature cache), then the labels;
        `tokens`: they hold `net.tokens_before(images, block)` (a prefix-token cache)."""
        if kind not in INPUT_KINDS:
            raise ConfigError(f"inputs must be one of {INPUT_KINDS}, got {kind!r}")
        if (kind == "tokens") != (block is not None):
            raise ConfigError("inputs='tokens' needs the block the tokens enter, and only it does")
        self.inputs = kind
        self.tokens_enter_block = block

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def train(self, mode: bool = True):
        super().train(mode)
        for part in self.frozen_backbone_parts:
            part.eval()  # frozen: no dropout/drop-path noise in the features
        return self

    def setup(self, stage: str) -> None:
        precision = str(self.trainer.precision)
        if self.num_heads > 1 and precision in SHARED_SCALER_PRECISIONS:
            raise ConfigError(
                f"trainer.precision={precision} with {self.num_heads} heads: fp16 trains under one gradient scaler, so "
                "one head's overflow would skip every head's step. Use trainer.precision=bf16-mixed (or 32-true)"
            )

    def _head_inputs(self, batch: tuple[Tensor, ...] | list[Tensor]) -> tuple[list[Tensor], Tensor]:
        *inputs, targets = batch
        if self.inputs == "features":
            return self.net.head_inputs(list(inputs)), targets
        if self.inputs == "tokens":
            return self.net.head_inputs(self.net.features_from_tokens(inputs[0], self.tokens_enter_block)), targets
        return self.net.head_inputs(self.net.features(inputs[0])), targets

    # --- steps -------------------------------------------------------------------------------
    def _record(self, split: str) -> EpochRecord:
        if split not in self._records:
            self._records[split] = EpochRecord(self.num_heads)
        return self._records[split]

    def _head_logits(self, inputs: list[Tensor], own_streams: bool) -> list[Tensor]:
        if not own_streams:
            return [head(x) for head, x in zip(self.net.heads, inputs, strict=True)]
        logits = []
        for index, (head, x) in enumerate(zip(self.net.heads, inputs, strict=True)):
            self._enter_stream(index)
            logits.append(head(x))
            self._leave_stream(index)
        return logits

    def _enter_stream(self, index: int) -> None:
        """Head `index`'s random-number stream becomes the global one (its dropout draws from it)."""
        stream = self.net.random_streams[index]
        torch.set_rng_state(stream["cpu"])
        if self.device.type == "cuda" and "cuda" in stream:
            torch.cuda.set_rng_state(stream["cuda"][self.device.index or 0], self.device)

    def _leave_stream(self, index: int) -> None:
        stream = self.net.random_streams[index]
        stream["cpu"] = torch.get_rng_state()
        if self.device.type == "cuda" and "cuda" in stream:
            stream["cuda"][self.device.index or 0] = torch.cuda.get_rng_state(self.device)

    # A batch is None when every image in it went bad during the run (data.on_bad_image=skip).
    def training_step(self, batch, batch_idx: int) -> Tensor | None:
        if batch is None:
            return None
        inputs, targets = self._head_inputs(batch)
        logits = self._head_logits(inputs, own_streams=self.num_heads > 1)
        losses = torch.stack([self.criterion(head_logits, targets) for head_logits in logits])
        finite = torch.isfinite(losses.detach())
        record = self._record("train")
        record.add_losses(losses.detach(), len(targets))
        if targets.ndim == 1:  # soft targets (data.mixup) have no one true label: no train metrics
            record.predicted.append(torch.stack([x.detach().argmax(dim=-1) for x in logits]))
            record.targets.append(targets)
        if self.num_heads == 1:
            # A non-finite loss is vitcls.callbacks.nonfinite_loss.NonFiniteLossGuard's to stop or skip.
            if finite[0]:
                self.log("train/loss_step", losses[0].detach(), prog_bar=True, batch_size=len(targets))
            return losses[0]
        self._nonfinite |= ~finite.cpu()
        if finite.any():
            self.log("train/loss_mean_over_heads", losses.detach()[finite].mean(), on_step=True, on_epoch=False,
                     prog_bar=True, batch_size=len(targets))
        # A non-finite loss adds nothing; its head's gradients are dropped in on_before_optimizer_step.
        return torch.where(finite, losses, torch.zeros_like(losses)).sum()

    def _evaluation_step(self, split: str, batch) -> None:
        inputs, targets = self._head_inputs(batch)
        logits = torch.stack(self._head_logits(inputs, own_streams=False))
        losses = torch.stack([self.criterion(head_logits, targets) for head_logits in logits])
        record = self._record(split)
        record.add_losses(losses, len(targets))
        record.predicted.append(logits.argmax(dim=-1))
        record.targets.append(targets)
        if self._keeps_predictions(split):
            record.probabilities.append(logits.float().softmax(dim=-1).transpose(0, 1).cpu())

    def validation_step(self, batch, batch_idx: int) -> None:
        if batch is not None:
            self._evaluation_step("val", batch)

    def test_step(self, batch, batch_idx: int) -> None:
        if batch is not None:
            self._evaluation_step("test", batch)

    def _scoring(self) -> bool:
        """`trainer.validate` after fitting: its val metrics describe the tested weights. They are kept
        (`results`) but not sent to the loggers, whose val curves stay one point per epoch."""
        return self._trainer is not None and self.trainer.state.fn == TrainerFn.VALIDATING

    def _fitting(self) -> bool:
        return self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING and not self.trainer.sanity_checking

    def _keeps_predictions(self, split: str) -> bool:
        return split == "test" or (split == "val" and self._scoring())

    # --- epoch ends ----------------------------------------------------------------------------
    def _epoch_metrics(self, split: str) -> list[dict[str, float]] | None:
        """Every head's metrics over the epoch, or None when no rank had a batch. Every rank takes part in the same
        collectives, in the same order, whether or not it had a batch."""
        record = self._records.pop(split, None) or EpochRecord(self.num_heads)
        sums = torch.cat([record.loss_sum, record.loss_count, torch.tensor([float(len(record.targets))])])
        sums = self.trainer.strategy.reduce(sums.to(self.device, torch.float64), reduce_op="sum").cpu()
        loss_sum, loss_count, batches = sums[: self.num_heads], sums[self.num_heads : -1], sums[-1]
        if loss_count.sum() == 0 and batches == 0:
            return None
        collection = self.metrics[f"{split}_split"]
        with_labels = split != "train" or bool(self.trainer.strategy.reduce_boolean_decision(bool(record.targets),
                                                                                            all=False))
        predicted = torch.cat(record.predicted, dim=1) if record.predicted else None
        targets = torch.cat(record.targets) if record.targets else None
        results = []
        with warnings.catch_warnings():  # a rank without images of this split computes the synced state only
            warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
            for index in range(self.num_heads):
                values: dict[str, float] = {}
                if with_labels:
                    if predicted is not None:
                        collection.update(predicted[index], targets)
                    values = {name: float(value) for name, value in collection.compute().items()}
                    collection.reset()
                if loss_count[index] > 0:
                    values["loss"] = float(loss_sum[index] / loss_count[index])
                results.append(values)
        if self._keeps_predictions(split):
            self._finish_scoring(split, record, predicted, targets)
        return results

    def _finish_scoring(self, split: str, record: EpochRecord, predicted: Tensor | None, targets: Tensor | None) -> None:
        """Confusion matrices and softmax rows (all ranks', in dataset order) of a final val/test pass."""
        matrices = []
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
            for index in range(self.num_heads):
                if predicted is not None:
                    self.confusion.update(predicted[index], targets)
                matrices.append(self.confusion.compute().cpu())
                self.confusion.reset()
        self.confusion_matrices[split] = torch.stack(matrices)
        num_classes = len(self.class_names)
        local = (torch.cat(record.probabilities) if record.probabilities
                 else torch.empty(0, self.num_heads, num_classes))
        # The width is spelled out: a rank without images has 0 rows, which reshape(0, -1) cannot size.
        rows = gather_in_dataset_order(self, local.reshape(len(local), self.num_heads * num_classes))
        self.predictions[split] = rows.reshape(len(rows), self.num_heads, num_classes)

    def _log(self, split: str, results: list[dict[str, float]], to_loggers: bool) -> None:
        """One head: its values under their plain names (callbacks and the progress bar see them). Several: every
        head's values to the loggers, and the best monitored value so far to the progress bar."""
        if self.num_heads == 1:
            for name, value in results[0].items():
                key = "train/loss_epoch" if (split, name) == ("train", "loss") else f"{split}/{name}"
                self.log(key, value, prog_bar=key in PROGRESS_BAR_METRICS, logger=to_loggers)
            return
        if not to_loggers:
            return
        values = {f"head/{name}/{split}/{metric}": value
                  for name, head_values in zip(self.names, results, strict=True) for metric, value in head_values.items()}
        for logger in self.loggers:
            logger.log_metrics(values, step=self.global_step)
        self.history.append({"epoch": self.current_epoch, "step": self.global_step, **values})

    def _better(self, score: float, best: float | None) -> bool:
        return best is None or (score > best if self.maximize else score < best)

    def _update_best(self, results: list[dict[str, float]]) -> None:
        for index, values in enumerate(results):
            score = values.get(self.monitor_name)
            if self.stopped[index] is not None or score is None or not self._better(score, self.best_score[index]):
                continue
            self.best_score[index] = score
            self.best_epoch[index] = self.current_epoch
            if self.num_heads > 1:
                self.best_state[index] = {k: v.detach().clone() for k, v in self.net.heads[index].state_dict().items()}
        scores = [s for s, stop in zip(self.best_score, self.stopped, strict=True) if s is not None and stop is None]
        if self.num_heads > 1 and scores:
            best = max(scores) if self.maximize else min(scores)
            self.log(f"bank/best_val_{self.monitor_name}", best, prog_bar=True, logger=False)

    def on_train_epoch_end(self) -> None:
        results = self._epoch_metrics("train")
        if results is not None:
            self._log("train", results, to_loggers=True)

    def on_validation_epoch_end(self) -> None:
        results = self._epoch_metrics("val")
        if results is None:
            return
        if self._scoring():
            self.results["val"] = results
        elif self._fitting():
            self._update_best(results)
        if not self.trainer.sanity_checking:
            self._log("val", results, to_loggers=self._fitting())

    def on_test_epoch_end(self) -> None:
        results = self._epoch_metrics("test")
        if results is not None:
            self.results["test"] = results
            self._log("test", results, to_loggers=True)

    def use_best_heads(self) -> None:
        """Every head at the weights of its best validation epoch (heads never validated keep their last). With
        one head the weights of its best epoch are the monitored checkpoint's, which the trainer loads."""
        for head, state in zip(self.net.heads, self.best_state, strict=True):
            if state is not None:
                head.load_state_dict(state)

    def head_predictions(self, split: str, index: int = 0) -> Tensor:
        """(N, C) softmax rows of head `index` on `split` (after trainer.validate / trainer.test)."""
        return self.predictions[split][:, index]

    # --- optimisation ------------------------------------------------------------------------
    def build_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer of what trains: the backbone's trainable part, the adapter's, each head with its own lr and
        weight decay."""
        create = hydra.utils.instantiate(self.hparams.optimizer, _partial_=True)
        return create(self.net.backbone, list(self.net.heads), adapter_parameters=self._adapter_outside_backbone(),
                      per_head=self.hparams.head_optim)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.build_optimizer()
        if not self.hparams.scheduler:
            return {"optimizer": optimizer}
        total_steps = int(self.trainer.estimated_stepping_batches)
        scheduler = hydra.utils.instantiate(self.hparams.scheduler, _partial_=True)(optimizer, total_steps=total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _adapter_outside_backbone(self) -> list[nn.Parameter]:
        """The adapter's trainable parameters that are not the backbone's (those train in the backbone's groups)."""
        in_backbone = {id(p) for p in self.net.backbone.parameters()}
        return [p for p in self.net.adapter_parameters() if id(p) not in in_backbone and p.requires_grad]

    def lr_scheduler_step(self, scheduler, metric) -> None:
        # timm schedulers are driven by the update count rather than .step()
        scheduler.step_update(num_updates=self.global_step)

    def _nonfinite_action(self) -> str:
        from vitcls.callbacks.nonfinite_loss import NonFiniteLossGuard

        guards = [c for c in self.trainer.callbacks if isinstance(c, NonFiniteLossGuard)]
        return guards[0].action if guards else "error"

    def on_before_optimizer_step(self, optimizer) -> None:
        """Several heads: heads whose loss was not finite on any rank get no update (action skip), or stop for good
        (error: where their lone run would have failed). Stopped heads never update again and are not selected.
        One head: NonFiniteLossGuard acts on the whole step."""
        if self.num_heads == 1:
            return
        flags = self.trainer.strategy.reduce(self._nonfinite.float().to(self.device), reduce_op="sum").cpu() > 0
        self._nonfinite.zero_()
        action = self._nonfinite_action()
        for index in torch.nonzero(flags).flatten().tolist():
            if action == "skip":
                self.skipped_steps[index].append(self.global_step)
            elif self.stopped[index] is None:
                self.stopped[index] = (f"non-finite training loss at step {self.global_step} "
                                       f"(epoch {self.current_epoch}): stopped there")
                log.warning("head %s: %s", self.names[index], self.stopped[index])
        for index, head in enumerate(self.net.heads):
            if flags[index] or self.stopped[index] is not None:
                for parameter in head.parameters():
                    parameter.grad = None

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """`trainer.gradient_clip_val` per head, over what its lone run trains: the head and, with one head, the
        trainable parts of the backbone and adapter."""
        if not gradient_clip_val:
            return
        shared = [p for _, p in self.net.feature_parameters() if p.grad is not None]
        for head in self.net.heads:
            parameters = [*shared, *(p for p in head.parameters() if p.grad is not None)]
            if not parameters:
                continue
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(parameters, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(parameters, gradient_clip_val)

    # --- checkpoints: what resuming needs beyond the weights -------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[SELECTION_STATE] = {
            "best_score": self.best_score, "best_epoch": self.best_epoch, "best_state": self.best_state,
            "stopped": self.stopped, "skipped_steps": self.skipped_steps, "random_streams": self.net.random_streams,
            "history": self.history,
        }
        # Taken mid-epoch (SIGTERM, Ctrl+C), a checkpoint carries the epoch's train record so far, so that the resumed
        # run logs the values of the whole epoch. One process only: under DDP each rank holds its own.
        trainer = self._trainer
        if trainer is None or trainer.world_size > 1 or not trainer.training or "train" not in self._records:
            return
        if trainer.fit_loop.epoch_loop.batch_progress.current.processed < trainer.num_training_batches:
            checkpoint[TRAIN_EPOCH_STATE] = self._records["train"].state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning calls this before it loads the state dict: resuming or testing an earlier version's checkpoint.
        checkpoint["state_dict"] = legacy.upgrade_state_dict(checkpoint["state_dict"])
        state = checkpoint.get(SELECTION_STATE)
        if state:
            self.best_score, self.best_epoch, self.best_state = state["best_score"], state["best_epoch"], state["best_state"]
            self.stopped, self.skipped_steps, self.history = state["stopped"], state["skipped_steps"], state["history"]
            self.net.random_streams = state["random_streams"]
        if TRAIN_EPOCH_STATE in checkpoint:
            self._records["train"] = EpochRecord.from_state(checkpoint[TRAIN_EPOCH_STATE])

