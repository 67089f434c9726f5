"""Classification heads: modules mapping backbone features (B, in_features) to logits (B, num_classes).

Adding a head = one subclass of `Head` here (or anywhere imported) + one YAML in conf/head/ whose
`_target_` names it. Subclasses register themselves in `HEADS` under their `name`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from torch import Tensor, nn

from vitcls.errors import ConfigError

HEADS: dict[str, type[Head]] = {}

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}
NORMS = {"layernorm": nn.LayerNorm, "batchnorm": nn.BatchNorm1d}


class Head(nn.Module):
    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            HEADS[cls.name] = cls

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        if in_features <= 0 or num_classes <= 0:
            raise ConfigError(f"head needs positive in_features and num_classes, got {in_features}, {num_classes}")
        self.in_features = in_features
        self.num_classes = num_classes


def _choice(table: dict, key: str | None, setting: str):
    if key is None:
        return None
    if key not in table:
        raise ConfigError(f"{setting}={key!r} is not supported; choose one of {sorted(table)}")
    return table[key]


class LinearHead(Head):
    """Dropout + one linear layer: the classic head of ViT fine-tuning."""

    name = "linear"

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__(in_features, num_classes)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(self.dropout(features))


class MLPHead(Head):
    """Hidden layers of [linear -> norm -> activation -> dropout], then a linear classifier."""

    name = "mlp"

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden_dims: Sequence[int] = (512,),
        activation: str = "gelu",
        dropout: float = 0.0,
        norm: str | None = None,
    ):
        super().__init__(in_features, num_classes)
        act_layer = _choice(ACTIVATIONS, activation, "head.activation")
        norm_layer = _choice(NORMS, norm, "head.norm")
        if any(int(d) <= 0 for d in hidden_dims):
            raise ConfigError(f"head.hidden_dims must be positive integers, got {list(hidden_dims)}")
        layers: list[nn.Module] = []
        width = in_features
        for hidden in hidden_dims:
            layers.append(nn.Linear(width, int(hidden)))
            if norm_layer is not None:
                layers.append(norm_layer(int(hidden)))
            layers += [act_layer(), nn.Dropout(dropout)]
            width = int(hidden)
        self.hidden = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(self.hidden(features))
