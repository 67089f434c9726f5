"""What a run trains and reports, chosen where the command is parsed; `vitcls.run.lifecycle.run` does the rest.

  LoneRun   one design from the config's head, tap and optimiser; any part of the backbone may train. Its best
            epoch is the monitored ModelCheckpoint's, tested from that checkpoint.
  HeadBank  `bank=<preset>`: K designs on one frozen backbone, trained together (one backbone pass per batch, or
            cached features), each tested at its own best validation epoch; the best on validation is the run's
            result, and bank.json/csv/png and heads/ describe every head.

A study answers: what it refuses (`check`), its designs, which callbacks it keeps, the weights to test, and
what it writes (`report`, rank zero writes; summary.json last).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from vitcls.config.overrides import merge_overrides, override_key
from vitcls.errors import ConfigError
from vitcls.inference.export_dir import export_checkpoint
from vitcls.io import write_json_atomic, write_text_atomic
from vitcls.models.lightning_module import ClassifierModule
from vitcls.reporting.plots import save_bank_chart
from vitcls.reporting.publish import publish_results
from vitcls.run.bank_heads import (
    HEAD,
    STATUS_OK,
    csv_text,
    export_bank_head,
    head_checkpoint,
    head_rows,
    markdown_table,
    rank_heads,
    save_checkpoint,
    save_head_weights,
    select_head,
)
from vitcls.run.design_plan import DesignPlan, expand_bank, lone_design
from vitcls.run.layout import (
    BANK_CSV,
    BANK_FIGURE,
    BANK_FILE,
    CHECKPOINT_DIR,
    HEAD_WEIGHTS,
    HEADS_DIR,
    PROBES_TABLE,
    SELECTED_CHECKPOINT,
    SUMMARY_FILE,
    head_dir_name,
)
from vitcls.run.probing import configured_probes, probe_rows
from vitcls.run.run_files import (
    TrainedRun,
    head_results,
    run_results,
    summarise,
    write_head_predictions,
    write_test_confusion,
)

log = logging.getLogger(__name__)

# Settings of this job that a head's lone run must not repeat: the bank itself, and where this run writes.
_NOT_REPEATED = ("bank", "paths.output_dir", "ckpt_path", "overwrite")


def job_overrides() -> list[str]:
    """The command line of this job minus the bank's own settings, its run directory and Hydra's bookkeeping:
    what the lone run of each design repeats."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [o for o in HydraConfig.get().overrides.task
            if not ((key := override_key(o.split("=", 1)[0])) in _NOT_REPEATED or key.startswith(("bank.", "hydra.", "hydra/")))]


class Study:
    def check(self, cfg: DictConfig) -> None:
        """Refuse settings the study cannot train, before any work."""

    def designs(self, cfg: DictConfig) -> DesignPlan:
        raise NotImplementedError

    def keeps_callback(self, callback: Any) -> bool:
        return True

    def best_weights(self, trainer: L.Trainer, module: ClassifierModule) -> str | None:
        """The checkpoint to validate and test (None: the module's weights as they are)."""
        raise NotImplementedError

    def report(self, trained: TrainedRun) -> dict[str, Any]:
        raise NotImplementedError


def best_checkpoint(trainer: L.Trainer) -> tuple[str | None, int | None, float | None]:
    """(path, epoch, monitored score) of the monitored ModelCheckpoint's best checkpoint."""
    callback = trainer.checkpoint_callback
    if not isinstance(callback, ModelCheckpoint) or not callback.best_model_path:
        return None, None, None
    checkpoint = torch.load(callback.best_model_path, map_location="cpu", weights_only=True, mmap=True)
    score = callback.best_model_score
    return callback.best_model_path, int(checkpoint["epoch"]), None if score is None else float(score)


class LoneRun(Study):
    def designs(self, cfg: DictConfig) -> DesignPlan:
        return lone_design(cfg, job_overrides())

    def best_weights(self, trainer: L.Trainer, module: ClassifierModule) -> str | None:
        return best_checkpoint(trainer)[0]

    def report(self, trained: TrainedRun) -> dict[str, Any]:
        summary = summarise(trained, 0, *best_checkpoint(trained.trainer))
        if not trained.trainer.is_global_zero:
            return summary
        run_dir, paths = trained.run_dir, summary["paths"]
        paths.update({name: str(path) for name, path in write_head_predictions(trained, 0, run_dir).items()})
        confusion = write_test_confusion(trained, 0, run_dir)
        paths.update({f"test_confusion_matrix_{k}": str(v) for k, v in confusion.items()})
        figures = {"test_confusion_matrix": confusion["png"]} if "png" in confusion else {}
        probes = configured_probes(trained.cfg)
        if probes:
            rows = probe_rows(trained, trained.batches, probes, trained.cfg.probe_tap, first_index=1)
            paths["probes_json"] = str(write_json_atomic(run_dir / PROBES_TABLE, rows))
            summary["probes"] = {row["name"]: {"val": row["val"], "test": row["test"]} for row in rows}
        publish_results(trained.trainer.loggers, run_results(trained, summary, [head_results(trained, 0)], 0, figures))
        export = trained.cfg.get("export")
        if export and export.enabled and summary["best_ckpt"]:
            paths["export_dir"] = str(export_checkpoint(summary["best_ckpt"], export.dir, onnx=export.onnx,
                                                        summary=summary))
        write_json_atomic(run_dir / SUMMARY_FILE, summary)  # last: a run directory with it has finished
        log.info("test metrics: %s", summary["test"])
        log.info("run directory: %s", run_dir)
        return summary


# Callbacks that change the backbone or average weights across heads' steps: not per-head experiments.
_REFUSED_CALLBACKS = {
    "lp_ft": "callbacks=lp_ft unfreezes the backbone after the probe epochs",
    "ema": "callbacks=ema averages the weights of the whole module, and the bank selects each head's own epoch",
}


class HeadBank(Study):
    def check(self, cfg: DictConfig) -> None:
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
                "bank: an adapter trains inside the shared backbone, so every head's loss would train it and no head "
                "would be the design it names. Use adapter=none with bank=, or compare adapters with a multirun: "
                "python train.py -m adapter=none,<name> ..."
            )
        for key, node in (cfg.get("callbacks") or {}).items():
            if key in _REFUSED_CALLBACKS and node:
                raise ConfigError(f"bank: {_REFUSED_CALLBACKS[key]}; drop it (callbacks=default) or run a multirun")
        precision = str(cfg.trainer.get("precision"))
        if precision in ("16-mixed", "16", "16-true"):
            raise ConfigError(
                f"bank: trainer.precision={precision} trains every head under one fp16 gradient scaler, so one head's "
                "overflow would skip every head's step. Use trainer.precision=bf16-mixed or 32-true"
            )

    def designs(self, cfg: DictConfig) -> DesignPlan:
        plan = expand_bank(cfg)
        log.info("head bank: %d designs (%s vary)%s", len(plan.designs), ", ".join(plan.varied),
                 f"; {len(plan.excluded)} combinations left out:" if plan.excluded else "")
        for excluded in plan.excluded:
            log.info("  left out %s: %s", excluded["design"], excluded["reason"])
        return plan

    def keeps_callback(self, callback: Any) -> bool:
        # The bank keeps each head's best epoch itself; last.ckpt (resuming) and the other callbacks stay.
        return not (isinstance(callback, ModelCheckpoint) and callback.monitor is not None)

    def best_weights(self, trainer: L.Trainer, module: ClassifierModule) -> str | None:
        module.use_best_heads()
        return None

    def head_records(self, trained: TrainedRun) -> list[dict[str, Any]]:
        cfg, module = trained.cfg, trained.module
        common = merge_overrides(job_overrides(), ["model.train_blocks=none",
                                                   f"feature_cache.enabled={str(bool(cfg.feature_cache.enabled)).lower()}"])
        heads = []
        for design in trained.plan.designs:
            index, stopped = design.index, module.stopped[design.index]
            heads.append({
                "index": index,
                "name": design.name,
                "protocol": HEAD,
                "status": STATUS_OK if stopped is None else f"stopped: {stopped}",
                "design": {"head": design.head, "tap": module.net.config["heads"][index]["tap"], "lr": design.lr,
                           "weight_decay": design.weight_decay},
                "overrides": merge_overrides(common, design.overrides),
                "params": module.head_parameter_counts(index),
                "best_epoch": module.best_epoch[index],
                "skipped_steps": len(module.skipped_steps[index]),
                "val": trained.metrics("val", index),
                "test": trained.metrics("test", index),
            })
        probes = configured_probes(cfg)
        if probes:
            heads += probe_rows(trained, trained.batches, probes, cfg.probe_tap, first_index=len(heads))
        for rank, index in enumerate(rank_heads(heads, cfg.monitor, module.maximize), start=1):
            heads[index]["rank"] = rank
        return heads

    def report(self, trained: TrainedRun) -> dict[str, Any]:
        cfg, module, trainer, run_dir = trained.cfg, trained.module, trained.trainer, trained.run_dir
        heads = self.head_records(trained)
        selected = select_head(heads, cfg.monitor, module.maximize)
        if selected is None:
            raise ConfigError(f"bank: no head has a validation {cfg.monitor} (every head stopped, or no validation ran)")
        entry = heads[selected]
        summary = summarise(trained, selected, str(run_dir / CHECKPOINT_DIR / SELECTED_CHECKPOINT), entry["best_epoch"],
                            entry["val"].get(cfg.monitor.removeprefix("val/")))
        report = {
            "monitor": cfg.monitor,
            "selected": {"index": selected, "name": entry["name"], "selected_on": cfg.monitor,
                         "value": summary["best_val_score"], "best_epoch": entry["best_epoch"]},
            "checkpoint": f"{CHECKPOINT_DIR}/{SELECTED_CHECKPOINT}",
            "num_heads": len(heads),
            "varied": trained.plan.varied,
            "excluded": trained.plan.excluded,
            "inputs": module.inputs,
            "taps": [tap.settings for tap in module.net.taps.taps],
            "class_names": trained.datamodule.class_names,
            "num_samples": summary["num_samples"],
            "epochs_trained": trainer.current_epoch,
            "global_steps": trainer.global_step,
            # training (with its validation epochs), after the inputs were ready: images/s of all heads at once
            "fit_s": round(trained.fit_s, 3),
            "train_images_per_s": round(summary["num_samples"]["train"] * trainer.current_epoch / trained.fit_s, 1),
            "heads": heads,
        }
        if not trainer.is_global_zero:
            return summary
        self.write_heads(trained, [head for head in heads if head["protocol"] == HEAD])
        paths = summary["paths"]
        save_checkpoint(head_checkpoint(module, selected, dict(trained.datamodule.hparams), trainer.global_step),
                        run_dir / CHECKPOINT_DIR / SELECTED_CHECKPOINT)
        paths.update({name: str(path) for name, path in write_head_predictions(trained, selected, run_dir).items()})
        confusion = write_test_confusion(trained, selected, run_dir, title=f"test confusion matrix: {entry['name']}")
        paths.update({f"test_confusion_matrix_{k}": str(v) for k, v in confusion.items()})
        report["wall_time_s"] = summary["wall_time_s"]
        rows = head_rows(heads, selected)
        paths["bank_json"] = str(write_json_atomic(run_dir / BANK_FILE, report))
        paths["bank_csv"] = str(write_text_atomic(run_dir / BANK_CSV, csv_text(rows)))
        paths["bank_png"] = str(save_bank_chart(report, run_dir / BANK_FIGURE))
        figures = {"bank": Path(paths["bank_png"]), **({"test_confusion_matrix": confusion["png"]} if "png" in confusion else {})}
        results = run_results(trained, summary, [head_results(trained, h["index"], h) for h in heads
                                                 if h["protocol"] == HEAD], selected, figures, rows)
        publish_results(trainer.loggers, results)
        export = cfg.get("export")
        if export and export.enabled:
            paths["export_dir"] = str(export_bank_head(run_dir, export.dir, onnx=export.onnx))
        summary["monitor"] = cfg.monitor
        summary["bank"] = {"num_heads": len(heads), "selected": entry["name"], "selected_index": selected,
                           "selected_on": cfg.monitor, "excluded": len(trained.plan.excluded)}
        write_json_atomic(run_dir / SUMMARY_FILE, summary)  # last: a run directory with it has finished
        log.info("head bank, best first (selected on %s; test shown, never selected on):\n%s", cfg.monitor,
                 markdown_table(report, limit=10))
        log.info("selected head: %s; export it with vitcls-export %s OUT_DIR (--bank-head NAME for another)",
                 entry["name"], run_dir)
        log.info("run directory: %s", run_dir)
        return summary

    @staticmethod
    def write_heads(trained: TrainedRun, heads: list[dict[str, Any]]) -> None:
        """heads/<NN>/: predictions per split, the test confusion matrix (CSV) and the head's weights."""
        for head in heads:
            index = head["index"]
            directory = trained.run_dir / HEADS_DIR / head_dir_name(index, len(heads))
            files = write_head_predictions(trained, index, directory)
            confusion = write_test_confusion(trained, index, directory, png=False)
            if "csv" in confusion:
                files["test_confusion_matrix"] = confusion["csv"]
            files["weights"] = save_head_weights(trained.module.net.heads[index], directory / HEAD_WEIGHTS)
            head["files"] = {name: str(path.relative_to(trained.run_dir)) for name, path in files.items()}


def study_of(cfg: DictConfig) -> Study:
    """`bank=<preset>`: a head bank; otherwise a lone run."""
    return HeadBank() if cfg.get("bank") is not None else LoneRun()

