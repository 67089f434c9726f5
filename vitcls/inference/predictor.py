"""Batched prediction from an export directory (`vitcls.inference.export_dir`), on PyTorch or ONNX Runtime.

    predictor = Predictor.from_pretrained("export/")
    predictor("photo.jpg", top_k=3)                  # [{'label': 'kiwi', 'score': 0.93}, ...]
    predictor(["a.jpg", pil_image, tensor], top_k=3)  # one such list per image

Inputs are image files, PIL images or image tensors (C, H, W) / (N, C, H, W): uint8, or float in [0, 1]
as torchvision's `ToTensor` makes them. All get the exported preprocessing (timm's eval transform).
Many file paths are decoded in DataLoader workers while the model runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.functional import to_pil_image

from vitcls.data.dataset import ImageDecodeError, default_num_workers
from vitcls.data.images import BadImageError, load_rgb, to_rgb
from vitcls.errors import ConfigError
from vitcls.inference.export_dir import load_exported_network, read_config
from vitcls.inference.onnx import ONNX_FILE, onnx_session
from vitcls.precision import PrecisionChoice, inference_precision
from vitcls.preprocessing import build_eval_transform

ImageInput = str | os.PathLike | Image.Image | Tensor
DECODE_ERRORS = (BadImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)
BACKENDS = ("torch", "onnx")


def describe(item: ImageInput, index: int) -> str:
    return (
        os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"<input {index}: {type(item).__name__}>"
    )


def as_image(item: ImageInput) -> Image.Image:
    if isinstance(item, (str, os.PathLike)):
        return load_rgb(item)
    if isinstance(item, Image.Image):
        return to_rgb(item)
    if isinstance(item, Tensor) and item.ndim == 3:
        return to_rgb(to_pil_image(item.cpu()))
    raise TypeError(f"expected an image path, a PIL image or a (C, H, W) tensor, got {type(item).__name__}")


class InputDataset(Dataset):
    """Decodes and preprocesses one input; a failure becomes an error message, not an exception."""

    def __init__(self, items: Sequence[ImageInput], transform):
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, Tensor | None, str | None]:
        try:
            return index, self.transform(as_image(self.items[index])), None
        except DECODE_ERRORS as error:
            reason = error.reason if isinstance(error, BadImageError) else f"{type(error).__name__}: {error}"
            return index, None, reason


@dataclass
class Batch:
    indices: list[int]  # inputs in `images`, in order
    images: Tensor | None
    errors: dict[int, str]  # inputs that could not be read


def collate(samples: list[tuple[int, Tensor | None, str | None]]) -> Batch:
    good = [(i, x) for i, x, _ in samples if x is not None]
    return Batch(
        indices=[i for i, _ in good],
        images=torch.stack([x for _, x in good]) if good else None,
        errors={i: error for i, x, error in samples if x is None},
    )


class TorchRunner:
    """The network in float32; bfloat16/float16 run as autocast (matmuls in that dtype, norms and softmax in
    float32), which keeps top-1 agreement with float32 high."""

    def __init__(self, module: torch.nn.Module, device: torch.device, dtype: str = "float32"):
        self.device = device
        self.module = module.to(device=device, dtype=torch.float32)
        self.autocast_dtype = None if dtype == "float32" else getattr(torch, dtype)

    def __call__(self, images: Tensor) -> Tensor:
        images = images.to(self.device, torch.float32, non_blocking=True)
        enabled = self.autocast_dtype is not None
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=enabled):
            logits = self.module(images)
        return logits.float().cpu()


class OnnxRunner:
    def __init__(self, path: Path, device: torch.device):
        self.session = onnx_session(path, device.type)

    def __call__(self, images: Tensor) -> Tensor:
        logits = self.session.run(
            ["logits"], {"images": np.ascontiguousarray(images.numpy(), dtype=np.float32)}
        )[0]
        return torch.from_numpy(logits)


def _as_list(images: ImageInput | Sequence[ImageInput]) -> tuple[list[ImageInput], bool]:
    """(the inputs as a list, whether a single image was given)."""
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images], True
    if isinstance(images, Tensor):
        if images.ndim == 3:
            return [images], True
        if images.ndim == 4:
            return list(images), False
        raise ConfigError(f"image tensors must be (C, H, W) or (N, C, H, W), got shape {tuple(images.shape)}")
    return list(images), False


class Predictor:
    """Class probabilities and top-k labels for images, in batches, without gradients."""

    def __init__(
        self,
        runner,
        class_names: list[str],
        data_config: dict[str, Any],
        device: torch.device,
        num_workers: int | None = None,
        precision: PrecisionChoice | None = None,
    ):
        self.runner = runner
        self.class_names = list(class_names)
        self.data_config = data_config
        self.transform = build_eval_transform(data_config)
        self.device = device
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.precision = precision or PrecisionChoice("32-true", "float32")

    @property
    def dtype(self) -> str:
        """What the matmuls run in: float32, bfloat16 or float16 (autocast)."""
        return self.precision.dtype

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        device: str | None = None,
        backend: str = "torch",
        dtype: torch.dtype | str | None = "auto",
        num_workers: int | None = None,
    ) -> Predictor:
        """Load an export directory. `device`: cpu/cuda (default: cuda when available); `backend`: torch
        or onnx (model.onnx, needs onnxruntime); `dtype` (torch backend): `auto` (bfloat16 autocast on CPUs
        with AMX and on CUDA GPUs with bf16, else float32), or float32, bfloat16, float16 (a name or a
        torch.dtype) to force one. `predictor.precision` says which, and why."""
        directory = Path(directory).expanduser()
        if backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if backend == "onnx":
            if dtype not in (None, "auto") and inference_precision(dtype, device.type).dtype != "float32":
                raise ConfigError(f"backend='onnx' runs the exported float32 graph: dtype={dtype!r} needs backend='torch'")
            precision = PrecisionChoice("32-true", "backend=onnx runs the exported float32 graph")
            config = read_config(directory)
            if not (directory / ONNX_FILE).is_file():
                raise ConfigError(
                    f"{directory} has no {ONNX_FILE}: export with `vitcls-export CKPT DIR --onnx`"
                )
            runner = OnnxRunner(directory / ONNX_FILE, device)
        else:
            precision = inference_precision(dtype, device.type)
            net, config = load_exported_network(directory)
            runner = TorchRunner(net, device, precision.dtype)
        preprocessing = {
            k: tuple(v) if isinstance(v, list) else v for k, v in config["preprocessing"].items()
        }
        return cls(runner, config["class_names"], preprocessing, device, num_workers, precision)

    # --- prediction --------------------------------------------------------------------------
    @torch.inference_mode()
    def logits(self, images: Tensor) -> Tensor:
        """Logits of a preprocessed batch (N, 3, H, W) at the exported input size."""
        return self.runner(images)

    def batches(
        self, items: Sequence[ImageInput], batch_size: int = 32
    ) -> Iterator[tuple[Batch, Tensor | None]]:
        """(batch, probabilities of batch.images or None) over `items`, in input order; unreadable inputs
        are listed in `batch.errors`. Files are decoded in worker processes when there are many."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        all_paths = all(isinstance(item, (str, os.PathLike)) for item in items)
        workers = (
            min(self.num_workers, -(-len(items) // batch_size))
            if all_paths and len(items) > batch_size
            else 0
        )
        loader = DataLoader(
            InputDataset(items, self.transform),
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
        )
        for batch in loader:
            probabilities = None if batch.images is None else self.logits(batch.images).softmax(dim=-1)
            yield batch, probabilities

    def predict_proba(self, images: ImageInput | Sequence[ImageInput], batch_size: int = 32) -> Tensor:
        """(N, num_classes) probabilities; raises ImageDecodeError naming the first unreadable input."""
        items, _ = _as_list(images)
        parts = []
        for batch, probabilities in self.batches(items, batch_size):
            if batch.errors:
                index, error = next(iter(batch.errors.items()))
                raise ImageDecodeError(f"cannot read image {describe(items[index], index)}: {error}")
            parts.append(probabilities)
        return torch.cat(parts) if parts else torch.empty(0, len(self.class_names))

    def top_k(self, probabilities: Tensor, k: int | None = 5) -> list[dict[str, Any]]:
        """[{'label', 'score'}] of the k most probable classes (all with k=None), highest first."""
        k = len(self.class_names) if k is None else max(1, min(k, len(self.class_names)))
        scores, indices = probabilities.topk(k)
        return [
            {"label": self.class_names[i], "score": s}
            for s, i in zip(scores.tolist(), indices.tolist(), strict=True)
        ]

    def __call__(
        self, images: ImageInput | Sequence[ImageInput], top_k: int | None = 5, batch_size: int = 32
    ) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        items, single = _as_list(images)
        results = [self.top_k(p, top_k) for p in self.predict_proba(items, batch_size)]
        return results[0] if single else results

