"""Weights & Biases, never blocking or failing a run: setup (offline without a key or a server, the sweep's group,
a resumed run's id), what a W&B run shows of vitcls's results, finishing it. The only module that imports wandb."""

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

from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import OmegaConf
from torch import Tensor

from vitcls.config.overrides import design_name, is_design_key, override_key, parse_overrides
from vitcls.config.sweeps import sweep_group_name, sweep_label
from vitcls.data.folder import Sample
from vitcls.data.images import load_rgb
from vitcls.io import write_text_atomic
from vitcls.loggers import ResultSink
from vitcls.reporting.results import RunResults

log = logging.getLogger(__name__)

# <run_dir>/wandb_run_id: a resumed run (ckpt_path inside that run dir) continues the same W&B run.
RUN_ID_FILE = "wandb_run_id"


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


def _swept_keys(hydra_cfg: Any) -> set[str] | None:
    """Keys a multirun varies: lists on the command line (`head=linear,mlp`) and `hydra.sweeper.params`
    of a config; None when the command line is not Hydra's (another launcher's argv)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    command_line = [arg for arg in sys.argv[1:] if "=" in arg and not arg.startswith("-")]
    try:
        swept = {o.key_or_group for o in OverridesParser.create().parse_overrides(command_line) if o.is_sweep_override()}
    except OverrideParseException:
        return None
    return swept | set((hydra_cfg.sweeper.get("params") if "sweeper" in hydra_cfg else None) or {})


def _is_search(hydra_cfg: Any) -> bool:
    """A sweeper that searches (Optuna) rather than enumerating a grid: what it varies is hyperparameters."""
    return "optuna" in str(OmegaConf.select(hydra_cfg, "sweeper._target_", default="") or "").lower()


def job_identity() -> tuple[str | None, str | None, str]:
    """(W&B group, run name, design) of this job. In a multirun: the sweep's descriptive group, the swept
    overrides as name, and those of them that make the design (no seeds, paths or searched hyperparameters);
    for a single run: no group or name, and its command-line overrides that make the design."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None, None, design_name({}, [])
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    settings = parse_overrides(overrides)
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None, None, design_name(settings, [key for key in settings if is_design_key(key)])
    swept = _swept_keys(hydra_cfg)
    if swept is not None:
        overrides = [o for o in overrides if override_key(o.split("=", 1)[0]) in swept]
    name = ",".join(overrides) or f"job{hydra_cfg.job.num}"
    keys = [] if _is_search(hydra_cfg) else [k for k in parse_overrides(overrides) if is_design_key(k)]
    group = sweep_group_name(sweep_label(hydra_cfg.job.name, dict(hydra_cfg.runtime.choices)), hydra_cfg.sweep.dir)
    return group, name, design_name(settings, keys)


class VitclsWandbLogger(WandbLogger, ResultSink):
    """A WandbLogger whose config is the resolved Hydra config, one flat key per setting (`head._target_`,
    `optim.lr`: filterable in the runs table) plus the run's `design`, and which logs the results: the test
    confusion matrix (plot and image), a table of test predictions with thumbnails, and for a head bank the table
    of every head and the bank figure (each head also as a run of its own with `bank_head_runs`).

    Lightning also logs the LightningModule's and DataModule's init arguments as hyperparameters; they are
    the same settings under other names (`optimizer.lr` = `optim.lr`, `root` = `data.root`), so once
    `log_config` has named them they are not sent again.
    """

    def __init__(self, *args: Any, prediction_table_rows: int = 64, thumbnail_size: int = 64,
                 bank_head_runs: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.bank_head_runs = bank_head_runs  # a head bank also logs each head as its own run in its group
        # Lightning always passes `anonymous` to wandb.init (None when unset); wandb >= 0.19 warns that the
        # setting has no effect whatever its value.
        self._wandb_init.pop("anonymous", None)
        self.prediction_table_rows = prediction_table_rows
        self.thumbnail_size = thumbnail_size
        self._config_names: frozenset[str] = frozenset()  # top-level names that only repeat the config

    def log_hyperparams(self, params: Any) -> None:
        flat = _flatten_dict(_convert_params(params), delimiter=".")
        flat = {key: value for key, value in flat.items() if key.split(".", 1)[0] not in self._config_names}
        if flat:
            super().log_hyperparams(flat)

    sink_name = "wandb"

    def log_run_config(self, config: dict[str, Any], facts: dict[str, Any], repeated_by: set[str]) -> None:
        """The run config (nested), flattened, with the run's `design` and `facts`; `repeated_by`: top-level names
        of the module's and datamodule's hyperparameters, which Lightning logs later and which are not sent then."""
        flat = _flatten_dict(_convert_params({**config, "design": job_identity()[2], **facts}), delimiter=".")
        super().log_hyperparams({key: value for key, value in flat.items() if not key.endswith("._partial_")})
        self._config_names = frozenset(repeated_by)

    @rank_zero_only
    def log_results(self, results: RunResults) -> None:
        head = results.selected_head
        if head.test_confusion is not None:
            self.log_test_results(head.test_confusion, results.class_names, results.test_samples,
                                  head.test_probabilities, results.figures.get("test_confusion_matrix"))
        if results.table:
            self._log_bank(results)

    def _log_bank(self, results: RunResults) -> None:
        """The table of all heads (`selected` marks the one chosen on validation) and the bank figure in this run;
        with `bank_head_runs`, each head also as a run of its own in the same group (its per-epoch metrics, val and
        test in its summary)."""
        import wandb

        rows = results.table
        columns = list(rows[0])
        logs = {"bank/heads": wandb.Table(columns=columns, data=[[row[c] for c in columns] for row in rows])}
        if "bank" in results.figures:
            logs["bank/figure"] = wandb.Image(str(results.figures["bank"]))
        self.experiment.log(logs)
        self.experiment.summary["bank/selected"] = results.selected_head.name
        if self.bank_head_runs:
            _log_head_runs(self, results.history, [head.record for head in results.heads])

    @rank_zero_only
    def log_report(self, name: str, rows: Sequence[dict[str, Any]], figures: dict[str, Path],
                   summary: dict[str, Any]) -> None:
        import wandb

        columns = list(dict.fromkeys(key for row in rows for key in row))
        data = [[row.get(column) for column in columns] for row in rows]
        for position in range(len(columns)):  # a W&B column holds one type: mixed ones as text
            kinds = {type(line[position]) for line in data if line[position] is not None}
            if len(kinds) > 1 or not kinds <= {int, float, str, bool}:
                for line in data:
                    line[position] = None if line[position] is None else str(line[position])
        logs: dict[str, Any] = {f"{name}/table": wandb.Table(columns=columns, data=data)}
        logs.update({f"{name}/{figure}": wandb.Image(str(path)) for figure, path in figures.items()})
        self.experiment.log(logs)
        self.experiment.summary.update({f"{name}/{key}": value for key, value in summary.items()})

    @classmethod
    def log_comparison(cls, sweep_dir: Path, out_dir: Path, rows: Sequence[dict[str, Any]], figure: Path,
                       title: str) -> Path:
        return log_comparison(sweep_dir, out_dir, rows, figure, title)

    @classmethod
    def finish(cls, exit_code: int) -> None:
        finish_wandb(exit_code)

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
    quiet: bool = True,
    **kwargs: Any,
) -> VitclsWandbLogger:
    """A W&B logger that goes offline without an API key or network, and knows its sweep.

    `offline=None` decides automatically: WANDB_MODE=offline/disabled is respected, and without
    credentials or without a reachable server the run is written offline (upload it later with
    `wandb sync`). In a Hydra multirun, `group` defaults to the sweep directory and `name` to the
    swept overrides of the job. `resume_from` (a checkpoint) continues the W&B run of its run directory.
    `quiet` is W&B's setting: no version banner and no history and summary panels at the end (17-35 lines per
    job); its warnings, errors, the offline notice and the run's URL still show.
    """
    if quiet and "settings" not in kwargs:
        import wandb

        kwargs["settings"] = wandb.Settings(quiet=True)
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
    sweep_group, job_name, _ = job_identity()
    # A `wandb agent` assigns the run id through WANDB_RUN_ID: keep it, or the run leaves its sweep.
    run_id = (
        kwargs.pop("id", None)
        or (_stored_run_id(Path(resume_from)) if resume_from else None)
        or os.environ.get("WANDB_RUN_ID")
        or uuid.uuid4().hex[:12]
    )
    if rank_zero_only.rank == 0:
        write_text_atomic(Path(save_dir) / RUN_ID_FILE, run_id + "\n")
    if kwargs.get("bank_head_runs") and not (group or sweep_group):
        group = f"bank_{Path(save_dir).resolve().name}"  # the bank's run and its heads' runs side by side
    return VitclsWandbLogger(
        offline=offline,
        group=group or sweep_group,
        name=name or job_name,
        id=run_id,
        save_dir=save_dir,
        log_model=log_model,
        **kwargs,
    )


def _log_head_runs(logger: VitclsWandbLogger, history: Sequence[dict[str, Any]], heads: Sequence[dict[str, Any]]) -> None:
    import wandb

    bank_run = logger.experiment
    for head in heads:
        prefix = f"head/{head['name']}/"
        run = wandb.init(
            project=logger._wandb_init.get("project"), group=bank_run.group or None, name=head["name"],
            job_type="bank_head", dir=str(logger.save_dir), mode="offline" if logger._offline else "online",
            reinit="create_new",  # leaves the bank's run the active one
            settings=wandb.Settings(quiet=getattr(logger._wandb_init.get("settings"), "quiet", False)),  # as the bank's
            config={"design": head["name"], "bank_run": bank_run.id, "overrides": head["overrides"],
                    **{f"design/{k}": v for k, v in head["design"].items()}},
        )
        try:
            for entry in history:
                values = {k.removeprefix(prefix): v for k, v in entry.items() if k.startswith(prefix)}
                if values:
                    run.log({**values, "epoch": entry["epoch"]}, step=entry["step"])
            run.summary.update({f"best/{split}/{k}": v for split in ("val", "test") for k, v in (head.get(split) or {}).items()})
            run.summary.update({"best_epoch": head["best_epoch"], "rank": head["rank"], "status": head["status"]})
        finally:
            run.finish()


def finish_wandb(exit_code: int) -> None:
    """End the live W&B run, if any: the next job of a multirun must not log into it."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=exit_code)


def log_comparison(
    sweep_dir: Path, out_dir: Path, rows: Sequence[dict[str, Any]], figure: Path, title: str
) -> Path:
    """The design table and figure of `vitcls-compare --wandb` as one W&B run (job_type=compare) in the W&B
    group of the sweep's runs; offline, as the training loggers are, without a key or a server.
    Returns the W&B run directory."""
    import wandb

    project, group = _sweep_wandb_names(sweep_dir)
    reason = _offline_reason()
    if reason and not os.environ.get("WANDB_MODE"):
        log.warning("%s: logging the comparison to W&B offline; upload later with `wandb sync`", reason)
    columns = list(rows[0]) if rows else []
    run = wandb.init(
        project=project, group=group, job_type="compare", name=f"compare {group}",
        dir=str(out_dir), mode="offline" if reason else "online", config={"sweep_dir": str(sweep_dir), "title": title},
        reinit="create_new",
    )
    try:
        run.log({
            "compare/designs": wandb.Table(columns=columns, data=[list(row.values()) for row in rows]),
            "compare/figure": wandb.Image(str(figure)),
        })
        run.summary["compare/best"] = next((row["design"] for row in rows if row.get("rank") == 1), None)
    finally:
        run.finish()
    return Path(run.dir).parent


def _sweep_wandb_names(sweep_dir: Path) -> tuple[str, str]:
    """(project, group) that the sweep's runs used: from a job's config.yaml and .hydra/hydra.yaml."""
    project, group = "vitcls", None
    for config_file in sorted(Path(sweep_dir).rglob("config.yaml")):
        if config_file.parent.name == ".hydra":
            continue
        config = OmegaConf.load(config_file)
        project = OmegaConf.select(config, "logger.wandb.project", default=None) or project
        group = OmegaConf.select(config, "logger.wandb.group", default=None)
        hydra_file = config_file.parent / ".hydra" / "hydra.yaml"
        if group is None and hydra_file.is_file():
            hydra_cfg = OmegaConf.load(hydra_file).hydra
            choices = OmegaConf.to_container(hydra_cfg.runtime.choices)
            group = sweep_group_name(sweep_label(str(config.get("task_name", "train")), choices), hydra_cfg.sweep.dir)
        break
    return project, group or sweep_group_name("compare", sweep_dir)
