"""The network: a timm ViT backbone, a feature tap and a registered head, as one plain `nn.Module`.

It is all that export directories, the Predictor and eval.py need; training (loss, metrics, optimisation,
what trains) lives in `vitcls.models.lightning_module`, which holds one of these as `net`.

Its `config` is plain data that rebuilds the same network (with fresh weights) anywhere:

    {"backbone": {"name": "vit_tiny_patch16_224", "img_size": 64, ...},   # create_backbone kwargs
     "tap": {"features": "cls", "last_k": 4},                             # FeatureTap settings
     "head": {"name": "mlp", "module": "vitcls.models.heads", ...},       # a HeadSpec
     "class_names": ["apple", "kiwi", ...],
     "adapter": {"name": "lora", "rank": 8, ...} or None}                 # an AdapterSpec
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vitcls.checkpoints import load_checkpoint
from vitcls.data.transforms import resolve_data_config
from vitcls.models import legacy
from vitcls.models.adapters import AdapterSpec, attach_adapter, is_lora_parameter
from vitcls.models.backbone import create_backbone
from vitcls.models.features import AUTO, FeatureTap, resolve_features
from vitcls.models.heads import HeadSpec, build_head, registered_head

DEFAULT_TAP = {"features": AUTO, "last_k": 4}


class ImageClassifier(nn.Module):
    """Images (B, 3, H, W), preprocessed as `data_config` says -> logits (B, num_classes)."""

    def __init__(
        self,
        backbone: dict[str, Any],
        head: HeadSpec,
        class_names: list[str],
        tap: dict[str, Any] | None = None,
        adapter: AdapterSpec | None = None,
    ):
        super().__init__()
        tap = {**DEFAULT_TAP, **(tap or {})}
        takes_tokens = registered_head(head["name"], head.get("module")).takes_tokens
        tap["features"] = resolve_features(tap["features"], takes_tokens)
        self.class_names = list(class_names)
        self.backbone = create_backbone(**backbone)
        self.prompts = attach_adapter(self.backbone, adapter)  # VPT's prompts; LoRA lives inside the backbone
        self.tap = FeatureTap(self.backbone, **tap)
        self.head = build_head(head, self.tap.out_features, len(self.class_names))
        self.tap.check_head(self.head)
        self.data_config = resolve_data_config(self.backbone)
        self.config = {
            "backbone": dict(backbone),
            "tap": tap,
            "head": dict(head),
            "class_names": self.class_names,
            "adapter": dict(adapter) if adapter else None,
        }
        self._run_tap = self.tap

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ImageClassifier:
        """The network of a stored config, with fresh weights: nothing is downloaded or read (the caller
        loads the stored tensors into it)."""
        backbone = {**config["backbone"], "pretrained": False, "weights": None}
        return cls(backbone, config["head"], config["class_names"], config.get("tap"), config.get("adapter"))

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> tuple[ImageClassifier, dict[str, Any]]:
        """The network of a training checkpoint (EMA weights where the run averaged them), in eval mode, and
        the raw checkpoint dict; without Lightning. Checkpoints of vitcls 0.1 load too."""
        checkpoint = load_checkpoint(path, "checkpoint")
        net = cls.from_config(legacy.upgrade_hparams(dict(checkpoint["hyper_parameters"]))["net"])
        prefix = "net."
        state_dict = legacy.upgrade_state_dict(checkpoint["state_dict"])
        net.load_state_dict({k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)})
        return net.eval(), checkpoint

    def feature_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) of everything that computes the features (backbone, prompts): all but the head."""
        for name, parameter in self.named_parameters():
            if not name.startswith("head."):
                yield name, parameter

    def adapter_parameters(self) -> list[nn.Parameter]:
        """What the adapter added (LoRA factors, VPT prompts): they train even when the backbone is frozen."""
        return [
            parameter
            for name, parameter in self.feature_parameters()
            if is_lora_parameter(name) or name.startswith("prompts.")
        ]

    def with_adapter_merged(self) -> ImageClassifier:
        """This network with LoRA folded into the backbone's weights (a copy; self when there is no LoRA):
        a plain timm backbone with the same outputs, whose config has no adapter. VPT's prompts stay: they are
        plain parameters of this module."""
        adapter = self.config["adapter"]
        if not adapter or adapter["name"] != "lora":
            return self
        from vitcls.models.lora import merge_lora

        merged = copy.deepcopy(self)
        merge_lora(merged.backbone)
        merged.config = {**merged.config, "adapter": None}
        return merged

    def compile_feature_tap(self) -> None:
        """torch.compile what the backbone computes in training mode. The tap calls timm's forward_features /
        forward_intermediates rather than backbone.forward, so the tap is what gets compiled; it holds no
        weights, so state_dict keys and deep copies (EMA) are unaffected.

        Evaluation (eval mode) runs the eager tap on the same weights: a compiled inference graph measured no
        faster than eager on CPU, and switching graphs between training and evaluation, or a ragged last
        evaluation batch, would compile again, which cost more than a whole evaluation pass."""
        self._run_tap = torch.compile(self.tap)

    def features(self, images: Tensor) -> Tensor:
        """What the head consumes. A fully frozen backbone without a trainable adapter runs without autograd;
        with some blocks frozen, autograd records nothing before the first trainable parameter anyway."""
        backbone_trains = any(p.requires_grad for _, p in self.feature_parameters())
        run_tap = self._run_tap if self.training else self.tap
        with torch.set_grad_enabled(torch.is_grad_enabled() and backbone_trains):
            return run_tap(self.backbone, images, self.prompts)

    def tokens_before(self, images: Tensor, block: int) -> Tensor:
        """The tokens entering `backbone.blocks[block]` (a frozen part of the backbone: no autograd)."""
        with torch.no_grad():
            return self.tap.tokens_before(self.backbone, images, block)

    def features_from_tokens(self, tokens: Tensor, block: int) -> Tensor:
        """`features(images)` from `tokens_before(images, block)`: runs only blocks[block:], the final norm and
        the tap. Tokens stored in a lower precision come back to the backbone's dtype first."""
        tokens = tokens.to(self.backbone.pos_embed.dtype)
        return self.tap.from_tokens_before(self.backbone, tokens, block)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))
