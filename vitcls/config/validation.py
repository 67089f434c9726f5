"""Checks of the composed config. They run before any folder scan, model or trainer is built; each failure is a ConfigError naming the
setting, the value and what is allowed. Checks that need the data (a batch size larger than the training
set) live with the data (`ImageFolderDataModule.setup`).
"""

from __future__ import annotations

import difflib
from typing import Any

import timm
import torch
from omegaconf import DictConfig

from vitcls.adapters import adapter_spec, build_adapter
from vitcls.config import to_plain
from vitcls.data.feature_cache import TOKEN_DTYPES
from vitcls.data.quality import BAD_IMAGE_POLICIES
from vitcls.data.split import stratified_subset
from vitcls.errors import ConfigError
from vitcls.metrics import metric_names

# Settings of the `model` node that say how the backbone trains; the others are create_backbone's.
TRAINING_SETTINGS = ("train_blocks", "bitfit", "compile")


def _require(ok: bool, setting: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{setting}={value!r} is not allowed: {allowed}")


def _positive_int(section: DictConfig, prefix: str, key: str, optional: bool = False) -> None:
    value = section.get(key)
    if value is None and optional:
        return
    _require(
        isinstance(value, int) and not isinstance(value, bool) and value > 0,
        f"{prefix}.{key}",
        value,
        "a positive integer" + (" or null" if optional else ""),
    )


def _in_range(section: DictConfig, prefix: str, key: str, low: float, high: float, closed_low: bool) -> None:
    value = section.get(key)
    if value is None:
        return
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    inside = numeric and (low <= value if closed_low else low < value) and value < high
    _require(inside, f"{prefix}.{key}", value, f"a number in {'[' if closed_low else '('}{low}, {high})")


def check_model_name(name: str) -> None:
    if not timm.is_model(name):
        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=5, cutoff=0.6)
        raise ConfigError(
            f"model.name={name!r} is not a timm model. Closest timm names: {close or 'none'}; "
            "list them with python -c \"import timm; print(timm.list_models('vit_*'))\"."
        )


def check_train_config(cfg: DictConfig) -> None:
    data, model, head, optim = cfg.data, cfg.model, cfg.get("head"), cfg.get("optim")
    check_monitor(cfg.monitor)
    _positive_int(data, "data", "batch_size")
    _positive_int(data, "data", "eval_batch_size", optional=True)
    workers = data.get("num_workers")
    _require(
        workers is None or (isinstance(workers, int) and workers >= 0),
        "data.num_workers",
        workers,
        "null or an integer >= 0",
    )
    _in_range(data, "data", "val_fraction", 0.0, 1.0, closed_low=False)
    _in_range(data, "data", "test_fraction", 0.0, 1.0, closed_low=False)
    stratified_subset([], data.get("train_per_class"), data.get("train_fraction"))  # checks the two settings
    policy = data.get("on_bad_image")
    _require(policy in BAD_IMAGE_POLICIES, "data.on_bad_image", policy, f"one of {list(BAD_IMAGE_POLICIES)}")
    _positive_int(data, "data", "max_image_pixels")

    check_model_name(model.name)
    _positive_int(model, "model", "img_size", optional=True)
    _in_range(model, "model", "drop_path_rate", 0.0, 1.0, closed_low=True)
    if head is not None:
        _in_range(head, "head", "dropout", 0.0, 1.0, closed_low=True)
    if optim is not None:
        _in_range(optim, "optim", "lr", 0.0, float("inf"), closed_low=False)
        _in_range(optim, "optim", "head_lr", 0.0, float("inf"), closed_low=False)
        _in_range(optim, "optim", "weight_decay", 0.0, float("inf"), closed_low=True)
    loss = cfg.get("loss")
    if loss is not None:
        _in_range(loss, "loss", "label_smoothing", 0.0, 1.0, closed_low=True)
    cache = cfg.get("feature_cache")
    if cache is not None and cache.get("enabled"):
        token_dtype = cache.get("token_dtype", "bfloat16")
        _require(token_dtype in TOKEN_DTYPES, "feature_cache.token_dtype", token_dtype, f"one of {list(TOKEN_DTYPES)}")
        _positive_int(cache, "feature_cache", "views")
        if cache.get("views", 1) > 1 and not data.get("train_augment"):
            raise ConfigError(
                f"feature_cache.views={cache.views} caches augmented views of the training images, but "
                "data.train_augment is null: set it (e.g. 'data.train_augment={scale:[0.5,1.0],hflip:0.5}') or views=1"
            )
    check_adapter(cfg)


def check_adapter(cfg: DictConfig) -> None:
    """The adapter's settings against the backbone they adapt, on a weightless (meta-device) copy of it: a rank
    that the adapter refuses for this backbone fail in a second."""
    spec = adapter_spec(to_plain(cfg.get("adapter")))
    if spec is None:
        return
    if cfg.feature_cache.enabled:
        raise ConfigError(
            f"feature_cache.enabled=true with adapter={spec['name']}: the adapter trains with the backbone's "
            "features, so they change at every step and cannot be cached. Use adapter=none or feature_cache.enabled=false."
        )
    model = to_plain(cfg.model)
    kwargs = {k: v for k, v in model.items() if k not in (*TRAINING_SETTINGS, "name", "pretrained", "weights")}
    if kwargs.get("img_size") is None:
        kwargs.pop("img_size", None)
    with torch.device("meta"):
        try:
            backbone = timm.create_model(model["name"], pretrained=False, num_classes=0, **kwargs)
        except TypeError as error:  # e.g. model.img_size for a convolutional network
            raise ConfigError(f"model.name={model['name']!r} does not take these model settings {kwargs}: {error}") from error
        build_adapter(spec).attach(backbone)


def check_monitor(monitor: str) -> None:
    split, _, name = monitor.partition("/")
    if split != "val" or name not in metric_names():
        raise ConfigError(
            f"monitor={monitor!r} is not a validation metric: choose one of "
            f"{[f'val/{n}' for n in metric_names()]} (checkpoints and designs are selected on validation)"
        )
