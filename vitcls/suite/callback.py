"""The suite's Hydra callback (conf/suite/): its manifest when the sweep starts, its leaderboard when the last job
ends, in the launching process whatever launcher ran the jobs (this process, or a cluster's)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra.utils
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from vitcls.config.sweeps import sweep_group_name, sweep_label
from vitcls.errors import VitclsError
from vitcls.loggers import finish_runs
from vitcls.reporting.publish import publish_report
from vitcls.suite.board import write_manifest, write_suite_leaderboard

log = logging.getLogger(__name__)


class SuiteCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        suite_dir = Path(config.hydra.sweep.dir)
        write_manifest(suite_dir, OmegaConf.to_container(config.suite, resolve=True), config.monitor)
        log.info("suite %s: %d datasets, results in %s", config.suite.name, len(config.suite.datasets), suite_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        suite_dir = Path(config.hydra.sweep.dir)
        try:
            board, files = write_suite_leaderboard(suite_dir)
        except VitclsError as error:
            log.error("suite %s: no leaderboard: %s", config.suite.name, error)
            return
        _publish(config, suite_dir, board, files)
        log.info("suite %s: leaderboard in %s", config.suite.name, files["markdown"])


def _publish(config: DictConfig, suite_dir: Path, board: dict[str, Any], files: dict[str, Path]) -> None:
    """The leaderboard's table and figures in a summary run of each logger that takes results."""
    loggers = []
    for node in (config.get("logger") or {}).values():
        if isinstance(node, DictConfig) and "_target_" in node:
            group = sweep_group_name(sweep_label(config.task_name, dict(config.hydra.runtime.choices)), suite_dir)
            settings = {"save_dir": str(suite_dir), "name": "leaderboard", "group": group}
            overrides = {key: value for key, value in settings.items() if key in node}
            loggers.append(hydra.utils.instantiate(node, **overrides, _convert_="all"))
    figures = {name: path for name, path in files.items() if str(path).endswith(".png")}
    rows = [{key: value for key, value in row.items() if key != "datasets"} for row in board["rows"]]
    publish_report(loggers, "suite/leaderboard", rows, figures, {"verdict": board.get("verdict")})
    finish_runs(exit_code=0)
