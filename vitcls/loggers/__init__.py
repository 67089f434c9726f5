"""Lightning loggers with vitcls specifics, one module per logger (their configs: conf/logger/), and the one
interface through which they receive more than Lightning's metrics.

A logger that subclasses `ResultSink` (beside a Lightning `Logger`) and names itself with `sink_name` receives,
through vitcls.reporting, the resolved config of a run, its results (summary, each head's metrics and test
predictions, figures, the table of a bank's heads) and, on request, vitcls-compare's comparisons; it is told when
a job ends. Adding one is one class and one YAML file in conf/logger/ (see README, "Add a logger"). Only the modules
here know a tracking service.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from vitcls.errors import ConfigError

if TYPE_CHECKING:
    from vitcls.reporting.results import RunResults

SINKS: dict[str, type[ResultSink]] = {}


class ResultSink:
    """What a logger receives from vitcls beyond Lightning's `log_metrics` / `log_hyperparams`."""

    sink_name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if "sink_name" in cls.__dict__:
            SINKS[cls.sink_name] = cls

    def log_run_config(self, config: dict[str, Any], facts: dict[str, Any], repeated_by: set[str]) -> None:
        """The resolved config (nested) and what the run computed of it (parameter counts, batch layout).
        `repeated_by`: top-level names of the hyperparameters Lightning logs later under other names."""

    def log_results(self, results: RunResults) -> None:
        """A finished run's results (rank zero only)."""

    def log_report(self, name: str, rows: Sequence[dict[str, Any]], figures: dict[str, Path],
                   summary: dict[str, Any]) -> None:
        """A table (one dict per row), figures (name -> PNG) and summary values in this logger's run: a suite's
        per-dataset table, its leaderboard."""

    @classmethod
    def log_comparison(cls, sweep_dir: Path, out_dir: Path, rows: Sequence[dict[str, Any]], figure: Path,
                       title: str) -> Path:
        """vitcls-compare's design table and figure; returns where they went."""
        raise ConfigError(f"the {cls.sink_name} logger does not take comparisons")

    @classmethod
    def finish(cls, exit_code: int) -> None:
        """A job ended (exit code 0: finished): close whatever this kind of logger keeps open across jobs."""


def sink_class(name: str) -> type[ResultSink]:
    if name not in SINKS:
        import contextlib
        import importlib

        with contextlib.suppress(ModuleNotFoundError):  # vitcls's own loggers register when imported
            importlib.import_module(f"vitcls.loggers.{name}")
    if name not in SINKS:
        raise ConfigError(f"no logger named {name!r} takes results (known: {sorted(SINKS)})")
    return SINKS[name]


def finish_runs(exit_code: int) -> None:
    """Every kind of result logger in use ends what it keeps open (a W&B run: the next job of a multirun must not
    log into it)."""
    for sink in list(SINKS.values()):
        sink.finish(exit_code)
