"""How much of a timm ViT trains: `model.train_blocks` and `model.bitfit`.

  train_blocks=none  linear probe: nothing in the backbone trains
  train_blocks=all   full fine-tuning
  train_blocks=N     the last N transformer blocks and the final norm(s) train; the stem (patch and
                     position embeddings, CLS/register tokens) and the earlier blocks are frozen
  bitfit=true        of what train_blocks lets train, only biases and norm parameters do
  adapter            its parameters (vitcls.adapters) train whatever the two settings above say

Frozen parameters get `requires_grad=False` (so the optimizer, built from trainable parameters only,
never sees them), and the modules that are frozen as a whole are returned so that the classifier keeps
them in eval mode (no dropout or drop-path noise in features they compute). A block that holds trainable
adapter parameters is not frozen as a whole: it runs in train mode, so the adapter's dropout applies.
"""

from __future__ import annotations

from collections.abc import Iterable

from timm.layers import RmsNorm
from torch import nn

from vitcls.errors import ConfigError

NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.RMSNorm, RmsNorm)
# Modules of a timm VisionTransformer that run before the first block.
STEM = ("patch_embed", "pos_drop", "patch_drop", "norm_pre")


def trailing_blocks(train_blocks: str | int, depth: int) -> int:
    """The number of last blocks that `train_blocks` trains (0 for none, depth for all)."""
    if train_blocks in ("none", "all"):
        return 0 if train_blocks == "none" else depth
    if isinstance(train_blocks, str) and train_blocks.isdigit():
        train_blocks = int(train_blocks)
    if isinstance(train_blocks, bool) or not isinstance(train_blocks, int) or not 1 <= train_blocks <= depth:
        raise ConfigError(
            f"model.train_blocks must be none, all or an integer from 1 to the backbone depth {depth}, "
            f"got {train_blocks!r}"
        )
    return train_blocks


def apply_trainability(
    backbone: nn.Module,
    train_blocks: str | int = "all",
    bitfit: bool = False,
    adapter_parameters: Iterable[nn.Parameter] = (),
) -> list[nn.Module]:
    """Freeze what `train_blocks`/`bitfit` leave out, keep `adapter_parameters` trainable; return the modules
    of the backbone frozen as a whole (run in eval)."""
    frozen = _freeze(backbone, train_blocks, bitfit)
    adapter_parameters = list(adapter_parameters)
    if not adapter_parameters:
        return frozen
    for parameter in adapter_parameters:
        parameter.requires_grad_(True)
    in_backbone = {id(p) for p in backbone.parameters()}
    if frozen == [backbone] and any(id(p) in in_backbone for p in adapter_parameters):  # inside the blocks
        frozen = [getattr(backbone, name) for name in STEM if hasattr(backbone, name)] + list(backbone.blocks)
    return [module for module in frozen if not any(p.requires_grad for p in module.parameters())]


def _freeze(backbone: nn.Module, train_blocks: str | int, bitfit: bool) -> list[nn.Module]:
    if not hasattr(backbone, "blocks"):
        raise ConfigError(f"model.train_blocks needs a ViT with `blocks`; {type(backbone).__name__} has none")
    depth = len(backbone.blocks)
    trained = trailing_blocks(train_blocks, depth)
    if bitfit and trained == 0:
        raise ConfigError(
            "model.bitfit=true trains the biases of trainable blocks, but model.train_blocks=none "
            "freezes them all; set model.train_blocks=all (BitFit) or a number of last blocks."
        )
    backbone.requires_grad_(trained > 0)  # an adapter may have frozen it already
    if trained == 0:
        return [backbone]

    frozen: list[nn.Module] = []
    if train_blocks != "all":
        backbone.requires_grad_(False)
        for block in backbone.blocks[depth - trained :]:
            block.requires_grad_(True)
        backbone.norm.requires_grad_(True)
        backbone.fc_norm.requires_grad_(True)
        frozen = [getattr(backbone, name) for name in STEM if hasattr(backbone, name)]
        frozen += list(backbone.blocks[: depth - trained])
    if bitfit:
        norm_parameters = {
            id(p) for m in backbone.modules() if isinstance(m, NORM_TYPES) for p in m.parameters()
        }
        for name, parameter in backbone.named_parameters():
            if not (name.endswith("bias") or id(parameter) in norm_parameters):
                parameter.requires_grad_(False)
    return frozen


def count_parameters(module: nn.Module) -> dict[str, int]:
    parameters = list(module.parameters())
    return {
        "total": sum(p.numel() for p in parameters),
        "trainable": sum(p.numel() for p in parameters if p.requires_grad),
    }


def first_trainable_block(backbone: nn.Module) -> int | None:
    """The block where training starts when the stem and every block before it are frozen; None for a frozen
    backbone. Raises when the stem trains (model.train_blocks=all): nothing before the first block is fixed."""
    trains = [any(p.requires_grad for p in block.parameters()) for block in backbone.blocks]
    if not any(trains) and not any(p.requires_grad for p in backbone.parameters()):
        return None
    start = trains.index(True) if any(trains) else len(trains)
    stem = [getattr(backbone, name) for name in STEM if hasattr(backbone, name)]
    stem_trains = any(p.requires_grad for part in stem for p in part.parameters()) or any(
        p.requires_grad for p in backbone.parameters(recurse=False)  # pos_embed, cls_token, reg_token
    )
    if stem_trains:
        raise ConfigError(
            "feature_cache.enabled=true needs a frozen backbone (model.train_blocks=none), or frozen first blocks "
            "(model.train_blocks=N: the tokens entering block N from the end are cached); model.train_blocks=all "
            "trains the patch embedding, so nothing before the head is fixed. Switch feature_cache.enabled off or "
            "set model.train_blocks=N."
        )
    return start
