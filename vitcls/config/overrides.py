"""Hydra override strings (`head=mlp`, `optim.lr=0.001`): writing them, merging them, and which of a job's
settings make its design (what vitcls-compare groups jobs by, and the `design` of a W&B run).

A job's settings are its Hydra overrides (`head=mlp`, `seed=2`). Of those that vary between jobs:
- repetitions (`seed`, and the seeds that follow it) run the same design again with other randomness;
- bookkeeping (run directories and other paths, loggers, worker counts, resuming) never changes what is
  learned, and often differs per job;
- every other setting is part of the design.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

REPETITION_KEYS = ("seed", "data.shuffle_seed", "data.subset_seed")
_BOOKKEEPING_KEYS = frozenset({
    "ckpt_path", "overwrite", "continue_on_failure", "logger", "data.num_workers", "data.pin_memory",
    "data.persistent_workers", "data.image_check_cache_dir", "trainer.enable_progress_bar",
    "trainer.enable_model_summary", "trainer.log_every_n_steps", "export.enabled", "export.onnx",
})
_BOOKKEEPING_PREFIXES = ("hydra.", "hydra/", "paths.", "logger.", "callbacks.lr_monitor")
_PATH_SUFFIXES = (".dir", "_dir", ".dirpath", ".save_dir")


def override_key(key: str) -> str:
    """`+head.norm` / `++x` / `~y` -> the setting's name."""
    return key.lstrip("+~")


def override_value(value: Any) -> str:
    """A value as a Hydra override writes it: 0.003, true, null, [256,128], {a:1}."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def merge_overrides(*lists: Sequence[str]) -> list[str]:
    """Overrides of several lists, in order; a later one for the same setting replaces an earlier one."""
    merged: dict[str, str] = {}
    for overrides in lists:
        for override in overrides:
            key = override_key(override.split("=", 1)[0])
            merged.pop(key, None)
            merged[key] = override
    return list(merged.values())


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """Hydra override strings -> {setting: value as written} (a deletion `~key` has no value and is left out)."""
    pairs = (override.split("=", 1) for override in overrides if "=" in override)
    return {override_key(key): value for key, value in pairs}


def is_bookkeeping(key: str) -> bool:
    return key in _BOOKKEEPING_KEYS or key.startswith(_BOOKKEEPING_PREFIXES) or key.endswith(_PATH_SUFFIXES)


def is_design_key(key: str, repetitions: Sequence[str] = REPETITION_KEYS) -> bool:
    return key not in repetitions and not is_bookkeeping(key)


def design_name(settings: Mapping[str, str], keys: Sequence[str]) -> str:
    """`head=mlp(hidden_dims=[256]), optim.lr=0.001`: the settings of `keys` a job has, in that order, each
    group option followed by the settings inside it (`head.hidden_dims` after `head=mlp`)."""
    present = [key for key in keys if key in settings]
    parts: list[str] = []
    for key in present:
        parent = _parent_in(key, present)
        if parent is not None:
            continue
        children = [k for k in present if _parent_in(k, present) == key]
        inner = ", ".join(f"{child[len(key) + 1:]}={_compact(settings[child])}" for child in children)
        parts.append(f"{key}={_compact(settings[key])}" + (f"({inner})" if inner else ""))
    return ", ".join(parts) or "(all jobs alike)"


def _parent_in(key: str, keys: Sequence[str]) -> str | None:
    """The nearest other key of `keys` that `key` lies inside (`head` for `head.hidden_dims`)."""
    parts = key.split(".")
    for end in range(len(parts) - 1, 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in keys:
            return candidate
    return None


def _compact(value: str) -> str:
    return value.replace(", ", ",").strip("'\"")
