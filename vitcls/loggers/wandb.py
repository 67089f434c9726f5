"""Experiment trackers that never block or fail a run: W&B setup, what a W&B run shows, finishing it."""

from __future__ import annotations

import logging
import os
import socket
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from vitcls.data.folder import Sample
from vitcls.data.images import load_rgb
from vitcls.io import write_text_atomic

log = logging.getLogger(__name__)

# <run_dir>/wandb_run_id: a resumed run (ckpt_path inside that run dir) continues the same W&B run.
RUN_ID_FILE = "wandb_run_id"
_WANDB_GROUP_MAX_CHARS = 128


def _wandb_credentials_available() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def _wandb_server_reachable(timeout_s: float = 3.0) -> bool:
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _offline_reason() -> str | None:
    """Why this run must be written offline, or None to go online."""
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("offline", "dryrun", "disabled"):
        return f"WANDB_MODE={mode}"
    if not _wandb_credentials_available():
        return "no W&B API key found"
    if not _wandb_server_reachable():
        return "the W&B server is not reachable"
    return None


def _stored_run_id(checkpoint: Path) -> str | None:
    """The W&B run id kept in the run directory of a checkpoint (<run_dir>/checkpoints/x.ckpt or <run_dir>/x.ckpt)."""
    for directory in (checkpoint.parent, checkpoint.parent.parent):
        id_file = directory / RUN_ID_FILE
        if id_file.is_file():
            return id_file.read_text().strip() or None
    return None


def _multirun_group_and_name() -> tuple[str | None, str | None]:
    """(sweep directory, the swept overrides of this job) inside a Hydra multirun, else (None, None)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None, None
    hydra_cfg = HydraConfig.get()
    parser = OverridesParser.create()
    # Swept keys: lists on the command line (`head=linear,mlp`) and `hydra.sweeper.params` of a config.
    command_line = [arg for arg in sys.argv[1:] if "=" in arg and not arg.startswith("-")]
    try:
        swept = {o.key_or_group for o in parser.parse_overrides(command_line) if o.is_sweep_override()}
    except OverrideParseException:  # another launcher's argv: name the job by all its overrides
        swept = None
    swept_params = (hydra_cfg.sweeper.get("params") if "sweeper" in hydra_cfg else None) or {}
    job_overrides = list(hydra_cfg.overrides.task)
    if swept is not None:
        swept |= set(swept_params)
        job_overrides = [o for o in job_overrides if parser.parse_override(o).key_or_group in swept]
    name = ",".join(job_overrides) or f"job{hydra_cfg.job.num}"
    return str(hydra_cfg.sweep.dir)[-_WANDB_GROUP_MAX_CHARS:], name


class VitclsWandbLogger(WandbLogger):
    """A WandbLogger whose config keys are flat (`head._target_`, `optim.lr`: filterable in the runs table)
    and which logs the test results: a confusion matrix plot and a table of predictions with thumbnails.
    """

    def __init__(self, *args: Any, prediction_table_rows: int = 64, thumbnail_size: int = 64, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # Lightning always passes `anonymous` to wandb.init (None when unset); wandb >= 0.19 warns that the
        # setting has no effect whatever its value.
        self._wandb_init.pop("anonymous", None)
        self.prediction_table_rows = prediction_table_rows
        self.thumbnail_size = thumbnail_size

    def log_hyperparams(self, params: Any) -> None:
        super().log_hyperparams(_flatten_dict(_convert_params(params), delimiter="."))

    @rank_zero_only
    def log_test_results(
        self,
        confusion: Tensor,
        class_names: Sequence[str],
        samples: Sequence[Sample],
        probabilities: Tensor,
        confusion_png: Path | None = None,
    ) -> None:
        import wandb

        counts = confusion.tolist()
        cells = [
            [actual, predicted, int(counts[i][j])]
            for i, actual in enumerate(class_names)
            for j, predicted in enumerate(class_names)
        ]
        # The table and field names of wandb.plot.confusion_matrix, filled from the (rank-synced) counts.
        logs: dict[str, Any] = {
            "test/confusion_matrix": wandb.plot_table(
                "wandb/confusion_matrix/v1",
                wandb.Table(columns=["Actual", "Predicted", "nPredictions"], data=cells),
                {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"},
                {"title": "test confusion matrix"},
            )
        }
        if confusion_png is not None:
            logs["test/confusion_matrix_image"] = wandb.Image(str(confusion_png))
        if len(probabilities) == len(samples):
            logs["test/predictions"] = self._predictions_table(class_names, samples, probabilities)
        else:  # each rank only saw its shard of the test set
            log.warning(
                "W&B predictions table skipped: %d predictions for %d test images on this rank",
                len(probabilities),
                len(samples),
            )
        self.experiment.log(logs)

    def _predictions_table(
        self, class_names: Sequence[str], samples: Sequence[Sample], probabilities: Tensor
    ):
        """Up to `prediction_table_rows` test images, misclassified ones first, in test order otherwise."""
        import wandb

        scores, predicted = probabilities.max(dim=-1)
        order = sorted(range(len(samples)), key=lambda i: predicted[i].item() == samples[i].label)
        table = wandb.Table(columns=["image", "path", "true_label", "pred_label", "score", "correct"])
        for index in order[: self.prediction_table_rows]:
            sample = samples[index]
            thumbnail = load_rgb(sample.path)
            thumbnail.thumbnail((self.thumbnail_size, self.thumbnail_size))
            pred = int(predicted[index])
            table.add_data(
                wandb.Image(thumbnail),
                sample.path,
                class_names[sample.label],
                class_names[pred],
                float(scores[index]),
                pred == sample.label,
            )
        return table


def create_wandb_logger(
    offline: bool | None = None,
    group: str | None = None,
    name: str | None = None,
    resume_from: str | None = None,
    save_dir: str = ".",
    log_model: bool | str = False,
    **kwargs: Any,
) -> VitclsWandbLogger:
    """A W&B logger that goes offline without an API key or network, and knows its sweep.

    `offline=None` decides automatically: WANDB_MODE=offline/disabled is respected, and without
    credentials or without a reachable server the run is written offline (upload it later with
    `wandb sync`). In a Hydra multirun, `group` defaults to the sweep directory and `name` to the
    swept overrides of the job. `resume_from` (a checkpoint) continues the W&B run of its run directory.
    """
    if offline is None:
        reason = _offline_reason()
        offline = reason is not None
        if offline and not os.environ.get("WANDB_MODE"):
            log.warning("%s: logging W&B offline; upload later with `wandb sync`", reason)
    if offline and log_model:
        log.warning(
            "W&B is offline: checkpoints are not logged as artifacts (logger.wandb.log_model ignored)"
        )
        log_model = False
    sweep_group, job_name = _multirun_group_and_name()
    # A `wandb agent` assigns the run id through WANDB_RUN_ID: keep it, or the run leaves its sweep.
    run_id = (
        kwargs.pop("id", None)
        or (_stored_run_id(Path(resume_from)) if resume_from else None)
        or os.environ.get("WANDB_RUN_ID")
        or uuid.uuid4().hex[:12]
    )
    if rank_zero_only.rank == 0:
        write_text_atomic(Path(save_dir) / RUN_ID_FILE, run_id + "\n")
    return VitclsWandbLogger(
        offline=offline,
        group=group or sweep_group,
        name=name or job_name,
        id=run_id,
        save_dir=save_dir,
        log_model=log_model,
        **kwargs,
    )


def wandb_loggers(loggers: Sequence[Logger]) -> list[VitclsWandbLogger]:
    return [logger for logger in loggers if isinstance(logger, VitclsWandbLogger)]


def log_run_config(loggers: Sequence[Logger], cfg: DictConfig) -> None:
    """Send the resolved Hydra config (not only the module's hyperparameters) to W&B."""
    for logger in wandb_loggers(loggers):
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))


def log_test_results(
    loggers: Sequence[Logger], module: Any, datamodule: Any, confusion_png: Path | None
) -> None:
    """The test confusion matrix and predictions of `module` (after `trainer.test`) to every W&B logger."""
    class_names = datamodule.class_names
    predictions = module.test_predictions
    probabilities = torch.cat(predictions) if predictions else torch.empty(0, len(class_names))
    for logger in wandb_loggers(loggers):
        logger.log_test_results(
            module.last_confusion["test"],
            class_names,
            datamodule.splits["test"],
            probabilities,
            confusion_png,
        )


def finish_wandb(exit_code: int) -> None:
    """End the live W&B run, if any: the next job of a multirun must not log into it."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=exit_code)
