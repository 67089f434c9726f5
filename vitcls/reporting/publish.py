"""Handing a run's config and results, and comparisons, to the configured loggers (vitcls.loggers)."""


from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vitcls.loggers import ResultSink, sink_class
from vitcls.reporting.results import RunResults


def _sinks(loggers: Sequence[Any]) -> list[ResultSink]:
    return [logger for logger in loggers if isinstance(logger, ResultSink)]


def publish_run_config(loggers: Sequence[Any], config: dict[str, Any], hyperparameters: dict[str, Any],
                       facts: dict[str, Any], repeated_by: set[str]) -> None:
    """The resolved config and what the run computed of it (batch layout, parameter counts) to every logger:
    Lightning's `log_hyperparams` for all, the whole config for the sinks (`repeated_by`: the names of the
    module's and datamodule's hyperparameters, which Lightning logs again later)."""
    for logger in loggers:
        if isinstance(logger, ResultSink):
            logger.log_run_config(config, facts, repeated_by)
        else:
            logger.log_hyperparams(hyperparameters)


def publish_results(loggers: Sequence[Any], results: RunResults) -> None:
    for sink in _sinks(loggers):
        sink.log_results(results)


def publish_comparison(sinks: Sequence[str], sweep_dir: Path, out_dir: Path, rows: Sequence[dict[str, Any]],
                       figure: Path, title: str) -> dict[str, Path]:
    """A comparison's table and figure to each named sink (`vitcls-compare --log-to wandb`): {name: where}."""
    return {name: sink_class(name).log_comparison(sweep_dir, out_dir, rows, figure, title) for name in sinks}
