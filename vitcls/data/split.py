"""Deterministic stratified splits: a pure function of the sample list and the seed.

Every run and every DDP rank computes the same split from the same (sorted) folder scan, so no
split file has to be shared between processes.
"""

from __future__ import annotations

import random
from collections import defaultdict

from vitcls.data.folder import Sample
from vitcls.errors import ConfigError


def stratified_split(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Hold out `fraction` of each class. Returns (kept, held_out), both in the input order.

    Each class with at least two images keeps at least one and gives at least one, so every class
    is both learned and measured.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"data.val_fraction/test_fraction must be between 0 and 1 (exclusive), got {fraction}")
    by_class: dict[int, list[int]] = defaultdict(list)
    for position, sample in enumerate(samples):
        by_class[sample.label].append(position)

    held_out_positions: set[int] = set()
    for label in sorted(by_class):
        positions = by_class[label]
        if len(positions) < 2:
            continue
        n_held = min(len(positions) - 1, max(1, round(len(positions) * fraction)))
        # A per-class generator keeps one class's split independent of the others' sizes.
        rng = random.Random(f"{seed}:{label}")
        held_out_positions.update(rng.sample(positions, n_held))

    kept = [s for i, s in enumerate(samples) if i not in held_out_positions]
    held_out = [s for i, s in enumerate(samples) if i in held_out_positions]
    return kept, held_out


def stratified_subset(
    samples: list[Sample], per_class: int | None = None, fraction: float | None = None, seed: int = 0
) -> list[Sample]:
    """Keep `per_class` images of each class, or `fraction` of each class (at least one). In the input order.

    Nested: for one seed, each class's images are drawn in one seeded order and the first ones are kept, so
    the subset for K images per class holds the one for fewer. A class with fewer images keeps all of them.
    """
    if per_class is None and fraction is None:
        return samples
    if per_class is not None and fraction is not None:
        raise ConfigError(
            f"data.train_per_class={per_class} and data.train_fraction={fraction}: set one of them (the other null)"
        )
    if per_class is not None and (isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1):
        raise ConfigError(f"data.train_per_class must be a positive integer or null, got {per_class!r}")
    if fraction is not None and not (isinstance(fraction, (int, float)) and 0.0 < fraction <= 1.0):
        raise ConfigError(f"data.train_fraction must be a number in (0, 1] or null, got {fraction!r}")
    by_class: dict[int, list[int]] = defaultdict(list)
    for position, sample in enumerate(samples):
        by_class[sample.label].append(position)
    kept: set[int] = set()
    for label, positions in by_class.items():
        order = list(positions)
        random.Random(f"subset:{seed}:{label}").shuffle(order)
        n_keep = per_class if per_class is not None else max(1, round(len(positions) * fraction))
        kept.update(order[:n_keep])
    return [s for i, s in enumerate(samples) if i in kept]
