"""Tensors computed once per split from the images (backbone features, or the tokens entering a block) and kept
on disk, so that later runs with the same key skip that computation: the data side of the feature cache.

What the key stands for is the caller's (vitcls.run.inputs: backbone settings and weights, feature tap,
preprocessing, precision); this module adds the files. Files are fingerprinted by (path relative to data.root,
size, mtime_ns), as make and rsync do: a stat per file instead of reading every image, and any rewrite of an image
(even `touch`) changes its key. Only a replacement keeping both size and mtime would go unnoticed.

Cache layout: the entries of a `FeatureStore` (vitcls.data.feature_store): `<cache_dir>/<key>.safetensors` (the
tensors) and `<key>.json` (what the key stands for and a checksum, written last), checked on load, filled by one
process at a time, replaced when bad. Augmented views of the training images are served by `ViewsDataset`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from vitcls.data.folder import Sample

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
FORMAT_VERSION = 1
# Storage of cached tokens (model.train_blocks=N): bfloat16 halves float32's bytes and keeps its range.
TOKEN_DTYPES = ("bfloat16", "float16", "float32")


def files_fingerprint(samples: list[Sample], root: Path) -> list[list]:
    """[relative path, label, size, mtime_ns] per sample, in split order."""
    rows = []
    for sample in samples:
        stat = os.stat(sample.path)
        rows.append([os.path.relpath(sample.path, root), sample.label, stat.st_size, stat.st_mtime_ns])
    return rows


def cache_key(fingerprint: dict[str, Any], files: list[list]) -> str:
    payload = json.dumps({"features": fingerprint, "files": files}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


@torch.no_grad()
def encode_splits(
    datasets: dict[str, Dataset],
    encode: Callable[[Tensor], list[Tensor]],
    batch_size: int,
    num_workers: int,
    device: torch.device,
    forward_context: Callable[[], AbstractContextManager] = nullcontext,
) -> dict[str, tuple[list[Tensor], Tensor]]:
    """{split: ([each output of `encode`], labels)} over image datasets of (image, label), in one pass: one
    DataLoader, so worker processes start once. The random state is forked: what follows draws the same random
    numbers as without a cache."""
    splits = list(datasets)
    loader = DataLoader(ConcatDataset([datasets[s] for s in splits]), batch_size=batch_size, num_workers=num_workers)
    outputs: list[list[Tensor]] | None = None
    labels = []
    with torch.random.fork_rng(devices=[]):
        for images, targets in loader:
            with forward_context():
                encoded = encode(images.to(device))
            outputs = outputs or [[] for _ in encoded]
            for output, tensor in zip(outputs, encoded, strict=True):
                output.append(tensor.cpu())
            labels.append(targets)
    sizes = [len(datasets[s]) for s in splits]
    per_output = [torch.cat(output).split(sizes) for output in outputs or []]
    per_split_labels = torch.cat(labels).split(sizes)
    return {split: ([output[i] for output in per_output], per_split_labels[i]) for i, split in enumerate(splits)}


class ViewsDataset(Dataset):
    """Cached training inputs with V augmented views per image: item `(index, epoch)` (from an
    `EpochSampler(with_epoch=True)`) is view `(epoch + offsets[index]) mod V` of image `index`, so every image
    cycles through its views, each starting at a view of its own. `tensors`: (V, N, ...) each, then the labels."""

    views_per_epoch = True

    def __init__(self, tensors: list[Tensor], labels: Tensor, offsets: Tensor):
        self.tensors, self.labels, self.offsets = tensors, labels, offsets
        self.num_views = tensors[0].shape[0]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item: tuple[int, int]) -> tuple[Tensor, ...]:
        index, epoch = item
        view = (epoch + int(self.offsets[index])) % self.num_views
        return (*(tensor[view, index] for tensor in self.tensors), self.labels[index])


def view_offsets(samples: list[Sample], root: Path, seed: int, num_views: int) -> Tensor:
    """Each image's first view: a function of (seed, its path relative to root), the same in every run."""
    offsets = []
    for sample in samples:
        digest = hashlib.sha256(f"{seed}:{os.path.relpath(sample.path, root)}".encode()).digest()
        offsets.append(int.from_bytes(digest[:8], "little") % num_views)
    return torch.tensor(offsets, dtype=torch.long)


def view_seed(seed: int, view: int, index: int) -> int:
    """The seed of the random transform of view `view` of training image `index`."""
    digest = hashlib.sha256(f"view:{seed}:{view}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
