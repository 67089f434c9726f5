"""Scanning an image folder into labelled samples, split by split.

Accepted layouts (split folder names are matched case-insensitively):

    root/train/<class>/*  root/test/<class>/*  [root/val/<class>/*]
    root/<class>/*                       (train/val/test are carved out deterministically)

Hidden files and folders are skipped silently; other files that are not images are counted as ignored.
Symbolic links are followed while they stay inside the root; one that leads outside is a bad file
(a data folder should not pull in files from elsewhere on the machine).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from vitcls.data.images import is_image_file
from vitcls.errors import VitclsError

SPLIT_ALIASES = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}

EXPECTED_LAYOUT = """expected one of these layouts:
  ROOT/train/<class_name>/<image files>     ROOT/<class_name>/<image files>
  ROOT/test/<class_name>/<image files>      (train/val/test are then split off
  ROOT/val/<class_name>/<image files>        deterministically)
  (val/ is optional: without it a stratified part of train is held out)
image extensions: jpg jpeg png bmp webp gif tif tiff (any case)"""


class DatasetLayoutError(VitclsError, ValueError):
    """The folder given as data.root cannot be read as a labelled image folder."""


@dataclass(frozen=True)
class Sample:
    path: str
    label: int


@dataclass
class ClassFolders:
    """Image files found under one split directory, grouped by class folder name."""

    directory: Path
    files: dict[str, list[str]] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    outside_root: list[str] = field(default_factory=list)  # symlinks that resolve outside the root

    @property
    def class_names(self) -> list[str]:
        return sorted(self.files)

    @property
    def empty_classes(self) -> list[str]:
        return sorted(name for name, files in self.files.items() if not files)


@dataclass
class FolderScan:
    """What a scan of data.root found: the split folders present and the class folders in each."""

    root: Path
    splits: dict[str, ClassFolders]  # keys among "train", "val", "test"; "train" may be the root itself

    @property
    def class_names(self) -> list[str]:
        return self.splits["train"].class_names

    @property
    def num_ignored(self) -> int:
        return sum(len(folders.ignored) for folders in self.splits.values())

    @property
    def outside_root(self) -> list[str]:
        return [path for folders in self.splits.values() for path in folders.outside_root]

    def all_files(self) -> list[str]:
        return [path for folders in self.splits.values() for files in folders.files.values() for path in files]

    def empty_classes(self) -> dict[str, list[str]]:
        """{split: [class folders without any image]} for the splits that have some."""
        return {split: folders.empty_classes for split, folders in self.splits.items() if folders.empty_classes}

    def drop_files(self, paths: set[str]) -> None:
        for folders in self.splits.values():
            for name, files in folders.files.items():
                folders.files[name] = [path for path in files if path not in paths]

    def drop_classes(self, names: set[str]) -> None:
        for folders in self.splits.values():
            for name in names:
                folders.files.pop(name, None)

    def samples(self, split: str) -> list[Sample]:
        index = {name: i for i, name in enumerate(self.class_names)}
        folders = self.splits[split]
        return [Sample(path, index[name]) for name in folders.class_names for path in folders.files[name]]

    def summary(self) -> str:
        parts = [f"{split}: {sum(len(f) for f in folders.files.values())} images"
                 for split, folders in self.splits.items()]
        return f"{len(self.class_names)} classes; " + ", ".join(parts) + f"; {self.num_ignored} files ignored"


def _visible_entries(directory: Path) -> list[os.DirEntry]:
    with os.scandir(directory) as entries:
        return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _inside(path: str, real_root: str) -> bool:
    return os.path.commonpath([os.path.realpath(path), real_root]) == real_root


def _image_files_under(directory: Path, folders: ClassFolders, real_root: str) -> list[str]:
    """All image files below a class folder (nested folders included), sorted for determinism."""
    found = []
    visited = set()
    for current, dirnames, filenames in os.walk(directory, followlinks=True):
        visited.add(os.path.realpath(current))
        kept = []
        for name in sorted(d for d in dirnames if not d.startswith(".")):
            path = os.path.join(current, name)
            if not _inside(path, real_root):
                folders.outside_root.append(path)
            elif os.path.realpath(path) not in visited:  # a symlink loop would never end
                kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = os.path.join(current, name)
            if not is_image_file(name):
                folders.ignored.append(path)
            elif not _inside(path, real_root):
                folders.outside_root.append(path)
            else:
                found.append(path)
    return found


def scan_class_folders(directory: Path, root: Path | None = None) -> ClassFolders:
    folders = ClassFolders(directory)
    real_root = os.path.realpath(root if root is not None else directory)
    for entry in _visible_entries(directory):
        if not _inside(entry.path, real_root):
            folders.outside_root.append(entry.path)
        elif entry.is_dir():
            folders.files[entry.name] = _image_files_under(Path(entry.path), folders, real_root)
        else:
            folders.ignored.append(entry.path)
    return folders


def _find_split_dirs(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for entry in _visible_entries(root):
        if not entry.is_dir():
            continue
        for split, aliases in SPLIT_ALIASES.items():
            if entry.name.lower() in aliases:
                if split in found:
                    raise DatasetLayoutError(
                        f"{root} has two folders for the {split} split: {found[split].name}/ and {entry.name}/; "
                        "keep one."
                    )
                found[split] = Path(entry.path)
    return found


def class_differences(expected: list[str], found: list[str]) -> tuple[list[str], list[str]]:
    """(classes of `expected` missing from `found`, classes of `found` not in `expected`), sorted."""
    return sorted(set(expected) - set(found)), sorted(set(found) - set(expected))


def _check_same_classes(scan: FolderScan) -> None:
    for split, folders in scan.splits.items():
        missing, extra = class_differences(scan.class_names, folders.class_names)
        if missing or extra:
            raise DatasetLayoutError(
                f"the {split} split ({folders.directory}) has different classes than train "
                f"({scan.splits['train'].directory}): missing in {split}: {missing or 'none'}; "
                f"extra in {split} (not in train): {extra or 'none'}. "
                "Every split needs the same class folders."
            )


def read_folder(root: str | Path) -> FolderScan:
    """List data.root split by split and class by class; raises DatasetLayoutError when there is no
    train split to read. Empty or mismatched class folders are left for `validate_scan` to judge."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetLayoutError(f"data.root does not exist: {root.resolve()}\n{EXPECTED_LAYOUT}")
    if not root.is_dir():
        raise DatasetLayoutError(f"data.root is not a directory: {root.resolve()}\n{EXPECTED_LAYOUT}")

    split_dirs = _find_split_dirs(root)
    if split_dirs and "train" not in split_dirs:
        raise DatasetLayoutError(
            f"{root} has {', '.join(p.name + '/' for p in split_dirs.values())} but no train/ folder.\n"
            f"{EXPECTED_LAYOUT}"
        )
    if not split_dirs:
        split_dirs = {"train": root}
    return FolderScan(root, {split: scan_class_folders(path, root) for split, path in split_dirs.items()})


def validate_scan(scan: FolderScan) -> FolderScan:
    """Every split has the same (at least two) class folders, none of them empty."""
    train = scan.splits["train"]
    if not train.files or not any(train.files.values()):
        raise DatasetLayoutError(f"no class folders with images found in {train.directory.resolve()}\n{EXPECTED_LAYOUT}")
    for split, folders in scan.splits.items():
        if folders.empty_classes:
            raise DatasetLayoutError(
                f"class folders without any image in the {split} split ({folders.directory}): "
                f"{folders.empty_classes}. Add images or remove these folders."
            )
    if len(scan.class_names) < 2:
        only = train.directory / scan.class_names[0]
        hint = f" Did you mean data.root={only}?" if _find_split_dirs(only) else ""
        raise DatasetLayoutError(
            f"found a single class folder ({scan.class_names[0]!r}) in {train.directory}: "
            f"classification needs at least two.{hint}\n{EXPECTED_LAYOUT}"
        )
    _check_same_classes(scan)
    return scan


def scan_folder(root: str | Path) -> FolderScan:
    """Scan data.root and validate that it is a labelled image folder; raises DatasetLayoutError."""
    return validate_scan(read_folder(root))
