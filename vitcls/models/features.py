"""Feature taps: what the head sees of a timm ViT (`tap.features`).

Every tap reads timm's own forward (`forward_features`, or `forward_intermediates` for `last_k`), so the
backbone computation stays timm's. Tokens come out of the final norm, as timm's own pooling sees them.
Prefix tokens (CLS and register tokens, `num_prefix_tokens`) are not patches: `mean` averages the
patch tokens only. Pooled taps then pass the model's `fc_norm` (an identity unless the model norms after
pooling, as timm's `forward_head` does). With visual prompts (`adapter=vpt`), the tokens come from the prompted
forward of `vitcls.models.prompts`, which drops the prompts from its outputs: no tap ever includes a prompt.

  cls       CLS token                                   (B, D)
  mean      mean of the patch tokens                    (B, D)
  cls+mean  both, concatenated                          (B, 2D)
  last_k    CLS tokens of the last k blocks, each through the final norm, concatenated (DINO's linear
            evaluation)                                 (B, kD)
  tokens    every token (prefix and patches)            (B, N, D), for heads that pool themselves
  auto      tokens for heads that pool tokens themselves (attention_pool), cls for every other head
"""

from __future__ import annotations

import torch
from timm.layers import global_pool_nlc
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from vitcls.errors import ConfigError
from vitcls.models.prompts import VisualPrompts

# The pooled taps, as timm's `global_pool_nlc` pool types.
POOLS = {"cls": ("token",), "mean": ("avg",), "cls+mean": ("token", "avg")}
FEATURE_TAPS = (*POOLS, "last_k", "tokens")
AUTO = "auto"


def resolve_features(features: str, head_takes_tokens: bool) -> str:
    """`auto` -> what the head needs (tokens or the CLS token); any other value as given."""
    if features == AUTO:
        return "tokens" if head_takes_tokens else "cls"
    return features


class FeatureTap:
    """Images -> the features `tap.features` names, computed by a timm ViT. Holds no parameters."""

    def __init__(self, backbone: nn.Module, features: str = "cls", last_k: int = 4):
        if features not in FEATURE_TAPS:
            raise ConfigError(
                f"tap.features={features!r} is not supported; choose one of {[*FEATURE_TAPS, AUTO]}"
            )
        if features in ("cls", "cls+mean", "last_k") and getattr(backbone, "cls_token", None) is None:
            raise ConfigError(
                f"tap.features={features!r} needs a CLS token, but this backbone has none "
                "(e.g. the *_gap_* timm models); use tap.features=mean or tokens."
            )
        depth = len(backbone.blocks)
        if features == "last_k" and not 1 <= int(last_k) <= depth:
            raise ConfigError(f"tap.last_k must be between 1 and the backbone depth {depth}, got {last_k}")
        self.features = features
        self.last_k = int(last_k)
        self.num_prefix_tokens = backbone.num_prefix_tokens
        width = backbone.num_features
        self.out_features = {"cls+mean": 2 * width, "last_k": self.last_k * width}.get(features, width)

    @property
    def yields_tokens(self) -> bool:
        return self.features == "tokens"

    def check_head(self, head: nn.Module) -> None:
        """Heads that pool themselves need `tokens`; the others need a pooled tap."""
        takes_tokens = getattr(head, "takes_tokens", False)
        if takes_tokens and not self.yields_tokens:
            raise ConfigError(
                f"head {type(head).name!r} pools tokens itself: set tap.features=tokens or auto "
                f"(got {self.features!r})"
            )
        if self.yields_tokens and not takes_tokens:
            raise ConfigError(
                f"head {type(head).name!r} needs a pooled vector, but tap.features=tokens gives "
                f"all tokens: use cls, mean, cls+mean or last_k (or head=attention_pool)"
            )

    @property
    def settings(self) -> dict:
        return {"features": self.features, "last_k": self.last_k}

    def __call__(self, backbone: nn.Module, images: Tensor, prompts: VisualPrompts | None = None) -> Tensor:
        if self.features == "last_k":
            return torch.cat([tokens[:, 0] for tokens in self._last_blocks(backbone, images, prompts)], dim=-1)
        tokens = backbone.forward_features(images) if prompts is None else prompts(backbone, images)[0]
        return self._pool(backbone, tokens)

    def from_tokens(self, backbone: nn.Module, tokens: Tensor) -> Tensor:
        """This tap of the final (normed) tokens of `forward_features`; not for `last_k`."""
        return self._pool(backbone, tokens)

    def from_block_cls_tokens(self, cls_tokens: list[Tensor]) -> Tensor:
        """`last_k` of the normed CLS tokens of the last blocks (at least `last_k` of them, oldest first)."""
        return torch.cat(cls_tokens[len(cls_tokens) - self.last_k :], dim=-1)

    def _pool(self, backbone: nn.Module, tokens: Tensor) -> Tensor:
        """Final-norm tokens -> the pooled taps (or all tokens)."""
        if self.features == "tokens":
            return tokens
        pooled = [
            backbone.fc_norm(
                global_pool_nlc(tokens, pool_type=pool, num_prefix_tokens=self.num_prefix_tokens)
            )
            for pool in POOLS[self.features]
        ]
        return torch.cat(pooled, dim=-1)

    def _last_blocks(self, backbone: nn.Module, images: Tensor, prompts: VisualPrompts | None) -> list[Tensor]:
        """The tokens after each of the last k blocks, through the final norm (prefix tokens first)."""
        if prompts is not None:
            depth = len(backbone.blocks)
            return prompts(backbone, images, take=range(depth - self.last_k, depth))[1]
        intermediates = backbone.forward_intermediates(
            images,
            indices=self.last_k,
            norm=True,
            output_fmt="NLC",
            intermediates_only=True,
            return_prefix_tokens=True,
        )
        return [prefix for _, prefix in intermediates]

    # --- the backbone split before a block: cached tokens in, the same features out ----------------
    def check_split(self, backbone: nn.Module, start: int) -> None:
        """Can the features be computed from the tokens entering `blocks[start]`?"""
        if not isinstance(backbone, VisionTransformer):
            raise ConfigError(
                f"caching the tokens entering a block needs a timm VisionTransformer; {type(backbone).__name__} "
                "runs its blocks its own way (set feature_cache.enabled=false)"
            )
        depth = len(backbone.blocks)
        if self.features == "last_k" and depth - self.last_k < start - 1:
            raise ConfigError(
                f"tap.features=last_k reads the last {self.last_k} blocks, but with the tokens cached before block "
                f"{start} only the last {depth - start + 1} are computed: set tap.last_k <= {depth - start + 1} "
                "or train more blocks"
            )

    @staticmethod
    def tokens_before(backbone: nn.Module, images: Tensor, start: int) -> Tensor:
        """The tokens entering `blocks[start]`: timm's forward_features up to there."""
        x = backbone.norm_pre(backbone.patch_drop(backbone._pos_embed(backbone.patch_embed(images))))
        for block in backbone.blocks[:start]:
            x = block(x)
        return x

    def from_tokens_before(self, backbone: nn.Module, tokens: Tensor, start: int) -> Tensor:
        """The features that `self(backbone, images)` gives, from `tokens_before(backbone, images, start)`."""
        self.check_split(backbone, start)
        depth = len(backbone.blocks)
        if self.features != "last_k":
            return self._pool(backbone, backbone.norm(backbone.blocks[start:](tokens)))
        first = depth - self.last_k  # the first block whose output (through the final norm) is read
        outputs = [tokens] if first == start - 1 else []
        x = tokens
        for index in range(start, depth):
            x = backbone.blocks[index](x)
            if index >= first:
                outputs.append(x)
        return torch.cat([backbone.norm(y)[:, 0] for y in outputs], dim=-1)


class TapSet:
    """Several taps of one backbone from a single forward pass: `forward_features`, or, when a `last_k` tap
    is among them, `forward_intermediates` over the deepest k needed, whose final tokens are the same
    computation. Each tap's output equals what the tap computes alone."""

    def __init__(self, taps: list[FeatureTap]):
        self.taps = list(taps)
        self.blocks_needed = max((tap.last_k for tap in self.taps if tap.features == "last_k"), default=0)

    def __call__(self, backbone: nn.Module, images: Tensor) -> list[Tensor]:
        if not self.blocks_needed:
            tokens = backbone.forward_features(images)
            return [tap.from_tokens(backbone, tokens) for tap in self.taps]
        tokens, intermediates = backbone.forward_intermediates(
            images, indices=self.blocks_needed, norm=True, output_fmt="NLC", return_prefix_tokens=True
        )
        cls_tokens = [prefix[:, 0] for _, prefix in intermediates]
        return [
            tap.from_block_cls_tokens(cls_tokens) if tap.features == "last_k" else tap.from_tokens(backbone, tokens)
            for tap in self.taps
        ]
