"""`vitcls-data check ROOT`: everything in an image folder that would break training or bias the metrics.

Per split and class: image counts, sizes and modes; bad files (unreadable, corrupt, truncated, empty,
too many pixels, symlinks leading outside ROOT); non-image files; exact duplicates (same bytes) within a
split and across splits (leakage between train and test); empty class folders; classes missing from a
split. Exit code 0: ready to train (warnings aside), 1: problems found, 2: ROOT is not an image folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from vitcls.data.folder import SPLIT_ALIASES, DatasetLayoutError, FolderScan, class_differences, read_folder
from vitcls.data.images import DEFAULT_MAX_IMAGE_PIXELS
from vitcls.data.quality import OUTSIDE_ROOT, FileCheck, check_files, duplicate_groups, split_of

ERROR, WARNING = "error", "warning"
SPLIT_ORDER = list(SPLIT_ALIASES)


def _class_stats(checks: list[FileCheck]) -> dict[str, Any]:
    good = [c.info for c in checks if c.ok]
    stats: dict[str, Any] = {"images": len(good), "bad": len(checks) - len(good)}
    if good:
        stats["width"] = [min(i.width for i in good), max(i.width for i in good)]
        stats["height"] = [min(i.height for i in good), max(i.height for i in good)]
        stats["modes"] = dict(sorted(Counter(i.mode for i in good).items()))
    return stats


def _problem(severity: str, kind: str, message: str, paths: list[str] | None = None) -> dict[str, Any]:
    return {"severity": severity, "kind": kind, "message": message, "paths": paths or []}


def check_folder(
    root: str | Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, workers: int | None = None
) -> dict[str, Any]:
    """The full report as a JSON-ready dict; `report["ok"]` is False when training would break or
    the metrics would be biased. Raises DatasetLayoutError when ROOT has no readable layout."""
    scan: FolderScan = read_folder(root)
    checks = {c.path: c for c in check_files(scan.all_files(), max_pixels, workers)}
    problems: list[dict[str, Any]] = []
    splits: dict[str, Any] = {}
    bad_files = []
    for split, folders in sorted(scan.splits.items(), key=lambda item: SPLIT_ORDER.index(item[0])):
        classes = {}
        for name in folders.class_names:
            class_checks = [checks[path] for path in folders.files[name]]
            classes[name] = _class_stats(class_checks)
            bad_files += [
                {"path": c.path, "split": split, "class": name, "reason": c.reason}
                for c in class_checks
                if not c.ok
            ]
            if not classes[name]["images"]:
                problems.append(
                    _problem(
                        ERROR,
                        "empty_class",
                        f"{split}: class folder {name!r} has no usable "
                        "image (it cannot be learned or scored)",
                        [str(folders.directory / name)],
                    )
                )
        splits[split] = {
            "directory": str(folders.directory),
            "classes": classes,
            "non_image_files": folders.ignored,
        }
        if folders.ignored:
            problems.append(
                _problem(
                    WARNING,
                    "non_image_files",
                    f"{split}: {len(folders.ignored)} non-image file(s) ignored",
                    folders.ignored,
                )
            )
    bad_files += [
        {"path": path, "split": None, "class": None, "reason": OUTSIDE_ROOT} for path in scan.outside_root
    ]
    for bad in bad_files:
        problems.append(_problem(ERROR, "bad_file", f"{bad['path']}: {bad['reason']}", [bad["path"]]))

    train_classes = scan.class_names
    for split, folders in scan.splits.items():
        missing, extra = class_differences(train_classes, folders.class_names)
        if missing or extra:
            problems.append(
                _problem(
                    ERROR,
                    "class_mismatch",
                    f"{split}: classes missing compared to train: "
                    f"{missing or 'none'}; classes not in train: {extra or 'none'}",
                )
            )
    if len(train_classes) < 2:
        problems.append(
            _problem(
                ERROR,
                "too_few_classes",
                f"train has {len(train_classes)} class folder(s); classification needs at least two",
            )
        )

    split_by_path = split_of(scan)
    within, across = [], []
    for group in duplicate_groups(list(checks.values())):
        (across if len({split_by_path[p] for p in group}) > 1 else within).append(group)
    for group in across:
        problems.append(
            _problem(
                ERROR,
                "leakage",
                "identical images in "
                f"{' and '.join(sorted({split_by_path[p] for p in group}))}: " + " == ".join(group),
                group,
            )
        )
    for group in within:
        problems.append(
            _problem(
                WARNING,
                "duplicate",
                f"identical images within {split_by_path[group[0]]}: " + " == ".join(group),
                group,
            )
        )

    return {
        "root": str(scan.root.resolve()),
        "ok": not any(p["severity"] == ERROR for p in problems),
        "max_image_pixels": max_pixels,
        "class_names": train_classes,
        "splits": splits,
        "bad_files": bad_files,
        "symlinks_outside_root": scan.outside_root,
        "empty_classes": scan.empty_classes(),
        "duplicates_within_split": within,
        "duplicates_across_splits": across,
        "problems": problems,
    }


def _range(values: list[int] | None) -> str:
    if not values:
        return "-"
    return str(values[0]) if values[0] == values[1] else f"{values[0]}..{values[1]}"


def format_report(report: dict[str, Any]) -> str:
    lines = [f"data root: {report['root']}"]
    for split, info in report["splits"].items():
        lines.append(f"\n{split}  ({info['directory']})")
        lines.append(f"  {'class':<30} {'images':>7} {'bad':>5}  {'width':>11} {'height':>11}  modes")
        for name, stats in info["classes"].items():
            modes = ", ".join(f"{mode} {count}" for mode, count in stats.get("modes", {}).items()) or "-"
            lines.append(
                f"  {name[:30]!s:<30} {stats['images']:>7} {stats['bad']:>5}  "
                f"{_range(stats.get('width')):>11} {_range(stats.get('height')):>11}  {modes}"
            )
    problems = report["problems"]
    errors = [p for p in problems if p["severity"] == ERROR]
    lines.append("")
    for problem in problems:
        lines.append(f"{problem['severity'].upper():7} [{problem['kind']}] {problem['message']}")
    if errors:
        lines.append(
            f"\n{len(errors)} problem(s) would break training or bias the metrics. Fix or remove the "
            "files named above, or train with data.on_bad_image=skip to leave bad files out."
        )
    else:
        lines.append("\nready to train" + (f" ({len(problems)} warning(s))" if problems else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vitcls-data", description="Inspect an image folder before training."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check",
        help="report bad files, duplicates, leakage and class problems",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("root", type=Path, help="the image folder (same layouts as data.root)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        help=f"decoded pixel cap per image, as data.max_image_pixels (default {DEFAULT_MAX_IMAGE_PIXELS})",
    )
    check.add_argument(
        "--workers", type=int, default=None, help="decoding threads (default: CPU count, at most 8)"
    )
    args = parser.parse_args(argv)
    if args.max_pixels <= 0:
        parser.error("--max-pixels must be a positive integer")
    try:
        report = check_folder(args.root, args.max_pixels, args.workers)
    except DatasetLayoutError as error:
        if args.json:
            print(json.dumps({"root": str(args.root), "ok": False, "layout_error": str(error)}, indent=2))
        else:
            print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
