"""`run(cfg)` of a head bank (`python train.py bank=<name> ...`): K head designs trained together on one frozen
backbone, each selected at its own best validation epoch, then scored on val and test; the head that is best on
validation is the run's result.

The steps, in order: check the settings and expand the bank's lists into designs; build the data, the trainer and
the bank (as a lone run builds its network); fit on images or on cached features; load each head's best weights and
score them all on val and test in one pass each; write the per-head files, bank.json/bank.csv/bank.png, the
selected head's checkpoint and predictions, and summary.json describing the selected head as a lone run's.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from vitcls.bank.checkpoint import (
    SELECTED_CHECKPOINT,
    export_bank_head,
    head_checkpoint,
    save_checkpoint,
    save_head_weights,
)
from vitcls.bank.designs import BankPlan, expand_bank
from vitcls.bank.features import build_bank_feature_datamodule
from vitcls.bank.figure import save_bank_chart
from vitcls.bank.report import (
    BANK_FIGURE,
    HEAD_WEIGHTS,
    HEADS_DIR,
    STATUS_OK,
    bank_rows,
    head_dir_name,
    markdown_table,
    merge_overrides,
    ordered_metrics,
    override_key,
    rank_heads,
    select_head,
    write_bank_tables,
)
from vitcls.config import TRAINING_SETTINGS, instantiate_dict_group, to_plain
from vitcls.data.datamodule import ImageFolderDataModule
from vitcls.distributed import batch_layout, ddp_scoped_to_this_hydra_job
from vitcls.errors import ConfigError
from vitcls.io import write_json_atomic
from vitcls.loggers.wandb import log_bank_results, wandb_loggers
from vitcls.models.bank import BankModule
from vitcls.predictions import write_predictions
from vitcls.reports import save_confusion_matrix
from vitcls.run_dir import CHECKPOINT_DIR, PREDICTIONS_FILES, SUMMARY_FILE
from vitcls.train import (
    FitOutcome,
    build_datamodule,
    fit,
    prepare_run,
    quiet_expected_warnings,
    record_settings,
    skipped_run,
    summarise,
)

log = logging.getLogger(__name__)

# Callbacks that change the backbone or average weights across heads' steps: not per-head experiments.
_REFUSED_CALLBACKS = {
    "lp_ft": "callbacks=lp_ft unfreezes the backbone after the probe epochs",
    "ema": "callbacks=ema averages the weights of the whole module, and the bank selects each head's own epoch",
}


def check_bank_settings(cfg: DictConfig) -> None:
    """A bank needs a frozen backbone; refused otherwise, saying why and what to run instead."""
    train_blocks = cfg.model.get("train_blocks")
    if str(train_blocks) != "none" or cfg.model.get("bitfit"):
        setting = f"model.train_blocks={train_blocks}" + (" model.bitfit=true" if cfg.model.get("bitfit") else "")
        raise ConfigError(
            f"bank: {setting} is not allowed: the heads of a bank share one backbone, so a backbone that trains "
            "would be trained by the sum of every head's loss and no head would be the design it names. A bank "
            "needs model.train_blocks=none. To compare designs that fine-tune the backbone, run one job per "
            f"design: python train.py -m head=linear,mlp model.train_blocks={train_blocks} ..."
        )
    if cfg.get("adapter") is not None:
        raise ConfigError(
            "bank: an adapter (LoRA, VPT) trains inside the shared backbone, so every head's loss would train it "
            "and no head would be the design it names. Use adapter=none with bank=, or compare adapters with a "
            "multirun: python train.py -m adapter=none,lora ..."
        )
    for key, node in (cfg.get("callbacks") or {}).items():
        if key in _REFUSED_CALLBACKS and node:
            raise ConfigError(f"bank: {_REFUSED_CALLBACKS[key]}; drop it (callbacks=default) or run a multirun")


def build_bank_trainer(cfg: DictConfig) -> L.Trainer:
    """The trainer of a lone run without its monitored ModelCheckpoint: the bank keeps each head's best epoch
    itself (`BankModule`); last.ckpt (resuming) and the other callbacks stay."""
    import hydra.utils

    callbacks = [c for c in instantiate_dict_group(cfg.get("callbacks"))
                 if not (isinstance(c, ModelCheckpoint) and c.monitor is not None)]
    return hydra.utils.instantiate(cfg.trainer, callbacks=callbacks,
                                   logger=instantiate_dict_group(cfg.get("logger")) or False, _convert_="all")


def build_bank_module(cfg: DictConfig, plan: BankPlan, class_names: list[str], effective_batch_size: int) -> BankModule:
    scale = effective_batch_size / cfg.lr_scaling.base_batch_size if cfg.lr_scaling.enabled else 1.0
    return BankModule(
        backbone={k: v for k, v in to_plain(cfg.model).items() if k not in TRAINING_SETTINGS},
        designs=[design.as_dict() for design in plan.designs],
        class_names=class_names,
        optimizer=to_plain(cfg.get("optim")),
        scheduler=to_plain(cfg.get("sched")),
        loss=to_plain(cfg.get("loss")),
        monitor=cfg.monitor,
        lr_scale=scale,
        compile=cfg.model.compile,
    )


def bank_batches(cfg: DictConfig, datamodule: ImageFolderDataModule, module: BankModule, trainer: L.Trainer):
    if not cfg.feature_cache.enabled:
        return datamodule
    return build_bank_feature_datamodule(datamodule, module, trainer, cfg.feature_cache.dir)


def fit_and_score(trainer: L.Trainer, module: BankModule, batches, ckpt_path: str | None) -> float:
    """Fit, then score every head at its best epoch on val and test. Returns the seconds `fit` took."""
    with ddp_scoped_to_this_hydra_job(trainer):
        started = time.perf_counter()
        fit(trainer, module, batches, ckpt_path)
        fit_s = time.perf_counter() - started
        module.use_best_heads()
        trainer.validate(module, datamodule=batches, verbose=False)
        trainer.test(module, datamodule=batches, verbose=False)
    return fit_s


# Settings of this job that a head's lone run must not repeat: the bank itself, and where this run writes.
_NOT_REPEATED = ("bank", "paths.output_dir", "ckpt_path", "overwrite")


def job_overrides() -> list[str]:
    """The command line of this job minus the bank's own settings, its run directory and Hydra's bookkeeping:
    what every head's lone run repeats."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    keep = []
    for override in HydraConfig.get().overrides.task:
        key = override_key(override)
        if not (key in _NOT_REPEATED or key.startswith(("bank.", "hydra.", "hydra/"))):
            keep.append(override)
    return keep


def head_records(cfg: DictConfig, plan: BankPlan, module: BankModule) -> list[dict[str, Any]]:
    common = merge_overrides(job_overrides(), ["model.train_blocks=none",
                                               f"feature_cache.enabled={str(bool(cfg.feature_cache.enabled)).lower()}"])
    heads = []
    for design in plan.designs:
        index = design.index
        stopped = module.stopped[index]
        heads.append({
            "index": index,
            "name": design.name,
            "status": STATUS_OK if stopped is None else f"stopped: {stopped}",
            "design": {"head": design.head, "tap": design.tap, "lr": design.lr, "weight_decay": design.weight_decay},
            "overrides": merge_overrides(common, design.overrides),
            "params": module.head_parameter_counts(index),
            "best_epoch": module.best_epoch[index],
            "skipped_steps": len(module.skipped_steps[index]),
            "val": ordered_metrics(module.results.get("val", [{}] * module.num_heads)[index]),
            "test": ordered_metrics(module.results.get("test", [{}] * module.num_heads)[index]),
        })
    order = rank_heads(heads, cfg.monitor, module.maximize)
    for rank, index in enumerate(order, start=1):
        heads[index]["rank"] = rank
    return heads


def _samples(datamodule: ImageFolderDataModule, split: str, skipped: dict, count: int) -> list:
    return [s for s in datamodule.splits[split] if s.path not in skipped][:count]


def write_head_files(run_dir: Path, heads: list[dict], module: BankModule, datamodule: ImageFolderDataModule,
                     skipped: dict) -> None:
    """heads/<NN>/: predictions per split, the test confusion matrix (CSV) and the head's weights."""
    for head in heads:
        index = head["index"]
        directory = run_dir / HEADS_DIR / head_dir_name(index, len(heads))
        files = {}
        for split, probabilities in module.predictions.items():
            rows = probabilities[:, index]
            files[f"{split}_predictions"] = write_predictions(
                directory / PREDICTIONS_FILES[split], _samples(datamodule, split, skipped, len(rows)), rows,
                datamodule.class_names)
        if "test" in module.confusion_matrices:
            files["test_confusion_matrix"] = save_confusion_matrix(
                module.confusion_matrices["test"][index], datamodule.class_names, directory,
                stem="test_confusion_matrix", png=False)["csv"]
        files["weights"] = save_head_weights(module.bank.heads[index], directory / HEAD_WEIGHTS)
        head["files"] = {name: str(path.relative_to(run_dir)) for name, path in files.items()}


def write_selected(cfg: DictConfig, run_dir: Path, module: BankModule, datamodule: ImageFolderDataModule,
                   index: int, global_step: int, skipped: dict, summary_paths: dict) -> Path:
    """The selected head as a lone run leaves it: its checkpoint, its val/test predictions, its test confusion
    matrix at the top of the run directory."""
    checkpoint = save_checkpoint(
        head_checkpoint(module, index, to_plain(cfg.get("optim")), dict(datamodule.hparams), global_step),
        run_dir / CHECKPOINT_DIR / SELECTED_CHECKPOINT,
    )
    for split, probabilities in module.predictions.items():
        rows = probabilities[:, index]
        summary_paths[f"{split}_predictions"] = str(write_predictions(
            run_dir / PREDICTIONS_FILES[split], _samples(datamodule, split, skipped, len(rows)), rows,
            datamodule.class_names))
    if "test" in module.confusion_matrices:
        files = save_confusion_matrix(module.confusion_matrices["test"][index], datamodule.class_names, run_dir,
                                      stem="test_confusion_matrix", title=f"test confusion matrix: {module.names[index]}")
        summary_paths.update({f"test_confusion_matrix_{k}": str(v) for k, v in files.items()})
    return checkpoint


def log_wandb(trainer: L.Trainer, module: BankModule, datamodule: ImageFolderDataModule, report: dict[str, Any],
              figure: Path, paths: dict[str, Any], skipped: dict) -> None:
    """W&B: the selected head's test results as a lone run logs them, then the bank's table and figure."""
    index = report["selected"]["index"]
    loggers = wandb_loggers(trainer.loggers)
    if "test" in module.predictions:
        probabilities = module.predictions["test"][:, index]
        samples = _samples(datamodule, "test", skipped, len(probabilities))
        png = paths.get("test_confusion_matrix_png")
        for logger in loggers:
            logger.log_test_results(module.confusion_matrices["test"][index], datamodule.class_names, samples,
                                    probabilities, Path(png) if png else None)
    rows = bank_rows(report["heads"], index)
    log_bank_results(loggers, rows, report["selected"]["name"], figure, module.history, report["heads"])


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train the bank, select on validation, test, report. Returns the summary of the selected head (also written
    to `<output_dir>/summary.json`), with a `bank` entry."""
    started = time.time()
    quiet_expected_warnings()
    check_bank_settings(cfg)
    plan = expand_bank(cfg)
    log.info("head bank: %d designs (%s vary)%s", len(plan.designs), ", ".join(plan.varied),
             f"; {len(plan.excluded)} combinations left out:" if plan.excluded else "")
    for excluded in plan.excluded:
        log.info("  left out %s: %s", excluded["design"], excluded["reason"])
    run_dir, plan_of_run = prepare_run(cfg)
    if plan_of_run.action == "skip":
        return skipped_run(run_dir, plan_of_run)
    ckpt_path = plan_of_run.ckpt_path
    datamodule = build_datamodule(cfg)
    trainer = build_bank_trainer(cfg)
    layout = batch_layout(trainer, datamodule.hparams.batch_size)
    module = build_bank_module(cfg, plan, datamodule.class_names, layout.effective_batch_size)
    datamodule.set_data_config(module.data_config)
    record_settings(cfg, trainer, module, datamodule, layout)
    batches = bank_batches(cfg, datamodule, module, trainer)
    fit_s = fit_and_score(trainer, module, batches, ckpt_path)

    heads = head_records(cfg, plan, module)
    selected = select_head(heads, cfg.monitor, module.maximize)
    if selected is None:
        raise ConfigError(f"bank: no head has a validation {cfg.monitor} (every head stopped, or no validation ran)")
    entry = heads[selected]
    skipped = datamodule.skipped_files()
    outcome = FitOutcome(
        best_ckpt=str(run_dir / CHECKPOINT_DIR / SELECTED_CHECKPOINT), best_epoch=entry["best_epoch"],
        best_val_score=entry["val"].get(cfg.monitor.removeprefix("val/")),
        val_results={f"val/{k}": v for k, v in entry["val"].items()},
        test_results={f"test/{k}": v for k, v in entry["test"].items()},
    )
    summary = summarise(trainer, module, datamodule, layout, outcome, ckpt_path, started, run_dir)
    summary["monitor"] = cfg.monitor
    summary["params"] = entry["params"]
    report = {
        "monitor": cfg.monitor,
        "selected": {"index": selected, "name": entry["name"], "selected_on": cfg.monitor,
                     "value": outcome.best_val_score, "best_epoch": entry["best_epoch"]},
        "checkpoint": f"{CHECKPOINT_DIR}/{SELECTED_CHECKPOINT}",
        "num_heads": len(heads),
        "varied": plan.varied,
        "excluded": plan.excluded,
        "inputs": module.inputs,
        "taps": [tap.settings for tap in module.bank.taps],
        "class_names": datamodule.class_names,
        "num_samples": summary["num_samples"],
        "epochs_trained": trainer.current_epoch,
        "global_steps": trainer.global_step,
        # training (with its validation epochs), after the features were ready: images/s of all heads at once
        "fit_s": round(fit_s, 3),
        "train_images_per_s": round(summary["num_samples"]["train"] * trainer.current_epoch / fit_s, 1),
        "heads": heads,
    }
    if trainer.is_global_zero:
        write_head_files(run_dir, heads, module, datamodule, skipped)
        write_selected(cfg, run_dir, module, datamodule, selected, trainer.global_step, skipped, summary["paths"])
        report["wall_time_s"] = round(time.time() - started, 2)
        files = write_bank_tables(run_dir, report)
        files["bank_png"] = save_bank_chart(report, run_dir / BANK_FIGURE)
        summary["paths"].update({name: str(path) for name, path in files.items()})
        log_wandb(trainer, module, datamodule, report, files["bank_png"], summary["paths"], skipped)
        export = cfg.get("export")
        if export and export.enabled:
            summary["paths"]["export_dir"] = str(export_bank_head(run_dir, export.dir, onnx=export.onnx))
        summary["bank"] = {"num_heads": len(heads), "selected": entry["name"], "selected_index": selected,
                           "selected_on": cfg.monitor, "excluded": len(plan.excluded)}
        summary["wall_time_s"] = round(time.time() - started, 2)
        write_json_atomic(run_dir / SUMMARY_FILE, summary)  # last: a run directory with it has finished
        log.info("head bank, best first (selected on %s; test shown, never selected on):\n%s", cfg.monitor,
                 markdown_table(report, limit=10))
        log.info("selected head: %s; export it with vitcls-export %s OUT_DIR (--bank-head NAME for another)",
                 entry["name"], run_dir)
        log.info("run directory: %s", run_dir)
    return summary
