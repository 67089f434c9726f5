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
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from vitcls.checkpoints import validate_resume_checkpoint
from vitcls.config_checks import check_run_dir, check_train_config
from vitcls.data.datamodule import ImageFolderDataModule
from vitcls.data.feature_cache import build_feature_datamodule
from vitcls.data.quality import CheckMemo
from vitcls.distributed import batch_layout, ddp_scoped_to_this_hydra_job
from vitcls.export import export_checkpoint
from vitcls.instantiate import instantiate_dict_group, to_plain
from vitcls.metrics import METRIC_NAMES
from vitcls.models.module import ImageClassifier
from vitcls.models.optim import scale_lr_with_batch
from vitcls.precision import use_tensor_cores_for_float32
from vitcls.reports import save_confusion_matrix, write_json_atomic, write_text_atomic
from vitcls.resume import resolve_ckpt_path
from vitcls.tracking import log_run_config, log_test_results

log = logging.getLogger(__name__)


# Settings of the data group that vitcls.train acts on, not arguments of the DataModule (so not recorded in
# checkpoints: where caches live says nothing about the data).
RUN_SETTINGS = ("feature_cache", "feature_cache_dir", "image_check_cache_dir")


def build_datamodule(data_cfg: DictConfig) -> ImageFolderDataModule:
    """Instantiate, materialise (demo/download sources) and validate the folder: no model needed yet."""
    settings = {k: v for k, v in to_plain(data_cfg).items() if k not in RUN_SETTINGS}
    datamodule = hydra.utils.instantiate(settings, _convert_="all")
    memo_dir = data_cfg.get("image_check_cache_dir") or (data_cfg.feature_cache_dir if data_cfg.get("feature_cache") else None)
    if memo_dir:
        datamodule.check_memo = CheckMemo.in_directory(memo_dir, datamodule.root)
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
    # Under DDP: the metrics are logged after torchmetrics synced them, identical on every rank.
    warnings.filterwarnings(
        "ignore", message=rf"It is recommended to use `self\.log\('(train|val|test)/({'|'.join(METRIC_NAMES)})'"
    )
    output_dir = Path(cfg.paths.output_dir)
    check_train_config(cfg)
    if rank_zero_only.rank == 0:  # DDP workers that Lightning starts later join the same directory
        check_run_dir(output_dir, cfg)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    validate_resume_checkpoint(ckpt_path)
    output_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    use_tensor_cores_for_float32()

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
    params = module.parameter_counts
    for logger in trainer.loggers:  # merged with the module's hyperparameters that fit() logs
        logger.log_hyperparams({"params/total": params["total"], "params/trainable": params["trainable"]})
    log_run_config(trainer.loggers, cfg)

    batches = datamodule
    if cfg.data.get("feature_cache"):
        batches = build_feature_datamodule(datamodule, module, trainer, cfg.data.feature_cache_dir)
        module.inputs_are_features = True
    with ddp_scoped_to_this_hydra_job(trainer):
        trainer.fit(module, datamodule=batches, ckpt_path=ckpt_path, weights_only=True)
        best_path, best_epoch, best_score = best_checkpoint(trainer)
        test_results = trainer.test(module, datamodule=batches, ckpt_path=best_path, verbose=True,
                                    weights_only=True)[0]
    skipped = datamodule.skipped_files()

    summary = {
        "class_names": datamodule.class_names,
        "best_ckpt": best_path,
        "best_epoch": best_epoch,
        "best_val_score": best_score,
        "monitor": getattr(trainer.checkpoint_callback, "monitor", None),
        "test": split_metrics(test_results, "test"),
        "params": params,
        "num_samples": {split: len([s for s in samples if s.path not in skipped])
                        for split, samples in datamodule.splits.items()},
        "ignored_files": datamodule.scan().num_ignored,
        "skipped_files": len(skipped),
        "skipped": skipped,
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
        log_test_results(trainer.loggers, module, datamodule, files["png"])
        metrics_csv = output_dir / "metrics.csv"
        if metrics_csv.exists():
            summary["paths"]["metrics_csv"] = str(metrics_csv)
        export = cfg.get("export")
        if export and export.enabled and best_path:
            summary["paths"]["export_dir"] = str(
                export_checkpoint(best_path, export.dir, onnx=export.onnx, summary=summary)
            )
        write_json_atomic(output_dir / "summary.json", summary)
        log.info("test metrics: %s", summary["test"])
        log.info("run directory: %s", output_dir)
    return summary
