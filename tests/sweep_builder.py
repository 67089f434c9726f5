"""Hand-made sweep directories for vitcls-compare: jobs with overrides, summary.json and per-image predictions.

The summary metrics of a job are computed from its predictions with scikit-learn, as a finished run's are.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from sklearn import metrics as skm

from vitcls.reporting.predictions_csv import write_predictions

CLASSES = ["a", "b", "c"]


def sklearn_metrics(true: np.ndarray, pred: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    labels = list(range(probabilities.shape[1]))
    return {
        "acc": float(skm.accuracy_score(true, pred)),
        "f1_macro": float(skm.f1_score(true, pred, average="macro", zero_division=0)),
        "f1_weighted": float(skm.f1_score(true, pred, average="weighted", zero_division=0)),
        "loss": float(skm.log_loss(true, probabilities, labels=labels)),
    }


def predictions_with(true: np.ndarray, pred: np.ndarray, num_classes: int, confidence: float = 0.8) -> np.ndarray:
    """Softmax rows whose argmax is `pred`."""
    probabilities = np.full((len(true), num_classes), (1 - confidence) / (num_classes - 1))
    probabilities[np.arange(len(true)), pred] = confidence
    return probabilities


def images(split: str, true: np.ndarray) -> list[SimpleNamespace]:
    return [SimpleNamespace(path=f"/photos/{split}/{CLASSES[t]}/img_{i:04d}.jpg", label=int(t))
            for i, t in enumerate(true)]


def make_job(sweep: Path, name: str, overrides: list[str], splits: dict[str, tuple] | None = None,
             failure: dict | None = None, extra_summary: dict | None = None) -> Path:
    """`splits`: {split: (true, pred)} label arrays; writes predictions and the summary metrics they give."""
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- '{o}'\n" for o in overrides))
    if splits is not None:
        summary = {"class_names": CLASSES, "epochs_trained": 2, "wall_time_s": 10.0,
                   "params": {"total": 1000, "trainable": 100}, "monitor": "val/f1_macro",
                   "best_ckpt": "checkpoints/epoch_001.ckpt"}
        for split, (true, pred) in splits.items():
            probabilities = predictions_with(true, pred, len(CLASSES))
            write_predictions(job / f"{split}_predictions.csv", images(split, true), probabilities, CLASSES)
            summary[split] = sklearn_metrics(true, pred, probabilities)
        summary["best_val_score"] = summary.get("val", {}).get("f1_macro")
        summary.update(extra_summary or {})
        (job / "summary.json").write_text(json.dumps(summary))
    if failure is not None:
        (job / "FAILED.json").write_text(json.dumps(failure))
    return job


def noisy(true: np.ndarray, accuracy: float, rng: np.random.Generator, num_classes: int = 3) -> np.ndarray:
    """Predictions right on about `accuracy` of the images, a random wrong class elsewhere."""
    wrong = rng.random(len(true)) > accuracy
    pred = true.copy()
    pred[wrong] = (true[wrong] + rng.integers(1, num_classes, wrong.sum())) % num_classes
    return pred
