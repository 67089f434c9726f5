"""Checking every image of a folder scan before training: decodable, not too large, not duplicated.

`check_files` decodes each file once (in threads: PIL releases the GIL while decoding) and hashes
its bytes. `apply_bad_image_policy` turns the findings into the `data.on_bad_image` behaviour:
`error` stops with the full list, `skip` leaves the files (and classes left without images) out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from vitcls.data.folder import DatasetLayoutError, FolderScan
from vitcls.data.images import BadImageError, ImageInfo, decode_image
from vitcls.errors import ConfigError
from vitcls.io import write_json_atomic

log = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("error", "skip")
OUTSIDE_ROOT = "symbolic link that leads outside data.root"


class BadImagesError(DatasetLayoutError):
    """data.on_bad_image=error and the scan found bad files or empty class folders."""


@dataclass(frozen=True)
class FileCheck:
    path: str
    num_bytes: int
    digest: str | None = None  # of the file's bytes, for finding exact duplicates
    info: ImageInfo | None = None
    reason: str | None = None  # why the file is bad; None when it decoded

    @property
    def ok(self) -> bool:
        return self.reason is None


def check_file(path: str, max_pixels: int) -> FileCheck:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return FileCheck(path, 0, reason="file is missing or not a regular file")
    except OSError as error:
        return FileCheck(path, 0, reason=f"cannot read ({error.strerror or error})")
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    try:
        _, info = decode_image(path, data, max_pixels)
    except BadImageError as error:
        return FileCheck(path, len(data), digest, reason=error.reason)
    return FileCheck(path, len(data), digest, info)


def check_files(
    paths: list[str], max_pixels: int, workers: int | None = None, memo: CheckMemo | None = None
) -> list[FileCheck]:
    """One FileCheck per path, in order; with a memo, only files new or changed since its last scan are read."""
    workers = workers or min(8, os.cpu_count() or 1)

    def check(path: str) -> tuple[FileCheck, tuple[int, int] | None, bool]:
        stat = file_stat(path)  # taken before reading: a file rewritten meanwhile is checked again next time
        remembered = memo.get(path, stat, max_pixels) if memo is not None else None
        return remembered or check_file(path, max_pixels), stat, remembered is not None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(check, paths))
    if memo is not None and not (all(known for *_, known in results) and len(results) == len(memo.entries)):
        memo.save([(result, stat) for result, stat, _ in results], max_pixels)
    return [result for result, *_ in results]


def file_stat(path: str) -> tuple[int, int] | None:
    """(size, mtime_ns), or None for a file that cannot be stat'ed."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


class CheckMemo:
    """FileChecks of an earlier scan in one JSON file, reused while a file's size and mtime stay the same.

    For sweeps over large folders (every run would decode every image again). The same assumption as
    make, rsync and the feature cache: a rewritten file changes its mtime. Writes are atomic; of two
    runs saving at once, the last one wins.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self.entries: dict = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.entries = {}

    @classmethod
    def in_directory(cls, directory: str | os.PathLike, root: Path) -> CheckMemo:
        """The memo of the folder `root` in `directory` (one file per folder)."""
        name = hashlib.sha256(str(root).encode()).hexdigest()[:16]
        return cls(Path(directory).expanduser() / f"image_checks_{name}.json")

    def get(self, path: str, stat: tuple[int, int] | None, max_pixels: int) -> FileCheck | None:
        entry = self.entries.get(path)
        if stat is None or not entry or entry["stat"] != list(stat) or entry["max_pixels"] != max_pixels:
            return None
        info = ImageInfo(**entry["info"]) if entry["info"] else None
        return FileCheck(path, entry["num_bytes"], entry["digest"], info, entry["reason"])

    def save(self, results: list[tuple[FileCheck, tuple[int, int] | None]], max_pixels: int) -> None:
        self.entries = {
            check.path: {
                "stat": list(stat),
                "max_pixels": max_pixels,
                "num_bytes": check.num_bytes,
                "digest": check.digest,
                "info": check.info and vars(check.info),
                "reason": check.reason,
            }
            for check, stat in results
            if stat is not None
        }
        try:
            write_json_atomic(self.path, self.entries)
        except OSError as error:  # a read-only cache directory costs time, not the run
            log.warning("cannot remember the image checks in %s: %s", self.path, error)


def duplicate_groups(checks: list[FileCheck]) -> list[list[str]]:
    """Paths with byte-identical content, grouped (only groups of two or more)."""
    by_digest: dict[str, list[str]] = defaultdict(list)
    for check in checks:
        if check.ok:
            by_digest[check.digest].append(check.path)
    return sorted(group for group in by_digest.values() if len(group) > 1)


def split_of(scan: FolderScan) -> dict[str, str]:
    return {
        path: split
        for split, folders in scan.splits.items()
        for files in folders.files.values()
        for path in files
    }


def leaked_duplicates(scan: FolderScan, checks: list[FileCheck]) -> list[list[str]]:
    """Duplicate groups that span two splits: the same image in train and test (or val) inflates metrics."""
    splits = split_of(scan)
    return [group for group in duplicate_groups(checks) if len({splits[path] for path in group}) > 1]


def _listing(bad: dict[str, str]) -> str:
    return "\n".join(f"  {path}: {reason}" for path, reason in sorted(bad.items()))


def apply_bad_image_policy(scan: FolderScan, checks: list[FileCheck], policy: str) -> dict[str, str]:
    """Apply data.on_bad_image to the scan in place; returns {path: reason} of the files left out."""
    if policy not in BAD_IMAGE_POLICIES:
        raise ConfigError(f"data.on_bad_image must be one of {list(BAD_IMAGE_POLICIES)}, got {policy!r}")
    bad = {check.path: check.reason for check in checks if not check.ok}
    bad.update({path: OUTSIDE_ROOT for path in scan.outside_root})
    scan.drop_files(set(bad))
    empty = scan.empty_classes()
    if policy == "error" and (bad or empty):
        parts = []
        if bad:
            parts.append(f"{len(bad)} bad image file(s):\n{_listing(bad)}")
        if empty:
            parts.append(
                "class folders without any usable image: "
                + "; ".join(f"{split}: {names}" for split, names in empty.items())
            )
        raise BadImagesError(
            f"data.root {scan.root} is not ready for training.\n"
            + "\n".join(parts)
            + "\nFix or remove these files and folders, or pass data.on_bad_image=skip to leave them out. "
            f"`python -m vitcls.data check {scan.root}` reports everything."
        )
    for path, reason in sorted(bad.items()):
        log.warning("skipping bad image %s: %s", path, reason)
    if empty:
        names = {name for names in empty.values() for name in names}
        log.warning(
            "leaving out class folders without usable images (they cannot be learned or scored): %s",
            "; ".join(f"{split}: {names}" for split, names in empty.items()),
        )
        scan.drop_classes(names)
    return bad


def warn_about_leakage(scan: FolderScan, checks: list[FileCheck]) -> list[list[str]]:
    leaks = leaked_duplicates(scan, checks)
    if leaks:
        shown = "\n".join("  " + " == ".join(group) for group in leaks[:20])
        more = f"\n  ... and {len(leaks) - 20} more" if len(leaks) > 20 else ""
        log.warning(
            "%d image(s) appear in more than one split (identical files): test/val metrics are "
            "inflated by images the model trained on.\n%s%s",
            len(leaks),
            shown,
            more,
        )
    return leaks
