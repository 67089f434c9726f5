"""Building objects from Hydra config nodes."""

from __future__ import annotations

from typing import Any

import hydra.utils
from omegaconf import DictConfig, OmegaConf


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
