"""timm, imported with wandb hidden.

timm.utils (imported by timm.data and timm.models) tries `import wandb` for timm's own training script, which
costs about half a second of every process's start-up. vitcls never logs through timm (its W&B logger imports
wandb itself), so the first import of timm hides wandb; a later `import wandb` works as usual.
"""

from __future__ import annotations

import sys


def import_timm_without_wandb() -> None:
    if "timm" not in sys.modules and "wandb" not in sys.modules:
        sys.modules["wandb"] = None  # type: ignore[assignment]
        try:
            import timm  # noqa: F401
        finally:
            del sys.modules["wandb"]
