"""Visual prompt tuning (`adapter=vpt`, Jia et al. 2022): learned tokens that join a frozen timm ViT's sequence.

The prompts sit after the prefix tokens (CLS, registers) and before the patches:
    [CLS, registers..., prompt_1..prompt_P, patch_1...patch_M]
  shallow (deep=false)  P tokens inserted once, after the patch and position embeddings
  deep (deep=true)      fresh P tokens at the input of every block, replacing the previous block's prompts

The forward is timm's own pieces (`patch_embed`, `_pos_embed`, `patch_drop`, `norm_pre`, each block, `norm`),
with the prompts spliced in between. Prompts are not image tokens: the outputs here drop them again, so the
feature tap sees the layout timm's `forward_features` gives (prefix tokens, then patches), and `mean` and
`tokens` never include a prompt.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from vitcls.adapters import Adapter
from vitcls.errors import ConfigError


def check_prompt_settings(backbone: nn.Module, num_prompts: int, deep: bool) -> None:
    if not isinstance(backbone, VisionTransformer):
        raise ConfigError(
            f"adapter=vpt needs a timm VisionTransformer backbone (vit_*, deit_*, ...), but model.name builds a "
            f"{type(backbone).__name__}: prompts join the token sequence of timm's ViT forward. Use adapter=lora "
            "or model.train_blocks/model.bitfit for this backbone."
        )
    if isinstance(num_prompts, bool) or not isinstance(num_prompts, int) or num_prompts < 1:
        raise ConfigError(f"adapter.num_prompts={num_prompts!r} is not allowed: a positive integer (10 is usual)")
    if not isinstance(deep, bool):
        raise ConfigError(f"adapter.deep={deep!r} is not allowed: true (prompts at every block) or false")


class VisualPrompts(nn.Module):
    """`tokens`: (depth if deep else 1, num_prompts, width) learned prompts for `backbone`."""

    def __init__(self, backbone: nn.Module, num_prompts: int = 10, deep: bool = False):
        super().__init__()
        check_prompt_settings(backbone, num_prompts, deep)
        self.num_prompts = num_prompts
        self.deep = deep
        self.num_prefix_tokens = backbone.num_prefix_tokens
        width, depth = backbone.embed_dim, len(backbone.blocks)
        # The VPT paper's init: uniform, scaled like a patch embedding's fan-in plus the width.
        patch_pixels = math.prod(backbone.patch_embed.patch_size)
        bound = math.sqrt(6.0 / (3 * patch_pixels + width))
        self.tokens = nn.Parameter(torch.empty(depth if deep else 1, num_prompts, width).uniform_(-bound, bound))

    def _with_prompts(self, x: Tensor, index: int, replace: bool) -> Tensor:
        """x with prompt set `index` after its prefix tokens (in place of the current prompts if `replace`)."""
        start = self.num_prefix_tokens
        rest = x[:, start + self.num_prompts :] if replace else x[:, start:]
        prompts = self.tokens[index].unsqueeze(0).expand(x.shape[0], -1, -1).to(x.dtype)
        return torch.cat([x[:, :start], prompts, rest], dim=1)

    def _without_prompts(self, x: Tensor) -> Tensor:
        start = self.num_prefix_tokens
        return torch.cat([x[:, :start], x[:, start + self.num_prompts :]], dim=1)

    def forward(
        self, backbone: nn.Module, images: Tensor, take: Collection[int] = ()
    ) -> tuple[Tensor, list[Tensor]]:
        """timm's `forward_features` with prompts: the final tokens after `norm`, and the tokens after each
        block in `take` (through `norm`, in block order); all without the prompts."""
        x = backbone.patch_embed(images)
        x = backbone._pos_embed(x)
        x = backbone.patch_drop(x)
        x = backbone.norm_pre(x)
        x = self._with_prompts(x, 0, replace=False)
        intermediates = []
        for index, block in enumerate(backbone.blocks):
            if self.deep and index > 0:
                x = self._with_prompts(x, index, replace=True)
            x = block(x)
            if index in take:
                intermediates.append(self._without_prompts(backbone.norm(x)))
        return self._without_prompts(backbone.norm(x)), intermediates


class VPT(Adapter):
    """`num_prompts` learned tokens in the sequence of a frozen timm ViT (`deep`: fresh ones at every block)."""

    name = "vpt"

    def __init__(self, num_prompts: int = 10, deep: bool = False):
        super().__init__(num_prompts=num_prompts, deep=deep)

    def attach(self, backbone: nn.Module) -> VisualPrompts:
        return VisualPrompts(backbone, **self.settings)

    def forward_features(
        self, backbone: nn.Module, module: nn.Module | None, images: Tensor, take: Collection[int] = ()
    ) -> tuple[Tensor, list[Tensor]]:
        return module(backbone, images, take)
