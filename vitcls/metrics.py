"""The metrics of every split, defined once.

`METRICS` is the one list of metric names: the collection that training, eval.py and vitcls-predict
compute is built from it, and summary.json, eval.json, metrics.json, the checkpoint monitor and
vitcls-compare take their names from what that collection computes. A metric added here appears
everywhere without another edit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)


def _averaged(metric: type, average: str) -> Callable[[int], Metric]:
    # Macro averages run over the classes that occur in the targets or the predictions, with 0 for an
    # undefined ratio: scikit-learn's precision_recall_fscore_support(zero_division=0).
    return lambda num_classes: metric(num_classes=num_classes, average=average, zero_division=0)


# name -> factory(num_classes). Macro accuracy is not listed: it equals recall_macro (balanced accuracy).
METRICS: dict[str, Callable[[int], Metric]] = {
    "acc": lambda num_classes: MulticlassAccuracy(num_classes=num_classes, average="micro"),
    "f1_macro": _averaged(MulticlassF1Score, "macro"),
    "f1_weighted": _averaged(MulticlassF1Score, "weighted"),
    "precision_macro": _averaged(MulticlassPrecision, "macro"),
    "precision_weighted": _averaged(MulticlassPrecision, "weighted"),
    "recall_macro": _averaged(MulticlassRecall, "macro"),
    "recall_weighted": _averaged(MulticlassRecall, "weighted"),
}
# The validation metric that selects checkpoints and designs unless told otherwise.
DEFAULT_SELECTION_METRIC = "f1_macro"
# Lower is better for these (every other metric: higher is better).
LOWER_IS_BETTER = frozenset({"loss"})


def metric_names() -> tuple[str, ...]:
    """The metrics of the collection, plus the loss that the LightningModule logs beside them."""
    return (*METRICS, "loss")


def better_is(metric: str) -> str:
    """'min' or 'max' for a metric name, with or without its split prefix (val/loss -> min)."""
    return "min" if metric.rsplit("/", 1)[-1] in LOWER_IS_BETTER else "max"


def classification_metrics(num_classes: int) -> MetricCollection:
    """Every metric of `METRICS`. Those built on the same stat scores share one state and one update per
    batch (torchmetrics compute groups); compute and reset the collection once per epoch."""
    return MetricCollection({name: factory(num_classes) for name, factory in METRICS.items()})


def confusion_matrix_metric(num_classes: int) -> MulticlassConfusionMatrix:
    return MulticlassConfusionMatrix(num_classes=num_classes)


def ordered_metrics(values: dict[str, float] | None) -> dict[str, float]:
    """{name: value} in the order of `metric_names()` (summary.json, eval.json, bank.json)."""
    order = {name: index for index, name in enumerate(metric_names())}
    return dict(sorted((values or {}).items(), key=lambda item: order.get(item[0], len(order))))


def confusion_counts(confusion: Any, num_classes: int) -> np.ndarray:
    """A (C, C) integer array of `confusion[true, predicted]` counts from a tensor, array or nested list."""
    if hasattr(confusion, "detach"):
        confusion = confusion.detach().cpu().numpy()
    array = np.asarray(confusion)
    if array.shape != (num_classes, num_classes):
        raise ValueError(
            f"confusion matrix has shape {array.shape}, expected ({num_classes}, {num_classes}) for "
            f"{num_classes} class names"
        )
    return array.astype(np.int64)


def safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise ratio with 0.0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    out = np.zeros(numerator.shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def per_class_report(confusion: Any, class_names: list[str]) -> list[dict]:
    """Precision, recall, F1 and support of every class, from `confusion[true, predicted]` counts."""
    counts = confusion_counts(confusion, len(class_names))
    true_positives = np.diag(counts)
    support = counts.sum(axis=1)
    predicted = counts.sum(axis=0)
    precision = safe_divide(true_positives, predicted)
    recall = safe_divide(true_positives, support)
    f1 = safe_divide(2 * true_positives, support + predicted)
    return [
        {
            "class": name,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    ]


def selection_key(score: float | None, loss: float | None, position: int, maximize: bool) -> tuple:
    """The one rule that ranks designs on validation (a bank's heads, vitcls-compare's designs): the monitored
    metric; at equal values the lower validation loss, then the one listed first. Designs without a score last."""
    missing = score is None or math.isnan(score)
    value = 0.0 if missing else (-score if maximize else score)
    return (missing, value, math.inf if loss is None or math.isnan(loss) else loss, position)
