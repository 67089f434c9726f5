"""The designs a run trains: one, from the config's `head`, `tap` and `optim` (a lone run), or a head bank's: the
product of `bank.heads` x `bank.features` x `bank.lrs` x `bank.weight_decays`, minus the combinations that cannot
work, each named like a design and carrying the train.py overrides that train it alone.

A bank list left null is the run's own setting (`head`, `tap.features`, `optim.head_lr` or `optim.lr`,
`optim.weight_decay`). An entry of `bank.heads` is a registered head name (its settings those of its config in the
`head` group, as `head=<name>` gives; composed by Hydra, so a search path's own heads count), or a full head
config: `{name: mlp, hidden_dims: [256]}` or `{_target_: vitcls.models.heads.MLPHead, hidden_dims: [256]}`, whose
settings override those defaults.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import hydra.utils
from omegaconf import DictConfig, OmegaConf

from vitcls.adapters import adapter_spec
from vitcls.config import config_dir, to_plain
from vitcls.config.overrides import design_name, override_value
from vitcls.config.validation import TRAINING_SETTINGS
from vitcls.errors import ConfigError
from vitcls.models.features import AUTO, FEATURE_TAPS, resolve_features
from vitcls.models.heads import HEADS, Head, HeadSpec, head_spec

LISTS = ("heads", "features", "lrs", "weight_decays")
# The settings a bank design sets, in the order its name lists them.
BANK_SETTINGS = ("head", "tap.features", "optim.head_lr", "optim.weight_decay")
_NOT_SETTINGS = ("_target_", "_partial_", "name", "module")


@dataclass(frozen=True)
class Design:
    """One head of a run: what it is, and the overrides that make `train.py` train it alone."""

    index: int
    name: str
    head: HeadSpec  # {"name", "module", **settings}: what checkpoints store
    tap: dict[str, Any]  # {"features", "last_k"}, `auto` resolved
    lr: float
    weight_decay: float
    overrides: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "overrides": list(self.overrides)}


@dataclass
class DesignPlan:
    designs: list[Design]
    excluded: list[dict[str, str]]  # {"design", "reason"}: combinations left out
    varied: list[str]  # the settings that differ between designs (what their names show)


def _unknown_head(name: Any) -> ConfigError:
    return ConfigError(
        f"bank.heads: {name!r} is not a registered head; registered heads: {sorted(HEADS)} (a custom head "
        "registers itself when the module that defines it is imported)"
    )


def head_group_settings(name: str) -> dict[str, Any] | None:
    """The settings that `head=<name>` gives (its config in the `head` group, composed by Hydra with the search
    path in use), None when the group has no such option."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import MissingConfigException

    def composed() -> DictConfig:
        return compose(config_name="train", overrides=[f"head={name}"])

    try:
        if GlobalHydra.instance().is_initialized():  # inside a Hydra app: its search path
            node = composed().head
        else:
            with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
                node = composed().head
    except MissingConfigException:
        return None
    return {k: v for k, v in OmegaConf.to_container(node).items() if k not in _NOT_SETTINGS}


def _head_class(entry: Mapping) -> type[Head]:
    if "_target_" in entry:
        try:
            head_class = hydra.utils.get_class(entry["_target_"])
        except Exception as error:
            raise ConfigError(f"bank.heads: cannot import {entry['_target_']!r}: {error}") from error
        if not (isinstance(head_class, type) and issubclass(head_class, Head) and "name" in head_class.__dict__):
            raise ConfigError(f"bank.heads: {entry['_target_']!r} is not a registered vitcls head class")
        return head_class
    if entry.get("name") not in HEADS:
        raise _unknown_head(entry.get("name"))
    return HEADS[entry["name"]]


def resolve_head(entry: Any) -> tuple[HeadSpec, list[str]]:
    """A `bank.heads` entry -> (head spec, the overrides `head=<name> head.<key>=<value>...` that select it)."""
    entry = to_plain(entry)
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, Mapping):
        raise ConfigError(f"bank.heads: {entry!r} is neither a head name nor a head config")
    head_class = _head_class(entry)
    name = head_class.name
    base = head_group_settings(name)
    given = {k: v for k, v in entry.items() if k not in _NOT_SETTINGS}
    settings = {**(base or {}), **given}
    overrides = [f"head={name}"]
    for key, value in given.items():
        if base is None or key not in base:
            overrides.append(f"+head.{key}={override_value(value)}")
        elif base[key] != value:
            overrides.append(f"head.{key}={override_value(value)}")
    return head_spec(head_class, settings), overrides


def _run_head(cfg: DictConfig) -> tuple[HeadSpec, list[str]]:
    """The run's own `head` node as a bank entry."""
    spec = head_spec_of(cfg.head)
    settings = {k: v for k, v in spec.items() if k not in ("name", "module")}
    entry = {"name": spec["name"], **settings}
    return resolve_head(entry) if spec["name"] in HEADS else (spec, [f"head={spec['name']}"])


def _listed(cfg: DictConfig, key: str, default: list) -> list:
    values = cfg.bank.get(key)
    if values is None:
        return default
    values = to_plain(values)
    if not isinstance(values, list):
        values = [values]
    if not values:
        raise ConfigError(
            f"bank.{key}=[] is empty: list at least one value, or leave it null for the run's own setting"
        )
    return values


def _number(value: Any, key: str, minimum: float, strict: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= minimum if strict else value < minimum):
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ConfigError(f"bank.{key}: {value!r} is not a number {bound}")
    return float(value)


def _varied(settings: list[dict[str, str]]) -> list[str]:
    """The design settings that differ between designs: `head` (then the head settings that differ), tap, lr,
    weight decay; just `head` when all designs are alike."""
    keys = list(dict.fromkeys(key for design in settings for key in design))
    varied = [key for key in keys if len({design.get(key) for design in settings}) > 1]
    children = [key for key in varied if key.startswith("head.")]
    head = ["head"] if "head" in varied or children else []
    return [*head, *children, *(key for key in BANK_SETTINGS[1:] if key in varied)] or ["head"]


def _settings_of(overrides: list[str]) -> dict[str, str]:
    pairs = (override.split("=", 1) for override in overrides)
    return {key.lstrip("+"): value for key, value in pairs}


def head_spec_of(node: DictConfig) -> HeadSpec:
    """The `head` node (`_target_`: a registered Head class, plus its settings) as checkpoints store it."""
    head_class = hydra.utils.get_class(node._target_)
    if not (isinstance(head_class, type) and issubclass(head_class, Head)):
        raise ConfigError(f"head._target_={node._target_!r} is not a subclass of vitcls.models.heads.Head")
    settings = {k: v for k, v in to_plain(node).items() if k not in ("_target_", "_partial_")}
    return head_spec(head_class, settings)


def tap_settings(cfg: DictConfig) -> dict[str, Any]:
    return {k: v for k, v in to_plain(cfg.tap).items() if k not in ("_target_", "_partial_")}


def lone_design(cfg: DictConfig, overrides: list[str]) -> DesignPlan:
    """The one design of a lone run: the config's head, tap, head lr and weight decay."""
    spec = head_spec_of(cfg.head)
    optim = cfg.get("optim") or {}
    lr = optim.get("head_lr") or optim.get("lr")
    design = Design(0, spec["name"], spec, tap_settings(cfg), lr, optim.get("weight_decay", 0.0), tuple(overrides))
    return DesignPlan([design], [], [])


def network_config(cfg: DictConfig, class_names: list[str], designs: list[Design]) -> dict[str, Any]:
    """The ImageClassifier config of a run: the backbone and adapter of `model`/`adapter`, one head per design."""
    return {
        "backbone": {k: v for k, v in to_plain(cfg.model).items() if k not in TRAINING_SETTINGS},
        "class_names": list(class_names),
        "adapter": adapter_spec(to_plain(cfg.get("adapter"))),
        "heads": [{"name": d.name, "head": d.head, "tap": d.tap} for d in designs],
    }


def expand_bank(cfg: DictConfig) -> DesignPlan:
    """Every design of the bank, in product order (heads, then features, lrs, weight decays)."""
    heads = [resolve_head(entry) for entry in _listed(cfg, "heads", [])] or [_run_head(cfg)]
    features = [str(f) for f in _listed(cfg, "features", [cfg.tap.features])]
    for feature in features:
        if feature not in (*FEATURE_TAPS, AUTO):
            raise ConfigError(f"bank.features: {feature!r} is not a feature tap; choose from {[*FEATURE_TAPS, AUTO]}")
    optim = cfg.get("optim") or {}
    lrs = [_number(v, "lrs", 0.0, True) for v in _listed(cfg, "lrs", [optim.get("head_lr") or optim.get("lr")])]
    decays = [_number(v, "weight_decays", 0.0, False) for v in _listed(cfg, "weight_decays",
                                                                        [optim.get("weight_decay", 0.0)])]
    last_k = int(cfg.tap.get("last_k", 4))

    kept: list[tuple[HeadSpec, dict, float, float, list[str]]] = []
    excluded: list[dict[str, str]] = []
    seen: dict[str, list[str]] = {}
    for (spec, head_overrides), feature, lr, decay in itertools.product(heads, features, lrs, decays):
        takes_tokens = HEADS[spec["name"]].takes_tokens if spec["name"] in HEADS else False
        tap = {"features": resolve_features(feature, takes_tokens), "last_k": last_k}
        overrides = [*head_overrides, f"tap.features={tap['features']}", f"optim.head_lr={override_value(lr)}",
                     f"optim.weight_decay={override_value(decay)}"]
        label = ",".join(overrides)
        if takes_tokens and tap["features"] != "tokens":
            excluded.append({"design": label, "reason": f"head {spec['name']} pools tokens itself: it needs "
                             f"tap.features=tokens (or auto), not {tap['features']}"})
        elif not takes_tokens and tap["features"] == "tokens":
            excluded.append({"design": label, "reason": f"head {spec['name']} needs a pooled vector; "
                             "tap.features=tokens gives all tokens"})
        elif (key := repr((spec, tap, lr, decay))) in seen:
            excluded.append({"design": label, "reason": f"the same design as {','.join(seen[key])}"})
        else:
            seen[key] = overrides
            kept.append((spec, tap, lr, decay, overrides))
    if not kept:
        raise ConfigError(
            "the bank has no design that can work: every combination was left out ("
            + "; ".join(f"{e['design']}: {e['reason']}" for e in excluded[:4]) + ")"
        )
    settings = [_settings_of(overrides) for *_, overrides in kept]
    varied = _varied(settings)
    designs = [
        Design(index, design_name(setting, varied).replace(", ", ","), spec, tap, lr, decay, tuple(overrides))
        for index, ((spec, tap, lr, decay, overrides), setting) in enumerate(zip(kept, settings, strict=True))
    ]
    return DesignPlan(designs, excluded, varied)
