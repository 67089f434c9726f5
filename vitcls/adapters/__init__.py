"""Parameter-efficient adapters of the backbone (`adapter=<name>`, conf/adapter/<name>.yaml), behind one protocol.

An adapter is a subclass of `Adapter` with a unique `name`: defining it registers it, as heads register. The
network asks it, and nothing else in vitcls knows any adapter by name:

  attach(backbone)           change the backbone in place and/or return a module of new parameters (held by the
                             network as `adapter_module`); called once, right after the backbone is created
  trainable_parameters(...)  what trains even when the backbone is frozen (always in the optimizer)
  forward_features(...)      None (timm's forward), or the adapter's own forward of the tokens: the feature taps
                             read what it returns, so anything it adds to the sequence must be dropped there
  merge(...)                 fold the adapter into the backbone's weights for export (True), or keep it as part
                             of the exported network (False: an export then needs the adapter's code)

Checkpoints and export directories store an adapter as plain data, `{"name": ..., **settings}`, never a Python
path. An adapter's config node is its class: `_target_: <module>.<Class>` plus its settings; a new adapter is one
class (in any module that is imported) and one YAML file in conf/adapter/.
"""

from __future__ import annotations

import importlib
from collections.abc import Collection
from typing import Any, ClassVar

from torch import Tensor, nn

from vitcls.errors import ConfigError

ADAPTERS: dict[str, type[Adapter]] = {}
AdapterSpec = dict[str, Any]
# Where vitcls's own adapters are defined: imported when a stored spec names one (LoRA's module imports peft,
# which only training and export may load).
BUILT_IN = {"lora": "vitcls.adapters.lora", "vpt": "vitcls.adapters.vpt"}


class Adapter:
    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            ADAPTERS[cls.name] = cls

    def __init__(self, **settings: Any):
        self.settings = dict(settings)

    @property
    def spec(self) -> AdapterSpec:
        """What checkpoints store: the name, where the class is defined when it is not vitcls's own (so that a
        missing import can be named), and the settings."""
        where = {} if self.name in BUILT_IN else {"module": type(self).__module__}
        return {"name": self.name, **where, **self.settings}

    def attach(self, backbone: nn.Module) -> nn.Module | None:
        raise NotImplementedError

    def trainable_parameters(self, backbone: nn.Module, module: nn.Module | None) -> list[nn.Parameter]:
        """By default, every parameter of the module `attach` returned."""
        return list(module.parameters()) if module is not None else []

    def forward_features(
        self, backbone: nn.Module, module: nn.Module | None, images: Tensor, take: Collection[int] = ()
    ) -> tuple[Tensor, list[Tensor]] | None:
        """None: the taps run timm's forward. Otherwise (the final tokens after the backbone's final norm, the
        tokens after each block in `take` through that norm), in timm's layout: prefix tokens, then patches."""
        return None

    @property
    def replaces_forward(self) -> bool:
        return type(self).forward_features is not Adapter.forward_features

    def merge(self, backbone: nn.Module, module: nn.Module | None) -> bool:
        """Fold the adapter into `backbone` in place for export; False: it stays a part of the network."""
        return False


def adapter_class(name: str, module: str | None = None) -> type[Adapter]:
    """The adapter class registered as `name` (vitcls's own ones are imported on demand)."""
    module = module or BUILT_IN.get(name)
    if name not in ADAPTERS and module in BUILT_IN.values():
        importlib.import_module(module)
    if name not in ADAPTERS:
        where = (f"its code was in the Python module {module!r}: import it first (--imports {module}; "
                 f"train.py/eval.py imports=[{module}])" if module
                 else "import the module that defines it first (--imports MODULE; imports=[MODULE])")
        raise ConfigError(f"adapter {name!r} is not a registered adapter (registered: {sorted(ADAPTERS)}); {where}")
    return ADAPTERS[name]


def build_adapter(spec: AdapterSpec | None) -> Adapter | None:
    """The adapter a stored spec names, with its settings (checked by the adapter)."""
    if not spec:
        return None
    settings = {k: v for k, v in spec.items() if k not in ("name", "module")}
    return adapter_class(spec["name"], spec.get("module"))(**settings)


def adapter_spec(node: dict[str, Any] | None) -> AdapterSpec | None:
    """The `adapter` config node (`_target_`: an Adapter class, plus its settings) as checkpoints store it."""
    if not node:
        return None
    target = node.get("_target_")
    module, _, class_name = str(target).rpartition(".")
    try:
        adapter = getattr(importlib.import_module(module), class_name) if module else None
    except ImportError as error:
        raise ConfigError(f"adapter._target_={target!r}: cannot import {module!r}: {error}") from error
    if not (isinstance(adapter, type) and issubclass(adapter, Adapter) and "name" in adapter.__dict__):
        raise ConfigError(
            f"adapter._target_={target!r} is not a registered adapter class (a subclass of "
            f"vitcls.adapters.Adapter with a `name`); registered: {sorted(ADAPTERS)}, or adapter=none"
        )
    settings = {k: v for k, v in node.items() if k not in ("_target_", "_partial_")}
    spec = {"name": adapter.name, **settings}
    if adapter.name not in BUILT_IN:
        spec["module"] = adapter.__module__
    return spec
