"""Optimizer and lr schedule for backbone + head.

The optimizer is built by timm (`create_optimizer_v2`) from explicit parameter groups:
backbone and each head get their own lr, and weight decay skips 1-d tensors (norms, biases) and the
backbone's `no_weight_decay()` tokens (pos_embed, cls_token...). Frozen parameters are left out. An adapter's
parameters inside the backbone's blocks are grouped, decayed and layer-decayed with them; its parameters outside
the backbone get the backbone's lr, no weight decay, no layer decay.
With `layer_decay`, timm's `param_groups_layer_decay` splits the backbone by depth (its `group_matcher`) and
each group's lr is set to lr x its scale here, so the scale holds with any scheduler or none.
The schedule is timm's cosine (or linear) decay with linear warmup, stepped every optimizer step; timm schedulers keep
each group's own base lr.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from timm.optim import create_optimizer_v2, param_groups_layer_decay, param_groups_weight_decay
from timm.scheduler import CosineLRScheduler, PolyLRScheduler
from torch import nn
from torch.optim import Optimizer

from vitcls.errors import ConfigError


def create_optimizer(
    backbone: nn.Module,
    heads: nn.Module | Sequence[nn.Module],
    opt: str = "adamw",
    lr: float = 2e-4,
    head_lr: float | None = None,
    weight_decay: float = 0.01,
    layer_decay: float | None = None,
    adapter_parameters: Sequence[nn.Parameter] = (),
    per_head: Sequence[dict[str, float]] | None = None,
    **opt_kwargs,
) -> Optimizer:
    """`head_lr=None` gives the heads the backbone's lr. `layer_decay` (e.g. 0.75): the backbone's last block
    (and final norm) gets lr x layer_decay, the one before lr x layer_decay^2, ..., the embeddings
    lr x layer_decay^(depth + 1).
    `heads`: one head, or the heads of a bank; `per_head`: their own {"lr", "weight_decay"} (a bank's designs),
    else every head gets head_lr (or lr) and weight_decay.
    `adapter_parameters`: an adapter's trainable parameters outside the backbone (those inside train in the
    backbone's groups): the backbone's lr, no weight decay, no layer decay.
    Extra kwargs (betas, eps, momentum...) go to timm.
    """
    if lr <= 0 or (head_lr is not None and head_lr <= 0):
        raise ConfigError(f"optim.lr and optim.head_lr must be positive, got {lr} and {head_lr}")
    if layer_decay is not None and not 0 < layer_decay <= 1:
        raise ConfigError(f"optim.layer_decay must be in (0, 1] or null, got {layer_decay}")
    heads = [heads] if isinstance(heads, nn.Module) else list(heads)
    if per_head is None:
        per_head = [{"lr": head_lr or lr, "weight_decay": weight_decay}] * len(heads)
    groups = backbone_param_groups(backbone, lr, weight_decay, layer_decay)
    adapter_parameters = [p for p in adapter_parameters if p.requires_grad]
    if adapter_parameters:
        groups.append({"params": adapter_parameters, "weight_decay": 0.0, "lr": lr, "name": "adapter_no_decay"})
    for index, (head, settings) in enumerate(zip(heads, per_head, strict=True)):
        name = "head" if len(heads) == 1 else f"head{index}"
        groups += head_param_groups(head, settings["lr"], settings["weight_decay"], name=name)
    return optimizer_of_groups(groups, opt, lr, weight_decay, **opt_kwargs)


def optimizer_of_groups(groups: list[dict], opt: str, lr: float, weight_decay: float, **opt_kwargs) -> Optimizer:
    """timm's optimizer `opt` over explicit parameter groups (each with its own lr and weight decay)."""
    if not groups:
        raise ConfigError("no trainable parameters: the backbone is frozen and the head has none")
    if "betas" in opt_kwargs:
        opt_kwargs["betas"] = tuple(opt_kwargs["betas"])
    return create_optimizer_v2(groups, opt=opt, lr=lr, weight_decay=weight_decay, **opt_kwargs)


def head_param_groups(head: nn.Module, lr: float, weight_decay: float, name: str = "head") -> list[dict]:
    """The head's parameters at `lr`: weight decay on matrices, none on 1-d tensors (biases, norms)."""
    return [
        {**group, "lr": lr, "name": name + _decay_suffix(group)}
        for group in param_groups_weight_decay(head, weight_decay)
        if group["params"]
    ]


def backbone_param_groups(backbone: nn.Module, lr: float, weight_decay: float, layer_decay: float | None) -> list[dict]:
    skip = getattr(backbone, "no_weight_decay", lambda: set())()
    if layer_decay is None:
        groups = param_groups_weight_decay(backbone, weight_decay, no_weight_decay_list=skip)
        return [{**group, "lr": lr, "name": "backbone" + _decay_suffix(group)} for group in groups if group["params"]]
    groups = [g for g in param_groups_layer_decay(backbone, weight_decay, skip, layer_decay=layer_decay) if g["params"]]
    # timm writes `lr_scale`, which only timm schedulers apply: fold it into the lr instead.
    # timm's scales put the top of the backbone (last block, final norm) at 1, as if it were the classifier;
    # our head sits one layer above it, hence the extra factor.
    depth = {scale: index for index, scale in enumerate(sorted({g["lr_scale"] for g in groups}))}
    return [
        {
            "params": group["params"],
            "weight_decay": group["weight_decay"],
            "lr": lr * layer_decay * group["lr_scale"],
            "name": f"backbone_layer{depth[group['lr_scale']]:02d}{_decay_suffix(group)}",
        }
        for group in groups
    ]


def _decay_suffix(group: dict) -> str:
    return "_no_decay" if group["weight_decay"] == 0 else ""


def scale_lr_with_batch(optim_cfg: dict, effective_batch_size: int, base_batch_size: int) -> dict:
    """The optimizer node with lr and head_lr multiplied by effective_batch_size / base_batch_size (the linear
    scaling rule: `lr_scaling.enabled=true`)."""
    if not base_batch_size or base_batch_size <= 0:
        raise ConfigError(f"lr_scaling.base_batch_size must be a positive number of images, got {base_batch_size}")
    factor = effective_batch_size / base_batch_size
    return {key: value * factor if key in ("lr", "head_lr") and value is not None else value
            for key, value in optim_cfg.items()}


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
