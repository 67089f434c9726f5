"""What the argparse console scripts share: logging to stderr, user errors as one line, `--import`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

USER_ERROR_EXIT_CODE = 2


def add_import_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import a Python module first, e.g. one that defines a custom head (repeatable)",
    )


def import_modules(names: list[str]) -> None:
    from vitcls.models.heads import import_head_modules

    import_head_modules(names, "--import")


def run_command(prog: str, work: Callable[[], Any]) -> Any:
    """Call `work()`; an error the user can fix (VitclsError) becomes one line on stderr and exit code 2."""
    from vitcls.errors import VitclsError

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return work()
    except VitclsError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)
