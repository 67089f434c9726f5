"""`vitcls-data check ROOT`: everything in an image folder that would break training or bias the metrics.
`vitcls-data demo ROOT`: write the SYNTHETIC fruit-shapes demo folder (what `experiment=demo` trains on).

check:
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
    demo = commands.add_parser(
        "demo", help="write the SYNTHETIC fruit-shapes demo image folder (train/ and test/) to ROOT",
        description="Write the SYNTHETIC fruit-shapes demo image folder (train/ and test/) to ROOT: procedurally "
        "drawn shapes for trying the pipeline offline; they say nothing about real photos.",
    )
    demo.add_argument("root", type=Path, help="folder to create (must not exist, be empty, or hold the same demo data)")
    demo.add_argument("--train-per-class", type=int, default=60)
    demo.add_argument("--test-per-class", type=int, default=20)
    demo.add_argument("--image-size", type=int, default=64)
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "check" and args.max_pixels <= 0:
        parser.error("--max-pixels must be a positive integer")
    return args


def write_demo(args: argparse.Namespace) -> int:
    from vitcls.data.demo import CLASS_NAMES, SyntheticFruitShapes
    from vitcls.errors import USER_ERROR_EXIT_CODE

    try:
        generator = SyntheticFruitShapes(args.train_per_class, args.test_per_class, args.image_size, args.seed)
        generator.prepare(args.root)
    except ValueError as error:
        print(f"vitcls-data demo: {error}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    total = len(CLASS_NAMES) * (generator.train_per_class + generator.test_per_class)
    print(f"Synthetic demo data ({len(CLASS_NAMES)} classes: {', '.join(CLASS_NAMES)}; {total} images of "
          f"{generator.image_size}x{generator.image_size}) is ready at {args.root.expanduser().resolve()}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        return write_demo(args)
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
