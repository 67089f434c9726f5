"""LoRA (`adapter=lora`): low-rank updates W + (alpha / rank) B A on linear layers of the backbone's blocks,
injected by the `peft` library into the timm model in place.

The timm model stays the backbone (same attributes, same timm forward); each targeted `nn.Linear` becomes a
peft LoRA layer that holds the original layer as `base_layer` and the factors as `lora_A`/`lora_B`
(state-dict keys `blocks.0.attn.qkv.base_layer.weight`, `blocks.0.attn.qkv.lora_A.default.weight`...).
`merge_lora` folds the factors into the weights and puts the plain layers back, so an exported model needs
neither peft nor this module.

peft imports transformers, which inference must not load: only training and export import this module.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from vitcls.adapters import Adapter
from vitcls.errors import ConfigError

try:
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer
except ModuleNotFoundError as missing:
    if missing.name != "peft":
        raise
    raise ConfigError("adapter=lora needs the peft library: pip install 'vitcls[lora]'") from missing

# Parameter names that peft gives the LoRA factors (`lora_A`, `lora_B`, ...).
FACTOR_PREFIX = "lora_"


def block_linear_layers(backbone: nn.Module) -> dict[str, list[str]]:
    """{short name: [full module names]} of the `nn.Linear` layers in the backbone's blocks
    ({"qkv": ["blocks.0.attn.qkv", ...], "proj": [...], "fc1": [...], "fc2": [...]} for a timm ViT)."""
    if not hasattr(backbone, "blocks"):
        raise ConfigError(f"adapter=lora adapts the linear layers of `blocks`; {type(backbone).__name__} has none")
    layers: dict[str, list[str]] = {}
    for name, module in backbone.blocks.named_modules():
        if isinstance(module, nn.Linear):
            layers.setdefault(name.rsplit(".", 1)[-1], []).append(f"blocks.{name}")
    return layers


def check_lora_settings(rank: int, alpha: float, dropout: float, targets: Sequence[str]) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"adapter.rank={rank!r} is not allowed: a positive integer (8 is the usual choice)")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ConfigError(f"adapter.alpha={alpha!r} is not allowed: a positive number (the update is scaled by alpha / rank)")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"adapter.dropout={dropout!r} is not allowed: a number in [0, 1)")
    if isinstance(targets, str) or not targets:
        raise ConfigError(f"adapter.targets={targets!r} is not allowed: a non-empty list of layer names, e.g. [qkv]")


def target_modules(backbone: nn.Module, targets: Sequence[str]) -> list[str]:
    """The full names of the linear layers that `targets` names (by their last name, e.g. `qkv`)."""
    layers = block_linear_layers(backbone)
    unknown = [name for name in targets if name not in layers]
    if unknown:
        raise ConfigError(
            f"adapter.targets: {unknown} are not linear layers of the backbone's blocks; "
            f"its linear layers are {sorted(layers)} (e.g. adapter.targets=[qkv,proj,fc1,fc2])"
        )
    return [full_name for name in dict.fromkeys(targets) for full_name in layers[name]]


def is_factor(name: str) -> bool:
    return any(part.startswith(FACTOR_PREFIX) for part in name.split("."))


class LoRA(Adapter):
    """W + (alpha / rank) B A on the named linear layers of every block (`targets`, e.g. [qkv]); B starts at zero,
    so the backbone's outputs are unchanged until it trains. Export merges the updates into the weights."""

    name = "lora"

    def __init__(self, rank: int = 8, alpha: float = 16, dropout: float = 0.0, targets: Sequence[str] = ("qkv",)):
        check_lora_settings(rank, alpha, dropout, targets)
        super().__init__(rank=rank, alpha=alpha, dropout=dropout, targets=list(targets))

    def attach(self, backbone: nn.Module) -> None:
        settings = self.settings
        config = LoraConfig(r=settings["rank"], lora_alpha=settings["alpha"], lora_dropout=settings["dropout"],
                            target_modules=target_modules(backbone, settings["targets"]))
        inject_adapter_in_model(config, backbone)

    def trainable_parameters(self, backbone: nn.Module, module: nn.Module | None) -> list[nn.Parameter]:
        return [parameter for name, parameter in backbone.named_parameters() if is_factor(name)]

    def merge(self, backbone: nn.Module, module: nn.Module | None) -> bool:
        merge_lora(backbone)
        return True


def merge_lora(backbone: nn.Module) -> None:
    """Fold every LoRA update into its layer's weight and put the plain layer back (in place): what
    peft's `merge_and_unload` does, for a model that peft injected without wrapping it."""
    adapted = [name for name, module in backbone.named_modules() if isinstance(module, BaseTunerLayer)]
    for name in adapted:
        parent_name, _, child_name = name.rpartition(".")
        parent = backbone.get_submodule(parent_name)
        layer = getattr(parent, child_name)
        layer.merge(safe_merge=True)  # safe: a non-finite merged weight raises instead of being exported
        setattr(parent, child_name, layer.get_base_layer())
    if hasattr(backbone, "peft_config"):
        del backbone.peft_config
