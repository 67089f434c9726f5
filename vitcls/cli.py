"""Hydra entry points (`python train.py`, `python eval.py`, and the vitcls-train/vitcls-eval scripts)."""

from __future__ import annotations

import functools
import logging
import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from vitcls.errors import VitclsError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
log = logging.getLogger("vitcls")


class _DropAdvertisements(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip: For seamless" not in str(record.msg)


def route_lightning_logs_through_hydra() -> None:
    """Lightning adds its own console handler; under Hydra that prints every line twice."""
    import lightning  # noqa: F401  (creates the handler we remove)

    logging.getLogger("lightning").handlers.clear()
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdvertisements())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def user_errors_without_traceback(main):
    """Print errors the user can fix (bad folder, bad setting) as one message and exit with code 2."""

    @functools.wraps(main)
    def wrapper(cfg: DictConfig):
        route_lightning_logs_through_hydra()
        try:
            return main(cfg)
        except VitclsError as error:
            log.error("%s", error)
            sys.exit(2)
        except MissingMandatoryValue as error:
            key = error.full_key
            hint = " (the image folder to train on; or try experiment=demo)" if key == "data.root" else ""
            log.error("missing setting %s%s: pass %s=VALUE on the command line", key, hint, key)
            sys.exit(2)

    return wrapper


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
@user_errors_without_traceback
def train(cfg: DictConfig) -> float | None:
    from vitcls.train import run

    summary = run(cfg)
    # Returned to Hydra sweepers that optimise a value.
    return summary["test"].get("f1_macro")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
@user_errors_without_traceback
def evaluate(cfg: DictConfig) -> float | None:
    from vitcls.evaluate import run

    return run(cfg)["test"].get("f1_macro")
