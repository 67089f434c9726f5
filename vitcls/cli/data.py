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
from pathlib import Path

from vitcls.data.images import DEFAULT_MAX_IMAGE_PIXELS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vitcls-data", description="Inspect an image folder before training.")
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
    check.add_argument("--workers", type=int, default=None, help="decoding threads (default: CPU count, at most 8)")
    args = parser.parse_args(argv)
    if args.max_pixels <= 0:
        parser.error("--max-pixels must be a positive integer")
    return args


def run(args: argparse.Namespace) -> int:
    from vitcls.data.check import check_folder, format_report
    from vitcls.data.folder import DatasetLayoutError

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


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
