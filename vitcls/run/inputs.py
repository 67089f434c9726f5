"""What the training batches hold: the images, or (`feature_cache.enabled`) what the frozen part of the backbone
makes of them, computed once per split and cached on disk (vitcls.data.feature_cache):

- a frozen backbone: each distinct feature tap's features, for any number of heads; a batch is
  `(tap_1, ..., tap_T, labels)`. Each (tap, split) is one cache entry, keyed as a one-head run of that tap keys
  it, so lone runs and banks share entries, and a later run computes only the taps it lacks.
- frozen first blocks (model.train_blocks=N): the tokens entering the first trainable block; training then runs
  only the last N blocks, the final norm, the taps and the heads. The taps act after the cached tokens, so runs
  that differ only in their taps share them. Stored as `feature_cache.token_dtype` (bfloat16 by default: half of
  float32's bytes, float32's range; rounding moves each value by at most 2^-8 of its magnitude, so metrics match
  the uncached run to that rounding, not bit for bit).

A key stands for everything that changes the tensors: backbone settings and weights (a hash of every tensor),
the tap or the block and storage dtype, preprocessing (data config and the transform), precision, and every
file's path, size and mtime.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig
from torch.utils.data import TensorDataset

from vitcls.data.datamodule import ImageFolderDataModule
from vitcls.data.dataset import default_num_workers
from vitcls.data.feature_cache import (
    FORMAT_VERSION,
    SPLITS,
    TOKEN_DTYPES,
    FeatureCache,
    cache_key,
    encode_splits,
    files_fingerprint,
)
from vitcls.errors import ConfigError
from vitcls.models.features import TapSet
from vitcls.models.lightning_module import ClassifierModule
from vitcls.models.trainable import first_trainable_block

log = logging.getLogger(__name__)

# Settings of the model config that leave the features of the backbone in eval mode unchanged
# (weights are fingerprinted by their values instead of by where they came from).
_NOT_FEATURE_SETTINGS = frozenset({"pretrained", "weights", "drop_path_rate"})


def training_inputs(
    cfg: DictConfig, images: ImageFolderDataModule, module: ClassifierModule, trainer: L.Trainer
) -> ImageFolderDataModule:
    """The image batches, or the cached features or tokens, as a DataModule with the image run's samplers."""
    if not cfg.feature_cache.enabled:
        return images
    check_fixed_inputs(images, module)
    block = first_trainable_block(module.net.backbone)
    cache = FeatureCache(cfg.feature_cache.dir)
    if block is None:
        batches = cached_features(images, module, trainer, cache)
        module.expect_inputs("features")
        return batches
    batches = cached_tokens(images, module, trainer, cache, block, cfg.feature_cache.token_dtype)
    module.expect_inputs("tokens", block)
    return batches


def check_fixed_inputs(images: ImageFolderDataModule, module: ClassifierModule) -> None:
    """Cached tensors stand in for the frozen part only if it sees fixed inputs and never changes."""
    if images.hparams.mixup:
        raise ConfigError("feature_cache.enabled=true cannot mix images (data.mixup): set data.mixup=null")
    if images.hparams.train_augment:
        raise ConfigError(
            "feature_cache.enabled=true caches what the backbone makes of fixed images: set data.train_augment=null "
            f"(got {images.hparams.train_augment!r}) or switch feature_cache.enabled off."
        )
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


def _keys(images: ImageFolderDataModule, fingerprint: dict[str, Any]) -> dict[str, str]:
    return {split: cache_key(fingerprint, files_fingerprint(images.splits[split], images.root)) for split in SPLITS}


def feature_keys(images: ImageFolderDataModule, module: ClassifierModule, precision: str) -> list[dict[str, str]]:
    """Per distinct tap of the network, the cache key of each split (the DataModule must be set up)."""
    base = backbone_fingerprint(images, module, precision)
    return [_keys(images, {**base, "feature_tap": tap.settings}) for tap in module.net.taps.taps]


def token_keys(images: ImageFolderDataModule, module: ClassifierModule, precision: str, block: int,
               token_dtype: str) -> dict[str, str]:
    """The cache key of each split's tokens entering `block`, stored as `token_dtype` (the taps act after them)."""
    fingerprint = {**backbone_fingerprint(images, module, precision),
                   "tokens": {"entering_block": block, "dtype": token_dtype}}
    return _keys(images, fingerprint)


def _encode_missing(images: ImageFolderDataModule, module: ClassifierModule, trainer: L.Trainer, splits: list[str],
                    encode) -> dict[str, tuple[list[torch.Tensor], torch.Tensor]]:
    """One inference pass of the network (eval mode, on the trainer's device and precision) over `splits`."""
    net = module.net
    device = trainer.strategy.root_device
    home, was_training = next(net.parameters()).device, net.training
    net.to(device).eval()
    workers = images.hparams.num_workers
    try:
        return encode_splits(
            {split: images.datasets[split] for split in splits}, encode,
            batch_size=images.hparams.eval_batch_size or images.hparams.batch_size,
            num_workers=default_num_workers() if workers is None else workers,
            device=device, forward_context=trainer.precision_plugin.forward_context,
        )
    finally:
        net.to(home).train(was_training)
        module.train(module.training)  # frozen parts back in eval mode


def _description(images: ImageFolderDataModule, module: ClassifierModule, split: str, **what: Any) -> dict[str, Any]:
    return {"split": split, "data_root": str(images.root), "backbone": module.net.config["backbone"].get("name"), **what}


def cached_features(
    images: ImageFolderDataModule, module: ClassifierModule, trainer: L.Trainer, cache: FeatureCache
) -> ImageFolderDataModule:
    """Every (tap, split) of the network from the cache, the missing ones computed in one backbone pass."""
    images.setup()
    taps = module.net.taps.taps
    keys = feature_keys(images, module, str(trainer.precision))
    found = [{split: cache.load(tap_keys[split]) for split in SPLITS} for tap_keys in keys]
    loaded = sum(entry is not None for entries in found for entry in entries.values())
    missing_taps = [i for i, entries in enumerate(found) if any(v is None for v in entries.values())]
    if missing_taps:
        splits = [s for s in SPLITS if any(found[i][s] is None for i in missing_taps)]
        log.info("feature cache: computing %d feature taps of %s", len(missing_taps),
                 ", ".join(f"{len(images.datasets[s])} {s}" for s in splits))
        tap_set = TapSet([taps[i] for i in missing_taps])
        computed = _encode_missing(images, module, trainer, splits,
                                   lambda batch: module.net.features_with(tap_set, batch))
        for split, (features, labels) in computed.items():
            for position, index in enumerate(missing_taps):
                if found[index][split] is None:
                    cache.save(keys[index][split], features[position], labels,
                               _description(images, module, split, tap=taps[index].settings))
                    found[index][split] = (features[position], labels)
    log.info("feature cache: %d taps x %d splits ready (%d loaded from %s)", len(keys), len(SPLITS), loaded,
             cache.directory)
    datasets = {split: TensorDataset(*(entries[split][0] for entries in found), found[0][split][1]) for split in SPLITS}
    return images.serving(datasets)


def cached_tokens(
    images: ImageFolderDataModule, module: ClassifierModule, trainer: L.Trainer, cache: FeatureCache, block: int,
    token_dtype: str,
) -> ImageFolderDataModule:
    """The tokens entering `block` for every split, from the cache or computed in one pass."""
    if token_dtype not in TOKEN_DTYPES:
        raise ConfigError(f"feature_cache.token_dtype={token_dtype!r} is not allowed: one of {list(TOKEN_DTYPES)}")
    module.net.taps.check_split(module.net.backbone, block)
    images.setup()
    keys = token_keys(images, module, str(trainer.precision), block, token_dtype)
    found = {split: cache.load(key) for split, key in keys.items()}
    for split in SPLITS:
        if found[split] is not None:
            log.info("feature cache: %s tokens entering block %d loaded from %s", split, block, cache.paths(keys[split])[0])
    missing = [split for split, tensors in found.items() if tensors is None]
    if missing:
        log.info("feature cache: computing the tokens entering block %d of %s", block,
                 ", ".join(f"{len(images.datasets[s])} {s}" for s in missing))
        dtype = getattr(torch, token_dtype)
        computed = _encode_missing(images, module, trainer, missing,
                                   lambda batch: [module.net.tokens_before(batch, block).to(dtype)])
        for split, ((tokens,), labels) in computed.items():
            cache.save(keys[split], tokens, labels, _description(images, module, split, tokens_entering_block=block))
        # Served from the memory-mapped files, as a later run will be.
        found.update({split: cache.load(keys[split]) for split in missing})
    return images.serving({split: TensorDataset(*found[split]) for split in SPLITS})
