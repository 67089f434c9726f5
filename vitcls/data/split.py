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
