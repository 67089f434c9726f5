"""Everything in an image folder that would break training or bias the metrics (`vitcls-data check ROOT`).

Per split and class: image counts, sizes and modes; bad files (unreadable, corrupt, truncated, empty,
too many pixels, symlinks leading outside ROOT); non-image files; exact duplicates (same bytes) within a
split and across splits (leakage between train and test); empty class folders; classes missing from a
split. Exit code 0: ready to train (warnings aside), 1: problems found, 2: ROOT is not an image folder.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from vitcls.data.folder import SPLIT_ALIASES, FolderScan, class_differences, read_folder
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


def _split_report(split: str, folders, checks: dict[str, FileCheck]) -> tuple[dict, list[dict], list[dict]]:
    """(the split's entry of the report, its bad files, its problems)."""
    classes, bad_files, problems = {}, [], []
    for name in folders.class_names:
        class_checks = [checks[path] for path in folders.files[name]]
        classes[name] = _class_stats(class_checks)
        bad_files += [
            {"path": c.path, "split": split, "class": name, "reason": c.reason} for c in class_checks if not c.ok
        ]
        if not classes[name]["images"]:
            problems.append(_problem(
                ERROR, "empty_class",
                f"{split}: class folder {name!r} has no usable image (it cannot be learned or scored)",
                [str(folders.directory / name)],
            ))
    if folders.ignored:
        problems.append(_problem(
            WARNING, "non_image_files", f"{split}: {len(folders.ignored)} non-image file(s) ignored", folders.ignored
        ))
    entry = {"directory": str(folders.directory), "classes": classes, "non_image_files": folders.ignored}
    return entry, bad_files, problems


def _class_problems(scan: FolderScan) -> list[dict]:
    """Classes that differ between splits, and too few classes to classify."""
    problems = []
    for split, folders in scan.splits.items():
        missing, extra = class_differences(scan.class_names, folders.class_names)
        if missing or extra:
            problems.append(_problem(
                ERROR, "class_mismatch",
                f"{split}: classes missing compared to train: {missing or 'none'}; classes not in train: "
                f"{extra or 'none'}",
            ))
    if len(scan.class_names) < 2:
        problems.append(_problem(
            ERROR, "too_few_classes",
            f"train has {len(scan.class_names)} class folder(s); classification needs at least two",
        ))
    return problems


def _duplicates(scan: FolderScan, checks: dict[str, FileCheck]) -> tuple[list, list, list[dict]]:
    """(groups of identical files within a split, across splits (leakage), their problems)."""
    split_by_path = split_of(scan)
    within, across = [], []
    for group in duplicate_groups(list(checks.values())):
        (across if len({split_by_path[p] for p in group}) > 1 else within).append(group)
    problems = [
        _problem(
            ERROR, "leakage",
            f"identical images in {' and '.join(sorted({split_by_path[p] for p in group}))}: " + " == ".join(group),
            group,
        )
        for group in across
    ]
    problems += [
        _problem(WARNING, "duplicate", f"identical images within {split_by_path[group[0]]}: " + " == ".join(group), group)
        for group in within
    ]
    return within, across, problems


def check_folder(
    root: str | Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, workers: int | None = None
) -> dict[str, Any]:
    """The full report as a JSON-ready dict; `report["ok"]` is False when training would break or
    the metrics would be biased. Raises DatasetLayoutError when ROOT has no readable layout."""
    scan: FolderScan = read_folder(root)
    checks = {c.path: c for c in check_files(scan.all_files(), max_pixels, workers)}
    splits, bad_files, problems = {}, [], []
    for split, folders in sorted(scan.splits.items(), key=lambda item: SPLIT_ORDER.index(item[0])):
        splits[split], split_bad, split_problems = _split_report(split, folders, checks)
        bad_files += split_bad
        problems += split_problems
    bad_files += [{"path": path, "split": None, "class": None, "reason": OUTSIDE_ROOT} for path in scan.outside_root]
    problems += [_problem(ERROR, "bad_file", f"{bad['path']}: {bad['reason']}", [bad["path"]]) for bad in bad_files]
    problems += _class_problems(scan)
    within, across, duplicate_problems = _duplicates(scan, checks)
    problems += duplicate_problems
    return {
        "root": str(scan.root.resolve()),
        "ok": not any(p["severity"] == ERROR for p in problems),
        "max_image_pixels": max_pixels,
        "class_names": scan.class_names,
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
