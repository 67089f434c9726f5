"""Backbone features computed once per split, stored on disk, and served to head-only training.

With a frozen backbone and no training-time augmentation, what the head sees is a pure function of
(backbone architecture and weights, feature tap, image size, eval transform, precision, image file).
`build_feature_datamodule` runs one batched inference pass per split, stores the features under a key
that fingerprints all of those, and returns a DataModule whose batches are `(features, label)`.
A later run with the same fingerprint loads them instead: a head sweep pays for the backbone once.

Files are fingerprinted by (path relative to data.root, size, mtime_ns), as make and rsync do:
a stat per file instead of reading every image, and any rewrite of an image (even `touch`) changes
its key. Only a replacement keeping both size and mtime would go unnoticed.

Cache layout: `<cache_dir>/<key>.safetensors` (features, labels) and `<key>.json` (what the key
stands for, written last: an entry without its JSON is incomplete and recomputed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import safetensors.torch
import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, TensorDataset

from vitcls.data.datamodule import ImageFolderDataModule
from vitcls.data.dataset import default_num_workers
from vitcls.data.folder import Sample
from vitcls.errors import ConfigError
from vitcls.io import atomic_write, write_json_atomic

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
FORMAT_VERSION = 1
# Settings of the model config that leave the features of the backbone in eval mode unchanged
# (weights are fingerprinted by their values instead of by where they came from).
_NOT_FEATURE_SETTINGS = frozenset({"pretrained", "weights", "drop_path_rate"})


def check_cacheable(module: torch.nn.Module, train_augment: Any, mixup: Any = None) -> None:
    """Cached features stand in for the backbone only if it never changes and sees fixed inputs."""
    if mixup:
        raise ConfigError("feature_cache.enabled=true cannot mix images (data.mixup): set data.mixup=null")
    trainable = any(p.requires_grad for _, p in module.net.feature_parameters())  # backbone and adapter
    if trainable or train_augment:
        raise ConfigError(
            "feature_cache.enabled=true needs a frozen backbone (model.train_blocks=none), or frozen first blocks "
            "(model.train_blocks=N: the tokens entering block N from the end are cached), and no training-time "
            f"augmentation (data.train_augment=null); got a {'trainable' if trainable else 'frozen'} backbone "
            f"and data.train_augment={train_augment!r}. Switch feature_cache.enabled off or change those settings."
        )


def state_hash(module: torch.nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and values of every tensor in the state dict."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # Raw bytes of any dtype (numpy has no bfloat16): flatten, then reinterpret as uint8.
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def files_fingerprint(samples: list[Sample], root: Path) -> list[list]:
    """[relative path, label, size, mtime_ns] per sample, in split order."""
    rows = []
    for sample in samples:
        stat = os.stat(sample.path)
        rows.append([os.path.relpath(sample.path, root), sample.label, stat.st_size, stat.st_mtime_ns])
    return rows


def feature_fingerprint(
    module: torch.nn.Module, transform: Callable, data_config: dict[str, Any], precision: str
) -> dict[str, Any]:
    """Everything except the files that determines `module.net.features(transform(image))`."""
    net = module.net
    return tap_fingerprint(
        net.config["backbone"], state_hash(net.backbone), net.config["tap"], transform, data_config, precision
    )


def tap_fingerprint(
    backbone_config: dict[str, Any], backbone_sha256: str, tap: dict[str, Any], transform: Callable,
    data_config: dict[str, Any], precision: str,
) -> dict[str, Any]:
    """The fingerprint of one feature tap of a backbone (its settings and `state_hash`): a head bank keys each of
    its taps as the lone run of that tap does, so the two share cache entries."""
    return {
        "format": FORMAT_VERSION,
        "backbone": {k: v for k, v in backbone_config.items() if k not in _NOT_FEATURE_SETTINGS},
        "backbone_state_sha256": backbone_sha256,
        "feature_tap": dict(tap),
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()},
        "transform": repr(transform),
        "precision": precision,
    }


def cache_key(fingerprint: dict[str, Any], files: list[list]) -> str:
    payload = json.dumps({"features": fingerprint, "files": files}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


class FeatureCache:
    """Feature tensors keyed by fingerprint in one directory (safetensors + a JSON description)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory).expanduser()

    def paths(self, key: str) -> tuple[Path, Path]:
        return self.directory / f"{key}.safetensors", self.directory / f"{key}.json"

    def load(self, key: str) -> tuple[Tensor, Tensor] | None:
        """The stored tensors, memory-mapped (read from disk as they are used), or None."""
        tensors_path, index_path = self.paths(key)
        if not (index_path.is_file() and tensors_path.is_file()):
            return None
        tensors = safetensors.torch.load_file(tensors_path)
        return tensors["features"], tensors["labels"]

    def save(self, key: str, features: Tensor, labels: Tensor, description: dict[str, Any]) -> None:
        tensors_path, index_path = self.paths(key)
        tensors = {"features": features.contiguous(), "labels": labels.contiguous()}
        atomic_write(tensors_path, lambda tmp: safetensors.torch.save_file(tensors, tmp))
        write_json_atomic(
            index_path,
            {
                **description,
                "key": key,
                "num_samples": len(labels),
                "feature_shape": list(features.shape[1:]),
                "dtype": str(features.dtype),
            },
        )


@torch.no_grad()
def compute_features(
    module: torch.nn.Module,
    loader: DataLoader,
    device: torch.device,
    forward_context: Callable[[], AbstractContextManager] = nullcontext,
    encode: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """`encode` (default: `module.net.features`) over a loader of (images, labels), in eval mode; returns CPU
    tensors."""
    encode = encode or module.net.features
    was_training = module.training
    module.eval()
    features, labels = [], []
    try:
        for images, targets in loader:
            with forward_context():
                features.append(encode(images.to(device)).cpu())
            labels.append(targets)
    finally:
        module.train(was_training)
    return torch.cat(features), torch.cat(labels)


def split_keys(
    images: ImageFolderDataModule, module: torch.nn.Module, precision: str, fingerprint: dict[str, Any] | None = None
) -> dict[str, str]:
    """The cache key of each split's features (the DataModule must be set up); `fingerprint` replaces
    `feature_fingerprint` for other tensors computed from the images."""
    fingerprint = fingerprint or feature_fingerprint(
        module, images.datasets["test"].transform, images.data_config, precision
    )
    return {
        split: cache_key(fingerprint, files_fingerprint(images.splits[split], images.root))
        for split in SPLITS
    }


def compute_missing_splits(
    images: ImageFolderDataModule,
    splits: list[str],
    module: torch.nn.Module,
    trainer: L.Trainer,
    encode: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, tuple[Tensor, Tensor]]:
    """Features (or what `encode` computes) of `splits` in one inference pass: one DataLoader, so worker
    processes start once."""
    datasets = [images.datasets[split] for split in splits]
    log.info(
        "feature cache: computing the %s of %s",
        "features" if encode is None else "cached tensors",
        ", ".join(f"{len(dataset)} {split}" for split, dataset in zip(splits, datasets, strict=True)),
    )
    workers = images.hparams.num_workers
    loader = DataLoader(
        ConcatDataset(datasets),
        batch_size=images.hparams.eval_batch_size or images.hparams.batch_size,
        num_workers=default_num_workers() if workers is None else workers,
    )
    device = trainer.strategy.root_device
    home = next(module.parameters()).device
    # Forked RNG: the training that follows draws the same random numbers as without a cache.
    with torch.random.fork_rng(devices=[]):
        features, labels = compute_features(
            module.to(device), loader, device, trainer.precision_plugin.forward_context, encode
        )
    module.to(home)
    sizes = [len(dataset) for dataset in datasets]
    return dict(zip(splits, zip(features.split(sizes), labels.split(sizes), strict=True), strict=True))


def build_feature_datamodule(
    images: ImageFolderDataModule, module: torch.nn.Module, trainer: L.Trainer, cache_dir: str | os.PathLike
) -> ImageFolderDataModule:
    """Load each split's features from `cache_dir`, computing (and storing) the missing ones."""
    check_cacheable(module, images.hparams.train_augment, images.hparams.mixup)
    images.setup()
    cache = FeatureCache(cache_dir)
    keys = split_keys(images, module, str(trainer.precision))
    found = {split: cache.load(key) for split, key in keys.items()}
    for split, key in keys.items():
        if found[split] is not None:
            log.info("feature cache: %s features loaded from %s", split, cache.paths(key)[0])
    missing = [split for split, tensors in found.items() if tensors is None]
    if missing:
        computed = compute_missing_splits(images, missing, module, trainer)
        for split, tensors in computed.items():
            description = {
                "split": split,
                "data_root": str(images.root),
                "backbone": module.net.config["backbone"].get("name"),
            }
            cache.save(keys[split], *tensors, description)
        found.update(computed)
    return images.serving({split: TensorDataset(*found[split]) for split in SPLITS})
