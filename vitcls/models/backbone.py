"""Backbone factory: a timm ViT without classifier (`num_classes=0`), from the hub, its cache or a local file."""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path
from urllib.parse import urlparse

import timm
from torch import nn

from vitcls.errors import ConfigError, VitclsError
from vitcls.untrusted import UnsafeCheckpointError, refused_object, unsafe_file_message

# Settings of vitcls 0.1 that a checkpoint or a command line may still carry, and what replaced them.
REPLACED_SETTINGS = {"freeze": "model.train_blocks=none", "pool": "tap.features=cls or mean"}


class PretrainedWeightsUnavailable(VitclsError, RuntimeError):
    pass


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick connection test, so that an offline machine fails in seconds, not after minutes of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _pretrained_in_cache(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    hub_id = getattr(timm.models.get_pretrained_cfg(name), "hf_hub_id", None)
    if not hub_id:
        return False
    return any(
        isinstance(try_to_load_from_cache(hub_id, filename), str)
        for filename in ("model.safetensors", "open_clip_pytorch_model.bin", "pytorch_model.bin")
    )


def create_backbone(
    name: str,
    pretrained: bool = False,
    weights: str | None = None,
    img_size: int | None = None,
    drop_path_rate: float = 0.0,
    **model_kwargs,
) -> nn.Module:
    """Create `name` from timm with no classifier.

    - `weights`: a local .safetensors/.pth/.bin file (a timm state dict, head or no head). It goes
      through timm's pretrained loading (pos-embed resizing for another img_size, classifier dropped);
      `checkpoint_path=` would load strictly and fail on a different head.

    The model keeps its own pooling settings: the classifier reads tokens through its feature tap
    (vitcls.models.features), never through timm's pooled `forward_head`.
    """
    for old in REPLACED_SETTINGS.keys() & model_kwargs.keys():
        raise ConfigError(f"model.{old} was replaced: use {REPLACED_SETTINGS[old]}")
    if not timm.is_model(name.split(".")[0]):
        raise ConfigError(
            f"model.name={name!r} is not a timm model. List candidates with "
            f"`python -c \"import timm; print(timm.list_models('vit_*'))\"`."
        )
    kwargs = dict(num_classes=0, drop_path_rate=drop_path_rate, **model_kwargs)
    if img_size is not None:
        kwargs["img_size"] = img_size

    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ConfigError(f"model.weights file not found: {path.resolve()}")
        overlay = dict(file=str(path.resolve()), num_classes=-1)
        try:  # timm reads the file with torch.load(weights_only=True): pickled code is refused too
            return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
        except (RuntimeError, KeyError, ValueError, pickle.UnpicklingError) as error:
            reference = refused_object(error)
            if reference is not None:
                raise UnsafeCheckpointError(unsafe_file_message("model.weights", path, reference)) from error
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ConfigError(
                f"model.weights={path.resolve()} does not load into model.name={name!r}: {reason}. Use a timm "
                "state dict (.safetensors/.pth) of the same architecture, from a source you trust."
            ) from error

    if pretrained and not _pretrained_in_cache(name) and not _hub_reachable():
        raise PretrainedWeightsUnavailable(
            f"model.pretrained=true but the weights of {name!r} are not in the local Hugging Face cache "
            "and the hub cannot be reached (offline?). Either train from scratch with "
            "model.pretrained=false, or point model.weights=/path/to/weights.safetensors (or .pth) at a "
            "local copy of a timm state dict."
        )
    return timm.create_model(name, pretrained=pretrained, **kwargs)
