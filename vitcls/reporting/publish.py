"""Handing a run's config and results, a suite's tables, and comparisons to the configured loggers
(vitcls.loggers). A logger that fails to take something is warned about and skipped: a tracker never fails a run
whose results are already written."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vitcls.loggers import ResultSink, sink_class
from vitcls.reporting.results import RunResults

log = logging.getLogger(__name__)


def _safely(logger: Any, what: str, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as error:  # a tracker's own failure (network, its types): the results stay on disk
        log.warning("the %s logger could not take the %s: %s: %s", type(logger).__name__, what,
                    type(error).__name__, error)
        return None


def sinks_of(loggers: Sequence[Any]) -> list[ResultSink]:
    return [logger for logger in loggers if isinstance(logger, ResultSink)]


def publish_run_config(loggers: Sequence[Any], config: dict[str, Any], hyperparameters: dict[str, Any],
                       facts: dict[str, Any], repeated_by: set[str]) -> None:
    """The resolved config and what the run computed of it (batch layout, parameter counts) to every logger:
    Lightning's `log_hyperparams` for all, the whole config for the sinks (`repeated_by`: the names of the
    module's and datamodule's hyperparameters, which Lightning logs again later)."""
    for logger in loggers:
        if isinstance(logger, ResultSink):
            _safely(logger, "run config", lambda logger=logger: logger.log_run_config(config, facts, repeated_by))
        else:
            logger.log_hyperparams(hyperparameters)


def publish_results(loggers: Sequence[Any], results: RunResults) -> None:
    for sink in sinks_of(loggers):
        _safely(sink, "results", lambda sink=sink: sink.log_results(results))


def publish_report(loggers: Sequence[Any], name: str, rows: Sequence[dict[str, Any]], figures: dict[str, Path],
                   summary: dict[str, Any]) -> None:
    """A table, figures and summary values (a suite's per-dataset table, its leaderboard) to every sink."""
    for sink in sinks_of(loggers):
        _safely(sink, name, lambda sink=sink: sink.log_report(name, rows, figures, summary))


def publish_comparison(sinks: Sequence[str], sweep_dir: Path, out_dir: Path, rows: Sequence[dict[str, Any]],
                       figure: Path, title: str) -> dict[str, Path]:
    """A comparison's table and figure to each named kind of logger (`vitcls-compare --wandb`): {name: where}."""
    done = {}
    for name in sinks:
        sink = sink_class(name)
        where = _safely(sink, "comparison", lambda sink=sink: sink.log_comparison(sweep_dir, out_dir, rows, figure,
                                                                                    title))
        if where is not None:
            done[name] = where
    return done
