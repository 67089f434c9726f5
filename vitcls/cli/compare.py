"""`vitcls-compare SWEEP_DIR`: the jobs of a sweep side by side, without W&B.

Reads every job directory (one with `summary.json`, `FAILED.json` or Hydra's `.hydra/overrides.yaml`)
under SWEEP_DIR, finds the settings that differ between jobs, sorts the jobs by a metric, prints a
markdown table and writes `compare.md`, `compare.csv` and `compare.png` (the metric per job, best marked).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from vitcls.cli.common import run_command


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vitcls-compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep_dir", type=Path, help="a multirun directory (outputs/train/multiruns/<date>)")
    parser.add_argument(
        "--metric",
        default="f1_macro",
        help="test metric of summary.json to sort by: acc, f1_macro, loss... (default f1_macro)",
    )
    order = parser.add_mutually_exclusive_group()
    order.add_argument(
        "--minimize", dest="minimize", action="store_true", default=None, help="lower is better (the default for loss)"
    )
    order.add_argument("--maximize", dest="minimize", action="store_false", help="higher is better")
    parser.add_argument("--out", type=Path, default=None, help="where to write compare.* (default: SWEEP_DIR)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    from vitcls.compare import compare

    table, files = compare(args.sweep_dir, args.metric, args.minimize, args.out)
    print(table, end="")
    print("\n" + "\n".join(f"wrote {path}" for path in files.values()))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    run_command("vitcls-compare", lambda: run(args))


if __name__ == "__main__":
    main()
