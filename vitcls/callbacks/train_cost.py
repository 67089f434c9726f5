"""What a training step costs: images per second and memory, for summary.json's `train` entry.

- `images_per_s`: training images over the time spent in training steps (forward, backward, optimizer step;
  data loading and validation excluded), after the first step (warm-up), summed over DDP ranks. On CUDA each
  step is timed between synchronisations.
- `peak_mem_mb` (MiB): on CUDA, the allocator's peak during a training step (`torch.cuda.max_memory_allocated`,
  reset before each step), the largest over the run. Elsewhere there is no allocator peak to read, and it is
  the counted `step_mem_mb` instead (`peak_mem_method` says which).
- `step_mem_mb` (MiB), on every device, counted from the tensors: the parameters, their gradients (trainable
  ones), the optimizer state, and the activations saved for backward during one training step (the first
  one, counted through autograd's saved-tensor hooks; tensors that share storage, and parameters, once).
  It is what a method needs to hold at the peak of a step, without allocator slack or temporaries.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from torch import Tensor

MIB = 2**20


def _storage_key(tensor: Tensor) -> tuple[int, int]:
    storage = tensor.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def _bytes(tensors) -> int:
    return sum(nbytes for _, nbytes in {_storage_key(t) for t in tensors if isinstance(t, Tensor)})


def counted_step_memory(module: torch.nn.Module, optimizers, activation_bytes: int | None) -> dict[str, int | None]:
    """Bytes a training step holds: parameters, gradients of the trainable ones, optimizer state, activations."""
    parameters = list(module.parameters())
    optimizer_state = [value for optimizer in optimizers for state in optimizer.state.values() for value in state.values()]
    return {
        "parameters": _bytes(parameters),
        "gradients": _bytes([p for p in parameters if p.requires_grad]),
        "optimizer_state": _bytes(optimizer_state),
        "activations": activation_bytes,
    }


class SavedActivations:
    """Bytes of the tensors autograd saves for backward while active (parameters excluded)."""

    def __init__(self, parameters: list[Tensor]):
        self._parameters = {_storage_key(p) for p in parameters}
        self._saved: dict[tuple[int, int], int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)

    def _pack(self, tensor: Tensor) -> Tensor:
        if tensor.device.type != "meta" and tensor.layout == torch.strided:
            key = _storage_key(tensor)
            if key not in self._parameters:
                self._saved[key] = key[1]
        return tensor

    def __enter__(self) -> SavedActivations:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    @property
    def nbytes(self) -> int:
        return sum(self._saved.values())


class TrainCost(L.Callback):
    """Measures every training step of a fit; `summary` holds the result after training."""

    def __init__(self):
        self.summary: dict[str, Any] = {}
        self._reset()

    def _reset(self) -> None:
        self._step_started = 0.0
        self._timed_s = 0.0
        self._timed_images = 0
        self._steps = 0
        self._cuda_peak = 0
        self._activations: SavedActivations | None = None
        self._activation_bytes: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()

    def _cuda(self, pl_module: L.LightningModule) -> bool:
        return pl_module.device.type == "cuda"

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._activation_bytes is None and not pl_module.hparams.get("compile"):
            self._activations = SavedActivations(list(pl_module.parameters())).__enter__()
        if self._cuda(pl_module):
            torch.cuda.synchronize(pl_module.device)
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        self._step_started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._cuda(pl_module):
            torch.cuda.synchronize(pl_module.device)
            self._cuda_peak = max(self._cuda_peak, torch.cuda.max_memory_allocated(pl_module.device))
        elapsed = time.perf_counter() - self._step_started
        if self._activations is not None:
            self._activations.__exit__(None, None, None)
            self._activation_bytes, self._activations = self._activations.nbytes, None
        self._steps += 1
        if self._steps > 1 and batch is not None:  # the first step warms up (allocations, lazy init)
            self._timed_s += elapsed
            self._timed_images += len(batch[1])

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self._activations is not None:
            self._activations.__exit__(None, None, None)
            self._activations = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Every rank: images and time summed and maxed across ranks (all ranks take part in both reductions).
        totals = trainer.strategy.reduce(
            torch.tensor(float(self._timed_images), device=pl_module.device), reduce_op="sum"
        )
        slowest = -trainer.strategy.reduce(torch.tensor(-self._timed_s, device=pl_module.device), reduce_op="min")
        counted = counted_step_memory(pl_module, trainer.optimizers, self._activation_bytes)
        step_mem = None if counted["activations"] is None else sum(counted.values()) / MIB
        cuda = self._cuda(pl_module)
        self.summary = {
            "images_per_s": round(float(totals) / float(slowest), 2) if float(slowest) > 0 else None,
            "timed_images": int(totals),
            "timed_s": round(float(slowest), 3),
            "peak_mem_mb": round(self._cuda_peak / MIB, 2) if cuda else _round(step_mem),
            "peak_mem_method": "cuda_max_memory_allocated" if cuda else "counted",
            "step_mem_mb": _round(step_mem),
            "step_mem_parts_mb": {k: _round(None if v is None else v / MIB) for k, v in counted.items()},
        }
        logged = {f"train/{k}": v for k in ("images_per_s", "peak_mem_mb", "step_mem_mb") if (v := self.summary[k]) is not None}
        for logger in trainer.loggers:  # metrics.csv, W&B...: beside the metrics of the last step
            logger.log_metrics(logged, step=trainer.global_step)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
