"""What the training batches hold: the images, or (`feature_cache.enabled`) what the frozen part of the backbone
makes of them, computed once and cached on disk (vitcls.data.feature_cache):

- a frozen backbone: each distinct feature tap's features, for any number of heads; a batch is
  `(tap_1, ..., tap_T, labels)`. Each (tap, split) is one cache entry, keyed as a one-head run of that tap keys
  it, so lone runs and banks share entries, and a later run computes only the taps it lacks.
- frozen first blocks (model.train_blocks=N): the tokens entering the first trainable block; training then runs
  only the last N blocks, the final norm, the taps and the heads. The taps act after the cached tokens, so runs
  that differ only in their taps share them. Stored as `feature_cache.token_dtype` (bfloat16 by default: half of
  float32's bytes, float32's range; rounding moves each value by at most 2^-8 of its magnitude, so metrics match
  the uncached run to that rounding, not bit for bit).

The training entry holds the whole training split before `data.train_per_class` / `data.train_fraction` keep a
subset of it (`train_pool`): every subset (few-shot draws, learning curves) is served from the same entry.

With `data.train_augment`, the training entry holds `feature_cache.views` = V augmented views of every training
image, computed once (view v of image i drawn from a seed of (v, i) alone); epoch e serves view
(e + offset_i) mod V, the offset seeded per image by `data.shuffle_seed`. Val and test keep the eval transform.

A key stands for everything that changes the tensors: backbone settings and weights (a hash of every tensor),
the tap or the block and storage dtype, preprocessing (data config and transforms), precision, the augmentation
and V (training entry only: V = 1 without augmentation is the plain entry), and every file's path, size and mtime.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from vitcls.data.datamodule import ImageFolderDataModule
from vitcls.data.dataset import ImageFileDataset, default_num_workers
from vitcls.data.feature_cache import (
    FORMAT_VERSION,
    SPLITS,
    TOKEN_DTYPES,
    ViewsDataset,
    cache_key,
    encode_splits,
    files_fingerprint,
    view_offsets,
    view_seed,
)
from vitcls.data.feature_store import FeatureStore
from vitcls.data.folder import Sample
from vitcls.errors import ConfigError
from vitcls.models.features import TapSet
from vitcls.models.lightning_module import ClassifierModule
from vitcls.models.trainable import first_trainable_block

log = logging.getLogger(__name__)

# Settings of the model config that leave the features of the backbone in eval mode unchanged
# (weights are fingerprinted by their values instead of by where they came from).
_NOT_FEATURE_SETTINGS = frozenset({"pretrained", "weights", "drop_path_rate"})
# The views of an image do not depend on the run's seed: runs with other seeds share them (and read them in
# another order).
_VIEW_SEED = 0


def training_inputs(
    cfg: DictConfig, images: ImageFolderDataModule, module: ClassifierModule, trainer: L.Trainer
) -> ImageFolderDataModule:
    """The image batches, or the cached features or tokens, as a DataModule with the image run's samplers."""
    if not cfg.feature_cache.enabled:
        return images
    check_cacheable(images, module)
    block = first_trainable_block(module.net.backbone)
    cache = FeatureStore(cfg.feature_cache.dir, verify=cfg.feature_cache.get("verify"),
                         lock_timeout_s=cfg.feature_cache.get("lock_timeout_s", 4 * 3600))
    views = int(cfg.feature_cache.get("views", 1))
    if block is None:
        batches = cached_features(images, module, trainer, cache, views)
        module.expect_inputs("features")
        return batches
    batches = cached_tokens(images, module, trainer, cache, block, cfg.feature_cache.token_dtype, views)
    module.expect_inputs("tokens", block)
    return batches


def check_cacheable(images: ImageFolderDataModule, module: ClassifierModule) -> None:
    """Cached tensors stand in for the frozen part only if it never changes and its inputs are images, not mixes."""
    if images.hparams.mixup:
        raise ConfigError("feature_cache.enabled=true cannot mix images (data.mixup): set data.mixup=null")
    if module.net.adapter_parameters():
        raise ConfigError("feature_cache.enabled=true with an adapter: it trains with the backbone's features, so "
                          "they change at every step. Use adapter=none or feature_cache.enabled=false.")


def state_hash(module: torch.nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and values of every tensor in the state dict."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # Raw bytes of any dtype (numpy has no bfloat16): flatten, then reinterpret as uint8.
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# --- keys --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Split:
    """One cached split: its images, the transform they get, and how many augmented views of each."""

    name: str
    samples: list[Sample]
    transform: Callable
    views: int | None  # None: the eval transform, one tensor per image; V: V augmented views

    def dataset(self, images: ImageFolderDataModule) -> Dataset:
        dataset = ImageFileDataset(self.samples, self.transform, images.hparams.max_image_pixels,
                                   skip_bad=images.hparams.on_bad_image == "skip")
        return dataset if self.views is None else _ViewItems(dataset, self.views)


def cached_splits(images: ImageFolderDataModule, views: int) -> list[Split]:
    """The splits a cache entry stands for: the whole training pool, val and test."""
    images.setup()
    eval_transform = images.datasets["test"].transform
    augment = images.hparams.train_augment
    if views < 1:
        raise ConfigError(f"feature_cache.views={views} is not allowed: a positive number of views")
    if views > 1 and not augment:
        raise ConfigError(f"feature_cache.views={views} caches augmented views of the training images, but "
                          "data.train_augment is null: set it (e.g. '{scale:[0.5,1.0],hflip:0.5}') or views=1")
    train = Split("train", images.train_pool, images.datasets["train"].transform if augment else eval_transform,
                  views if augment else None)
    return [train, Split("val", images.splits["val"], eval_transform, None),
            Split("test", images.splits["test"], eval_transform, None)]


def backbone_fingerprint(images: ImageFolderDataModule, module: ClassifierModule, precision: str) -> dict[str, Any]:
    """What the frozen backbone's outputs depend on besides the files, the tap and the block."""
    return {
        "format": FORMAT_VERSION,
        "backbone": {k: v for k, v in module.net.config["backbone"].items() if k not in _NOT_FEATURE_SETTINGS},
        "backbone_state_sha256": state_hash(module.net.backbone),
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in images.data_config.items()},
        "transform": repr(images.datasets["test"].transform),
        "precision": precision,
    }


def _keys(images: ImageFolderDataModule, splits: list[Split], fingerprint: dict[str, Any]) -> dict[str, str]:
    keys = {}
    for split in splits:
        stands_for = dict(fingerprint)
        if split.views is not None:  # augmented views: their own entry
            stands_for["views"] = {"count": split.views, "augment": images.hparams.train_augment,
                                   "transform": repr(split.transform), "seed": _VIEW_SEED}
        keys[split.name] = cache_key(stands_for, files_fingerprint(split.samples, images.root))
    return keys


def feature_keys(images: ImageFolderDataModule, module: ClassifierModule, precision: str,
                 views: int = 1) -> list[dict[str, str]]:
    """Per distinct tap of the network, the cache key of each split."""
    splits = cached_splits(images, views)
    base = backbone_fingerprint(images, module, precision)
    return [_keys(images, splits, {**base, "feature_tap": tap.settings}) for tap in module.net.taps.taps]


def token_keys(images: ImageFolderDataModule, module: ClassifierModule, precision: str, block: int,
               token_dtype: str, views: int = 1) -> dict[str, str]:
    """The cache key of each split's tokens entering `block`, stored as `token_dtype` (the taps act after them)."""
    fingerprint = {**backbone_fingerprint(images, module, precision),
                   "tokens": {"entering_block": block, "dtype": token_dtype}}
    return _keys(images, cached_splits(images, views), fingerprint)


# --- computing and serving ---------------------------------------------------------------------------------
class _ViewItems(Dataset):
    """Every training image V times (view-major): item v * N + i is view v of image i, its random transform drawn
    from a seed of (v, i) alone."""

    def __init__(self, images: ImageFileDataset, views: int):
        self.images, self.views = images, views

    def __len__(self) -> int:
        return self.views * len(self.images)

    def __getitem__(self, item: int):
        view, index = divmod(item, len(self.images))
        return self.images[(index, view_seed(_VIEW_SEED, view, index))]


def _encode(images: ImageFolderDataModule, module: ClassifierModule, trainer: L.Trainer, splits: list[Split],
            encode: Callable[[Tensor], list[Tensor]]) -> dict[str, tuple[list[Tensor], Tensor]]:
    """One inference pass of the network (eval mode, on the trainer's device and precision) over `splits`;
    augmented views come back as (V, N, ...) and their labels as (N,)."""
    net = module.net
    device = trainer.strategy.root_device
    home, was_training = next(net.parameters()).device, net.training
    net.to(device).eval()
    workers = images.hparams.num_workers
    try:
        encoded = encode_splits(
            {split.name: split.dataset(images) for split in splits}, encode,
            batch_size=images.hparams.eval_batch_size or images.hparams.batch_size,
            num_workers=default_num_workers() if workers is None else workers,
            device=device, forward_context=trainer.precision_plugin.forward_context,
        )
    finally:
        net.to(home).train(was_training)
        module.train(module.training)  # frozen parts back in eval mode
    for split in splits:
        if split.views is not None:
            tensors, labels = encoded[split.name]
            n = len(split.samples)
            encoded[split.name] = ([t.reshape(split.views, n, *t.shape[1:]) for t in tensors], labels[:n])
    return encoded


def _subset_rows(pool: list[Sample], subset: list[Sample]) -> Tensor:
    position = {sample.path: index for index, sample in enumerate(pool)}
    return torch.tensor([position[sample.path] for sample in subset], dtype=torch.long)


def _served(images: ImageFolderDataModule, splits: list[Split], tensors: dict[str, list[Tensor]],
            labels: dict[str, Tensor]) -> ImageFolderDataModule:
    """The DataModule serving the cached tensors: the training subset's rows of the pool; with views, the view of
    each epoch."""
    train = splits[0]
    rows = _subset_rows(train.samples, images.splits["train"])
    datasets: dict[str, Dataset] = {}
    if train.views is None:
        datasets["train"] = TensorDataset(*(t[rows] for t in tensors["train"]), labels["train"][rows])
    else:
        offsets = view_offsets(images.splits["train"], images.root, images.hparams.shuffle_seed, train.views)
        datasets["train"] = ViewsDataset([t[:, rows] for t in tensors["train"]], labels["train"][rows], offsets)
    for split in ("val", "test"):
        datasets[split] = TensorDataset(*tensors[split], labels[split])
    return images.serving(datasets)


def _description(images: ImageFolderDataModule, module: ClassifierModule, split: Split, **what: Any) -> dict[str, Any]:
    return {"split": split.name, "data_root": str(images.root), "backbone": module.net.config["backbone"].get("name"),
            "views": split.views, **what}


def cached_features(images: ImageFolderDataModule, module: ClassifierModule, trainer: L.Trainer, cache: FeatureStore,
                    views: int = 1) -> ImageFolderDataModule:
    """Every (tap, split) of the network from the cache; the missing ones computed in one backbone pass, by one
    process at a time (another process filling the same entries is waited for)."""
    splits = cached_splits(images, views)
    taps = module.net.taps.taps
    keys = feature_keys(images, module, str(trainer.precision), views)
    where = {tap_keys[split.name]: (index, split) for index, tap_keys in enumerate(keys) for split in splits}

    def compute(missing: list[str]) -> dict[str, tuple[dict[str, Tensor], dict[str, Any]]]:
        tap_indices = sorted({where[key][0] for key in missing})
        needed = [split for split in splits if any(where[key][1] is split for key in missing)]
        log.info("feature cache: computing %d feature taps of %s", len(tap_indices),
                 ", ".join(f"{len(s.samples)} {s.name}" + (f" x {s.views} views" if s.views else "") for s in needed))
        tap_set = TapSet([taps[i] for i in tap_indices])
        computed = _encode(images, module, trainer, needed, lambda batch: module.net.features_with(tap_set, batch))
        entries = {}
        for key in missing:
            index, split = where[key]
            features, labels = computed[split.name]
            entries[key] = ({"features": features[tap_indices.index(index)], "labels": labels},
                            _description(images, module, split, tap=taps[index].settings))
        return entries

    found = cache.fill(list(where), compute)
    log.info("feature cache: %d taps x %d splits ready in %s", len(keys), len(SPLITS), cache.directory)
    tensors = {s.name: [found[tap_keys[s.name]]["features"] for tap_keys in keys] for s in splits}
    labels = {s.name: found[keys[0][s.name]]["labels"] for s in splits}
    return _served(images, splits, tensors, labels)


def cached_tokens(images: ImageFolderDataModule, module: ClassifierModule, trainer: L.Trainer, cache: FeatureStore,
                  block: int, token_dtype: str, views: int = 1) -> ImageFolderDataModule:
    """The tokens entering `block` for every split, from the cache or computed in one pass (one process at a
    time)."""
    if token_dtype not in TOKEN_DTYPES:
        raise ConfigError(f"feature_cache.token_dtype={token_dtype!r} is not allowed: one of {list(TOKEN_DTYPES)}")
    module.net.taps.check_split(module.net.backbone, block)
    splits = cached_splits(images, views)
    keys = token_keys(images, module, str(trainer.precision), block, token_dtype, views)
    split_of = {keys[split.name]: split for split in splits}

    def compute(missing: list[str]) -> dict[str, tuple[dict[str, Tensor], dict[str, Any]]]:
        needed = [split_of[key] for key in missing]
        log.info("feature cache: computing the tokens entering block %d of %s", block,
                 ", ".join(f"{len(s.samples)} {s.name}" + (f" x {s.views} views" if s.views else "") for s in needed))
        dtype = getattr(torch, token_dtype)
        computed = _encode(images, module, trainer, needed,
                           lambda batch: [module.net.tokens_before(batch, block).to(dtype)])
        return {keys[split.name]: ({"features": computed[split.name][0][0], "labels": computed[split.name][1]},
                                   _description(images, module, split, tokens_entering_block=block))
                for split in needed}

    found = cache.fill(list(split_of), compute)
    tensors = {split.name: [found[keys[split.name]]["features"]] for split in splits}
    labels = {split.name: found[keys[split.name]]["labels"] for split in splits}
    return _served(images, splits, tensors, labels)
