"""A head bank: K heads on one frozen backbone, trained together, each as it would train alone.

`HeadBank` (nn.Module) holds the backbone, the distinct feature taps its heads read (all computed in one backbone
pass, `TapSet`) and the heads. Each head is built from the random-number state that a lone run has where it builds
its head (right after the backbone), and draws its training-time random numbers (dropout) from its own stream that
starts there: its initialisation and dropout masks are those of its lone run, whatever else is in the bank.

`BankModule` (LightningModule) trains them: one loss per head, summed, so one backward gives each head the gradient
of its own loss (the backbone is frozen: heads share no parameter); one parameter group per head with its own lr
and weight decay under the run's schedule; gradients clipped per head; a non-finite loss stops (or skips) its own
head only; metrics per head and split (torchmetrics, synced across DDP ranks), and per head the weights of its best
validation epoch, which `use_best_heads` loads before the final validation and test.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import hydra.utils
import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn

from vitcls.distributed import gather_in_dataset_order
from vitcls.errors import ConfigError
from vitcls.metrics import better_is, classification_metrics, confusion_matrix_metric
from vitcls.models.backbone import create_backbone
from vitcls.models.features import FeatureTap, TapSet
from vitcls.models.heads import build_head
from vitcls.models.optim import head_param_groups, optimizer_of_groups
from vitcls.models.trainable import apply_trainability, count_parameters

log = logging.getLogger(__name__)

INPUT_KINDS = ("images", "features")
# Settings of the optimizer node that the bank sets per head (or that concern a backbone it never trains).
_PER_HEAD_OPTIM = ("_target_", "_partial_", "lr", "head_lr", "weight_decay", "layer_decay")


def tap_key(tap: dict[str, Any]) -> str:
    """`cls`, `mean`, `last_k4`...: one entry per distinct tap (features cached under the same settings)."""
    return f"last_k{tap['last_k']}" if tap["features"] == "last_k" else tap["features"]


def _random_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_random_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class HeadBank(nn.Module):
    """Images -> one list of logits per head. `designs`: [{"head": HeadSpec, "tap": {"features", "last_k"}}]."""

    def __init__(self, backbone: dict[str, Any], designs: list[dict[str, Any]], class_names: list[str]):
        super().__init__()
        from vitcls.data.transforms import resolve_data_config

        self.class_names = list(class_names)
        self.backbone = create_backbone(**backbone)
        where_a_lone_run_builds_its_head = _random_state()
        taps: dict[str, FeatureTap] = {}
        self.tap_index: list[int] = []
        heads = []
        # Per head: the CPU (and CUDA) generator states its training-time random numbers are drawn from.
        self.random_streams: list[dict[str, Any]] = []
        for design in designs:
            tap = FeatureTap(self.backbone, **design["tap"])
            taps.setdefault(tap_key(tap.settings), tap)
            self.tap_index.append(list(taps).index(tap_key(tap.settings)))
            _set_random_state(where_a_lone_run_builds_its_head)
            head = build_head(design["head"], tap.out_features, len(self.class_names))
            tap.check_head(head)
            heads.append(head)
            self.random_streams.append(_random_state())
        self.heads = nn.ModuleList(heads)
        self.taps = list(taps.values())
        self.tap_set = TapSet(self.taps)
        self._run_taps = self.tap_set
        self.data_config = resolve_data_config(self.backbone)

    def compile_taps(self) -> None:
        self._run_taps = torch.compile(self.tap_set)

    @torch.no_grad()
    def features(self, images: Tensor) -> list[Tensor]:
        """What each distinct tap gives (in `taps` order), from one pass of the frozen backbone."""
        return self._run_taps(self.backbone, images)

    def head_inputs(self, features: list[Tensor]) -> list[Tensor]:
        return [features[index] for index in self.tap_index]

    def enter_stream(self, index: int, device: torch.device) -> None:
        """Make head `index`'s random-number stream the global one (dropout draws from it)."""
        stream = self.random_streams[index]
        torch.set_rng_state(stream["cpu"])
        if device.type == "cuda" and "cuda" in stream:
            torch.cuda.set_rng_state(stream["cuda"][device.index or 0], device)

    def leave_stream(self, index: int, device: torch.device) -> None:
        stream = self.random_streams[index]
        stream["cpu"] = torch.get_rng_state()
        if device.type == "cuda" and "cuda" in stream:
            stream["cuda"][device.index or 0] = torch.cuda.get_rng_state(device)


class _EpochRecord:
    """What one epoch of one split accumulates, for every head at once."""

    def __init__(self, num_heads: int):
        self.loss_sum = torch.zeros(num_heads, dtype=torch.float64)
        self.count = 0
        self.predicted: list[Tensor] = []  # (K, B) class indices
        self.targets: list[Tensor] = []
        self.probabilities: list[Tensor] = []  # (B, K, C), only when the split's predictions are kept


class BankModule(L.LightningModule):
    """`designs`: [{"name", "head", "tap", "lr", "weight_decay", ...}] (vitcls.bank.designs.BankDesign.as_dict).
    `optimizer`: the `optim` node (its opt and kwargs; lr and weight decay come per head, times `lr_scale`).
    `scheduler`, `loss`: as for ClassifierModule. `monitor`: the validation metric that picks each head's epoch.
    """

    def __init__(
        self,
        backbone: dict[str, Any],
        designs: list[dict[str, Any]],
        class_names: list[str],
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        loss: dict[str, Any] | None = None,
        monitor: str = "val/f1_macro",
        lr_scale: float = 1.0,
        compile: bool = False,
    ):
        super().__init__()
        # Kept in checkpoints, not sent to the loggers: the designs are in bank.json and config.yaml, and the CSV
        # logger rewrites its hparams.yaml every epoch (about 0.1 s for 48 designs).
        self.save_hyperparameters(logger=False)
        self.bank = HeadBank(backbone, designs, class_names)
        self.frozen_backbone_parts = apply_trainability(self.bank.backbone, "none")
        if compile:
            self.bank.compile_taps()
        self.criterion = hydra.utils.instantiate(loss or {"_target_": "torch.nn.CrossEntropyLoss"})
        self.inputs = "images"
        self.names = [design["name"] for design in designs]
        num_classes = len(self.class_names)
        # One collection per split, updated and computed head after head once per epoch (synced across ranks).
        self.metrics = nn.ModuleDict({f"{split}_split": classification_metrics(num_classes)
                                      for split in ("train", "val", "test")})
        self.confusion = confusion_matrix_metric(num_classes)
        self.monitor_name = monitor.removeprefix("val/")
        self.maximize = better_is(monitor) == "max"
        k = len(designs)
        self.best_score: list[float | None] = [None] * k
        self.best_epoch: list[int | None] = [None] * k
        self.best_state: list[dict[str, Tensor] | None] = [None] * k
        self.stopped: list[str | None] = [None] * k  # why a head stopped training (a non-finite loss)
        self.skipped_steps: list[list[int]] = [[] for _ in range(k)]
        self.history: list[dict[str, float]] = []  # every per-head value logged, with its epoch and step
        # After the final validate/test: per split, per head metrics; (N, K, C) softmax rows; (K, C, C) confusion.
        self.results: dict[str, list[dict[str, float]]] = {}
        self.predictions: dict[str, Tensor] = {}
        self.confusion_matrices: dict[str, Tensor] = {}
        self._records: dict[str, _EpochRecord] = {}
        self._nonfinite = torch.zeros(k, dtype=torch.bool)

    # --- the network ---------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return self.bank.class_names

    @property
    def data_config(self) -> dict[str, Any]:
        return self.bank.data_config

    @property
    def num_heads(self) -> int:
        return len(self.bank.heads)

    @property
    def parameter_counts(self) -> dict[str, int]:
        """{"total", "trainable"} over the backbone and every head."""
        return count_parameters(self)

    def head_parameter_counts(self, index: int) -> dict[str, int]:
        """What head `index` alone would count: the backbone (frozen) and that head."""
        backbone = count_parameters(self.bank.backbone)
        head = count_parameters(self.bank.heads[index])
        return {"total": backbone["total"] + head["total"], "trainable": head["trainable"]}

    def expect_inputs(self, kind: str) -> None:
        """`features`: batches hold each distinct tap's features (vitcls.bank.features), then the labels."""
        if kind not in INPUT_KINDS:
            raise ConfigError(f"inputs must be one of {INPUT_KINDS}, got {kind!r}")
        self.inputs = kind

    def train(self, mode: bool = True):
        super().train(mode)
        for part in self.frozen_backbone_parts:
            part.eval()
        return self

    def _head_inputs(self, batch: list[Tensor] | tuple[Tensor, ...]) -> tuple[list[Tensor], Tensor]:
        *inputs, targets = batch
        features = list(inputs) if self.inputs == "features" else self.bank.features(inputs[0])
        return self.bank.head_inputs(features), targets

    # --- steps ---------------------------------------------------------------------------------
    def _record(self, split: str) -> _EpochRecord:
        if split not in self._records:
            self._records[split] = _EpochRecord(self.num_heads)
        return self._records[split]

    def training_step(self, batch, batch_idx: int) -> Tensor | None:
        if batch is None:
            return None
        inputs, targets = self._head_inputs(batch)
        losses, predicted = [], []
        for index, (head, features) in enumerate(zip(self.bank.heads, inputs, strict=True)):
            self.bank.enter_stream(index, self.device)
            logits = head(features)
            self.bank.leave_stream(index, self.device)
            losses.append(self.criterion(logits, targets))
            predicted.append(logits.detach().argmax(dim=-1))
        losses = torch.stack(losses)
        finite = torch.isfinite(losses.detach())
        self._nonfinite |= ~finite.cpu()
        record = self._record("train")
        record.loss_sum += (losses.detach().where(finite, torch.zeros_like(losses)) * len(targets)).cpu().double()
        record.count += len(targets)
        if targets.ndim == 1:  # soft targets (data.mixup) have no one true label: no train metrics
            record.predicted.append(torch.stack(predicted))
            record.targets.append(targets)
        if finite.any():
            self.log("train/loss_mean_over_heads", losses.detach()[finite].mean(), on_step=True, on_epoch=False,
                     prog_bar=True, batch_size=len(targets))
        # A non-finite loss adds nothing; its head's gradients are dropped in on_before_optimizer_step.
        return torch.where(finite, losses, torch.zeros_like(losses)).sum()

    def _evaluation_step(self, split: str, batch) -> None:
        inputs, targets = self._head_inputs(batch)
        logits = torch.stack([head(features) for head, features in zip(self.bank.heads, inputs, strict=True)])
        losses = torch.stack([self.criterion(head_logits, targets) for head_logits in logits])
        record = self._record(split)
        record.loss_sum += (losses * len(targets)).cpu().double()
        record.count += len(targets)
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
        """The final `trainer.validate` of the selected weights: its val metrics are kept off the loggers."""
        return self._trainer is not None and self.trainer.state.fn == TrainerFn.VALIDATING

    def _fitting(self) -> bool:
        return self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING and not self.trainer.sanity_checking

    def _keeps_predictions(self, split: str) -> bool:
        return split == "test" or (split == "val" and self._scoring())

    # --- epoch ends ----------------------------------------------------------------------------
    def _epoch_metrics(self, split: str) -> list[dict[str, float]] | None:
        """Every head's metrics over the epoch (exact under DDP: states and loss sums are summed over ranks)."""
        record = self._records.pop(split, None) or _EpochRecord(self.num_heads)
        sums = torch.cat([record.loss_sum, torch.tensor([float(record.count)], dtype=torch.float64)])
        sums = self.trainer.strategy.reduce(sums.to(self.device), reduce_op="sum").cpu()
        if sums[-1] == 0:
            return None
        losses = (sums[:-1] / sums[-1]).tolist()
        collection = self.metrics[f"{split}_split"]
        hard_labels = bool(record.targets) or split != "train"
        predicted = torch.cat(record.predicted, dim=1) if record.predicted else None
        targets = torch.cat(record.targets) if record.targets else None
        results = []
        with warnings.catch_warnings():  # a rank without images of this split computes the synced state only
            warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
            for index in range(self.num_heads):
                values: dict[str, float] = {}
                if hard_labels:
                    if predicted is not None:
                        collection.update(predicted[index], targets)
                    values = {name: float(value) for name, value in collection.compute().items()}
                    collection.reset()
                values["loss"] = float(losses[index])
                results.append(values)
        if self._keeps_predictions(split):
            self._finish_scoring(split, record, predicted, targets)
        return results

    def _finish_scoring(self, split: str, record: _EpochRecord, predicted: Tensor | None, targets: Tensor | None) -> None:
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
        rows = gather_in_dataset_order(self, local.reshape(len(local), -1))
        self.predictions[split] = rows.reshape(len(rows), self.num_heads, num_classes)

    def _log_heads(self, split: str, results: list[dict[str, float]]) -> None:
        values = {f"head/{name}/{split}/{metric}": value
                  for name, head_values in zip(self.names, results, strict=True) for metric, value in head_values.items()}
        for logger in self.loggers:
            logger.log_metrics(values, step=self.global_step)
        self.history.append({"epoch": self.current_epoch, "step": self.global_step, **values})

    def _better(self, score: float, best: float | None) -> bool:
        return best is None or (score > best if self.maximize else score < best)

    def _update_best(self, results: list[dict[str, float]]) -> None:
        """As a lone run's ModelCheckpoint: the first validation, then every strict improvement of the monitor."""
        for index, values in enumerate(results):
            score = values.get(self.monitor_name)
            if self.stopped[index] is not None or score is None:
                continue
            if self._better(score, self.best_score[index]):
                self.best_score[index] = score
                self.best_epoch[index] = self.current_epoch
                self.best_state[index] = {k: v.detach().clone() for k, v in self.bank.heads[index].state_dict().items()}
        scores = [s for s, stop in zip(self.best_score, self.stopped, strict=True) if s is not None and stop is None]
        if scores:
            best = max(scores) if self.maximize else min(scores)
            self.log(f"bank/best_val_{self.monitor_name}", best, prog_bar=True, logger=False)

    def on_train_epoch_end(self) -> None:
        results = self._epoch_metrics("train")
        if results is not None:
            self._log_heads("train", results)

    def on_validation_epoch_end(self) -> None:
        results = self._epoch_metrics("val")
        if results is None:
            return
        if self._scoring():
            self.results["val"] = results
        elif self._fitting():
            self._update_best(results)
            self._log_heads("val", results)

    def on_test_epoch_end(self) -> None:
        results = self._epoch_metrics("test")
        if results is not None:
            self.results["test"] = results
            self._log_heads("test", results)

    def use_best_heads(self) -> None:
        """Every head at the weights of its best validation epoch (heads never validated keep their last)."""
        for head, state in zip(self.bank.heads, self.best_state, strict=True):
            if state is not None:
                head.load_state_dict(state)

    # --- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        node = dict(self.hparams.optimizer or {})
        kwargs = {k: v for k, v in node.items() if k not in _PER_HEAD_OPTIM}
        scale = self.hparams.lr_scale
        groups = []
        for design, head in zip(self.hparams.designs, self.bank.heads, strict=True):
            groups += head_param_groups(head, design["lr"] * scale, design["weight_decay"], name=f"head/{design['name']}")
        design = self.hparams.designs[0]
        optimizer = optimizer_of_groups(groups, lr=design["lr"] * scale, weight_decay=design["weight_decay"],
                                        **{"opt": "adamw", **kwargs})
        if not self.hparams.scheduler:
            return {"optimizer": optimizer}
        total_steps = int(self.trainer.estimated_stepping_batches)
        scheduler = hydra.utils.instantiate(self.hparams.scheduler, _partial_=True)(optimizer, total_steps=total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler, metric) -> None:
        scheduler.step_update(num_updates=self.global_step)

    def _nonfinite_action(self) -> str:
        from vitcls.callbacks.nonfinite_loss import NonFiniteLossGuard

        guards = [c for c in self.trainer.callbacks if isinstance(c, NonFiniteLossGuard)]
        return guards[0].action if guards else "error"

    def on_before_optimizer_step(self, optimizer) -> None:
        """Heads whose loss was not finite on any rank: no update (action skip), or stopped for good (error:
        where a lone run would have failed). Stopped heads never update again and are not selected."""
        flags = self.trainer.strategy.reduce(self._nonfinite.float().to(self.device), reduce_op="sum").cpu() > 0
        self._nonfinite.zero_()
        action = self._nonfinite_action()
        for index in torch.nonzero(flags).flatten().tolist():
            if action == "skip":
                self.skipped_steps[index].append(self.global_step)
            elif self.stopped[index] is None:
                self.stopped[index] = (f"non-finite training loss at step {self.global_step} "
                                       f"(epoch {self.current_epoch}): stopped there")
                log.warning("bank head %s: %s", self.names[index], self.stopped[index])
        for index, head in enumerate(self.bank.heads):
            if flags[index] or self.stopped[index] is not None:
                for parameter in head.parameters():
                    parameter.grad = None

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """`trainer.gradient_clip_val` per head, as each head's lone run clips its own gradients."""
        if not gradient_clip_val:
            return
        for head in self.bank.heads:
            parameters = [p for p in head.parameters() if p.grad is not None]
            if not parameters:
                continue
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(parameters, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(parameters, gradient_clip_val)

    # --- checkpoints: what resuming a bank needs beyond the weights ------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["bank"] = {
            "best_score": self.best_score, "best_epoch": self.best_epoch, "best_state": self.best_state,
            "stopped": self.stopped, "skipped_steps": self.skipped_steps, "random_streams": self.bank.random_streams,
            "history": self.history,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("bank")
        if state:
            self.best_score, self.best_epoch, self.best_state = state["best_score"], state["best_epoch"], state["best_state"]
            self.stopped, self.skipped_steps = state["stopped"], state["skipped_steps"]
            self.bank.random_streams, self.history = state["random_streams"], state["history"]
