"""Classification heads: modules mapping backbone features to logits (B, num_classes).

A head reads what the feature tap (`head.features`, vitcls.models.features) gives: a pooled vector
(B, in_features), or, for heads with `takes_tokens = True`, all tokens (B, N, in_features).
Adding a head = one subclass of `Head` here (or anywhere imported) + one YAML in conf/head/ whose
`_target_` names it. Subclasses register themselves in `HEADS` under their `name`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from timm.layers import AttentionPoolLatent
from torch import Tensor, nn

from vitcls.errors import ConfigError

HEADS: dict[str, type[Head]] = {}

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}
NORMS = {"layernorm": nn.LayerNorm, "batchnorm": nn.BatchNorm1d}


class Head(nn.Module):
    name: ClassVar[str]
    takes_tokens: ClassVar[bool] = False  # True: input (B, N, in_features); False: (B, in_features)

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


# Norms without learned affine parameters: the linear layer after them is the only thing that learns.
PLAIN_NORMS = {
    "batchnorm": lambda width: nn.BatchNorm1d(width, affine=False, eps=1e-6),
    "layernorm": lambda width: nn.LayerNorm(width, elementwise_affine=False, eps=1e-6),
}


class NormLinearHead(Head):
    """A norm without affine parameters, then a linear layer: the linear-probe recipe of MAE (BatchNorm)."""

    name = "norm_linear"

    def __init__(self, in_features: int, num_classes: int, norm: str = "batchnorm", dropout: float = 0.0):
        super().__init__(in_features, num_classes)
        self.norm = _choice(PLAIN_NORMS, norm, "head.norm")(in_features)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(self.dropout(self.norm(features)))


class CosineHead(Head):
    """Cosine similarity between L2-normalised features and class weights, divided by a temperature.

    `learn_temperature=true` learns it (as a log-scale, like CLIP's logit scale), from `temperature`.
    """

    name = "cosine"

    def __init__(
        self, in_features: int, num_classes: int, temperature: float = 0.05, learn_temperature: bool = True
    ):
        super().__init__(in_features, num_classes)
        if temperature <= 0:
            raise ConfigError(f"head.temperature must be positive, got {temperature}")
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.normal_(self.weight, std=0.02)
        log_scale = torch.tensor(math.log(1.0 / temperature))
        if learn_temperature:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def forward(self, features: Tensor) -> Tensor:
        cosine = F.linear(F.normalize(features, dim=-1), F.normalize(self.weight, dim=-1))
        return cosine * self.log_scale.exp()


class AttentionPoolHead(Head):
    """Multi-head attention pooling (MAP): a learned query attends over the tokens, then a linear layer.

    The pooling is timm's `AttentionPoolLatent` (as in ViTs with `global_pool='map'`): attention, an
    output projection and a residual MLP (`mlp_ratio`). Needs `head.features=tokens`.
    """

    name = "attention_pool"
    takes_tokens = True

    def __init__(
        self, in_features: int, num_classes: int, num_heads: int = 8, mlp_ratio: float = 4.0, dropout: float = 0.0
    ):
        super().__init__(in_features, num_classes)
        if num_heads <= 0 or in_features % num_heads:
            raise ConfigError(f"head.num_heads={num_heads} must divide the token width {in_features}")
        self.pool = AttentionPoolLatent(
            in_features, num_heads=num_heads, mlp_ratio=mlp_ratio, norm_layer=nn.LayerNorm
        )
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.fc(self.dropout(self.pool(tokens)))
