"""Hydra entry points (`python train.py`, `python eval.py`, and the vitcls-train/vitcls-eval scripts)."""

from __future__ import annotations

import functools
import logging
import signal
import sys
import traceback
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from vitcls.errors import VitclsError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
log = logging.getLogger("vitcls")
FAILURE_FILE = "FAILED.json"


class _DropAdvertisements(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip: For seamless" not in str(record.msg)


def route_lightning_logs_through_hydra() -> None:
    """Lightning adds its own console handler; under Hydra that prints every line twice."""
    import lightning  # noqa: F401  (creates the handler we remove)

    logging.getLogger("lightning").handlers.clear()
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdvertisements())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _user_error_message(error: Exception) -> str | None:
    """One line for errors the user can fix (bad folder, bad setting), None for anything else."""
    if isinstance(error, VitclsError):
        return str(error)
    if isinstance(error, MissingMandatoryValue):
        key = error.full_key
        hint = " (the image folder to train on; or try experiment=demo)" if key == "data.root" else ""
        return f"missing setting {key}{hint}: pass {key}=VALUE on the command line"
    return None


SIGTERM_EXIT_CODE = 128 + signal.SIGTERM


def record_failure(run_dir: Path, error: Exception) -> Path:
    """<run_dir>/FAILED.json: what went wrong, for `vitcls-compare` and for whoever reads the sweep."""
    from vitcls.reports import write_json_atomic

    return write_json_atomic(
        run_dir / FAILURE_FILE,
        {
            "error_type": type(error).__name__,
            "message": str(error),
            "overrides": list(HydraConfig.get().overrides.task),
            "traceback": traceback.format_exception(type(error), error, error.__traceback__),
        },
    )


def failures_recorded(main):
    """Run one job: finish its W&B run in every case and record a failure in its run directory.

    A failed job of a multirun is logged and skipped when `continue_on_failure` is on (the default),
    so the remaining jobs still run. A single run exits non-zero: code 2 with one line for errors
    the user can fix, the traceback otherwise.
    """

    @functools.wraps(main)
    def wrapper(cfg: DictConfig):
        route_lightning_logs_through_hydra()
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        from vitcls.tracking import finish_wandb

        run_dir = Path(HydraConfig.get().runtime.output_dir)
        try:
            result = main(cfg)
        except SIGTERMException:
            # Lightning stops on SIGTERM with a SystemExit of status 0; a preempted job must not look finished
            # to the scheduler or the sweep, so exit as a process killed by SIGTERM would (the whole sweep stops).
            finish_wandb(exit_code=SIGTERM_EXIT_CODE)
            log.warning(
                "stopped by SIGTERM; checkpoints/interrupted.ckpt holds the state: resume with "
                "ckpt_path=last hydra.run.dir=%s", run_dir
            )
            sys.exit(SIGTERM_EXIT_CODE)
        except Exception as error:
            finish_wandb(exit_code=1)
            record_failure(run_dir, error)
            message = _user_error_message(error)
            if _in_multirun() and cfg.get("continue_on_failure", True):
                if message is None:
                    log.exception("job failed; continuing with the next job (continue_on_failure=true)")
                else:
                    log.error("job failed: %s; continuing with the next job", message)
                return None
            if message is None:
                raise
            log.error("%s", message)
            sys.exit(2)
        finish_wandb(exit_code=0)
        (run_dir / FAILURE_FILE).unlink(missing_ok=True)  # an earlier attempt in this run directory
        return result

    return wrapper


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
@failures_recorded
def train(cfg: DictConfig) -> float | None:
    from vitcls.train import run

    # Hydra sweepers that optimise a value get the monitored validation score, never a test metric.
    return run(cfg)["best_val_score"]


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
@failures_recorded
def evaluate(cfg: DictConfig) -> float | None:
    from vitcls.evaluate import run

    return run(cfg)["test"].get("f1_macro")
