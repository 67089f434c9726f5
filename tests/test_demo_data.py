"""Tests for the SYNTHETIC fruit-shapes demo data generator (vitcls.data.demo, `vitcls-data demo`)."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitcls.data import demo
from vitcls.data.demo import MARKER_NAME, SyntheticFruitShapes

SMALL = {"train_per_class": 4, "test_per_class": 2, "image_size": 32}


def _files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def _digests(root: Path) -> dict[str, str]:
    return {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in _files(root).items()}


def test_class_names_are_six_sorted_fruits():
    names = SyntheticFruitShapes().class_names
    assert len(names) == 6
    assert names == sorted(names)
    assert len(set(names)) == 6
    assert {"apple", "banana", "orange"} <= set(names)


def test_prepare_writes_expected_layout(tmp_path):
    root = tmp_path / "nested" / "demo"  # parents are created as needed
    generator = SyntheticFruitShapes(**SMALL)
    generator.prepare(root)

    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["test", "train"]
    suffixes = set()
    for split, per_class in (("train", 4), ("test", 2)):
        assert sorted(p.name for p in (root / split).iterdir()) == generator.class_names
        for name in generator.class_names:
            files = sorted((root / split / name).iterdir())
            assert len(files) == per_class, (split, name)
            for path in files:
                suffixes.add(path.suffix)
                with Image.open(path) as image:
                    assert image.mode == "RGB"
                    assert image.size == (32, 32)
    assert suffixes == {".jpg", ".png"}  # both formats are exercised even in a tiny folder

    marker = json.loads((root / MARKER_NAME).read_text())
    assert marker["arguments"] == {**SMALL, "seed": 0}
    assert marker["synthetic"] is True
    # nothing left behind next to the root (the temp folder was renamed into place)
    assert [p.name for p in root.parent.iterdir()] == ["demo"]


def test_prepare_is_deterministic(tmp_path):
    SyntheticFruitShapes(**SMALL).prepare(tmp_path / "a")
    SyntheticFruitShapes(**SMALL).prepare(tmp_path / "b")
    first, second = _digests(tmp_path / "a"), _digests(tmp_path / "b")
    assert len(first) == 6 * (4 + 2) + 1
    assert first == second

    # ...and the seed matters: another seed gives the same names but different images
    SyntheticFruitShapes(**SMALL, seed=1).prepare(tmp_path / "c")
    third = _digests(tmp_path / "c")
    assert third.keys() == first.keys()
    images = [name for name in first if name != MARKER_NAME]
    assert all(first[name] != third[name] for name in images)


def test_cli_in_another_process_matches_in_process(tmp_path):
    """Byte-identical output from a fresh interpreter, through the command line (`vitcls-data demo`)."""
    SyntheticFruitShapes(**SMALL).prepare(tmp_path / "here")
    there = tmp_path / "there"
    args = [str(there), "--train-per-class", "4", "--test-per-class", "2", "--image-size", "32"]
    result = subprocess.run(
        [sys.executable, "-m", "vitcls.cli.data", "demo", *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert str(there) in result.stdout
    assert _digests(there) == _digests(tmp_path / "here")


def test_prepare_twice_is_a_no_op(tmp_path):
    root = tmp_path / "demo"
    SyntheticFruitShapes(**SMALL).prepare(root)
    before = {name: path.stat().st_mtime_ns for name, path in _files(root).items()}
    root_inode = root.stat().st_ino

    SyntheticFruitShapes(**SMALL).prepare(str(root))  # str or PathLike both accepted

    after = {name: path.stat().st_mtime_ns for name, path in _files(root).items()}
    assert after == before
    assert root.stat().st_ino == root_inode
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]


def test_empty_existing_root_is_filled(tmp_path):
    root = tmp_path / "demo"
    root.mkdir()
    SyntheticFruitShapes(**SMALL).prepare(root)
    assert (root / MARKER_NAME).is_file()
    assert len(_files(root)) == 6 * (4 + 2) + 1


def test_non_empty_root_without_marker_is_refused_and_left_alone(tmp_path):
    root = tmp_path / "my_photos"
    root.mkdir()
    precious = root / "holiday.jpg"
    precious.write_bytes(b"not really a jpeg, but mine")

    with pytest.raises(ValueError) as excinfo:
        SyntheticFruitShapes(**SMALL).prepare(root)

    message = str(excinfo.value)
    assert str(root) in message
    assert "data.root" in message
    assert precious.read_bytes() == b"not really a jpeg, but mine"
    assert [p.name for p in root.iterdir()] == ["holiday.jpg"]
    assert [p.name for p in tmp_path.iterdir()] == ["my_photos"]  # no temp folder left behind


def test_root_generated_with_other_arguments_is_refused(tmp_path):
    root = tmp_path / "demo"
    SyntheticFruitShapes(**SMALL).prepare(root)
    before = _digests(root)
    with pytest.raises(ValueError, match="different settings"):
        SyntheticFruitShapes(**{**SMALL, "image_size": 48}).prepare(root)
    assert _digests(root) == before


def test_lost_race_to_another_process_cleans_up(tmp_path, monkeypatch):
    """Another rank renames its complete folder into place first: ours must be discarded quietly."""
    root = tmp_path / "demo"
    real_replace = os.replace
    raced = []

    def replace_after_another_rank(src, dst):
        if not raced:
            raced.append(src)
            SyntheticFruitShapes(**SMALL).prepare(root)  # the "other rank" wins (its replace runs for real)
        return real_replace(src, dst)

    monkeypatch.setattr(demo.os, "replace", replace_after_another_rank)
    SyntheticFruitShapes(**SMALL).prepare(root)

    assert raced, "the race path was not exercised"
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # our temp folder was removed
    assert len(_files(root)) == 6 * (4 + 2) + 1


@pytest.mark.parametrize("bad", [{"train_per_class": 0}, {"image_size": 2}, {"seed": -1}])
def test_invalid_arguments_are_rejected(bad):
    with pytest.raises(ValueError):
        SyntheticFruitShapes(**{**SMALL, **bad})


def test_classes_are_distinguishable_by_centre_colour(tmp_path):
    root = tmp_path / "demo"
    generator = SyntheticFruitShapes(train_per_class=12, test_per_class=2, image_size=32)
    generator.prepare(root)

    means = {}
    for name in generator.class_names:
        centres = []
        for split in ("train", "test"):
            for path in sorted((root / split / name).iterdir()):
                with Image.open(path) as image:
                    array = np.asarray(image.convert("RGB"), dtype=np.float64)
                centres.append(array[8:24, 8:24].reshape(-1, 3).mean(axis=0))  # centre half of a 32px image
        means[name] = np.mean(centres, axis=0)

    pairs = list(itertools.combinations(generator.class_names, 2))
    distances = {pair: float(np.linalg.norm(means[pair[0]] - means[pair[1]])) for pair in pairs}
    separated = [pair for pair, distance in distances.items() if distance > 25.0]
    assert len(separated) >= 0.8 * len(pairs), distances
