"""Per-image predictions of a split as CSV: written by train.py (val and test) and eval.py, read by vitcls-compare.

Columns: path, true_label, pred_label, score (probability of the predicted class), true_score (probability
of the true class), correct, then `prob_<class>` per class (up to FULL_PROBABILITIES_MAX_CLASSES classes;
beyond that the file would grow with images x classes, and comparisons need only the first six columns).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitcls.errors import VitclsError
from vitcls.io import write_text_atomic

FULL_PROBABILITIES_MAX_CLASSES = 100
BASE_COLUMNS = ("path", "true_label", "pred_label", "score", "true_score", "correct")
PROBABILITY_PREFIX = "prob_"


def write_predictions(path: Path, samples: Sequence[Any], probabilities: Any, class_names: Sequence[str]) -> Path:
    """One row per sample (`.path`, `.label`) with its softmax row of `probabilities` (tensor or array, (N, C))."""
    probabilities = np.asarray(probabilities.detach().float().cpu() if hasattr(probabilities, "detach") else probabilities,
                               dtype=np.float64)
    if len(samples) != len(probabilities):
        raise ValueError(f"{len(samples)} samples but {len(probabilities)} rows of probabilities for {path}")
    with_probabilities = len(class_names) <= FULL_PROBABILITIES_MAX_CLASSES
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = list(BASE_COLUMNS)
    if with_probabilities:
        header += [f"{PROBABILITY_PREFIX}{name}" for name in class_names]
    writer.writerow(header)
    predicted = (probabilities.argmax(axis=1) if len(probabilities) else np.empty(0, dtype=int)).tolist()
    # Rows as Python floats: formatting numpy scalars one by one takes half again as long (a bank writes
    # K heads x 2 splits of these files).
    for sample, row, pred in zip(samples, probabilities.tolist(), predicted, strict=True):
        cells = [sample.path, class_names[sample.label], class_names[pred], f"{row[pred]:.6f}",
                 f"{row[sample.label]:.6f}", int(pred == sample.label)]
        if with_probabilities:
            cells += [f"{p:.6f}" for p in row]
        writer.writerow(cells)
    return write_text_atomic(path, buffer.getvalue())


@dataclass(frozen=True)
class Predictions:
    """The predictions of one run on one split, sorted by path (runs on the same images line up)."""

    paths: tuple[str, ...]
    true: np.ndarray  # class index of each image
    pred: np.ndarray
    true_score: np.ndarray  # probability of the true class

    def __len__(self) -> int:
        return len(self.paths)


def read_predictions(path: Path, class_names: Sequence[str]) -> Predictions:
    """A predictions CSV, with labels as indices into `class_names` (the run's classes, from summary.json)."""
    index = {name: i for i, name in enumerate(class_names)}
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        rows.sort(key=lambda row: row["path"])
        paths = tuple(row["path"] for row in rows)
        true = np.array([index[row["true_label"]] for row in rows], dtype=np.int64)
        pred = np.array([index[row["pred_label"]] for row in rows], dtype=np.int64)
        true_score = np.array([float(row["true_score"]) for row in rows], dtype=np.float64)
    except (OSError, KeyError, ValueError) as error:
        raise VitclsError(f"cannot read the predictions in {path}: {type(error).__name__}: {error}") from error
    return Predictions(paths, true, pred, true_score)
