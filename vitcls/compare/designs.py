"""Grouping runs into designs: the settings that vary, minus repetitions, tuned hyperparameters and the x axis.

Jobs that differ only in `seed` (or another repetition key) are one design. Within a design, `--tune` keys
are hyperparameters: each of their values is a candidate (its runs over seeds), and the candidate with the
best mean validation score is the design's choice. With `--x KEY` (a learning curve), each value of KEY is
its own group of designs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from vitcls.compare.runs import Run
from vitcls.config.overrides import design_name, is_bookkeeping, is_design_key


@dataclass
class Candidate:
    """One value of the tuned settings within a design, and its finished runs (one per seed)."""

    tuned: dict[str, str]
    runs: list[Run]
    score: float | None = None  # mean validation metric over the runs


@dataclass
class Design:
    name: str
    settings: dict[str, str]
    x: str | None  # the value of the --x setting; None without --x
    candidates: list[Candidate] = field(default_factory=list)
    unfinished: list[Run] = field(default_factory=list)  # failed or incomplete jobs of this design
    chosen: Candidate | None = None

    @property
    def runs(self) -> list[Run]:
        return self.chosen.runs if self.chosen else []


def varied_keys(runs: Sequence[Run]) -> list[str]:
    """Settings whose value is not the same in every job (absent counts as a value), in first-seen order."""
    keys = list(dict.fromkeys(key for run in runs for key in run.settings))
    return [key for key in keys if len({run.settings.get(key) for run in runs}) > 1]


def job_keys(runs: Sequence[Run]) -> list[str]:
    """The varied settings a reader needs to tell jobs apart (seeds included, paths and loggers left out)."""
    return [key for key in varied_keys(runs) if not is_bookkeeping(key)]


def design_keys(runs: Sequence[Run], repetitions: Sequence[str], tuned: Sequence[str], x: str | None) -> list[str]:
    return [key for key in varied_keys(runs) if is_design_key(key, repetitions) and key not in tuned and key != x]


def group_designs(runs: Sequence[Run], keys: Sequence[str], tuned: Sequence[str], x: str | None) -> list[Design]:
    """Designs in first-seen job order; each holds its candidates (finished runs) and its unfinished jobs."""
    designs: dict[tuple, Design] = {}
    for run in runs:
        settings = {key: run.settings[key] for key in keys if key in run.settings}
        x_value = run.settings.get(x) if x else None
        identity = (tuple(sorted(settings.items())), x_value)
        design = designs.setdefault(identity, Design(design_name(settings, keys), settings, x_value))
        if run.status != "ok":
            design.unfinished.append(run)
            continue
        values = {key: run.settings.get(key, "") for key in tuned}
        candidate = next((c for c in design.candidates if c.tuned == values), None)
        if candidate is None:
            candidate = Candidate(values, [])
            design.candidates.append(candidate)
        candidate.runs.append(run)
    return list(designs.values())


def choose_candidates(designs: Sequence[Design], score: Callable[[list[Run]], float | None], minimize: bool) -> None:
    """Each design's candidate with the best score (mean validation metric); ties keep the first seen."""
    for design in designs:
        for candidate in design.candidates:
            candidate.score = score(candidate.runs)
        scored = [c for c in design.candidates if c.score is not None]
        if scored:
            design.chosen = (min if minimize else max)(scored, key=lambda c: c.score)
        elif design.candidates:
            design.chosen = design.candidates[0]
