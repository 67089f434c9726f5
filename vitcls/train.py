"""`run(cfg)`: fit on the image folder, test the best checkpoint, write the run directory."""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import hydra.utils
import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from vitcls.data.datamodule import ImageFolderDataModule
from vitcls.distributed import batch_layout, ddp_scoped_to_this_hydra_job
from vitcls.instantiate import instantiate_dict_group, to_plain
from vitcls.metrics import METRIC_NAMES
from vitcls.models.module import ImageClassifier
from vitcls.models.optim import scale_lr_with_batch
from vitcls.precision import use_tensor_cores_for_float32
from vitcls.reports import save_confusion_matrix, write_json_atomic, write_text_atomic
from vitcls.resume import resolve_ckpt_path

log = logging.getLogger(__name__)


def build_datamodule(data_cfg: DictConfig) -> ImageFolderDataModule:
    """Instantiate, materialise (demo/download sources) and validate the folder: no model needed yet."""
    datamodule = hydra.utils.instantiate(data_cfg, _convert_="all")
    datamodule.prepare_data()
    datamodule.scan()
    return datamodule


def build_module(cfg: DictConfig, class_names: list[str], effective_batch_size: int | None = None) -> ImageClassifier:
    """`effective_batch_size` (default: data.batch_size, one device) for optim.scale_lr_with_batch."""
    return ImageClassifier(
        backbone=to_plain(cfg.model),
        head=to_plain(cfg.head),
        class_names=class_names,
        optimizer=scale_lr_with_batch(to_plain(cfg.optim), effective_batch_size or cfg.data.batch_size),
        scheduler=to_plain(cfg.get("sched")),
        loss=to_plain(cfg.get("loss")),
    )


def split_metrics(metrics: dict[str, Any], split: str) -> dict[str, float]:
    """{'test/acc': tensor(0.9)} -> {'acc': 0.9} for the metric names of summary.json."""
    values = {}
    for name in (*METRIC_NAMES, "loss"):
        value = metrics.get(f"{split}/{name}")
        if value is not None:
            values[name] = float(value)
    return values


def best_checkpoint(trainer: L.Trainer) -> tuple[str | None, int | None, float | None]:
    callback = trainer.checkpoint_callback
    if not isinstance(callback, ModelCheckpoint) or not callback.best_model_path:
        return None, None, None
    checkpoint = torch.load(callback.best_model_path, map_location="cpu", weights_only=True, mmap=True)
    score = callback.best_model_score
    return callback.best_model_path, int(checkpoint["epoch"]), None if score is None else float(score)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train, test and report. Returns the summary (also written to `<output_dir>/summary.json`)."""
    started = time.time()
    # The run directory is also the CSV logger's directory: it holds the config before the logger starts.
    warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    use_tensor_cores_for_float32()
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)

    datamodule = build_datamodule(cfg.data)
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer,
        callbacks=instantiate_dict_group(cfg.get("callbacks")),
        logger=instantiate_dict_group(cfg.get("logger")) or False,
        _convert_="all",
    )
    layout = batch_layout(trainer, datamodule.hparams.batch_size)
    module = build_module(cfg, datamodule.class_names, layout.effective_batch_size)
    datamodule.set_data_config(module.data_config)
    for logger in trainer.loggers:
        logger.log_hyperparams(layout.as_dict())
    if trainer.is_global_zero:
        write_text_atomic(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    with ddp_scoped_to_this_hydra_job():
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        best_path, best_epoch, best_score = best_checkpoint(trainer)
        test_results = trainer.test(module, datamodule=datamodule, ckpt_path=best_path, verbose=True)[0]

    summary = {
        "class_names": datamodule.class_names,
        "best_ckpt": best_path,
        "best_epoch": best_epoch,
        "best_val_score": best_score,
        "monitor": getattr(trainer.checkpoint_callback, "monitor", None),
        "test": split_metrics(test_results, "test"),
        "num_samples": {split: len(samples) for split, samples in datamodule.splits.items()},
        "ignored_files": datamodule.scan().num_ignored,
        "epochs_trained": trainer.current_epoch,
        "global_steps": trainer.global_step,
        "world_size": layout.world_size,
        "effective_batch_size": layout.effective_batch_size,
        "batch_layout": dataclasses.asdict(layout),
        "resumed_from": ckpt_path,
        "wall_time_s": round(time.time() - started, 2),
        "paths": {"run_dir": str(output_dir), "config": str(output_dir / "config.yaml")},
    }
    if trainer.is_global_zero:
        files = save_confusion_matrix(
            module.last_confusion["test"], datamodule.class_names, output_dir, stem="test_confusion_matrix",
            title="test confusion matrix",
        )
        summary["paths"].update({f"test_confusion_matrix_{k}": str(v) for k, v in files.items()})
        metrics_csv = output_dir / "metrics.csv"
        if metrics_csv.exists():
            summary["paths"]["metrics_csv"] = str(metrics_csv)
        write_json_atomic(output_dir / "summary.json", summary)
        log.info("test metrics: %s", summary["test"])
        log.info("run directory: %s", output_dir)
    return summary
