"""What every trained run writes about a head: summary.json's entries, per-image predictions and the test confusion
matrix; and the `RunResults` the loggers receive."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from vitcls.callbacks.train_cost import TrainCost
from vitcls.data.datamodule import ImageFolderDataModule
from vitcls.data.folder import Sample
from vitcls.distributed import BatchLayout
from vitcls.metrics import ordered_metrics
from vitcls.models.lightning_module import ClassifierModule
from vitcls.precision import describe_precision
from vitcls.reporting.plots import save_confusion_matrix
from vitcls.reporting.predictions_csv import write_predictions
from vitcls.reporting.results import HeadResults, RunResults
from vitcls.run.design_plan import DesignPlan
from vitcls.run.layout import PREDICTIONS_FILES, summary_paths

log = logging.getLogger(__name__)


@dataclass
class TrainedRun:
    """A run after fitting and testing: everything its study reports from."""

    cfg: DictConfig
    run_dir: Path
    trainer: L.Trainer
    module: ClassifierModule
    datamodule: ImageFolderDataModule
    plan: DesignPlan
    layout: BatchLayout
    fit_s: float
    resumed_from: str | None
    started: float
    batches: ImageFolderDataModule  # what the heads trained on: images, or cached features / tokens
    _skipped: dict[str, str] | None = field(default=None, repr=False)

    @property
    def skipped(self) -> dict[str, str]:
        """{path: reason} of the files left out (by the scan, or gone bad during the run)."""
        if self._skipped is None:
            self._skipped = self.datamodule.skipped_files()
        return self._skipped

    def samples(self, split: str, count: int) -> list[Sample]:
        """The images of `split` that the evaluation scored, in order. Files that went bad during the run were
        dropped from their batch; a trainer.limit_*_batches cut scores the first images of the split (one process:
        the sampler keeps the split's order)."""
        return [s for s in self.datamodule.splits[split] if s.path not in self.skipped][:count]

    def metrics(self, split: str, index: int) -> dict[str, float]:
        results = self.module.results.get(split)
        return ordered_metrics(results[index] if results else None)


def summarise(trained: TrainedRun, index: int, best_ckpt: str | None, best_epoch: int | None,
              best_val_score: float | None) -> dict[str, Any]:
    """summary.json: val and test metrics of head `index` at its best epoch, and what the run was."""
    trainer, datamodule = trained.trainer, trained.datamodule
    if best_epoch is None:
        log.warning("no best epoch (no validation selected one): the test metrics are those of the last weights")
    return {
        "design": trained.module.names[index],
        "class_names": datamodule.class_names,
        "best_ckpt": best_ckpt,
        "best_epoch": best_epoch,
        "best_val_score": best_val_score,
        "monitor": trained.cfg.monitor,
        "val": trained.metrics("val", index),
        "test": trained.metrics("test", index),
        "params": trained.module.head_parameter_counts(index),
        "train": next((c.summary for c in trainer.callbacks if isinstance(c, TrainCost)), {}),
        "num_samples": {
            split: len([s for s in samples if s.path not in trained.skipped])
            for split, samples in datamodule.splits.items()
        },
        "ignored_files": datamodule.scan().num_ignored,
        "skipped_files": len(trained.skipped),
        "skipped": trained.skipped,
        "epochs_trained": trainer.current_epoch,
        "global_steps": trainer.global_step,
        "world_size": trained.layout.world_size,
        "effective_batch_size": trained.layout.effective_batch_size,
        "precision": describe_precision(trainer.precision, trainer.strategy.root_device.type),
        "batch_layout": dataclasses.asdict(trained.layout),
        "resumed_from": trained.resumed_from,
        "wall_time_s": round(time.time() - trained.started, 2),
        "paths": summary_paths(trained.run_dir),
    }


def write_head_predictions(trained: TrainedRun, index: int, directory: Path) -> dict[str, Path]:
    """{split}_predictions.csv of head `index` for every scored split (val is not scored with
    trainer.limit_val_batches=0)."""
    files = {}
    for split, probabilities in trained.module.predictions.items():
        rows = probabilities[:, index]
        files[f"{split}_predictions"] = write_predictions(
            directory / PREDICTIONS_FILES[split], trained.samples(split, len(rows)), rows,
            trained.datamodule.class_names)
    return files


def write_test_confusion(trained: TrainedRun, index: int, directory: Path, png: bool = True,
                         title: str = "test confusion matrix") -> dict[str, Path]:
    """test_confusion_matrix.csv (and .png) of head `index`; nothing when the test split was not scored."""
    matrices = trained.module.confusion_matrices.get("test")
    if matrices is None:
        return {}
    return save_confusion_matrix(matrices[index], trained.datamodule.class_names, directory,
                                 stem="test_confusion_matrix", title=title, png=png)


def head_results(trained: TrainedRun, index: int, record: dict[str, Any] | None = None) -> HeadResults:
    module = trained.module
    test = module.predictions.get("test")
    confusion = module.confusion_matrices.get("test")
    return HeadResults(
        index=index, name=module.names[index], val=trained.metrics("val", index), test=trained.metrics("test", index),
        test_probabilities=None if test is None else test[:, index],
        test_confusion=None if confusion is None else confusion[index], record=record or {},
    )


def run_results(trained: TrainedRun, summary: dict[str, Any], heads: list[HeadResults], selected: int,
                figures: dict[str, Path], table: list[dict[str, Any]] | None = None) -> RunResults:
    test = trained.module.predictions.get("test")
    return RunResults(
        run_dir=trained.run_dir, summary=summary, class_names=trained.datamodule.class_names,
        test_samples=trained.samples("test", 0 if test is None else len(test)), heads=heads, selected=selected,
        figures=figures, table=table or [], history=trained.module.history,
    )
