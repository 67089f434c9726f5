"""Weighted k-nearest-neighbour probe on L2-normalised features (the k-NN evaluation of DINO).

Each query's k most cosine-similar training features vote for their classes with weight exp(sim / T). The
probabilities are the votes divided by their sum over the k neighbours, which is a softmax of sim / T over
the k neighbours summed per class; a class without a neighbour gets 0. Similarities are computed in chunks
of queries (`chunk_size` rows of a (queries x training images) matrix at a time), on the device of the
features.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vitcls.errors import ConfigError, VitclsError
from vitcls.probes.base import Predictor, Probe


def vote_probabilities(similarities: Tensor, labels: Tensor, num_classes: int, temperature: float) -> Tensor:
    """(Q, k) neighbour similarities and labels -> (Q, num_classes) normalised exp(sim / T) votes."""
    weights = torch.softmax(similarities.float() / temperature, dim=1)
    votes = torch.zeros(len(similarities), num_classes, dtype=weights.dtype, device=weights.device)
    return votes.scatter_add_(1, labels, weights)


class NeighbourIndex:
    """L2-normalised training features and their labels; the top-k neighbours of queries, chunk by chunk."""

    def __init__(self, features: Tensor, labels: Tensor, chunk_size: int):
        self.features = F.normalize(features.float(), dim=1)
        self.labels = labels.long()
        self.chunk_size = chunk_size

    def __len__(self) -> int:
        return len(self.features)

    def neighbours(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """(Q, k) cosine similarities (largest first) and labels of each query's k nearest training features."""
        if queries.shape[1] != self.features.shape[1]:
            raise VitclsError(
                f"k-NN probe: features have width {queries.shape[1]}, the training features {self.features.shape[1]}"
            )
        queries = F.normalize(queries.to(self.features.device, torch.float32), dim=1)
        similarities, labels = [], []
        for chunk in queries.split(self.chunk_size):
            top = (chunk @ self.features.T).topk(k, dim=1, largest=True, sorted=True)
            similarities.append(top.values)
            labels.append(self.labels[top.indices])
        return torch.cat(similarities), torch.cat(labels)


class KNNProbe(Probe):
    """Temperature-weighted k-NN vote; k chosen on validation among `ks` (each capped at the number of
    training images)."""

    name = "knn"

    def __init__(self, ks: Sequence[int] = (10, 20, 100, 200), temperature: float = 0.07, chunk_size: int = 1024):
        ks = list(ks) if isinstance(ks, Sequence) and not isinstance(ks, str) else ks
        if not isinstance(ks, list) or not ks or not all(_positive_int(k) for k in ks):
            raise ConfigError(f"probe.ks must be a non-empty list of positive integers, got {ks!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            temperature > 0 and math.isfinite(temperature)
        ):
            raise ConfigError(f"probe.temperature must be a positive number, got {temperature!r}")
        if not _positive_int(chunk_size):
            raise ConfigError(f"probe.chunk_size must be a positive integer, got {chunk_size!r}")
        self.ks = [int(k) for k in ks]
        self.temperature = float(temperature)
        self.chunk_size = int(chunk_size)

    def settings(self) -> dict[str, Any]:
        return {"ks": list(self.ks), "temperature": self.temperature, "chunk_size": self.chunk_size}

    def candidate_ks(self, num_train: int, notes: list[str]) -> list[int]:
        """The distinct values of k to try, largest first, each capped at the number of training images."""
        capped = [k for k in self.ks if k > num_train]
        if capped:
            notes.append(
                f"k capped at the {num_train} training images: k = {', '.join(map(str, sorted(set(capped))))} "
                f"ran as k = {num_train}"
            )
        return sorted({min(k, num_train) for k in self.ks}, reverse=True)

    def _sweep(
        self, train_x: Tensor, train_y: Tensor, val_x: Tensor, num_classes: int, notes: list[str]
    ) -> Iterator[tuple[dict[str, Any], Tensor, Predictor]]:
        index = NeighbourIndex(train_x, train_y, self.chunk_size)
        ks = self.candidate_ks(len(index), notes)
        similarities, labels = index.neighbours(val_x, max(ks))  # one search serves every k
        for k in ks:
            val_proba = vote_probabilities(similarities[:, :k], labels[:, :k], num_classes, self.temperature)
            yield {"k": k}, val_proba, self._predictor(index, k, num_classes)

    def _predictor(self, index: NeighbourIndex, k: int, num_classes: int) -> Predictor:
        def predict_proba(features: Tensor) -> Tensor:
            similarities, labels = index.neighbours(features, k)
            return vote_probabilities(similarities, labels, num_classes, self.temperature).to(features.device)

        return predict_proba


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
