"""Feature taps: what the head sees of a timm ViT (`tap.features`).

Every tap reads timm's own forward (`forward_features`, or `forward_intermediates` for `last_k`), so the
backbone computation stays timm's. Tokens come out of the final norm, as timm's own pooling sees them.
Prefix tokens (CLS and register tokens, `num_prefix_tokens`) are not patches: `mean` averages the
patch tokens only. Pooled taps then pass the model's `fc_norm` (an identity unless the model norms after
pooling, as timm's `forward_head` does). With an adapter that runs its own forward (vitcls.adapters), the tokens
come from that forward, which drops whatever it added to the sequence: a tap only ever sees image tokens.

  cls       CLS token                                   (B, D)
  mean      mean of the patch tokens                    (B, D)
  cls+mean  both, concatenated                          (B, 2D)
  last_k    CLS tokens of the last k blocks, each through the final norm, concatenated (DINO's linear
            evaluation)                                 (B, kD)
  tokens    every token (prefix and patches)            (B, N, D), for heads that pool themselves
  auto      tokens for heads that pool tokens themselves (attention_pool), cls for every other head
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import torch
from timm.layers import global_pool_nlc
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from vitcls.errors import ConfigError

# An adapter's own forward: (images, blocks to take) -> (final tokens, tokens after those blocks), all normed.
AdapterForward = Callable[[Tensor, Collection[int]], tuple[Tensor, list[Tensor]]]

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

    def __call__(self, backbone: nn.Module, images: Tensor, forward: AdapterForward | None = None) -> Tensor:
        return TapSet([self])(backbone, images, forward)[0]

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


class TapSet:
    """Several taps of one backbone from a single forward pass: `forward_features`, or, when a `last_k` tap
    is among them, `forward_intermediates` over the deepest k needed, whose final tokens are the same
    computation. Each tap's output equals what the tap computes alone. An adapter that runs its own forward
    (`forward`: images, blocks to take -> final tokens, tokens after those blocks) replaces timm's."""

    def __init__(self, taps: list[FeatureTap]):
        self.taps = list(taps)
        self.blocks_needed = max((tap.last_k for tap in self.taps if tap.features == "last_k"), default=0)

    def __call__(self, backbone: nn.Module, images: Tensor, forward: AdapterForward | None = None) -> list[Tensor]:
        depth = len(backbone.blocks)
        if forward is not None:
            tokens, intermediates = forward(images, range(depth - self.blocks_needed, depth))
            return self._taps_of(backbone, tokens, [prefix[:, 0] for prefix in intermediates])
        if not self.blocks_needed:
            return self._taps_of(backbone, backbone.forward_features(images), [])
        tokens, intermediates = backbone.forward_intermediates(
            images, indices=self.blocks_needed, norm=True, output_fmt="NLC", return_prefix_tokens=True
        )
        return self._taps_of(backbone, tokens, [prefix[:, 0] for _, prefix in intermediates])

    def _taps_of(self, backbone: nn.Module, tokens: Tensor, cls_tokens: list[Tensor]) -> list[Tensor]:
        """Every tap from the final normed tokens and the normed CLS tokens of the last blocks (oldest first)."""
        return [
            tap.from_block_cls_tokens(cls_tokens) if tap.features == "last_k" else tap.from_tokens(backbone, tokens)
            for tap in self.taps
        ]

    def check_split(self, backbone: nn.Module, start: int) -> None:
        for tap in self.taps:
            tap.check_split(backbone, start)

    def from_tokens_before(self, backbone: nn.Module, tokens: Tensor, start: int) -> list[Tensor]:
        """What `self(backbone, images)` gives, from `FeatureTap.tokens_before(backbone, images, start)`: runs only
        blocks[start:], the final norm and the taps."""
        self.check_split(backbone, start)
        depth = len(backbone.blocks)
        first = depth - self.blocks_needed  # the first block whose output (through the final norm) is read
        outputs = [tokens] if self.blocks_needed and first == start - 1 else []
        x = tokens
        for index in range(start, depth):
            x = backbone.blocks[index](x)
            if self.blocks_needed and index >= first:
                outputs.append(x)
        return self._taps_of(backbone, backbone.norm(x), [backbone.norm(y)[:, 0] for y in outputs])
