"""Multi-process helpers: batch-size bookkeeping, ordered gathering of predictions, DDP under Hydra multirun."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import lightning as L
import torch
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from torch import Tensor

# Set in the launching process by Lightning's _SubprocessScriptLauncher.
LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class BatchLayout:
    """`per_device` images per step on each of `devices` x `num_nodes` processes, `accumulate` steps per update."""

    per_device: int
    devices: int
    num_nodes: int
    accumulate: int

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    @property
    def effective_batch_size(self) -> int:
        return self.per_device * self.world_size * self.accumulate

    def as_dict(self) -> dict[str, int]:
        return {
            **asdict(self),
            "world_size": self.world_size,
            "effective_batch_size": self.effective_batch_size,
        }


def batch_layout(trainer: L.Trainer, per_device_batch_size: int) -> BatchLayout:
    return BatchLayout(
        per_device=per_device_batch_size,
        devices=trainer.num_devices,
        num_nodes=trainer.num_nodes,
        accumulate=trainer.accumulate_grad_batches,
    )


def gather_in_dataset_order(module: L.LightningModule, local: Tensor) -> Tensor:
    """Rows computed on each rank -> all rows on every rank, in dataset order.

    Assumes the evaluation sampler of `vitcls.data.datamodule`: rank r holds dataset indices
    r, r + world_size, r + 2 * world_size, ... (no padding, so ranks can hold one row less).
    """
    world_size = module.trainer.world_size
    if world_size == 1:
        return local
    counts = module.all_gather(torch.tensor(len(local), device=module.device)).cpu()
    padded = local.new_zeros((int(counts.max()), *local.shape[1:]))
    padded[: len(local)] = local
    gathered = module.all_gather(padded.to(module.device)).cpu()
    rows = torch.cat([gathered[rank, :count] for rank, count in enumerate(counts.tolist())])
    indices = torch.cat(
        [torch.arange(count) * world_size + rank for rank, count in enumerate(counts.tolist())]
    )
    ordered = torch.empty_like(rows)
    ordered[indices] = rows
    return ordered


@contextlib.contextmanager
def ddp_scoped_to_this_hydra_job(trainer: L.Trainer) -> Iterator[None]:
    """DDP inside a Hydra job: the child processes re-run this job (not the sweep), and the process group
    ends with the job, since Lightning leaves it open and bound to children that are gone once they finish:
    the next job of a multirun, in the same process, starts a new one. When the job fails, its children
    are killed: Lightning only does so for Ctrl+C, and a child left waiting in a collective would hang the
    next job (and the sweep) forever.
    """
    try:
        with _children_rerun_this_hydra_job():
            yield
    except Exception:
        launcher = trainer.strategy.launcher
        if isinstance(launcher, _SubprocessScriptLauncher):
            _end_children(launcher)
        raise
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _end_children(launcher: _SubprocessScriptLauncher) -> None:
    """SIGKILL and reap the job's child processes, then empty the launcher's list of them: Lightning's
    child-process observer thread watches that same list and, seeing a child killed, would SIGKILL this
    process too, taking the rest of the sweep with it."""
    launcher.kill(signal.SIGKILL)
    for process in launcher.procs:
        process.wait()
    launcher.procs.clear()


@contextlib.contextmanager
def _children_rerun_this_hydra_job() -> Iterator[None]:
    """Lightning starts each child as `python <script> <this process's argv> hydra.run.dir=<HydraConfig run.dir>`.
    In a multirun job that argv still holds `-m` and the sweep lists, and `run.dir` is not the job's directory:
    the children would re-run the sweep elsewhere. Inside a multirun job, argv becomes this job's own overrides
    and `run.dir` its output directory for the duration of the block. The launcher also exports LOCAL_RANK & co. into this process, which
    would make the next job believe its processes are started externally: they are restored afterwards.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import read_write

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        yield
        return
    hydra_cfg = HydraConfig.get()
    saved_argv, saved_run_dir = sys.argv, hydra_cfg.run.dir
    saved_env = {name: os.environ.get(name) for name in LAUNCHER_ENV}
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
    with read_write(hydra_cfg.run):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = saved_argv
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        with read_write(hydra_cfg.run):
            hydra_cfg.run.dir = saved_run_dir
