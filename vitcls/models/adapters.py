"""Parameter-efficient adapters of the backbone (`adapter=` in conf/adapter): stored by name, attached on build.

  none  nothing added (what trains is model.train_blocks / model.bitfit)
  lora  low-rank updates of the blocks' linear layers, through peft (vitcls.models.lora)
  vpt   visual prompt tuning: learned tokens in the sequence (vitcls.models.prompts)

Checkpoints and export directories store an adapter as plain data, `{"name": "lora", "rank": 8, ...}`, never
as a Python path (the same rule as heads). LoRA's module imports peft (and with it transformers), so it is
imported only when a LoRA adapter is attached: an exported model has its LoRA merged and needs neither.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from vitcls.errors import ConfigError
from vitcls.models.prompts import VisualPrompts

AdapterSpec = dict[str, Any]
# name -> the object the `adapter` config node targets (called with the backbone and the settings)
ADAPTERS = {"lora": "vitcls.models.lora.add_lora", "vpt": "vitcls.models.prompts.VisualPrompts"}
# Parameter names that peft gives the LoRA factors (`lora_A`, `lora_B`, ...).
LORA_PREFIX = "lora_"


def adapter_spec(node: dict[str, Any] | None) -> AdapterSpec | None:
    """The `adapter` config node (`_target_` plus settings) as stored: `{"name": ..., **settings}`."""
    if not node:
        return None
    settings = {k: v for k, v in node.items() if k not in ("_target_", "_partial_")}
    names = {target: name for name, target in ADAPTERS.items()}
    target = node.get("_target_")
    if target not in names:
        raise ConfigError(f"adapter._target_={target!r} is not an adapter; use adapter=none, lora or vpt")
    return {"name": names[target], **settings}


def _adapter_function(name: str):
    if name not in ADAPTERS:
        raise ConfigError(f"unknown adapter {name!r}: choose one of {['none', *ADAPTERS]}")
    module, _, attribute = ADAPTERS[name].rpartition(".")
    try:
        return getattr(importlib.import_module(module), attribute)
    except ModuleNotFoundError as error:
        if error.name != "peft":
            raise
        raise ConfigError("adapter=lora needs the peft library: pip install 'vitcls[lora]'") from error


def attach_adapter(backbone: nn.Module, spec: AdapterSpec | None) -> VisualPrompts | None:
    """Add the adapter to `backbone`: LoRA in place (returns None), VPT as the prompts module it returns."""
    if not spec:
        return None
    settings = {k: v for k, v in spec.items() if k != "name"}
    added = _adapter_function(spec["name"])(backbone, **settings)
    return added if isinstance(added, VisualPrompts) else None


def is_lora_parameter(name: str) -> bool:
    return any(part.startswith(LORA_PREFIX) for part in name.split("."))
