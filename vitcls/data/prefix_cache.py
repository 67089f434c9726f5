"""Partial fine-tuning at cached speed: the tokens entering the first trainable block, computed once per split.

With `model.train_blocks=N` the stem and the first depth-N blocks are frozen; without training-time
augmentation the tokens they hand to block depth-N are a pure function of the image, as frozen features are.
`build_prefix_datamodule` computes them in one inference pass, stores them under the feature cache's
fingerprint rules (backbone settings and weights, preprocessing, precision, every file's path, size and
mtime; plus the block and the storage dtype) and serves `(tokens, label)` batches: training then runs only the
last N blocks, the final norm, the tap and the head (`ClassifierModule.expect_inputs("tokens", block)`).

Storage: `feature_cache.token_dtype`, bfloat16 by default: half of float32's bytes, float32's range (ViT
residual streams can hold values beyond float16's 65504). Rounding to bfloat16 moves each value by at most
2^-8 of its magnitude, so metrics match the uncached run to that rounding, not bit for bit; float32 storage
matches it to float tolerance. The files are the feature cache's (`<key>.safetensors` + `<key>.json`),
memory-mapped when loaded: pages are read from disk as batches use them.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import lightning as L
import torch
from torch.utils.data import TensorDataset

from vitcls.data.datamodule import ImageFolderDataModule
from vitcls.data.feature_cache import (
    SPLITS,
    FeatureCache,
    compute_missing_splits,
    feature_fingerprint,
    split_keys,
)
from vitcls.errors import ConfigError
from vitcls.models.trainable import STEM

log = logging.getLogger(__name__)

TOKEN_DTYPES = ("bfloat16", "float16", "float32")


def first_trainable_block(module: torch.nn.Module) -> int | None:
    """The block where training starts when the stem and every block before it are frozen; None for a
    frozen backbone. Raises when the stem trains (model.train_blocks=all): nothing could be cached."""
    backbone = module.net.backbone
    trains = [any(p.requires_grad for p in block.parameters()) for block in backbone.blocks]
    if not any(trains) and not any(p.requires_grad for p in backbone.parameters()):
        return None
    start = trains.index(True) if any(trains) else len(trains)
    stem = [getattr(backbone, name) for name in STEM if hasattr(backbone, name)]
    stem_trains = any(p.requires_grad for part in stem for p in part.parameters()) or any(
        p.requires_grad for p in backbone.parameters(recurse=False)  # pos_embed, cls_token, reg_token
    )
    if stem_trains:
        raise ConfigError(
            "feature_cache.enabled=true needs a frozen backbone (model.train_blocks=none), or frozen first blocks "
            "(model.train_blocks=N: the tokens entering block N from the end are cached), and no training-time "
            "augmentation (data.train_augment=null); model.train_blocks=all trains the patch embedding, so nothing "
            "before the head is fixed. Switch feature_cache.enabled off or set model.train_blocks=N."
        )
    return start


def check_prefix_cacheable(train_augment: Any, mixup: Any, token_dtype: str) -> None:
    if mixup:
        raise ConfigError("feature_cache.enabled=true cannot mix images (data.mixup): set data.mixup=null")
    if train_augment:
        raise ConfigError(
            "feature_cache.enabled=true with model.train_blocks=N caches the tokens of fixed images: set "
            f"data.train_augment=null (got {train_augment!r}) or switch feature_cache.enabled off."
        )
    if token_dtype not in TOKEN_DTYPES:
        raise ConfigError(f"feature_cache.token_dtype={token_dtype!r} is not allowed: one of {list(TOKEN_DTYPES)}")


def token_fingerprint(images: ImageFolderDataModule, module: torch.nn.Module, precision: str, block: int,
                      token_dtype: str) -> dict[str, Any]:
    """The feature cache's fingerprint, with what is stored instead of the feature tap (the tap acts after the
    cached tokens: a sweep over taps shares them)."""
    fingerprint = feature_fingerprint(module, images.datasets["test"].transform, images.data_config, precision)
    del fingerprint["feature_tap"]
    fingerprint["tokens"] = {"entering_block": block, "dtype": token_dtype}
    return fingerprint


def build_prefix_datamodule(
    images: ImageFolderDataModule,
    module: torch.nn.Module,
    trainer: L.Trainer,
    cache_dir: str | os.PathLike,
    token_dtype: str = "bfloat16",
) -> tuple[ImageFolderDataModule, int]:
    """(a DataModule of `(tokens, label)` batches, the block they enter), computing and storing missing splits."""
    block = first_trainable_block(module)
    if block is None:
        raise ConfigError("a frozen backbone caches its features, not tokens: use build_feature_datamodule")
    check_prefix_cacheable(images.hparams.train_augment, images.hparams.mixup, token_dtype)
    module.net.tap.check_split(module.net.backbone, block)
    images.setup()
    cache = FeatureCache(cache_dir)
    fingerprint = token_fingerprint(images, module, str(trainer.precision), block, token_dtype)
    keys = split_keys(images, module, str(trainer.precision), fingerprint)
    found = {split: cache.load(key) for split, key in keys.items()}
    for split, key in keys.items():
        if found[split] is not None:
            log.info("feature cache: %s tokens entering block %d loaded from %s", split, block, cache.paths(key)[0])
    missing = [split for split, tensors in found.items() if tensors is None]
    if missing:
        dtype = getattr(torch, token_dtype)
        computed = compute_missing_splits(
            images, missing, module, trainer, encode=lambda batch: module.net.tokens_before(batch, block).to(dtype)
        )
        for split, (tokens, labels) in computed.items():
            description = {
                "split": split,
                "data_root": str(images.root),
                "backbone": module.net.config["backbone"].get("name"),
                "tokens_entering_block": block,
            }
            cache.save(keys[split], tokens, labels, description)
        # Served from the memory-mapped files, as a later run will be.
        found.update({split: cache.load(keys[split]) for split in missing})
    return images.serving({split: TensorDataset(*found[split]) for split in SPLITS}), block
