"""What the argparse console scripts share: logging to stderr, user errors as one line, `--imports` (the Hydra
commands spell it `imports=[...]`)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

from vitcls.errors import USER_ERROR_EXIT_CODE


def add_import_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--imports",
        nargs="+",
        action="extend",
        default=[],
        metavar="MODULE",
        help="Python modules to import first: those that define custom heads, adapters or loggers",
    )


def import_modules(names: list[str]) -> None:
    from vitcls.config import import_modules as import_named

    import_named(names, "--imports")


def run_command(prog: str, work: Callable[[], Any]) -> Any:
    """Call `work()`; an error the user can fix (VitclsError) becomes one line on stderr and exit code 2."""
    from vitcls.errors import VitclsError

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return work()
    except VitclsError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)
