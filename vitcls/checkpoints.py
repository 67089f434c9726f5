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
    except pickle.UnpicklingError as error:
        detail = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if detail is None:  # a broken stream rather than a forbidden object
            raise ConfigError(
                f"{setting}: {path.resolve()} is not a readable PyTorch checkpoint "
                "(truncated, corrupt or another format)"
            ) from error
        raise UnsafeCheckpointError(
            f"{setting}: refused to load {path.resolve()}: it holds a pickled reference to {detail.group(1)}, "
            "not only tensors and plain data, and loading it could run code. Only load checkpoints "
            "written by vitcls/Lightning from a source you trust."
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise ConfigError(
            f"{setting}: {path.resolve()} is not a readable PyTorch checkpoint (truncated or another format: {error})"
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"{setting}: {path.resolve()} is not a Lightning checkpoint (no state_dict in it)")
    return checkpoint


def validate_resume_checkpoint(ckpt_path: str | None) -> None:
    """Check a resume checkpoint given as a file before Lightning loads it (Lightning's own special
    values such as "last" are resolved by Lightning, which is called with weights_only=True too)."""
    if ckpt_path and (Path(ckpt_path).suffix == ".ckpt" or Path(ckpt_path).expanduser().exists()):
        load_checkpoint(ckpt_path, map_location="meta")
