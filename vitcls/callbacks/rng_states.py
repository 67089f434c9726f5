"""The RNG states that make a resume exact, stored in every checkpoint.

Lightning's checkpoint holds the model, optimizer, lr scheduler, epoch and step; the training order is a
function of (data.shuffle_seed, epoch) (see `vitcls.data.datamodule`). What it lacks are the random number
generators (dropout, drop-path, augmentation), which `RestoreRNGStates` adds.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.callbacks import Callback


def collect_rng_states() -> dict[str, Any]:
    """Lightning's RNG snapshot with numpy's key array as a tensor: loadable with torch.load(weights_only=True)."""
    states = _collect_rng_states()
    name, keys, position, has_gauss, gauss = states["numpy"]
    states["numpy"] = (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss)
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    name, keys, position, has_gauss, gauss = states["numpy"]
    _set_rng_states({**states, "numpy": (name, keys.numpy().astype(np.uint32), position, has_gauss, gauss)})


class RestoreRNGStates(Callback):
    """Store the RNG states (torch, CUDA, numpy, random) in each checkpoint; restore them when training resumes.

    They are restored when training starts (after the sanity check, which also draws random numbers): from
    there on, a resumed run draws the same random numbers as the uninterrupted run did after the checkpoint.
    This relies on the training DataLoader drawing its seeds from its own generator (see
    `vitcls.data.datamodule`): a resumed run creates its first iterator at another point than the
    uninterrupted run.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint["rng_states"] = collect_rng_states()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._pending = checkpoint.get("rng_states")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None
