"""`vitcls-compare SWEEP_DIR`: which design of a sweep is best on validation, and is it really better.

Jobs that differ only in `seed` form one design. One row per design: its validation metric (the ranking) and
its test acc / f1_macro, each as mean and std over seeds with a 95% interval (bootstrap over images plus
the spread over seeds, never narrower than the Wilson interval of acc), and its test against the best design
(a paired test on the test images): diff_vs_best, p_vs_best_raw, p_vs_best_holm (Holm-corrected over the
designs tested) and vs_best (best, better, worse, not distinguishable, unknown). A verdict line under the
table sums it up. Designs are never ranked by a test metric. Failed and unfinished jobs are listed.
Writes compare.csv, compare.md, compare.json, compare.png and the per-job compare_jobs.csv/.md.
Given a suite directory (python train.py suite=<name>), writes its leaderboard across datasets instead.
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
        default="val/f1_macro",
        help="the validation metric that ranks designs: val/acc, val/f1_macro, val/loss... (default val/f1_macro)",
    )
    parser.add_argument(
        "--allow-test-selection",
        action="store_true",
        help="accept a test/... --metric (selection on test: the output says so)",
    )
    order = parser.add_mutually_exclusive_group()
    order.add_argument(
        "--minimize", dest="minimize", action="store_true", default=None, help="lower is better (the default for loss)"
    )
    order.add_argument("--maximize", dest="minimize", action="store_false", help="higher is better")
    parser.add_argument(
        "--tune",
        action="append",
        default=[],
        metavar="KEY",
        help="a swept setting to treat as a hyperparameter: each design takes its value with the best mean "
        "validation metric (repeatable, e.g. --tune optim.lr --tune head.dropout)",
    )
    parser.add_argument(
        "--x", metavar="KEY", help="draw learning curves along this swept setting (e.g. data.train_per_class)"
    )
    parser.add_argument(
        "--repeat",
        action="append",
        default=[],
        metavar="KEY",
        help="another setting whose values are repetitions of a design, like seed (e.g. data.split_seed)",
    )
    parser.add_argument("--per-job", action="store_true", help="print the table of jobs instead of designs")
    parser.add_argument("--bootstrap", type=int, default=2000, metavar="N", help="bootstrap resamples (default 2000)")
    parser.add_argument(
        "--wandb", action="store_true", help="log the design table and figure to a W&B run in the sweep's group"
    )
    parser.add_argument("--out", type=Path, default=None, help="where to write compare.* (default: SWEEP_DIR)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    from vitcls.suite.board import is_suite, write_suite_leaderboard

    if is_suite(args.sweep_dir):  # a suite directory: its leaderboard across datasets
        board, files = write_suite_leaderboard(args.sweep_dir, resamples=args.bootstrap)
        print(Path(files["markdown"]).read_text(), end="")
        print("\n" + "\n".join(f"wrote {path}" for path in files.values()))
        return
    from vitcls.compare import compare

    text, files = compare(
        args.sweep_dir,
        args.metric,
        args.minimize,
        args.out,
        allow_test_selection=args.allow_test_selection,
        tune=args.tune,
        x=args.x,
        repeat=args.repeat,
        per_job=args.per_job,
        resamples=args.bootstrap,
        wandb=args.wandb,
    )
    print(text, end="")
    print("\n" + "\n".join(f"wrote {path}" for path in files.values()))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    run_command("vitcls-compare", lambda: run(args))


if __name__ == "__main__":
    main()
