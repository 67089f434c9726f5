"""`run(cfg, study)`: the one sequence every training run follows, whatever it trains.

    plan     check the settings; start, resume, skip or refuse, from what the run directory holds
    data     scan and check the folder (vitcls.data), split it
    network  the designs of the study -> one ClassifierModule with one head per design
    fit      on the images, or on what the frozen part of the backbone makes of them (vitcls.run.inputs)
    test     each head at its best validation epoch, on val and test
    report   the study writes the run directory, then vitcls.reporting hands the results to the loggers;
             summary.json comes last (a run directory with it has finished)

The study is chosen where the command is parsed (vitcls.cli.train): a lone run (vitcls.run.studies.LoneRun) or a
head bank (HeadBank). It says what to train, what to refuse, and what to write beyond what every run writes.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import hydra.utils
import lightning as L
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from vitcls.config import in_multirun, instantiate_dict_group, to_plain
from vitcls.config.validation import check_train_config
from vitcls.data.datamodule import ImageFolderDataModule
from vitcls.distributed import BatchLayout, batch_layout, ddp_scoped_to_this_hydra_job
from vitcls.io import read_json, write_text_atomic
from vitcls.metrics import metric_names
from vitcls.models.lightning_module import ClassifierModule
from vitcls.models.optim import scale_lr_with_batch
from vitcls.precision import log_precision, use_tensor_cores_for_float32
from vitcls.reporting.publish import publish_run_config
from vitcls.run.design_plan import DesignPlan, network_config
from vitcls.run.inputs import training_inputs
from vitcls.run.layout import CONFIG_FILE, SUMMARY_FILE
from vitcls.run.plan import JobSkipped, RunPlan, plan_run, set_aside_previous_attempt
from vitcls.run.run_files import TrainedRun
from vitcls.run.studies import Study
from vitcls.untrusted import validate_resume_checkpoint

log = logging.getLogger(__name__)
# Rank zero's RunPlan, for the DDP processes that Lightning starts (they inherit the environment).
RUN_PLAN_ENV = "VITCLS_RUN_PLAN"


def run(cfg: DictConfig, study: Study) -> dict[str, Any]:
    """Train, test and report. Returns the summary (also written to `<output_dir>/summary.json`)."""
    started = time.time()
    quiet_expected_warnings()
    check_train_config(cfg)
    study.check(cfg)
    designs = study.designs(cfg)
    run_dir, plan = prepare_run(cfg)
    if plan.action == "skip":
        return skipped_run(run_dir, plan)
    datamodule = build_datamodule(cfg)
    trainer = build_trainer(cfg, study)
    layout = batch_layout(trainer, datamodule.hparams.batch_size)
    module = build_module(cfg, designs, datamodule.class_names, layout)
    datamodule.set_data_config(module.data_config)
    record_settings(cfg, trainer, module, datamodule, layout)
    quiet_frozen_parts_warning(module)
    batches = training_inputs(cfg, datamodule, module, trainer)
    fit_s = fit_and_test(trainer, module, batches, plan.ckpt_path, study)
    return study.report(TrainedRun(cfg, run_dir, trainer, module, datamodule, designs, layout, fit_s, plan.ckpt_path,
                                   started, batches))


# --- plan ----------------------------------------------------------------------------------------------
def prepare_run(cfg: DictConfig) -> tuple[Path, RunPlan]:
    """Decide what to do in the run directory (start, resume, skip), seed everything.

    Starting afresh in a directory that holds an earlier attempt moves it to previous_attempts/N/. The
    checkpoint resumed from becomes `cfg.ckpt_path`, so that loggers (the W&B run id) and config.yaml see it.
    """
    output_dir = Path(cfg.paths.output_dir)
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


def quiet_frozen_parts_warning(module: L.LightningModule) -> None:
    """Frozen backbone parts are in eval mode on purpose (no dropout or drop-path noise in the features). Lightning
    warns about modules in eval mode at the start of training: silenced for exactly that many modules, so that any
    other module left in eval mode is still reported."""
    frozen = {id(m): m for part in getattr(module, "frozen_backbone_parts", ()) for m in part.modules()}
    in_eval = sum(1 for m in frozen.values() if not m.training)
    if in_eval:
        warnings.filterwarnings("ignore", message=rf"Found {in_eval} module\(s\) in eval mode at the start of training")


# --- data and network -----------------------------------------------------------------------------------
def build_datamodule(cfg: DictConfig) -> ImageFolderDataModule:
    """Instantiate the `data` node, materialise (demo/download sources) and check the folder: no model needed."""
    check_cache = cfg.data.get("image_check_cache_dir") or (
        cfg.feature_cache.dir if cfg.feature_cache.enabled else None
    )
    datamodule = hydra.utils.instantiate(cfg.data, image_check_cache_dir=check_cache, _convert_="all")
    datamodule.prepare_data()
    datamodule.scan()
    return datamodule


def build_trainer(cfg: DictConfig, study: Study) -> L.Trainer:
    """The `trainer` node, with the `callbacks` and `logger` dict groups instantiated entry by entry (the study
    leaves out those it does not use)."""
    callbacks = [c for c in instantiate_dict_group(cfg.get("callbacks")) if study.keeps_callback(c)]
    return hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=instantiate_dict_group(cfg.get("logger")) or False, _convert_="all"
    )


def build_module(cfg: DictConfig, plan: DesignPlan, class_names: list[str], layout: BatchLayout) -> ClassifierModule:
    """One head per design; with `lr_scaling.enabled`, every lr times effective batch / base batch."""
    optimizer = to_plain(cfg.optim)
    scale = 1.0
    if cfg.lr_scaling.enabled:
        optimizer = scale_lr_with_batch(optimizer, layout.effective_batch_size, cfg.lr_scaling.base_batch_size)
        scale = layout.effective_batch_size / cfg.lr_scaling.base_batch_size
    return ClassifierModule(
        net=network_config(cfg, class_names, plan.designs),
        train_blocks=cfg.model.train_blocks,
        bitfit=cfg.model.bitfit,
        compile=cfg.model.compile,
        optimizer=optimizer,
        head_optim=[{"lr": d.lr * scale, "weight_decay": d.weight_decay} for d in plan.designs],
        scheduler=to_plain(cfg.get("sched")),
        loss=to_plain(cfg.get("loss")),
        monitor=cfg.monitor,
    )


def record_settings(cfg: DictConfig, trainer: L.Trainer, module: ClassifierModule, datamodule: ImageFolderDataModule,
                    layout: BatchLayout) -> None:
    """config.yaml in the run directory; the batch layout, parameter counts and the resolved config to the
    loggers."""
    if trainer.is_global_zero:
        write_text_atomic(Path(cfg.paths.output_dir) / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
    params = {"params/total": module.parameter_counts["total"], "params/trainable": module.parameter_counts["trainable"]}
    facts = {"effective_batch_size": layout.effective_batch_size, "world_size": layout.world_size, **params}
    publish_run_config(trainer.loggers, OmegaConf.to_container(cfg, resolve=True), {**layout.as_dict(), **params},
                       facts, set(module.hparams) | set(datamodule.hparams))
    if trainer.is_global_zero:
        log_precision(trainer.precision, trainer.strategy.root_device.type)


# --- fit and test ---------------------------------------------------------------------------------------
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


def fit_and_test(trainer: L.Trainer, module: ClassifierModule, batches: ImageFolderDataModule,
                 ckpt_path: str | None, study: Study) -> float:
    """Fit, then score every head at its best validation epoch on val and test: the val metrics of exactly the
    weights that are tested (kept off the loggers, whose val curves stay one point per epoch). Returns the seconds
    `fit` took (training and its validations, after the inputs were ready)."""
    with ddp_scoped_to_this_hydra_job(trainer):
        started = time.perf_counter()
        fit(trainer, module, batches, ckpt_path)
        fit_s = time.perf_counter() - started
        best = study.best_weights(trainer, module)
        trainer.validate(module, datamodule=batches, ckpt_path=best, verbose=False, weights_only=True)
        trainer.test(module, datamodule=batches, ckpt_path=best, verbose=module.num_heads == 1, weights_only=True)
    return fit_s
