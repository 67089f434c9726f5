"""One metric definition for every split: clone it per split with a prefix."""

from __future__ import annotations

from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

# The keys of summary.json["test"] / eval.json, without split prefix.
METRIC_NAMES = (
    "acc",
    "f1_macro",
    "f1_weighted",
    "precision_macro",
    "precision_weighted",
    "recall_macro",
    "recall_weighted",
)


def classification_metrics(num_classes: int) -> MetricCollection:
    """Accuracy (fraction of images correct) and macro/weighted precision, recall and F1.

    Macro accuracy is not listed: it equals recall_macro (balanced accuracy). Macro averages run over
    the classes that occur in the targets or the predictions, with 0 for an undefined ratio: the
    convention of scikit-learn's precision_recall_fscore_support(zero_division=0).
    """
    def kwargs(average: str) -> dict:
        return dict(num_classes=num_classes, average=average, zero_division=0)

    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes=num_classes, average="micro"),
            "f1_macro": MulticlassF1Score(**kwargs("macro")),
            "f1_weighted": MulticlassF1Score(**kwargs("weighted")),
            "precision_macro": MulticlassPrecision(**kwargs("macro")),
            "precision_weighted": MulticlassPrecision(**kwargs("weighted")),
            "recall_macro": MulticlassRecall(**kwargs("macro")),
            "recall_weighted": MulticlassRecall(**kwargs("weighted")),
        },
        # The default compute groups: the metrics built on the same stat scores share one state and
        # one update per batch. Computed and reset as a collection (ImageClassifier._log_epoch_metrics).
    )


def confusion_matrix_metric(num_classes: int) -> MulticlassConfusionMatrix:
    return MulticlassConfusionMatrix(num_classes=num_classes)
