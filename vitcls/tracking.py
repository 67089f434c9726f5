"""Experiment trackers that never block or fail a run."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def _wandb_credentials_available() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def create_wandb_logger(offline: bool | None = None, **kwargs):
    """A Lightning WandbLogger that goes offline when no API key is configured.

    `offline=None` decides automatically: WANDB_MODE=offline/disabled is respected, and without
    credentials the run is written offline (sync it later with `wandb sync`).
    """
    from lightning.pytorch.loggers import WandbLogger

    if offline is None:
        mode = os.environ.get("WANDB_MODE", "")
        offline = mode in ("offline", "dryrun", "disabled") or not _wandb_credentials_available()
        if offline and not mode:
            log.warning("no W&B API key found: logging offline; upload later with `wandb sync`")
    return WandbLogger(offline=offline, **kwargs)
