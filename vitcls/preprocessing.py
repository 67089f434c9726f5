"""Preprocessing resolved from the backbone, as timm defines it for each pretrained model."""

from __future__ import annotations

from typing import Any

from timm.data import create_transform, resolve_model_data_config
from torch import nn


def model_input_size(model: nn.Module) -> tuple[int, int] | None:
    """The image size the model was actually built for (it can differ from its pretrained config)."""
    patch_embed = getattr(model, "patch_embed", None)
    size = getattr(patch_embed, "img_size", None)
    if size is None:
        return None
    return (size, size) if isinstance(size, int) else tuple(size)


def resolve_data_config(model: nn.Module, **overrides: Any) -> dict[str, Any]:
    """timm's data config for `model`, with input_size taken from the model itself.

    `resolve_model_data_config` reports the pretrained config's input size (224 for most ViTs) even
    when the model was created with another `img_size`; transforms built from it would feed images
    of the wrong size. Keyword overrides (crop_pct, interpolation, mean, std...) win when not None.
    """
    config = dict(resolve_model_data_config(model))
    size = model_input_size(model)
    if size is not None:
        config["input_size"] = (3, *size)
    config.update({key: value for key, value in overrides.items() if value is not None})
    for key in ("mean", "std"):
        config[key] = tuple(config[key])
    return config


# Data settings (data.crop_pct, data.interpolation) that override the backbone's preprocessing when set.
PREPROCESSING_OVERRIDES = ("crop_pct", "interpolation")


def apply_preprocessing_overrides(data_config: dict[str, Any], data_settings: dict[str, Any]) -> dict[str, Any]:
    """The backbone's data config with the run's non-null data.crop_pct / data.interpolation applied."""
    overrides = {key: data_settings.get(key) for key in PREPROCESSING_OVERRIDES}
    return {**data_config, **{key: value for key, value in overrides.items() if value is not None}}


def build_eval_transform(data_config: dict[str, Any]):
    return create_transform(**data_config, is_training=False)


def build_train_transform(data_config: dict[str, Any], augment: dict[str, Any] | None):
    """Without `augment` the training images get exactly the evaluation preprocessing.

    `augment` holds keyword arguments of timm's `create_transform(is_training=True, ...)`, e.g.
    {scale: [0.08, 1.0], hflip: 0.5, auto_augment: rand-m9-mstd0.5-inc1, re_prob: 0.25}.
    """
    if not augment:
        return build_eval_transform(data_config)
    augment = dict(augment)
    for key in ("scale", "ratio"):
        if key in augment and augment[key] is not None:
            augment[key] = tuple(augment[key])
    config = {k: v for k, v in data_config.items() if k not in ("crop_pct", "crop_mode")}
    return create_transform(**config, is_training=True, **augment)
