"""Checks on the composed training config that run before any folder scan, model or trainer is built.

Each failure is a ConfigError naming the setting, the value and what is allowed. Checks that need the
data (a batch size larger than the training set) live with the data (`ImageFolderDataModule.setup`).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import timm
from omegaconf import DictConfig

from vitcls.data.quality import BAD_IMAGE_POLICIES
from vitcls.errors import ConfigError

# Files only a started run writes: Hydra's own .hydra/ and log file do not count.
RUN_OUTPUTS = ("config.yaml", "summary.json", "metrics.csv", "checkpoints")


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


def check_run_dir(output_dir: Path, cfg: DictConfig) -> None:
    """Refuse to write a new run over a finished or started one, unless resuming or asked to."""
    if cfg.get("ckpt_path") or cfg.get("overwrite"):
        return
    used = [name for name in RUN_OUTPUTS if (output_dir / name).exists()]
    if used:
        raise ConfigError(
            f"the run directory {output_dir} already holds a run ({', '.join(used)}). Choose another "
            "hydra.run.dir, resume it with ckpt_path=<its checkpoint>, or pass overwrite=true to replace it."
        )
