"""A map-style dataset that decodes image files lazily (in DataLoader workers)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset, default_collate

from vitcls.data.folder import Sample
from vitcls.data.images import DEFAULT_MAX_IMAGE_PIXELS, BadImageError, load_rgb
from vitcls.data.loaders import seeded_random_state
from vitcls.errors import VitclsError

log = logging.getLogger(__name__)


def default_num_workers(devices: int = 1) -> int:
    """DataLoader worker processes per device: the CPUs this process may use, shared by the devices, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus // max(1, devices)))


class ImageDecodeError(VitclsError):
    """An image file could not be read; the message names it."""


class ImageFileDataset(Dataset):
    """(image, label) pairs. With `skip_bad`, a file that cannot be decoded yields None (see
    `collate_skipping_bad`) instead of stopping the epoch: it went bad after the pre-training scan.

    An item is an index, or `(index, seed)` from a seeded `vitcls.data.loaders.EpochSampler`: the random
    transform then draws from `seed` alone, whatever process runs it."""

    def __init__(self, samples: Sequence[Sample], transform: Callable | None = None,
                 max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, skip_bad: bool = False):
        self.samples = list(samples)
        self.transform = transform
        self.max_pixels = max_pixels
        self.skip_bad = skip_bad
        self._warned: set[str] = set()  # per process: each DataLoader worker warns on its own

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int] | None:
        index, seed = item if isinstance(item, tuple) else (item, None)
        sample = self.samples[index]
        try:
            image = load_rgb(sample.path, self.max_pixels)
        except BadImageError as error:
            if not self.skip_bad:
                raise ImageDecodeError(
                    f"cannot read image {error}. Fix or remove this file and run again "
                    "(or pass data.on_bad_image=skip)."
                ) from error
            if sample.path not in self._warned:
                self._warned.add(sample.path)
                log.warning("skipping bad image %s", error)
            return None
        if self.transform is not None:
            if seed is None:
                image = self.transform(image)
            else:
                with seeded_random_state(seed):
                    image = self.transform(image)
        return image, sample.label


def collate_skipping_bad(batch: list[tuple[torch.Tensor, int] | None]):
    """Batch the samples that decoded; None when none did (the LightningModule steps skip it).

    Dropping rather than substituting keeps val/test metrics honest: only real images are counted.
    """
    kept = [item for item in batch if item is not None]
    return default_collate(kept) if kept else None
