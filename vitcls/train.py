"""`run(cfg)`: fit on the image folder, test the best checkpoint, write the run directory.

The steps, in order: check the settings and the run directory; build the data (scan and check the folder),
the trainer and the module; record the run's settings; fit, then score the best checkpoint on val and test;
summarise; write the reports, with the per-image val and test predictions that vitcls-compare pairs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra.utils
import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from vitcls.callbacks.train_cost import TrainCost
from vitcls.checkpoints import validate_resume_checkpoint
from vitcls.config import check_train_config, in_multirun, instantiate_dict_group, net_config, to_plain
from vitcls.data.datamodule import ImageFolderDataModule
from vitcls.data.feature_cache import build_feature_datamodule
from vitcls.data.prefix_cache import build_prefix_datamodule, first_trainable_block
from vitcls.distributed import BatchLayout, batch_layout, ddp_scoped_to_this_hydra_job
from vitcls.inference.export import export_checkpoint
from vitcls.io import read_json, write_json_atomic, write_text_atomic
from vitcls.loggers.wandb import log_run_config, log_test_results, wandb_loggers
from vitcls.metrics import metric_names, split_metrics
from vitcls.models.lightning_module import ClassifierModule
from vitcls.models.optim import scale_lr_with_batch
from vitcls.precision import describe_precision, log_precision, use_tensor_cores_for_float32
from vitcls.predictions import write_predictions
from vitcls.reports import save_confusion_matrix
from vitcls.run_dir import (
    CONFIG_FILE,
    PREDICTIONS_FILES,
    SUMMARY_FILE,
    JobSkipped,
    RunPlan,
    plan_run,
    set_aside_previous_attempt,
    summary_paths,
)

log = logging.getLogger(__name__)
# Rank zero's RunPlan, for the DDP processes that Lightning starts (they inherit the environment).
RUN_PLAN_ENV = "VITCLS_RUN_PLAN"


@dataclass
class FitOutcome:
    """What fitting and testing produced: the best checkpoint, its val and its test results."""

    best_ckpt: str | None
    best_epoch: int | None
    best_val_score: float | None
    val_results: dict[str, Any]
    test_results: dict[str, Any]


def build_datamodule(cfg: DictConfig) -> ImageFolderDataModule:
    """Instantiate the `data` node, materialise (demo/download sources) and check the folder: no model needed."""
    check_cache = cfg.data.get("image_check_cache_dir") or (
        cfg.feature_cache.dir if cfg.feature_cache.enabled else None
    )
    datamodule = hydra.utils.instantiate(cfg.data, image_check_cache_dir=check_cache, _convert_="all")
    datamodule.prepare_data()
    datamodule.scan()
    return datamodule


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """The `trainer` node, with the `callbacks` and `logger` dict groups instantiated entry by entry."""
    return hydra.utils.instantiate(
        cfg.trainer,
        callbacks=instantiate_dict_group(cfg.get("callbacks")),
        logger=instantiate_dict_group(cfg.get("logger")) or False,
        _convert_="all",
    )


def build_module(cfg: DictConfig, class_names: list[str], effective_batch_size: int | None = None) -> ClassifierModule:
    """`effective_batch_size` (default: data.batch_size, one device) for `lr_scaling.enabled`."""
    optimizer = to_plain(cfg.optim)
    if cfg.lr_scaling.enabled:
        optimizer = scale_lr_with_batch(
            optimizer, effective_batch_size or cfg.data.batch_size, cfg.lr_scaling.base_batch_size
        )
    return ClassifierModule(
        net=net_config(cfg, class_names),
        train_blocks=cfg.model.train_blocks,
        bitfit=cfg.model.bitfit,
        compile=cfg.model.compile,
        optimizer=optimizer,
        scheduler=to_plain(cfg.get("sched")),
        loss=to_plain(cfg.get("loss")),
    )


def best_checkpoint(trainer: L.Trainer) -> tuple[str | None, int | None, float | None]:
    callback = trainer.checkpoint_callback
    if not isinstance(callback, ModelCheckpoint) or not callback.best_model_path:
        return None, None, None
    checkpoint = torch.load(callback.best_model_path, map_location="cpu", weights_only=True, mmap=True)
    score = callback.best_model_score
    return callback.best_model_path, int(checkpoint["epoch"]), None if score is None else float(score)


def prepare_run(cfg: DictConfig) -> tuple[Path, RunPlan]:
    """Check the settings, decide what to do in the run directory (start, resume, skip), seed everything.

    Starting afresh in a directory that holds an earlier attempt moves it to previous_attempts/N/. The
    checkpoint resumed from becomes `cfg.ckpt_path`, so that loggers (the W&B run id) and config.yaml see it.
    """
    output_dir = Path(cfg.paths.output_dir)
    check_train_config(cfg)
    plan = agreed_run_plan(cfg, output_dir)
    if plan.action == "skip":
        return output_dir, plan
    validate_resume_checkpoint(plan.ckpt_path)
    if plan.reason:
        log.info("%s: %s", output_dir, plan.reason)
    if plan.action == "start" and rank_zero_only.rank == 0:
        moved = set_aside_previous_attempt(output_dir)
        if moved is not None:
            log.warning("the earlier attempt in %s was moved to %s", output_dir, moved)
    cfg.ckpt_path = plan.ckpt_path
    output_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    use_tensor_cores_for_float32()
    return output_dir, plan


def agreed_run_plan(cfg: DictConfig, output_dir: Path) -> RunPlan:
    """Rank zero decides from the directory and hands the plan to the DDP processes Lightning starts later
    (which would find the directory changed: an earlier attempt moved aside, a new config.yaml)."""
    if rank_zero_only.rank != 0 and os.environ.get(RUN_PLAN_ENV):
        return RunPlan.from_json(os.environ[RUN_PLAN_ENV])
    plan = plan_run(
        output_dir,
        cfg.get("ckpt_path"),
        resume=bool(cfg.get("resume")),
        resume_failed=bool(cfg.get("resume_failed", True)),
        # Processes started by torchrun/srun find rank zero's run already there.
        overwrite=bool(cfg.get("overwrite")) or rank_zero_only.rank != 0,
        in_multirun=in_multirun(),
    )
    if rank_zero_only.rank == 0:
        os.environ[RUN_PLAN_ENV] = plan.to_json()
    return plan


def record_settings(
    cfg: DictConfig, trainer: L.Trainer, module: ClassifierModule, datamodule: ImageFolderDataModule,
    layout: BatchLayout,
) -> None:
    """config.yaml in the run directory; batch layout and parameter counts to the loggers, and to W&B the
    flat config with the run's design."""
    if trainer.is_global_zero:
        write_text_atomic(Path(cfg.paths.output_dir) / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
    params = {"params/total": module.parameter_counts["total"], "params/trainable": module.parameter_counts["trainable"]}
    for logger in trainer.loggers:  # merged with the module's hyperparameters that fit() logs
        if logger not in wandb_loggers(trainer.loggers):
            logger.log_hyperparams(layout.as_dict())
            logger.log_hyperparams(params)
    computed = {"effective_batch_size": layout.effective_batch_size, "world_size": layout.world_size, **params}
    log_run_config(trainer.loggers, cfg, computed, set(module.hparams) | set(datamodule.hparams))
    if trainer.is_global_zero:
        log_precision(trainer.precision, trainer.strategy.root_device.type)


def training_batches(
    cfg: DictConfig, datamodule: ImageFolderDataModule, module: ClassifierModule, trainer: L.Trainer
) -> ImageFolderDataModule:
    """The image batches, or, with `feature_cache.enabled`, what the frozen part of the backbone makes of them:
    the features (frozen backbone) or the tokens entering the first trainable block (model.train_blocks=N)."""
    if not cfg.feature_cache.enabled:
        return datamodule
    if first_trainable_block(module) is None:
        batches = build_feature_datamodule(datamodule, module, trainer, cfg.feature_cache.dir)
        module.expect_inputs("features")
        return batches
    batches, block = build_prefix_datamodule(
        datamodule, module, trainer, cfg.feature_cache.dir, cfg.feature_cache.token_dtype
    )
    module.expect_inputs("tokens", block)
    return batches


def fit(trainer: L.Trainer, module: L.LightningModule, batches: ImageFolderDataModule, ckpt_path: str | None) -> None:
    """`trainer.fit`; a Ctrl+C that Lightning handled stays a KeyboardInterrupt (not a plain exit)."""
    try:
        trainer.fit(module, datamodule=batches, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:
        raise
    except SystemExit as stopped:  # Lightning exits with status 1 after a KeyboardInterrupt it handled
        if trainer.interrupted:
            raise KeyboardInterrupt from stopped
        raise


def fit_and_test(
    trainer: L.Trainer, module: ClassifierModule, batches: ImageFolderDataModule, ckpt_path: str | None
) -> FitOutcome:
    with ddp_scoped_to_this_hydra_job(trainer):
        fit(trainer, module, batches, ckpt_path)
        best_path, best_epoch, best_score = best_checkpoint(trainer)
        # The val metrics of exactly the checkpoint that is tested (the module keeps them off the loggers)
        trainer.validate(module, datamodule=batches, ckpt_path=best_path, verbose=False, weights_only=True)
        val_results = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        results = trainer.test(module, datamodule=batches, ckpt_path=best_path, verbose=True, weights_only=True)
    return FitOutcome(best_path, best_epoch, best_score, val_results, results[0])


def summarise(
    trainer: L.Trainer,
    module: ClassifierModule,
    datamodule: ImageFolderDataModule,
    layout: BatchLayout,
    outcome: FitOutcome,
    ckpt_path: str | None,
    started: float,
    run_dir: Path,
) -> dict[str, Any]:
    """summary.json: val and test metrics of the best checkpoint and what the run was."""
    skipped = datamodule.skipped_files()
    if outcome.best_ckpt is None:
        log.warning("no best checkpoint (no validation selected one): the test metrics are those of the last weights")
    return {
        "class_names": datamodule.class_names,
        "best_ckpt": outcome.best_ckpt,
        "best_epoch": outcome.best_epoch,
        "best_val_score": outcome.best_val_score,
        "monitor": getattr(trainer.checkpoint_callback, "monitor", None),
        "val": split_metrics(outcome.val_results, "val"),
        "test": split_metrics(outcome.test_results, "test"),
        "params": module.parameter_counts,
        "train": next((c.summary for c in trainer.callbacks if isinstance(c, TrainCost)), {}),
        "num_samples": {
            split: len([s for s in samples if s.path not in skipped]) for split, samples in datamodule.splits.items()
        },
        "ignored_files": datamodule.scan().num_ignored,
        "skipped_files": len(skipped),
        "skipped": skipped,
        "epochs_trained": trainer.current_epoch,
        "global_steps": trainer.global_step,
        "world_size": layout.world_size,
        "effective_batch_size": layout.effective_batch_size,
        "precision": describe_precision(trainer.precision, trainer.strategy.root_device.type),
        "batch_layout": dataclasses.asdict(layout),
        "resumed_from": ckpt_path,
        "wall_time_s": round(time.time() - started, 2),
        "paths": summary_paths(run_dir),
    }


def write_outputs(
    cfg: DictConfig, summary: dict[str, Any], trainer: L.Trainer, module: ClassifierModule,
    datamodule: ImageFolderDataModule,
) -> None:
    """Rank zero: per-image predictions, the test confusion matrix, the loggers' test results, the export,
    then summary.json."""
    output_dir = Path(cfg.paths.output_dir)
    skipped = summary["skipped"]
    for split in ("val", "test"):
        if not module.predictions[split]:  # the split was not evaluated (trainer.limit_val_batches=0)
            continue
        probabilities = torch.cat(module.predictions[split])
        # Files that went bad during the run were dropped from their batch; a trainer.limit_*_batches cut
        # scores the first images of the split (one process: the sampler keeps the split's order).
        samples = [s for s in datamodule.splits[split] if s.path not in skipped][: len(probabilities)]
        summary["paths"][f"{split}_predictions"] = str(
            write_predictions(output_dir / PREDICTIONS_FILES[split], samples, probabilities, datamodule.class_names)
        )
    files = save_confusion_matrix(
        module.last_confusion["test"], datamodule.class_names, output_dir, stem="test_confusion_matrix",
        title="test confusion matrix",
    )
    summary["paths"].update({f"test_confusion_matrix_{k}": str(v) for k, v in files.items()})
    log_test_results(trainer.loggers, module, datamodule, files["png"])
    export = cfg.get("export")
    if export and export.enabled and summary["best_ckpt"]:
        summary["paths"]["export_dir"] = str(
            export_checkpoint(summary["best_ckpt"], export.dir, onnx=export.onnx, summary=summary)
        )
    write_json_atomic(output_dir / SUMMARY_FILE, summary)  # last: a run directory with it has finished
    log.info("test metrics: %s", summary["test"])
    log.info("run directory: %s", output_dir)


def skipped_run(run_dir: Path, plan: RunPlan) -> dict[str, Any]:
    """A finished run's summary, as it is; a failed run left as it is stops the job (vitcls.cli.hydra_job)."""
    if not (run_dir / SUMMARY_FILE).is_file():
        raise JobSkipped(plan.reason)
    log.info("%s: %s", run_dir, plan.reason)
    return read_json(run_dir / SUMMARY_FILE)


def quiet_expected_warnings() -> None:
    # The run directory is also the CSV logger's directory: it holds the config before the logger starts.
    warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
    # A resumed run writes its checkpoints beside the ones it resumes from (a new run has them moved aside).
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    # Under DDP the metrics are logged after torchmetrics synced them: identical on every rank.
    names = "|".join(metric_names())
    warnings.filterwarnings("ignore", message=rf"It is recommended to use `self\.log\('(train|val|test)/({names})'")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train, test and report (a head bank with `bank=...`). Returns the summary (also written to
    `<output_dir>/summary.json`)."""
    if cfg.get("bank") is not None:  # python train.py bank=<name>: K heads on one frozen backbone
        from vitcls.bank.run import run as run_bank

        return run_bank(cfg)
    started = time.time()
    quiet_expected_warnings()
    run_dir, plan = prepare_run(cfg)
    if plan.action == "skip":
        return skipped_run(run_dir, plan)
    ckpt_path = plan.ckpt_path
    datamodule = build_datamodule(cfg)
    trainer = build_trainer(cfg)
    layout = batch_layout(trainer, datamodule.hparams.batch_size)
    module = build_module(cfg, datamodule.class_names, layout.effective_batch_size)
    datamodule.set_data_config(module.data_config)
    record_settings(cfg, trainer, module, datamodule, layout)
    outcome = fit_and_test(trainer, module, training_batches(cfg, datamodule, module, trainer), ckpt_path)
    summary = summarise(trainer, module, datamodule, layout, outcome, ckpt_path, started, run_dir)
    if trainer.is_global_zero:
        write_outputs(cfg, summary, trainer, module, datamodule)
    return summary
