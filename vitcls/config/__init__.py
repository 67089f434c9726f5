"""The composed Hydra config: where it lives, its resolvers, and turning its nodes into objects.

  validation  every setting checked before any folder scan, model or trainer is built
  overrides   Hydra override strings: which settings make a design, writing and merging overrides
  sweeps      where a multirun job's directory is (resumed sweeps find each job by its overrides)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vitcls.config.sweeps import sweep_job_subdir

PACKAGE_DIR = Path(__file__).resolve().parent.parent


def config_dir() -> Path:
    """`conf/`: inside the installed package (a wheel ships it as vitcls/conf), else beside it (a checkout)."""
    installed = PACKAGE_DIR / "conf"
    return installed if installed.is_dir() else PACKAGE_DIR.parent / "conf"


def optuna_direction(monitor: str) -> str:
    """`maximize` or `minimize`: the direction in which a search improves the monitored metric."""
    from vitcls.metrics import better_is

    return "minimize" if better_is(monitor) == "min" else "maximize"


def _better_is(metric: str) -> str:
    from vitcls.metrics import better_is

    return better_is(metric)


def _precision_preset(accelerator: str) -> str:
    from vitcls.precision import precision_preset

    return precision_preset(accelerator)


def shared_data(name: str) -> str:
    """A dataset of the shared folder beside the repository (`../shared/data/<name>`, as the tests find them), or
    under $VITCLS_SHARED_DATA."""
    base = os.environ.get("VITCLS_SHARED_DATA")
    root = Path(base) if base else PACKAGE_DIR.parent.parent / "shared" / "data"
    if not base and not root.is_dir():  # an installed package: beside the working directory
        root = Path.cwd().parent / "shared" / "data"
    return str(root / name)


def _keys(mapping: Any) -> str:
    """The keys of a mapping as a Hydra sweep list (`a,b,c`): a suite's datasets, one job each."""
    keys = list(mapping or {})
    return ",".join(keys) if keys else ""


def register_resolvers() -> None:
    """`${vitcls.precision:...}` (conf/trainer), `${vitcls.better_is:...}` (conf/callbacks),
    `${vitcls.optuna_direction:...}` (conf/sweep), `${vitcls.sweep_job_dir:}` (conf/hydra),
    `${vitcls.shared_data:...}` and `${vitcls.keys:...}` (conf/suite)."""
    resolvers = (
        ("vitcls.precision", _precision_preset),
        ("vitcls.better_is", _better_is),
        ("vitcls.optuna_direction", optuna_direction),
        ("vitcls.sweep_job_dir", _sweep_job_dir),
        ("vitcls.shared_data", shared_data),
        ("vitcls.keys", _keys),
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
    import hydra.utils

    if not group:
        return []
    return [
        hydra.utils.instantiate(node, _convert_="all")
        for node in group.values()
        if isinstance(node, DictConfig) and "_target_" in node
    ]


def import_modules(names: list[str], setting: str = "imports") -> None:
    """Import the modules that define (and so register) custom heads, adapters or loggers, e.g. before loading a
    checkpoint that names one."""
    import importlib

    from vitcls.errors import ConfigError

    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise ConfigError(f"{setting}: cannot import {name!r}: {error}") from error
