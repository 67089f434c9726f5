"""The probe registry, the fit-and-select loop every probe shares, and what a fit returns.

A probe is a classifier fitted directly on cached features, beside the trained heads. Each probe has a
hyperparameter grid (k for k-NN, C for logistic regression); every candidate is fitted on the training
features and scored on the validation features with the project's metrics, and the best one is kept.
`fit` takes training and validation labels only: nothing can be selected on test.

Tie rule: a probe lists its candidates from the most regularised to the least (k-NN: largest k first;
logistic regression: smallest C first), and a later candidate replaces the incumbent only with a strictly
better validation score, so a tie goes to the more regularised candidate.

A subclass of `Probe` with a `name` registers itself in `PROBES`; `conf/probe/<name>.yaml` is a `_target_`
node that instantiates the probe itself. What results store is `probe.spec()`, the registered name and the
settings, which `build_probe` turns back into the probe.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from vitcls.errors import ConfigError, VitclsError
from vitcls.metrics import DEFAULT_SELECTION_METRIC, better_is, classification_metrics, metric_names

PROBES: dict[str, type[Probe]] = {}
# {"name": registered name, "module": where the class was defined (a hint when it is missing), **settings}
ProbeSpec = dict[str, Any]
# features (N, D) -> class probabilities (N, num_classes), float32, rows summing to 1
Predictor = Callable[[Tensor], Tensor]
# A probability of 0 for the true class (k-NN gives 0 to every class no neighbour votes for) counts as this
# in the validation loss, which stays finite and comparable between candidates.
LOSS_PROBABILITY_FLOOR = 1e-12


@dataclass
class ProbeFit:
    """A fitted probe: the hyperparameters chosen on validation, the validation scores of every candidate
    (`candidates`, one row per candidate in the order tried: its hyperparameters, then every metric of
    `vitcls.metrics` and `loss`; `chosen` indexes the selected row), notes on what was adjusted (a capped k,
    a fit that did not converge), and the fitted classifier of the chosen candidate (`predict_proba`)."""

    probe: str
    settings: dict[str, Any]
    params: dict[str, Any]
    select_on: str
    candidates: list[dict[str, Any]]
    chosen: int
    notes: list[str]
    num_classes: int
    predictor: Predictor = field(repr=False)

    @property
    def val_metrics(self) -> dict[str, float]:
        """Every validation metric of the chosen candidate."""
        return {k: v for k, v in self.candidates[self.chosen].items() if k not in self.params}

    @property
    def val_score(self) -> float:
        return self.val_metrics[self.select_on]

    def predict_proba(self, features: Tensor) -> Tensor:
        """Class probabilities (N, num_classes), float32, on the device of `features`."""
        _check_features("features", features)
        return self.predictor(features)

    def predict(self, features: Tensor) -> Tensor:
        """The most probable class of each row (the lowest class index among equal probabilities)."""
        return self.predict_proba(features).argmax(dim=1)

    def summary(self) -> dict[str, Any]:
        """What a results table needs, JSON-serialisable."""
        return {
            "probe": self.probe,
            "settings": self.settings,
            "params": self.params,
            "select_on": self.select_on,
            "val": self.val_metrics,
            "candidates": self.candidates,
            "notes": self.notes,
        }


class Probe:
    """Base class. A subclass sets `name`, stores its settings, and implements `settings` and `_sweep`."""

    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            PROBES[cls.name] = cls

    def settings(self) -> dict[str, Any]:
        """The constructor arguments, as plain Python values (what `spec` stores)."""
        raise NotImplementedError

    def _sweep(
        self, train_x: Tensor, train_y: Tensor, val_x: Tensor, num_classes: int, notes: list[str]
    ) -> Iterator[tuple[dict[str, Any], Tensor, Predictor]]:
        """(hyperparameters, validation probabilities, predictor) of every candidate, fitted on the training
        features, most regularised first. Anything adjusted on the way is appended to `notes`."""
        raise NotImplementedError

    def spec(self) -> ProbeSpec:
        return {"name": self.name, "module": type(self).__module__, **self.settings()}

    def fit(
        self,
        train_x: Tensor,
        train_y: Tensor,
        val_x: Tensor,
        val_y: Tensor,
        num_classes: int,
        select_on: str = DEFAULT_SELECTION_METRIC,
    ) -> ProbeFit:
        """Fits every candidate on (train_x, train_y), scores it on (val_x, val_y) and keeps the one with the
        best `select_on` (a name of `vitcls.metrics.metric_names()`; `loss` is lower-is-better)."""
        if select_on not in metric_names():
            raise ConfigError(f"probe select_on={select_on!r} is not a metric; choose one of {list(metric_names())}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"probe num_classes must be an integer of at least 2, got {num_classes!r}")
        _check_split("train", train_x, train_y, num_classes)
        _check_split("val", val_x, val_y, num_classes)
        if val_x.shape[1] != train_x.shape[1] or val_x.device != train_x.device:
            raise VitclsError(
                f"probe: val features are {tuple(val_x.shape)} on {val_x.device}, train features "
                f"{tuple(train_x.shape)} on {train_x.device}: both need the same width and device"
            )
        maximise = better_is(select_on) == "max"
        notes: list[str] = []
        candidates: list[dict[str, Any]] = []
        best: tuple[int, dict[str, Any], Predictor] | None = None
        for params, val_proba, predictor in self._sweep(train_x, train_y, val_x, num_classes, notes):
            scores = score_probabilities(val_proba, val_y, num_classes)
            candidates.append({**params, **scores})
            if best is None or _strictly_better(scores[select_on], candidates[best[0]][select_on], maximise):
                best = (len(candidates) - 1, params, predictor)
        assert best is not None, "a probe's grid is never empty (checked in its constructor)"
        chosen, params, predictor = best
        return ProbeFit(
            probe=self.name,
            settings=self.settings(),
            params=params,
            select_on=select_on,
            candidates=candidates,
            chosen=chosen,
            notes=notes,
            num_classes=num_classes,
            predictor=predictor,
        )


def _strictly_better(score: float, incumbent: float, maximise: bool) -> bool:
    if math.isnan(score):
        return False
    if math.isnan(incumbent):
        return True
    return score > incumbent if maximise else score < incumbent


def score_probabilities(proba: Tensor, labels: Tensor, num_classes: int) -> dict[str, float]:
    """Every metric of `vitcls.metrics` on the predicted classes (argmax), and `loss`: the mean negative log
    probability of the true class (a probability below LOSS_PROBABILITY_FLOOR counts as the floor)."""
    metrics = classification_metrics(num_classes).to(proba.device)
    scores = {name: float(value) for name, value in metrics(proba, labels).items()}
    log_proba = proba.double().clamp_min(LOSS_PROBABILITY_FLOOR).log()
    scores["loss"] = float(F.nll_loss(log_proba, labels))
    return scores


def _check_features(split: str, features: Tensor) -> None:
    if not isinstance(features, Tensor) or features.ndim != 2 or not features.is_floating_point():
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise VitclsError(f"probe: {split} features must be a float tensor of shape (N, D), got {shape}")
    if not torch.isfinite(features).all():
        raise VitclsError(f"probe: {split} features hold NaN or infinite values; check the feature cache")


def _check_split(split: str, features: Tensor, labels: Tensor, num_classes: int) -> None:
    _check_features(split, features)
    if len(features) == 0:
        raise VitclsError(f"probe: the {split} split is empty")
    if (
        not isinstance(labels, Tensor)
        or labels.shape != (len(features),)
        or labels.is_floating_point()
        or labels.dtype == torch.bool
    ):
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise VitclsError(
            f"probe: {split} labels must be an integer tensor of shape ({len(features)},), one per feature "
            f"row, got {shape}"
        )
    if labels.device != features.device:
        raise VitclsError(f"probe: {split} labels are on {labels.device}, its features on {features.device}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise VitclsError(
            f"probe: {split} labels must lie in [0, {num_classes}) for num_classes={num_classes}, got "
            f"{int(labels.min())}..{int(labels.max())}"
        )


def registered_probe(name: str, module: str | None = None) -> type[Probe]:
    """The probe class registered as `name`; a missing one is a ConfigError that says where its code is."""
    if name not in PROBES and module:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ConfigError(f"probe {name!r}: cannot import its module {module!r}: {error}") from error
    if name in PROBES:
        return PROBES[name]
    raise ConfigError(
        f"probe {name!r} is not a registered probe (registered: {sorted(PROBES)}). A probe is a subclass of "
        "vitcls.probes.Probe with a unique class attribute `name`, in a module that has been imported."
    )


def build_probe(spec: ProbeSpec | str) -> Probe:
    """The probe of a spec (`probe.spec()`: {"name": ..., "module": ..., **settings}) or of a bare name
    (its default settings)."""
    if isinstance(spec, str):
        spec = {"name": spec}
    if "name" not in spec:
        raise ConfigError(f"a probe spec needs a 'name' (one of {sorted(PROBES)}), got {dict(spec)}")
    settings = {k: v for k, v in spec.items() if k not in ("name", "module")}
    return registered_probe(spec["name"], spec.get("module"))(**settings)
