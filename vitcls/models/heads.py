"""Classification heads: modules mapping backbone features to logits (B, num_classes), and their registry.

A head reads what the feature tap (`tap.features`, vitcls.models.features) gives: a pooled vector
(B, in_features), or, for heads with `takes_tokens = True`, all tokens (B, N, in_features).

Heads are named by the registry: a subclass of `Head` with a `name` registers itself in `HEADS`, and
checkpoints and export directories store that name and the head's settings (`HeadSpec`), never a Python
path, so a class can be renamed or moved without breaking old runs. Adding a head = one subclass here (or
in any module you import) + `conf/head/<name>.yaml` whose `_target_` is the class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from timm.layers import AttentionPoolLatent
from torch import Tensor, nn

from vitcls.errors import ConfigError

HEADS: dict[str, type[Head]] = {}
# {"name": registered name, "module": where the class was defined (a hint when it is missing), **settings}
HeadSpec = dict[str, Any]

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


def registered_head(name: str, module: str | None = None) -> type[Head]:
    """The head class registered as `name`; a missing one is a ConfigError that says where its code is."""
    if name in HEADS:
        return HEADS[name]
    where = (
        f"Its code was in the Python module {module!r}, which this process has not imported: import it first "
        f"(`import {module}` before loading; vitcls-predict/vitcls-export --imports {module}; train.py/eval.py "
        f"imports=[{module}])."
        if module and module != __name__
        else "Was it renamed? Its `name` must stay the same for old checkpoints and exports to load."
    )
    raise ConfigError(f"head {name!r} is not a registered head (registered: {sorted(HEADS)}). {where}")


def head_spec(head_class: type[Head], settings: dict[str, Any]) -> HeadSpec:
    """What checkpoints and exports store of a head: its registered name, its module and its settings."""
    name = head_class.__dict__.get("name")
    if name is None or HEADS.get(name) is not head_class:
        raise ConfigError(
            f"{head_class.__module__}.{head_class.__qualname__} is not a registered head: subclass "
            "vitcls.models.heads.Head and give it a unique class attribute `name`"
        )
    return {"name": name, "module": head_class.__module__, **settings}


def build_head(spec: HeadSpec, in_features: int, num_classes: int) -> Head:
    settings = {k: v for k, v in spec.items() if k not in ("name", "module")}
    return registered_head(spec["name"], spec.get("module"))(in_features, num_classes, **settings)


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
    output projection and a residual MLP (`mlp_ratio`). Needs `tap.features=tokens` (which `auto` picks).
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
