"""The composed Hydra config: where it lives, resolvers, turning its nodes into objects, and checks.

Checks run before any folder scan, model or trainer is built; each failure is a ConfigError naming the
setting, the value and what is allowed. Checks that need the data (a batch size larger than the training
set) live with the data (`ImageFolderDataModule.setup`).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import hydra.utils
import timm
import torch
from omegaconf import DictConfig, OmegaConf

from vitcls.data.prefix_cache import TOKEN_DTYPES
from vitcls.data.quality import BAD_IMAGE_POLICIES
from vitcls.data.split import stratified_subset
from vitcls.errors import ConfigError
from vitcls.metrics import better_is, metric_names
from vitcls.models.adapters import adapter_spec
from vitcls.models.heads import Head, HeadSpec, head_spec
from vitcls.precision import precision_preset
from vitcls.run_dir import sweep_job_subdir

PACKAGE_DIR = Path(__file__).resolve().parent


def config_dir() -> Path:
    """`conf/`: inside the installed package (a wheel ships it as vitcls/conf), else beside it (a checkout)."""
    installed = PACKAGE_DIR / "conf"
    return installed if installed.is_dir() else PACKAGE_DIR.parent / "conf"


def optuna_direction(monitor: str) -> str:
    """`maximize` or `minimize`: the direction in which a search improves the monitored metric."""
    return "minimize" if better_is(monitor) == "min" else "maximize"


def register_resolvers() -> None:
    """`${vitcls.precision:...}` (conf/trainer), `${vitcls.better_is:...}` (conf/callbacks) and
    `${vitcls.optuna_direction:...}` (conf/sweep) and `${vitcls.sweep_job_dir:}` (conf/hydra)."""
    resolvers = (
        ("vitcls.precision", precision_preset),
        ("vitcls.better_is", better_is),
        ("vitcls.optuna_direction", optuna_direction),
        ("vitcls.sweep_job_dir", _sweep_job_dir),
    )
    for name, resolver in resolvers:
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (`-m`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _sweep_job_dir(*, _root_: DictConfig) -> str:
    """hydra.sweep.subdir: the job number, or with resume=true (or ckpt_path=last), the directory of the
    earlier job with the same overrides."""
    hydra_cfg = _root_.hydra
    resume = bool(_root_.get("resume")) or _root_.get("ckpt_path") == "last"
    return sweep_job_subdir(Path(hydra_cfg.sweep.dir), list(hydra_cfg.overrides.task), hydra_cfg.job.num, resume)


def to_plain(node: Any) -> Any:
    """A resolved, plain-Python copy of a config node (safe to store in checkpoints and JSON)."""
    if isinstance(node, DictConfig) or OmegaConf.is_list(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def instantiate_dict_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry with a `_target_` in a dict group such as `callbacks` or `logger`.

    Adding a callback or logger is adding a YAML file; entries set to null are switched off.
    """
    if not group:
        return []
    return [
        hydra.utils.instantiate(node, _convert_="all")
        for node in group.values()
        if isinstance(node, DictConfig) and "_target_" in node
    ]


def head_spec_of(node: DictConfig) -> HeadSpec:
    """The `head` node (`_target_`: a registered Head class, plus its settings) as checkpoints store it."""
    head_class = hydra.utils.get_class(node._target_)
    if not (isinstance(head_class, type) and issubclass(head_class, Head)):
        raise ConfigError(f"head._target_={node._target_!r} is not a subclass of vitcls.models.heads.Head")
    settings = {k: v for k, v in to_plain(node).items() if k not in ("_target_", "_partial_")}
    return head_spec(head_class, settings)


# Settings of the `model` node that say how the backbone trains; the others are create_backbone's.
TRAINING_SETTINGS = ("train_blocks", "bitfit", "compile")


def net_config(cfg: DictConfig, class_names: list[str]) -> dict[str, Any]:
    """The ImageClassifier config of a training run."""
    backbone = {k: v for k, v in to_plain(cfg.model).items() if k not in TRAINING_SETTINGS}
    tap = {k: v for k, v in to_plain(cfg.tap).items() if k not in ("_target_", "_partial_")}
    return {
        "backbone": backbone,
        "tap": tap,
        "head": head_spec_of(cfg.head),
        "class_names": list(class_names),
        "adapter": adapter_spec(to_plain(cfg.get("adapter"))),
    }


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
    check_adapter(cfg)


def check_adapter(cfg: DictConfig) -> None:
    """The adapter's settings against the backbone they adapt, on a weightless (meta-device) copy of it: a rank
    of 0, a layer name the blocks do not have, prompts for a backbone that is no ViT fail in a second."""
    spec = adapter_spec(to_plain(cfg.get("adapter")))
    if spec is None:
        return
    if cfg.feature_cache.enabled:
        raise ConfigError(
            f"feature_cache.enabled=true with adapter={spec['name']}: the adapter trains inside the backbone, so its "
            "features change at every step and cannot be cached. Use adapter=none or feature_cache.enabled=false."
        )
    from vitcls.models.adapters import attach_adapter

    model = to_plain(cfg.model)
    kwargs = {k: v for k, v in model.items() if k not in (*TRAINING_SETTINGS, "name", "pretrained", "weights")}
    if kwargs.get("img_size") is None:
        kwargs.pop("img_size", None)
    with torch.device("meta"):
        try:
            backbone = timm.create_model(model["name"], pretrained=False, num_classes=0, **kwargs)
        except TypeError as error:  # e.g. model.img_size for a convolutional network
            raise ConfigError(f"model.name={model['name']!r} does not take these model settings {kwargs}: {error}") from error
        attach_adapter(backbone, spec)


def check_monitor(monitor: str) -> None:
    split, _, name = monitor.partition("/")
    if split != "val" or name not in metric_names():
        raise ConfigError(
            f"monitor={monitor!r} is not a validation metric: choose one of "
            f"{[f'val/{n}' for n in metric_names()]} (checkpoints and designs are selected on validation)"
        )
