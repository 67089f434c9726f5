"""The network: a timm ViT backbone, an optional adapter, and one or more registered heads, each reading a feature
tap, as one plain `nn.Module`.

One head is what export directories, the Predictor and eval.py use. Several heads share one backbone (a head bank:
it must be frozen), each on its own tap; the distinct taps come from one backbone pass (`TapSet`). Training (loss,
metrics, optimisation) lives in `vitcls.models.lightning_module`, which holds one of these as `net`.

Its `config` is plain data that rebuilds the same network (with fresh weights) anywhere:

    {"backbone": {"name": "vit_tiny_patch16_224", "img_size": 64, ...},       # create_backbone kwargs
     "class_names": ["apple", "kiwi", ...],
     "adapter": {"name": <a registered adapter>, **settings} or None,           # vitcls.adapters
     "heads": [{"name": "mlp",                                                 # the design's name
                "head": {"name": "mlp", "module": "vitcls.models.heads", ...}, # a HeadSpec
                "tap": {"features": "cls", "last_k": 4}}, ...]}                # FeatureTap settings

Random numbers: every head is built from the random state a network of that head alone has where it builds its
head (right after the backbone and the adapter), so each head of a bank starts as its lone run's head does. With
several heads, each head also draws its training-time random numbers (dropout) from its own stream, which starts
where its lone run's does (`random_streams`; the LightningModule switches between them).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vitcls.adapters import AdapterSpec, build_adapter
from vitcls.models import legacy
from vitcls.models.backbone import create_backbone
from vitcls.models.features import AUTO, FeatureTap, TapSet, resolve_features
from vitcls.models.heads import HeadSpec, build_head, registered_head
from vitcls.preprocessing import resolve_data_config
from vitcls.untrusted import load_checkpoint

DEFAULT_TAP = {"features": AUTO, "last_k": 4}


def head_entry(head: HeadSpec, tap: dict[str, Any] | None = None, name: str | None = None) -> dict[str, Any]:
    """A `heads` entry of the config, with the tap's `auto` resolved for that head."""
    tap = {**DEFAULT_TAP, **(tap or {})}
    takes_tokens = registered_head(head["name"], head.get("module")).takes_tokens
    tap["features"] = resolve_features(tap["features"], takes_tokens)
    return {"name": name or head["name"], "head": dict(head), "tap": tap}


def tap_key(tap: dict[str, Any]) -> str:
    """`cls`, `mean`, `last_k4`...: one entry per distinct tap."""
    return f"last_k{tap['last_k']}" if tap["features"] == "last_k" else tap["features"]


def random_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ImageClassifier(nn.Module):
    """Images (B, 3, H, W), preprocessed as `data_config` says -> logits (B, num_classes) of its one head; with
    several heads, `head_logits` gives each head's."""

    def __init__(
        self,
        backbone: dict[str, Any],
        class_names: list[str],
        heads: list[dict[str, Any]] | None = None,
        adapter: AdapterSpec | None = None,
        *,
        head: HeadSpec | None = None,
        tap: dict[str, Any] | None = None,
    ):
        super().__init__()
        if heads is None:  # one head: ImageClassifier(backbone, class_names, head=..., tap=...)
            heads = [{"head": head, "tap": tap}]
        entries = [head_entry(entry["head"], entry.get("tap"), entry.get("name")) for entry in heads]
        self.class_names = list(class_names)
        self.backbone = create_backbone(**backbone)
        self.adapter = build_adapter(adapter)
        self.adapter_module = self.adapter.attach(self.backbone) if self.adapter else None
        where_a_lone_run_builds_its_head = random_state()
        taps: dict[str, FeatureTap] = {}
        self.head_taps: list[int] = []
        built = []
        self.random_streams: list[dict[str, Any]] = []
        for entry in entries:
            tap = FeatureTap(self.backbone, **entry["tap"])
            taps.setdefault(tap_key(tap.settings), tap)
            self.head_taps.append(list(taps).index(tap_key(tap.settings)))
            set_random_state(where_a_lone_run_builds_its_head)
            head = build_head(entry["head"], tap.out_features, len(self.class_names))
            tap.check_head(head)
            built.append(head)
            self.random_streams.append(random_state())
        self.heads = nn.ModuleList(built)
        self.taps = TapSet(list(taps.values()))
        self._run_taps = self.taps
        self.data_config = resolve_data_config(self.backbone)
        self.config = {
            "backbone": dict(backbone),
            "class_names": self.class_names,
            "adapter": self.adapter.spec if self.adapter else None,
            "heads": entries,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ImageClassifier:
        """The network of a stored config (of any vitcls version), with fresh weights: nothing is downloaded or
        read (the caller loads the stored tensors into it)."""
        config = legacy.upgrade_net_config(config)
        backbone = {**config["backbone"], "pretrained": False, "weights": None}
        return cls(backbone, config["class_names"], config["heads"], config.get("adapter"))

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> tuple[ImageClassifier, dict[str, Any]]:
        """The network of a training checkpoint (EMA weights where the run averaged them), in eval mode, and
        the raw checkpoint dict; without Lightning. Checkpoints of earlier vitcls versions load too."""
        checkpoint = load_checkpoint(path, "checkpoint")
        net = cls.from_config(legacy.upgrade_hparams(dict(checkpoint["hyper_parameters"]))["net"])
        prefix = "net."
        state_dict = legacy.upgrade_state_dict(checkpoint["state_dict"])
        net.load_state_dict({k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)})
        return net.eval(), checkpoint

    # --- heads ------------------------------------------------------------------------------------
    @property
    def num_heads(self) -> int:
        return len(self.heads)

    @property
    def head_names(self) -> list[str]:
        return [entry["name"] for entry in self.config["heads"]]

    @property
    def head(self) -> nn.Module:
        """The head of a one-head network."""
        self._require_one_head("head")
        return self.heads[0]

    @property
    def tap(self) -> FeatureTap:
        """The feature tap of a one-head network."""
        self._require_one_head("tap")
        return self.taps.taps[0]

    def _require_one_head(self, what: str) -> None:
        if self.num_heads != 1:
            raise ValueError(f"this network has {self.num_heads} heads: its {what} is per head (heads[i], "
                             "head_logits), or take one with single_head(i)")

    def single_head(self, index: int) -> ImageClassifier:
        """Head `index` on this backbone and adapter, as a network of its own (the modules are shared, not copied):
        what an export of that head holds."""
        view = copy.copy(self)
        view._parameters, view._buffers = dict(self._parameters), dict(self._buffers)
        view._modules = {**self._modules, "heads": nn.ModuleList([self.heads[index]])}
        entry = self.config["heads"][index]
        view.taps = TapSet([self.taps.taps[self.head_taps[index]]])
        view._run_taps = view.taps
        view.head_taps = [0]
        view.random_streams = [self.random_streams[index]]
        view.config = {**self.config, "heads": [entry]}
        return view

    # --- what trains ------------------------------------------------------------------------------
    def feature_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) of everything that computes the features (backbone, adapter): all but the heads."""
        for name, parameter in self.named_parameters():
            if not name.startswith("heads."):
                yield name, parameter

    def adapter_parameters(self) -> list[nn.Parameter]:
        """What the adapter added: it trains even when the backbone is frozen."""
        return self.adapter.trainable_parameters(self.backbone, self.adapter_module) if self.adapter else []

    def with_adapter_merged(self) -> ImageClassifier:
        """This network with its adapter folded into the backbone's weights (a copy), when the adapter merges: a
        plain timm backbone with the same outputs, whose config has no adapter. Otherwise self."""
        if self.adapter is None:
            return self
        merged = copy.deepcopy(self)
        if not merged.adapter.merge(merged.backbone, merged.adapter_module):
            return self
        merged.adapter, merged.adapter_module = None, None
        merged.config = {**merged.config, "adapter": None}
        return merged

    def compile_feature_tap(self) -> None:
        """torch.compile what the backbone computes in training mode. The taps call timm's forward_features /
        forward_intermediates rather than backbone.forward, so the taps are what gets compiled; they hold no
        weights, so state_dict keys and deep copies (EMA) are unaffected.

        Evaluation (eval mode) runs the eager taps on the same weights: a compiled inference graph measured no
        faster than eager on CPU, and switching graphs between training and evaluation, or a ragged last
        evaluation batch, would compile again, which cost more than a whole evaluation pass."""
        self._run_taps = torch.compile(self.taps)

    # --- forward ----------------------------------------------------------------------------------
    def _adapter_forward(self):
        if self.adapter is None or not self.adapter.replaces_forward:
            return None
        return lambda images, take: self.adapter.forward_features(self.backbone, self.adapter_module, images, take)

    def features(self, images: Tensor) -> list[Tensor]:
        """What each distinct tap gives (`taps` order), from one backbone pass. A fully frozen backbone without a
        trainable adapter runs without autograd; with some blocks frozen, autograd records nothing before the
        first trainable parameter anyway."""
        backbone_trains = any(p.requires_grad for _, p in self.feature_parameters())
        run_taps = self._run_taps if self.training else self.taps
        with torch.set_grad_enabled(torch.is_grad_enabled() and backbone_trains):
            return run_taps(self.backbone, images, self._adapter_forward())

    @torch.no_grad()
    def features_with(self, taps: TapSet, images: Tensor) -> list[Tensor]:
        """Other taps of this backbone (and adapter), without autograd: what a feature cache stores."""
        return taps(self.backbone, images, self._adapter_forward())

    def head_inputs(self, features: list[Tensor]) -> list[Tensor]:
        """Per head, the features of its tap."""
        return [features[index] for index in self.head_taps]

    def head_logits(self, images: Tensor) -> list[Tensor]:
        return [head(inputs) for head, inputs in zip(self.heads, self.head_inputs(self.features(images)), strict=True)]

    def tokens_before(self, images: Tensor, block: int) -> Tensor:
        """The tokens entering `backbone.blocks[block]` (a frozen part of the backbone: no autograd)."""
        with torch.no_grad():
            return FeatureTap.tokens_before(self.backbone, images, block)

    def features_from_tokens(self, tokens: Tensor, block: int) -> list[Tensor]:
        """`features(images)` from `tokens_before(images, block)`: runs only blocks[block:], the final norm and
        the taps. Tokens stored in a lower precision come back to the backbone's dtype first."""
        tokens = tokens.to(self.backbone.pos_embed.dtype)
        return self.taps.from_tokens_before(self.backbone, tokens, block)

    def forward(self, images: Tensor) -> Tensor:
        self._require_one_head("forward")
        return self.head_logits(images)[0]
