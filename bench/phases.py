"""Where the time of an in-process training run goes: the steps of `vitcls.run.lifecycle.run`, timed by wrapping
them (bench only).

    with RunPhases() as phases:
        phases.run(cfg)   # vitcls.run.lifecycle.run with the study train.py picks, timed
    phases.last   # {"build_datamodule": 0.41, "training_inputs": 3.2, "fit_and_test": 2.9, ..., "total": 7.5}

The lifecycle calls its steps by module-level name, and the study's `report` by attribute, so replacing those for
the duration of the block times each call without touching vitcls. The rest of a run (its total minus the steps) is
`other`.
"""

from __future__ import annotations

import functools
import time

import vitcls.run.lifecycle as lifecycle
from vitcls.run.studies import HeadBank, LoneRun, study_of

STEPS = (
    "prepare_run",  # settings checks, run directory, seeding
    "build_datamodule",  # folder scan and the decode check of every image (memoised with image_check_cache_dir)
    "build_trainer",
    "build_module",  # the network (and the backbone's weights)
    "record_settings",  # config.yaml, hyperparameters to the loggers
    "training_inputs",  # the feature/token cache: computing (first run) or loading it
    "fit_and_test",  # Lightning's fit (with checkpoints) and the test of the best checkpoint
)
# The study's report: summary, predictions, confusion matrix PNG/CSV, bank tables, summary.json.
STUDIES = (LoneRun, HeadBank)


class RunPhases:
    def __init__(self):
        self.runs: list[dict[str, float]] = []
        self._originals: dict = {}

    @property
    def last(self) -> dict[str, float]:
        return self.runs[-1]

    def _timed(self, name, function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.runs[-1][name] = self.runs[-1].get(name, 0.0) + time.perf_counter() - started

        return wrapper

    def _timed_run(self, function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            self.runs.append({})
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                phases = self.runs[-1]
                phases["total"] = time.perf_counter() - started
                phases["other"] = phases["total"] - sum(v for k, v in phases.items() if k != "total")

        return wrapper

    def __enter__(self) -> RunPhases:
        for name in (*STEPS, "run"):
            self._originals[name] = getattr(lifecycle, name)
        for name in STEPS:
            setattr(lifecycle, name, self._timed(name, self._originals[name]))
        for study in STUDIES:
            self._originals[study] = study.report
            study.report = self._timed("report", study.report)
        run = self._originals["run"]
        self.run = self._timed_run(lambda cfg: run(cfg, study_of(cfg)))
        return self

    def __exit__(self, *exc) -> None:
        for name, function in self._originals.items():
            if isinstance(name, str):
                setattr(lifecycle, name, function)
            else:
                name.report = function


def mean_phases(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = {key for run in runs for key in run}
    return {key: sum(run.get(key, 0.0) for run in runs) / len(runs) for key in sorted(keys)} if runs else {}
