"""The cells of a dataset's job: every seed, on all the training data and on each few-shot draw.

A draw keeps `shots` images per class of the training split (vitcls.data.split.stratified_subset), drawn with
`data.subset_seed = suite.draw_seed + draw`: the same images for every design and probe of the cell, and for every
seed (paired), nested across shot counts (the 5 images of a draw lie inside its 10). Val and test stay whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vitcls.errors import ConfigError

ALL = "all"


@dataclass(frozen=True)
class Cell:
    seed: int
    shots: int | None  # None: all the training data
    draw: int

    @property
    def name(self) -> str:
        if self.shots is None:
            return f"seed{self.seed}/{ALL}"
        return f"seed{self.seed}/shots{self.shots}_draw{self.draw}"

    def as_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "shots": self.shots if self.shots is not None else ALL, "draw": self.draw,
                "name": self.name}


def _positive_ints(values: Any, setting: str, allow_empty: bool = False) -> list[int]:
    values = list(values or [])
    if not values and not allow_empty:
        raise ConfigError(f"{setting}=[] is empty: list at least one value")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{setting}: {value!r} is not a positive integer")
    return values


def suite_cells(suite: Mapping[str, Any]) -> list[Cell]:
    """All the training data first, then every shot count x draw, for each seed."""
    seeds = list(suite.get("seeds") or [])
    if not seeds:
        raise ConfigError("suite.seeds=[] is empty: list at least one seed")
    shots = _positive_ints(suite.get("shots"), "suite.shots", allow_empty=True)
    draws = suite.get("draws", 1)
    if shots and (isinstance(draws, bool) or not isinstance(draws, int) or draws < 1):
        raise ConfigError(f"suite.draws={draws!r} is not allowed: a positive number of draws per shot count")
    cells = []
    for seed in seeds:
        cells.append(Cell(int(seed), None, 0))
        cells += [Cell(int(seed), n, draw) for n in sorted(shots) for draw in range(draws)]
    return cells


def dataset_settings(name: str, entry: Any) -> dict[str, Any]:
    """A `suite.datasets` entry: a folder, or a mapping with `root` and other data settings."""
    if isinstance(entry, str):
        return {"root": entry}
    if isinstance(entry, Mapping) and entry.get("root"):
        return dict(entry)
    raise ConfigError(f"suite.datasets.{name}: {entry!r} is neither a folder nor a mapping with a `root`")
