"""Where the time of an in-process `vitcls.train.run` goes: its steps, timed by wrapping them (bench only).

    with RunPhases() as phases:
        phases.run(cfg)   # vitcls.train.run, timed
    phases.last   # {"build_datamodule": 0.41, "training_batches": 3.2, "fit_and_test": 2.9, ..., "total": 7.5}

`vitcls.train.run` calls its steps by module-level name, so replacing those names for the duration of the
block times each call without touching vitcls. The rest of a run (its total minus the steps) is `other`.
"""

from __future__ import annotations

import functools
import time

import vitcls.train

STEPS = (
    "prepare_run",  # settings checks, run directory, seeding
    "build_datamodule",  # folder scan and the decode check of every image (memoised with image_check_cache_dir)
    "build_trainer",
    "build_module",  # the network (and the backbone's weights)
    "record_settings",  # config.yaml, hyperparameters to the loggers
    "training_batches",  # the feature/token cache: computing (first run) or loading it
    "fit_and_test",  # Lightning's fit (with checkpoints) and the test of the best checkpoint
    "summarise",
    "write_outputs",  # confusion matrix PNG/CSV, summary.json
)


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
            self._originals[name] = getattr(vitcls.train, name)
        for name in STEPS:
            setattr(vitcls.train, name, self._timed(name, self._originals[name]))
        self.run = self._timed_run(self._originals["run"])
        return self

    def __exit__(self, *exc) -> None:
        for name, function in self._originals.items():
            setattr(vitcls.train, name, function)


def mean_phases(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = {key for run in runs for key in run}
    return {key: sum(run.get(key, 0.0) for run in runs) / len(runs) for key in sorted(keys)} if runs else {}
