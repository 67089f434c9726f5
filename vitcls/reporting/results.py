"""What a finished run hands to the loggers (vitcls.reporting.publish_results)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from vitcls.data.folder import Sample


@dataclass
class HeadResults:
    """One head (a design) at its best validation epoch."""

    index: int
    name: str
    val: dict[str, float]
    test: dict[str, float]
    test_probabilities: Tensor | None  # (N, C) softmax rows, in `RunResults.test_samples` order
    test_confusion: Tensor | None  # (C, C) counts [true, predicted]
    record: dict[str, Any] = field(default_factory=dict)  # its row of bank.json (design, overrides, rank...)


@dataclass
class RunResults:
    run_dir: Path
    summary: dict[str, Any]  # summary.json: the selected head's results and what the run was
    class_names: list[str]
    test_samples: list[Sample]
    heads: list[HeadResults]
    selected: int  # the head selected on validation (the run's result)
    figures: dict[str, Path] = field(default_factory=dict)  # name -> PNG
    table: list[dict[str, Any]] = field(default_factory=list)  # several heads: one row per head, best first
    history: list[dict[str, Any]] = field(default_factory=list)  # several heads: every logged value per epoch

    @property
    def selected_head(self) -> HeadResults:
        return self.heads[self.selected]
