"""Loading checkpoints as untrusted files: tensors and plain data only, never arbitrary pickled code."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from vitcls.errors import ConfigError, VitclsError


class UnsafeCheckpointError(VitclsError):
    """The file is not a plain-data checkpoint: loading it could run code, so it is refused."""


# How torch's weights-only unpickler words a refused object, across versions: the name of what the file
# tries to import or call, in group 1.
_REFUSED_OBJECT = (
    re.compile(r"Unsupported global: GLOBAL (\S+?)(?: was not an allowed global|$|\s)"),  # torch < 2.14, allowlist
    re.compile(r"unsupported GLOBAL (\S+) whose module \S+ is blocked"),  # torch >= 2.14: os, posix, nt, sys
    re.compile(r"Trying to call reduce for unrecognized function (.+?)(?: which belongs to|$)", re.MULTILINE),
    re.compile(r"Can only (?:create new object|build) .* but got (.+)$", re.MULTILINE),
)


def refused_object(error: BaseException | None) -> str | None:
    """The object a weights-only load refused (`posix.system`, `builtins.exec`...), or None when the error is
    not a refusal (a truncated file, another format). Follows the chain of causes: timm re-raises it."""
    while error is not None:
        if isinstance(error, pickle.UnpicklingError):
            for pattern in _REFUSED_OBJECT:
                found = pattern.search(str(error))
                if found:
                    name = found.group(1).strip().rstrip(".")
                    return name if "." in name or " " in name else f"builtins.{name}"  # torch drops `builtins.`
        error = error.__cause__ or error.__context__
    return None


def _reason(error: BaseException) -> str:
    """The informative line of a load error (torch wraps it in paragraphs about weights_only)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation", "(1)", "(2)")
    informative = [line for line in lines if not line.startswith(boilerplate)]
    return f"{type(error).__name__}: {(informative or lines or [''])[0][:200]}"


def unsafe_file_message(setting: str, path: Path, reference: str) -> str:
    return (
        f"{setting}: refused to load {path.resolve()}: it holds a pickled reference to {reference}, not only "
        "tensors and plain data, and loading it could run code. Nothing in it was run. Only load files "
        "written by vitcls/Lightning/timm from a source you trust."
    )


def load_checkpoint(
    path: str | Path, setting: str = "ckpt_path", map_location: Any = "cpu"
) -> dict[str, Any]:
    """`torch.load(weights_only=True)` with a clear error naming `setting` and the file.

    weights_only never executes pickled callables: a checkpoint that carries code fails to load here
    before any of it runs.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{setting}: checkpoint not found: {path.resolve()}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
        reference = refused_object(error)
        if reference is not None:
            raise UnsafeCheckpointError(unsafe_file_message(setting, path, reference)) from error
        raise ConfigError(
            f"{setting}: {path.resolve()} is not a readable PyTorch checkpoint (truncated, corrupt or another "
            f"format: {_reason(error)})"
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"{setting}: {path.resolve()} is not a Lightning checkpoint (no state_dict in it)")
    return checkpoint


def validate_resume_checkpoint(ckpt_path: str | None) -> None:
    """Check a resume checkpoint given as a file before Lightning loads it (Lightning's own special
    values such as "last" are resolved by Lightning, which is called with weights_only=True too)."""
    if ckpt_path and (Path(ckpt_path).suffix == ".ckpt" or Path(ckpt_path).expanduser().exists()):
        load_checkpoint(ckpt_path, map_location="meta")


def saved_during_validation(path: str | Path) -> bool:
    """Whether a training checkpoint was taken part-way through a validation inside `fit` (a SLURM requeue
    signal can come at any time): Lightning would resume it past the rest of that validation."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # unreadable: load_checkpoint says why when it is used
        return False
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.val_loop.batch_progress")
    return bool(progress) and progress["current"]["ready"] > 0 and not progress["is_last_batch"]
