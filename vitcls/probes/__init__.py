"""Probes fitted on cached features beside the trained heads: weighted k-NN and logistic regression.

    fit = build_probe("knn").fit(train_x, train_y, val_x, val_y, num_classes)
    fit.params, fit.candidates, fit.predict_proba(test_x)

Importing this package registers both probes in `PROBES`.
"""

from vitcls.probes.base import (
    PROBES,
    Probe,
    ProbeFit,
    ProbeSpec,
    build_probe,
    registered_probe,
    score_probabilities,
)
from vitcls.probes.knn import KNNProbe
from vitcls.probes.logreg import LogisticRegressionProbe

__all__ = [
    "PROBES",
    "KNNProbe",
    "LogisticRegressionProbe",
    "Probe",
    "ProbeFit",
    "ProbeSpec",
    "build_probe",
    "registered_probe",
    "score_probabilities",
]
