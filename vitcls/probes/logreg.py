"""L2-regularised multinomial logistic-regression probe, C chosen on validation from a log grid.

Preprocessing: with `standardize` (the default) every feature is centred and scaled by the mean and standard
deviation of the training features (population std; a constant feature is only centred), as scikit-learn's
StandardScaler does, so that one grid of C suits features of any scale. Both backends fit on the same
standardised float64 features; the fitted model folds the standardisation into its weights, so it applies
to raw features.

The grid: by default 45 values of C evenly spaced in log10 from 1e-6 to 1e5, the sweep that common
self-supervised and remote-sensing benchmarks use for linear probes. Every C is a fresh fit on the training
features from zeros (no warm start along the grid), so the model scored on validation at the chosen C is
exactly the final model: "refit on train" needs no second fit. Validation only selects C; it is never
added to the training data.

Backends: `sklearn` (scikit-learn, CPU), `torch` (full-batch L-BFGS on the features' device), `auto`: torch
for CUDA tensors, sklearn otherwise. Both minimise the same objective (see vitcls.probes.logreg_solvers).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vitcls.errors import ConfigError, VitclsError
from vitcls.probes.base import Predictor, Probe
from vitcls.probes.logreg_solvers import LinearFit, fit_sklearn, fit_torch_lbfgs

BACKENDS = ("auto", "sklearn", "torch")


def log_grid(log10_min: float, log10_max: float, num: int) -> list[float]:
    return [float(c) for c in np.logspace(log10_min, log10_max, num)]


def standardisation(features: Tensor) -> tuple[Tensor, Tensor]:
    """(mean, scale) of float64 training features; the scale of a constant feature is 1."""
    mean = features.mean(dim=0)
    std = features.std(dim=0, correction=0)
    # Rounding leaves a constant feature a tiny std instead of 0; scaling by it would amplify that noise.
    constant = std <= 10 * torch.finfo(features.dtype).eps * mean.abs().clamp_min(1.0)
    return mean, torch.where(constant, torch.ones_like(std), std)


class LogisticRegressionProbe(Probe):
    """C from `Cs`, or when `Cs` is null from `num_Cs` values evenly spaced in log10 between
    10**log10_C_min and 10**log10_C_max; tried from the smallest C (strongest regularisation) up."""

    name = "logreg"

    def __init__(
        self,
        Cs: Sequence[float] | None = None,
        log10_C_min: float = -6.0,
        log10_C_max: float = 5.0,
        num_Cs: int = 45,
        standardize: bool = True,
        backend: str = "auto",
        max_iter: int = 1000,
        tol: float = 1e-10,
        sklearn_threads: int | None = 1,
    ):
        if Cs is None:
            if not _positive_int(num_Cs):
                raise ConfigError(f"probe.num_Cs must be a positive integer, got {num_Cs!r}")
            if not (_finite(log10_C_min) and _finite(log10_C_max) and log10_C_min <= log10_C_max):
                raise ConfigError(
                    f"probe.log10_C_min and probe.log10_C_max must be finite numbers with min <= max, got "
                    f"{log10_C_min!r} and {log10_C_max!r}"
                )
            grid = log_grid(log10_C_min, log10_C_max, num_Cs)
        else:
            grid = list(Cs) if isinstance(Cs, Sequence) and not isinstance(Cs, str) else Cs
            if not isinstance(grid, list) or not grid or not all(_finite(c) and c > 0 for c in grid):
                raise ConfigError(f"probe.Cs must be a non-empty list of positive numbers (or null), got {Cs!r}")
        if backend not in BACKENDS:
            raise ConfigError(f"probe.backend={backend!r} is not supported; choose one of {list(BACKENDS)}")
        if not _positive_int(max_iter):
            raise ConfigError(f"probe.max_iter must be a positive integer, got {max_iter!r}")
        if not (_finite(tol) and tol > 0):
            raise ConfigError(f"probe.tol must be a positive number, got {tol!r}")
        if sklearn_threads is not None and not _positive_int(sklearn_threads):
            raise ConfigError(f"probe.sklearn_threads must be a positive integer or null, got {sklearn_threads!r}")
        if not isinstance(standardize, bool):
            raise ConfigError(f"probe.standardize must be true or false, got {standardize!r}")
        self.Cs = None if Cs is None else [float(c) for c in Cs]
        self.log10_C_min, self.log10_C_max, self.num_Cs = float(log10_C_min), float(log10_C_max), int(num_Cs)
        self.grid = sorted({float(c) for c in grid})
        self.standardize = standardize
        self.backend = backend
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.sklearn_threads = sklearn_threads

    def settings(self) -> dict[str, Any]:
        return {
            "Cs": self.Cs,
            "log10_C_min": self.log10_C_min,
            "log10_C_max": self.log10_C_max,
            "num_Cs": self.num_Cs,
            "standardize": self.standardize,
            "backend": self.backend,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "sklearn_threads": self.sklearn_threads,
        }

    def resolved_backend(self, features: Tensor) -> str:
        if self.backend == "auto":
            return "torch" if features.is_cuda else "sklearn"
        return self.backend

    def fit_at(self, train_x: Tensor, train_y: Tensor, num_classes: int, C: float) -> tuple[Predictor, LinearFit]:
        """The model at one C, fitted on the training features (preprocessing included), and the solver's
        result on the standardised features."""
        return self._fit(_Prepared(train_x, train_y, self.standardize), num_classes, C)

    def _fit(self, data: _Prepared, num_classes: int, C: float) -> tuple[Predictor, LinearFit]:
        if self.resolved_backend(data.x) == "torch":
            fit = fit_torch_lbfgs(data.x, data.y, len(data.classes), C, self.max_iter, self.tol)
        else:
            fit = fit_sklearn(data.x, data.y, C, self.max_iter, self.tol, self.sklearn_threads)
        weight = fit.weight / data.scale
        raw = LinearFit(weight, fit.bias - weight @ data.mean, fit.n_iter, fit.converged)
        return _predictor(raw, data.classes, num_classes), fit

    def _sweep(
        self, train_x: Tensor, train_y: Tensor, val_x: Tensor, num_classes: int, notes: list[str]
    ) -> Iterator[tuple[dict[str, Any], Tensor, Predictor]]:
        data = _Prepared(train_x, train_y, self.standardize)
        notes.append(f"fitted with the {self.resolved_backend(train_x)} backend")
        absent = sorted(set(range(num_classes)) - set(data.classes.tolist()))
        if absent:
            notes.append(f"classes {absent} have no training image: their probability is 0")
        not_converged = []
        for C in self.grid:
            predictor, fit = self._fit(data, num_classes, C)
            if not fit.converged:
                not_converged.append(f"{C:.3g}")
            yield {"C": C}, predictor(val_x), predictor
        if not_converged:
            notes.append(
                f"did not converge within max_iter={self.max_iter} iterations (tol={self.tol:g}) at C = "
                f"{', '.join(not_converged)}: those models are the last iterate; raise probe.max_iter"
            )


class _Prepared:
    """Training features standardised in float64, and labels mapped onto the classes that occur (0..K-1)."""

    def __init__(self, train_x: Tensor, train_y: Tensor, standardize: bool):
        x = train_x.double()
        if standardize:
            self.mean, self.scale = standardisation(x)
        else:
            self.mean, self.scale = torch.zeros_like(x[0]), torch.ones_like(x[0])
        self.x = (x - self.mean) / self.scale
        self.classes = torch.unique(train_y)  # sorted
        if len(self.classes) < 2:
            raise VitclsError(
                f"logistic-regression probe: the training labels hold only class {self.classes.tolist()}; it "
                "needs at least two classes"
            )
        self.y = torch.searchsorted(self.classes, train_y)


def _predictor(fit: LinearFit, classes: Tensor, num_classes: int) -> Predictor:
    """Probabilities over all `num_classes` from a model fitted on `classes` (0 for the others)."""

    def predict_proba(features: Tensor) -> Tensor:
        if features.shape[1] != fit.weight.shape[1]:
            raise VitclsError(
                f"logistic-regression probe: features have width {features.shape[1]}, the model "
                f"{fit.weight.shape[1]}"
            )
        proba = torch.softmax(fit.logits(features.to(fit.weight.device, torch.float64)), dim=1)
        full = torch.zeros(len(features), num_classes, dtype=torch.float32, device=proba.device)
        full[:, classes] = proba.float()
        return full.to(features.device)

    return predict_proba


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
