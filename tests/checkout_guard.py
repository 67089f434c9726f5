"""Tests write only under pytest's tmp_path: the session fails if it left a new file or folder in the checkout,
ignored ones included (a run directory under outputs/, a build/ folder, a wandb/ folder ...)."""

from __future__ import annotations

import subprocess
from pathlib import Path, PurePosixPath

# Written by the tools themselves (pytest, Python, ruff) and the virtual environment.
TOOL_PATHS = {".pytest_cache", "__pycache__", ".ruff_cache", ".venv"}


def untracked_paths(root: Path) -> set[str] | None:
    """Every untracked or ignored file under `root` outside TOOL_PATHS; None where `root` is no git checkout."""
    excluded = [f":(exclude,glob){pattern}" for name in sorted(TOOL_PATHS) for pattern in (name, f"**/{name}")]
    try:
        result = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain", "-z", "--ignored", "--untracked-files=all",
             "--", ".", *excluded],
            cwd=root, capture_output=True, text=True, timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    paths = {entry[3:] for entry in result.stdout.split("\0") if entry[:3] in ("?? ", "!! ")}
    return {path for path in paths if not TOOL_PATHS & set(PurePosixPath(path).parts)}


class CheckoutGuard:
    def __init__(self, root: Path):
        self.root = root
        self.before: set[str] | None = None
        self.new: list[str] = []

    def start(self) -> None:
        self.before = untracked_paths(self.root)

    def finish(self) -> list[str]:
        """The paths that appeared during the session."""
        after = untracked_paths(self.root)
        if self.before is not None and after is not None:
            self.new = sorted(after - self.before)
        return self.new

    def report(self) -> str:
        shown = "\n".join(f"  {path}" for path in self.new[:50])
        more = f"\n  ... and {len(self.new) - 50} more" if len(self.new) > 50 else ""
        return (f"the tests left {len(self.new)} new file(s) in the checkout {self.root} (tests must write only "
                f"under tmp_path: point hydra.run.dir, hydra.sweep.dir or the output at it):\n{shown}{more}")
