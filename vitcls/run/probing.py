"""Probes (vitcls.probes: k-NN, logistic regression) fitted on the run's cached features, beside its trained heads.

`probes` in the config is a dict group of probe nodes (`+probe@probes.knn=knn`); `probe_tap` names the feature tap
they read (one of the run's taps). Each probe is fitted on the training features the heads trained on (with
augmented views, view 0 of each image), its hyperparameter chosen on validation, and scored on val and test with the
heads' metrics. It becomes a row of the same table as the heads (`protocol`: its name), with its per-image
predictions in `probes/<name>/`; it is never the run's selected head, which must be a network to export.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig
from torch import Tensor
from torch.utils.data import Dataset

from vitcls.config import instantiate_dict_group
from vitcls.data.datamodule import ImageFolderDataModule
from vitcls.data.feature_cache import ViewsDataset
from vitcls.errors import ConfigError
from vitcls.io import write_json_atomic
from vitcls.metrics import ordered_metrics
from vitcls.models.classifier import tap_key
from vitcls.probes import Probe, score_probabilities
from vitcls.reporting.predictions_csv import write_predictions
from vitcls.run.bank_heads import STATUS_OK
from vitcls.run.layout import PREDICTIONS_FILES, PROBE_FILE, PROBES_DIR
from vitcls.run.run_files import TrainedRun

log = logging.getLogger(__name__)


def configured_probes(cfg: DictConfig) -> list[Probe]:
    probes = instantiate_dict_group(cfg.get("probes"))
    if probes and not cfg.feature_cache.enabled:
        raise ConfigError(
            "probes are fitted on cached features: set feature_cache.enabled=true (with a frozen backbone, "
            "model.train_blocks=none), or drop the probes"
        )
    return probes


def _tap_tensors(dataset: Dataset, position: int) -> tuple[Tensor, Tensor]:
    if isinstance(dataset, ViewsDataset):
        return dataset.tensors[position][0], dataset.labels
    return dataset.tensors[position], dataset.tensors[-1]


def probe_rows(trained: TrainedRun, batches: ImageFolderDataModule, probes: list[Probe], tap: str,
               first_index: int) -> list[dict[str, Any]]:
    """Fit every probe on the cached features of `tap`; their rows for the run's table."""
    module = trained.module
    if module.inputs != "features":
        raise ConfigError("probes read cached features of a frozen backbone: model.train_blocks=none and "
                          "feature_cache.enabled=true")
    taps = [tap_key(t.settings) for t in module.net.taps.taps]
    if tap not in taps:
        raise ConfigError(f"probe_tap={tap!r} is not a feature tap of this run (its taps: {taps}): add it to the "
                          "heads' taps (e.g. bank.features) or choose one of those")
    position = taps.index(tap)
    train_x, train_y = _tap_tensors(batches.datasets["train"], position)
    split_data = {split: _tap_tensors(batches.datasets[split], position) for split in ("val", "test")}
    num_classes = len(module.class_names)
    rows = []
    for offset, probe in enumerate(probes):
        fit = probe.fit(train_x.float(), train_y, split_data["val"][0].float(), split_data["val"][1], num_classes,
                        select_on=module.monitor_name)
        directory = trained.run_dir / PROBES_DIR / probe.name
        files, metrics = {}, {}
        for split, (features, labels) in split_data.items():
            probabilities = fit.predict_proba(features.float())
            metrics[split] = ordered_metrics(score_probabilities(probabilities, labels, num_classes))
            files[f"{split}_predictions"] = write_predictions(
                directory / PREDICTIONS_FILES[split], trained.samples(split, len(probabilities)), probabilities,
                trained.datamodule.class_names)
        files["probe"] = write_json_atomic(directory / PROBE_FILE, {**fit.summary(), "tap": tap, "test": metrics["test"]})
        log.info("probe %s (%s): val %s %.4f", probe.name, fit.params, module.monitor_name, fit.val_score)
        rows.append({
            "index": first_index + offset,
            "name": probe.name,
            "protocol": probe.name,
            "status": STATUS_OK,
            "design": {"probe": probe.spec(), "tap": tap, "chosen": fit.params},
            "notes": fit.notes,
            "val": metrics["val"],
            "test": metrics["test"],
            "best_epoch": None,
            "files": {name: str(path.relative_to(trained.run_dir)) for name, path in files.items()},
        })
    return rows
