"""Checkpoints and export directories written before vitcls 0.2, read by today's code.

Until 0.1 the LightningModule was the network: its hyperparameters were
`{backbone (with train_blocks, bitfit, compile), head (a Hydra node: _target_ plus features/last_k),
class_names, optimizer, scheduler, loss}` and its state_dict keys started with `backbone.` and `head.`.
Since 0.2 the network is `ImageClassifier` (held as `net`), the feature tap has its own settings, and
heads are stored by their registered name.
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


def upgrade_net_config(model: dict[str, Any], class_names: list[str]) -> dict[str, Any]:
    """An old `{backbone, head}` pair -> an `ImageClassifier` config."""
    backbone = {k: v for k, v in model["backbone"].items() if k not in TRAINING_SETTINGS}
    head = model["head"]
    tap = {key: head[key] for key in _TAP_SETTINGS if key in head}
    return {"backbone": backbone, "tap": tap, "head": _head_spec(head), "class_names": list(class_names)}


def upgrade_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """Old LightningModule hyperparameters -> today's `ClassifierModule` arguments."""
    if not is_legacy(hparams):
        return hparams
    upgraded = {
        "net": upgrade_net_config(hparams, hparams["class_names"]),
        **{key: hparams["backbone"][key] for key in TRAINING_SETTINGS if key in hparams["backbone"]},
    }
    upgraded.update({key: hparams[key] for key in ("optimizer", "scheduler", "loss") if key in hparams})
    return upgraded


def upgrade_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """`backbone.*` / `head.*` -> `net.backbone.*` / `net.head.*`; today's keys are left as they are."""
    return {
        (f"net.{key}" if key.startswith(("backbone.", "head.")) else key): value
        for key, value in state_dict.items()
    }
