"""Checking every image of a folder scan before training: decodable, not too large, not duplicated.

`check_files` decodes each file once (in threads: PIL releases the GIL while decoding) and hashes
its bytes. `apply_bad_image_policy` turns the findings into the `data.on_bad_image` behaviour:
`error` stops with the full list, `skip` leaves the files (and classes left without images) out.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from vitcls.data.folder import DatasetLayoutError, FolderScan
from vitcls.data.images import BadImageError, ImageInfo, decode_image
from vitcls.errors import ConfigError

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


def check_files(paths: list[str], max_pixels: int, workers: int | None = None) -> list[FileCheck]:
    """One FileCheck per path, in order."""
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda path: check_file(path, max_pixels), paths))


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
