"""A map-style dataset that decodes image files lazily (in DataLoader workers)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from vitcls.data.folder import Sample
from vitcls.data.images import load_rgb
from vitcls.errors import VitclsError


class ImageDecodeError(VitclsError):
    """An image file could not be read; the message names it."""


class ImageFileDataset(Dataset):
    def __init__(self, samples: Sequence[Sample], transform: Callable | None = None):
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        try:
            image = load_rgb(sample.path)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            raise ImageDecodeError(
                f"cannot read image {sample.path}: {error}. Fix or remove this file and run again."
            ) from error
        if self.transform is not None:
            image = self.transform(image)
        return image, sample.label
