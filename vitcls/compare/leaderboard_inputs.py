"""What a leaderboard is made of: one `Entry` per design, dataset and seed (trained on all the training data,
with its per-image predictions), one `FewShotEntry` per few-shot run; and the checks that reject what cannot be
ranked with a clear message."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vitcls.compare.stats import COUNT_METRICS, class_counts
from vitcls.errors import ConfigError, VitclsError
from vitcls.reporting.predictions_csv import Predictions

PROTOCOLS = ("head", "knn", "logreg")
SPLITS = ("val", "test")
_VALUE_TOLERANCE = 1e-4  # an entry's metric against the same metric recomputed from its predictions


@dataclass(frozen=True)
class Entry:
    """One design on one dataset, one seed, trained on all the training data."""

    dataset: str
    design: str
    protocol: str  # one of PROTOCOLS
    seed: int
    val: float  # the leaderboard's metric on val
    test: float  # and on test
    val_predictions: Predictions | None  # per image, sorted by path
    test_predictions: Predictions | None
    num_classes: int


@dataclass(frozen=True)
class FewShotEntry:
    """One design on one dataset trained on `shots` images per class (draw `draw` of those images)."""

    dataset: str
    design: str
    protocol: str
    shots: int
    draw: int
    seed: int
    val: float
    test: float


DesignKey = tuple[str, str]  # (design, protocol)


def _metric_of(predictions: Predictions, metric: str, num_classes: int) -> float:
    counts = class_counts(predictions.true, predictions.pred, num_classes, np.arange(len(predictions))[None, :])
    return float(COUNT_METRICS[metric](*counts)[0])


def check_entries(entries: Sequence[Entry], metric: str) -> None:
    seen: set[tuple] = set()
    for entry in entries:
        where = f"entry dataset={entry.dataset} design={entry.design} protocol={entry.protocol} seed={entry.seed}"
        if entry.protocol not in PROTOCOLS:
            raise ConfigError(f"{where}: protocol {entry.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        key = (entry.dataset, entry.design, entry.protocol, entry.seed)
        if key in seen:
            raise VitclsError(f"{where}: listed twice; give each seed of a design one entry per dataset")
        seen.add(key)
        for split in SPLITS:
            value = getattr(entry, split)
            if not math.isfinite(value):
                raise VitclsError(f"{where}: {split}/{metric} is {value}; a leaderboard needs a finite score")
            predictions = getattr(entry, f"{split}_predictions")
            if predictions is None:
                continue
            if len(predictions) == 0:
                raise VitclsError(f"{where}: its {split} predictions hold no image")
            if list(predictions.paths) != sorted(predictions.paths):
                raise VitclsError(f"{where}: its {split} predictions are not sorted by path (read_predictions "
                                  "sorts them)")
            largest = int(max(predictions.true.max(), predictions.pred.max()))
            if largest >= entry.num_classes:
                raise VitclsError(f"{where}: its {split} predictions hold class {largest} but num_classes is "
                                  f"{entry.num_classes}")
            if metric in COUNT_METRICS:
                recomputed = _metric_of(predictions, metric, entry.num_classes)
                if abs(recomputed - value) > _VALUE_TOLERANCE:
                    raise VitclsError(
                        f"{where}: {split}/{metric} is {value:.6f} but its {split} predictions give "
                        f"{recomputed:.6f}; the predictions must be those of the run that scored it"
                    )


def check_same_images(entries: Sequence[Entry], dataset: str, split: str) -> None:
    """Every design of a dataset must be scored on the same images, or the test cannot pair them."""
    classes = sorted({entry.num_classes for entry in entries})
    if len(classes) > 1:
        raise VitclsError(f"dataset {dataset}: its entries give num_classes {classes}; one dataset has one set "
                          "of classes")
    reference: Entry | None = None
    for entry in entries:
        predictions = getattr(entry, f"{split}_predictions")
        if predictions is None:
            continue
        if reference is None:
            reference = entry
            continue
        expected = getattr(reference, f"{split}_predictions").paths
        if predictions.paths != expected:
            extra = sorted(set(predictions.paths) ^ set(expected))[:3]
            raise VitclsError(
                f"dataset {dataset}, {split}: the predictions of {entry.design} ({entry.protocol}, seed "
                f"{entry.seed}) hold other images than those of {reference.design} ({reference.protocol}, seed "
                f"{reference.seed}): {len(predictions)} vs {len(expected)} images, e.g. {', '.join(extra)}. Every "
                "design must be scored on the same images of a dataset for the paired test"
            )


def check_few_shot(few_shot: Sequence[FewShotEntry]) -> None:
    seen: set[tuple] = set()
    for entry in few_shot:
        key = (entry.dataset, entry.design, entry.protocol, entry.shots, entry.draw, entry.seed)
        where = (f"few-shot entry dataset={entry.dataset} design={entry.design} protocol={entry.protocol} "
                 f"shots={entry.shots} draw={entry.draw} seed={entry.seed}")
        if entry.protocol not in PROTOCOLS:
            raise ConfigError(f"{where}: protocol {entry.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if key in seen:
            raise VitclsError(f"{where}: listed twice")
        if entry.shots < 1:
            raise VitclsError(f"{where}: shots must be at least 1")
        if not (math.isfinite(entry.val) and math.isfinite(entry.test)):
            raise VitclsError(f"{where}: val {entry.val}, test {entry.test}; the scores must be finite")
        seen.add(key)
