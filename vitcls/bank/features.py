"""A head bank on cached features: each distinct feature tap of the bank is one cache entry per split, keyed as
the lone run of that tap keys it (vitcls.data.feature_cache), so banks and lone runs share entries. The taps and
splits that are missing are computed in one backbone pass (`TapSet`); the batches then hold each tap's features
once, whatever the number of heads that read it, and the labels: `(tap_1, ..., tap_T, labels)`.
"""

from __future__ import annotations

import logging
import os

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, TensorDataset

from vitcls.data.datamodule import ImageFolderDataModule
from vitcls.data.dataset import default_num_workers
from vitcls.data.feature_cache import (
    SPLITS,
    FeatureCache,
    cache_key,
    files_fingerprint,
    state_hash,
    tap_fingerprint,
)
from vitcls.errors import ConfigError
from vitcls.models.bank import BankModule
from vitcls.models.features import TapSet

log = logging.getLogger(__name__)


def check_bank_cacheable(images: ImageFolderDataModule) -> None:
    if images.hparams.mixup or images.hparams.train_augment:
        raise ConfigError(
            "feature_cache.enabled=true needs fixed inputs: no data.train_augment and no data.mixup (got "
            f"data.train_augment={images.hparams.train_augment!r}, data.mixup={images.hparams.mixup!r}). Switch "
            "feature_cache.enabled off (the bank then runs the backbone once per batch) or drop them."
        )


def tap_keys(images: ImageFolderDataModule, module: BankModule, precision: str) -> list[dict[str, str]]:
    """Per distinct tap of the bank, the cache key of each split (the DataModule must be set up)."""
    backbone_config = module.hparams.backbone
    backbone_sha256 = state_hash(module.bank.backbone)
    transform = images.datasets["test"].transform
    files = {split: files_fingerprint(images.splits[split], images.root) for split in SPLITS}
    return [
        {split: cache_key(tap_fingerprint(backbone_config, backbone_sha256, tap.settings, transform,
                                          images.data_config, precision), files[split])
         for split in SPLITS}
        for tap in module.bank.taps
    ]


@torch.no_grad()
def compute_taps(
    images: ImageFolderDataModule, splits: list[str], taps: TapSet, module: BankModule, trainer: L.Trainer
) -> dict[str, tuple[list[Tensor], Tensor]]:
    """{split: ([features of each tap], labels)} for `splits`, in one pass of the backbone over them."""
    datasets = [images.datasets[split] for split in splits]
    log.info("feature cache: computing %d feature taps of %s", len(taps.taps),
             ", ".join(f"{len(d)} {split}" for split, d in zip(splits, datasets, strict=True)))
    workers = images.hparams.num_workers
    loader = DataLoader(
        ConcatDataset(datasets),
        batch_size=images.hparams.eval_batch_size or images.hparams.batch_size,
        num_workers=default_num_workers() if workers is None else workers,
    )
    device = trainer.strategy.root_device
    backbone = module.bank.backbone
    home = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.to(device).eval()
    outputs: list[list[Tensor]] = [[] for _ in taps.taps]
    labels = []
    # Forked RNG: the training that follows draws the same random numbers as without a cache.
    with torch.random.fork_rng(devices=[]):
        for batch, targets in loader:
            with trainer.precision_plugin.forward_context():
                for output, features in zip(outputs, taps(backbone, batch.to(device)), strict=True):
                    output.append(features.cpu())
            labels.append(targets)
    backbone.to(home).train(was_training)
    sizes = [len(dataset) for dataset in datasets]
    per_tap = [torch.cat(output).split(sizes) for output in outputs]
    per_split_labels = torch.cat(labels).split(sizes)
    return {split: ([tap[i] for tap in per_tap], per_split_labels[i]) for i, split in enumerate(splits)}


def build_bank_feature_datamodule(
    images: ImageFolderDataModule, module: BankModule, trainer: L.Trainer, cache_dir: str | os.PathLike
) -> ImageFolderDataModule:
    """Load every (tap, split) of the bank from `cache_dir`, computing and storing the missing ones in one pass."""
    check_bank_cacheable(images)
    images.setup()
    cache = FeatureCache(cache_dir)
    keys = tap_keys(images, module, str(trainer.precision))
    found = [{split: cache.load(tap_key[split]) for split in SPLITS} for tap_key in keys]
    loaded = sum(tensors is not None for entries in found for tensors in entries.values())
    missing_taps = [i for i, entries in enumerate(found) if any(v is None for v in entries.values())]
    if missing_taps:
        splits = [s for s in SPLITS if any(found[i][s] is None for i in missing_taps)]
        computed = compute_taps(images, splits, TapSet([module.bank.taps[i] for i in missing_taps]), module, trainer)
        for split, (features, labels) in computed.items():
            for position, index in enumerate(missing_taps):
                if found[index][split] is None:
                    description = {"split": split, "data_root": str(images.root),
                                   "backbone": module.hparams.backbone.get("name")}
                    cache.save(keys[index][split], features[position], labels, description)
                    found[index][split] = (features[position], labels)
    log.info("feature cache: %d taps x %d splits ready (%d loaded from %s)", len(keys), len(SPLITS), loaded, cache.directory)
    datasets = {}
    for split in SPLITS:
        labels = found[0][split][1]
        datasets[split] = TensorDataset(*(entries[split][0] for entries in found), labels)
    module.expect_inputs("features")
    return images.serving(datasets)
