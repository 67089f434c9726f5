"""`vitcls-cache list|verify|prune DIR`: what a feature cache directory holds, whether it is sound, and room.

list     every entry: key, size, last use, what it stands for (split, data root, backbone, tap...); the total,
         the entries moved aside as bad (quarantine/) and writers' temporary files. --json for scripts.
verify   the full checksum of every entry; bad ones are moved into quarantine/ (runs then compute them
         again). Exit code 1 when any was bad.
prune    remove entries whose last use is older than --older-than (e.g. 30d, 12h), and/or the least recently
         used ones until the directory fits in --max-size (e.g. 20GB, 500MiB); quarantined entries go first.
         Temporary files of writers that died are removed too. --dry-run shows what would go.
Entries that another process is filling are skipped.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vitcls.cli.common import run_command
from vitcls.errors import ConfigError

_SIZE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
               "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_AGE_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str) -> int:
    """'20GB', '20G', '500MiB', '1.5T', '1000' (bytes) -> bytes; decimal units unless 'i' (KiB, MiB...)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: use e.g. 20GB, 500MiB or 1000000 (bytes)")
    return int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()])


def parse_age(text: str) -> float:
    """'30d', '12h', '90min', '2w', '45s' -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|min|m|h|d|w)\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not an age: use e.g. 30d, 12h, 90min, 2w")
    return float(match.group(1)) * _AGE_UNITS[match.group(2).lower()]


def format_size(num_bytes: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if num_bytes < 1000:
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1000
    return f"{num_bytes:.1f} TB"


def format_age(seconds: float) -> str:
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} d ago"


def stands_for(description: dict) -> str:
    """`split=train backbone=vit_base_patch16_224 ...`: the description's scalar settings, short."""
    return " ".join(f"{k}={v}" for k, v in description.items() if isinstance(v, str | int | float | bool)) or "-"


@dataclass
class Removal:
    kind: str  # "entry" or "quarantined"
    name: str
    size: int
    last_used: float
    why: str
    item: object


def plan_prune(store, now: float, older_than_s: float | None, max_size: int | None) -> list[Removal]:
    """What prune removes: entries (and quarantined ones) last used before now - older_than_s, then, while the
    rest exceeds max_size, quarantined entries and then entries, least recently used first."""
    items = [Removal("quarantined", q.path.name, q.size, q.moved, "", q) for q in store.quarantined()]
    items += [Removal("entry", e.key, e.size, e.last_used, "", e) for e in store.entries()]
    removed = []
    if older_than_s is not None:
        for item in items:
            if item.last_used < now - older_than_s:
                item.why = f"last used {format_age(now - item.last_used)}"
                removed.append(item)
    if max_size is not None:
        kept = sorted((i for i in items if i not in removed), key=lambda i: (i.kind == "entry", i.last_used))
        total = sum(item.size for item in kept)
        for item in kept:
            if total <= max_size:
                break
            item.why = f"over --max-size {format_size(max_size)}, last used {format_age(now - item.last_used)}"
            removed.append(item)
            total -= item.size
    return removed


def open_store(directory: Path):
    from vitcls.data.feature_store import FeatureStore

    if not directory.is_dir():
        raise ConfigError(f"{directory} is not a directory: give the cache directory (feature_cache.dir of a run)")
    return FeatureStore(directory)


def list_entries(args: argparse.Namespace) -> int:
    store = open_store(args.dir)
    now = time.time()
    entries, quarantined, temporaries = store.entries(), store.quarantined(), store.temporaries()
    total = sum(entry.size for entry in entries)
    if args.json:
        print(json.dumps({
            "directory": str(store.directory),
            "total_size": total,
            "entries": [{"key": e.key, "state": e.state, "size": e.size, "last_used": e.last_used,
                         "created": e.created, "description": e.description} for e in entries],
            "quarantine": [{"path": str(q.path), "size": q.size, "moved": q.moved, "reason": q.reason}
                           for q in quarantined],
            "temporaries": [str(path) for path in temporaries],
        }, indent=2, default=str))
        return 0
    header = ("KEY", "SIZE", "LAST USE", "STANDS FOR")
    rows = [(e.key, format_size(e.size), format_age(now - e.last_used),
             ("" if e.state == "complete" else f"({e.state}) ") + stands_for(e.description)) for e in entries]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(3)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[3])
    print(f"{len(entries)} entries, {format_size(total)} in {store.directory}")
    if quarantined:
        print(f"quarantine: {len(quarantined)} bad entries moved aside, {format_size(sum(q.size for q in quarantined))}"
              f" (vitcls-cache prune removes them first)")
    if temporaries:
        size = sum(path.stat().st_size for path in temporaries if path.exists())
        print(f"{len(temporaries)} temporary files of writers, {format_size(size)}")
    return 0


def verify(args: argparse.Namespace) -> int:
    from vitcls.data.feature_store import EntryBusy

    store = open_store(args.dir)
    counts = {"ok": 0, "bad": 0, "outdated": 0, "busy": 0}
    for entry in store.entries():
        try:
            bad = store.verify_entry(entry.key)
        except EntryBusy:
            counts["busy"] += 1
            print(f"busy      {entry.key}  another process is filling it: not checked")
            continue
        if bad is None:
            counts["ok"] += 1
            print(f"ok        {entry.key}  {stands_for(entry.description)}")
        elif bad.outdated:
            counts["outdated"] += 1
            print(f"outdated  {entry.key}  {bad.reason}: removed")
        else:
            counts["bad"] += 1
            print(f"BAD       {entry.key}  {bad.reason}: moved into {store.directory / 'quarantine'}")
    print(", ".join(f"{count} {state}" for state, count in counts.items()))
    return 1 if counts["bad"] else 0


def prune(args: argparse.Namespace) -> int:
    from vitcls.data.feature_store import EntryBusy, remove_quarantined

    if args.older_than is None and args.max_size is None:
        raise ConfigError("vitcls-cache prune: give --older-than AGE and/or --max-size SIZE")
    store = open_store(args.dir)
    plan = plan_prune(store, time.time(), args.older_than, args.max_size)
    verb = "would remove" if args.dry_run else "removed"
    freed = 0
    for item in plan:
        if not args.dry_run:
            try:
                if item.kind == "entry":
                    store.remove(item.name)
                else:
                    remove_quarantined(item.item)
            except EntryBusy:
                print(f"skipped       {item.kind} {item.name}: another process is filling it")
                continue
        freed += item.size
        print(f"{verb}  {item.kind} {item.name}  {format_size(item.size)}  ({item.why})")
    if args.dry_run:
        print(f"{verb} {len(plan)} items, {format_size(freed)}")
    else:
        temporaries = store.remove_temporaries_of_dead_writers()
        print(f"{verb} {len(plan)} items, {format_size(freed)}, and {len(temporaries)} temporary files of writers "
              "that died")
    left = sum(e.size for e in store.entries()) + sum(q.size for q in store.quarantined())
    print(f"{format_size(left - freed if args.dry_run else left)} left in {store.directory}")
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vitcls-cache", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="entries, sizes, last use, what each stands for")
    listing.add_argument("--json", action="store_true", help="print the listing as JSON")
    checking = commands.add_parser("verify", help="full checksums; bad entries moved aside (exit code 1)")
    pruning = commands.add_parser("prune", help="remove entries by age or total size (least recently used first)")
    pruning.add_argument("--older-than", type=parse_age, metavar="AGE", help="last use older than AGE: 30d, 12h")
    pruning.add_argument("--max-size", type=parse_size, metavar="SIZE", help="keep at most SIZE: 20GB, 500MiB")
    pruning.add_argument("--dry-run", action="store_true", help="show what would be removed, remove nothing")
    for command in (listing, checking, pruning):
        command.add_argument("dir", type=Path, help="the cache directory (feature_cache.dir)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    work = {"list": list_entries, "verify": verify, "prune": prune}[args.command]
    return run_command("vitcls-cache", lambda: work(args))


if __name__ == "__main__":
    sys.exit(main())
