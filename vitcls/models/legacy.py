"""Checkpoints and export directories of earlier vitcls versions, read by today's code.

- 0.1: the LightningModule was the network: its hyperparameters were `{backbone (with train_blocks, bitfit,
  compile), head (a Hydra node: _target_ plus features/last_k), class_names, optimizer, scheduler, loss}` and its
  state_dict keys started with `backbone.` and `head.`.
- 0.2: the network (`ImageClassifier`, held as `net`) had one head: its config held `tap` and `head`, its state
  dict `head.*` and, with visual prompts, `prompts.*`.
- 0.3: a network has a list of `heads` (each with its tap), state dict `heads.<i>.*`, and an adapter's own
  parameters under `adapter_module.*`.
"""

from __future__ import annotations

from typing import Any

from vitcls.models.heads import HEADS

# Settings of the old `backbone` node that say how the backbone trains, not what it is.
TRAINING_SETTINGS = ("train_blocks", "bitfit", "compile")
_TAP_SETTINGS = ("features", "last_k")


def is_legacy(hparams: dict[str, Any]) -> bool:
    return "net" not in hparams and "backbone" in hparams


def _head_spec(node: dict[str, Any]) -> dict[str, Any]:
    """{"_target_": "vitcls.models.heads.MLPHead", ...} -> {"name": "mlp", "module": ..., ...}."""
    module, _, class_name = node["_target_"].rpartition(".")
    registered = {cls.__name__: name for name, cls in HEADS.items()}
    settings = {k: v for k, v in node.items() if k not in ("_target_", "_partial_", *_TAP_SETTINGS)}
    return {"name": registered.get(class_name, class_name), "module": module, **settings}


def net_config_of_v01(model: dict[str, Any], class_names: list[str]) -> dict[str, Any]:
    """A 0.1 `{backbone, head}` pair -> an `ImageClassifier` config."""
    backbone = {k: v for k, v in model["backbone"].items() if k not in TRAINING_SETTINGS}
    head = model["head"]
    tap = {key: head[key] for key in _TAP_SETTINGS if key in head}
    return upgrade_net_config({"backbone": backbone, "tap": tap, "head": _head_spec(head),
                               "class_names": list(class_names)})


def upgrade_net_config(config: dict[str, Any]) -> dict[str, Any]:
    """A 0.2 one-head network config (`tap`, `head`) -> today's (`heads`); today's is returned as it is."""
    if "heads" in config:
        return config
    upgraded = {key: value for key, value in config.items() if key not in ("tap", "head")}
    upgraded["heads"] = [{"name": config["head"]["name"], "head": config["head"], "tap": config.get("tap")}]
    upgraded.setdefault("adapter", None)
    return upgraded


def upgrade_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """Old LightningModule hyperparameters -> today's `ClassifierModule` arguments."""
    if not is_legacy(hparams):
        return {**hparams, "net": upgrade_net_config(hparams["net"])}
    upgraded = {
        "net": net_config_of_v01(hparams, hparams["class_names"]),
        **{key: hparams["backbone"][key] for key in TRAINING_SETTINGS if key in hparams["backbone"]},
    }
    upgraded.update({key: hparams[key] for key in ("optimizer", "scheduler", "loss") if key in hparams})
    return upgraded


# 0.2 -> 0.3 names of a network's tensors
_RENAMED = {"head.": "heads.0.", "prompts.": "adapter_module."}


def upgrade_network_state(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A network's tensors (no `net.` prefix: an export directory's) under today's names."""
    renamed = {}
    for key, value in state_dict.items():
        old = next((prefix for prefix in _RENAMED if key.startswith(prefix)), None)
        renamed[_RENAMED[old] + key.removeprefix(old) if old else key] = value
    return renamed


def upgrade_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A LightningModule's tensors of any version under today's names: 0.1's `backbone.*` / `head.*` become
    `net.backbone.*` / `net.heads.0.*`, 0.2's `net.head.*` / `net.prompts.*` become `net.heads.0.*` /
    `net.adapter_module.*`; other keys are left as they are."""
    prefixed = {
        (f"net.{key}" if key.startswith(("backbone.", "head.")) else key): value
        for key, value in state_dict.items()
    }
    network = upgrade_network_state({k.removeprefix("net."): v for k, v in prefixed.items() if k.startswith("net.")})
    return {**{k: v for k, v in prefixed.items() if not k.startswith("net.")},
            **{f"net.{k}": v for k, v in network.items()}}
