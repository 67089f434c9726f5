"""Optimizer and lr schedule for backbone + head.

The optimizer is built by timm (`create_optimizer_v2`) from explicit parameter groups:
backbone and head each get their own lr, and weight decay skips 1-d tensors (norms, biases) and the
backbone's `no_weight_decay()` tokens (pos_embed, cls_token...). Frozen parameters are left out.
The schedule is timm's cosine (or linear) decay with linear warmup, stepped every optimizer step; timm schedulers keep
each group's own base lr.
"""

from __future__ import annotations

import math

from timm.optim import create_optimizer_v2, param_groups_weight_decay
from timm.scheduler import CosineLRScheduler, PolyLRScheduler
from torch import nn
from torch.optim import Optimizer

from vitcls.errors import ConfigError


def create_optimizer(
    backbone: nn.Module,
    head: nn.Module,
    opt: str = "adamw",
    lr: float = 2e-4,
    head_lr: float | None = None,
    weight_decay: float = 0.01,
    **opt_kwargs,
) -> Optimizer:
    """`head_lr=None` gives the head the backbone's lr. Extra kwargs (betas, eps, momentum...) go to timm."""
    if lr <= 0 or (head_lr is not None and head_lr <= 0):
        raise ConfigError(f"optim.lr and optim.head_lr must be positive, got {lr} and {head_lr}")
    skip = getattr(backbone, "no_weight_decay", lambda: set())()
    groups = []
    for module, group_lr, role in ((backbone, lr, "backbone"), (head, head_lr or lr, "head")):
        for group in param_groups_weight_decay(module, weight_decay, no_weight_decay_list=skip):
            if group["params"]:
                groups.append({**group, "lr": group_lr, "name": f"{role}{'_no_decay' if group['weight_decay'] == 0 else ''}"})
    if not groups:
        raise ConfigError("no trainable parameters: the backbone is frozen and the head has none")
    if "betas" in opt_kwargs:
        opt_kwargs["betas"] = tuple(opt_kwargs["betas"])
    return create_optimizer_v2(groups, opt=opt, lr=lr, weight_decay=weight_decay, **opt_kwargs)


SCHEDULERS = {"cosine": CosineLRScheduler, "linear": PolyLRScheduler}


def create_scheduler(
    optimizer: Optimizer,
    total_steps: int,
    decay: str = "cosine",
    warmup_steps: int | None = None,
    warmup_fraction: float = 0.0,
    min_lr: float = 0.0,
    warmup_lr_init: float = 0.0,
) -> CosineLRScheduler | PolyLRScheduler:
    """`decay` (cosine, or linear = poly with power 1) over `total_steps` optimizer steps, after a
    linear warmup of `warmup_steps` when given, else `warmup_fraction` of the total.
    """
    if decay not in SCHEDULERS:
        raise ConfigError(f"sched.decay must be one of {sorted(SCHEDULERS)}, got {decay!r}")
    if warmup_steps is None:
        warmup_steps = math.floor(total_steps * warmup_fraction)
    warmup_steps = min(max(0, warmup_steps), max(0, total_steps - 1))
    extra = {"power": 1.0} if decay == "linear" else {}
    return SCHEDULERS[decay](
        optimizer,
        t_initial=max(1, total_steps - warmup_steps),  # the decay starts at the peak, after warmup
        lr_min=min_lr,
        warmup_t=warmup_steps,
        warmup_lr_init=warmup_lr_init,
        warmup_prefix=True,
        t_in_epochs=False,
        **extra,
    )
