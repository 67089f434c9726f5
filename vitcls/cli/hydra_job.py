"""What every Hydra entry point (`train.py`, `eval.py`) runs its job in.

`hydra_entry_point(config_name)` turns `run(cfg)` into a console script: configs from `conf/`, Lightning's
log lines routed through Hydra's, result loggers (W&B) finished in every case, a failure recorded in the run directory
(`FAILED.json`), one clear line and exit code 2 for errors the user can fix, and exit code 143 after SIGTERM.
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from vitcls.errors import USER_ERROR_EXIT_CODE, ConfigError, VitclsError

log = logging.getLogger("vitcls")
SIGTERM_EXIT_CODE = 128 + signal.SIGTERM
CTRL_C_EXIT_CODE = 128 + signal.SIGINT


class _DropAdvertisements(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip: For seamless" not in str(record.msg)


def route_lightning_logs_through_hydra() -> None:
    """Lightning adds its own console handler; under Hydra that prints every line twice."""
    import lightning  # noqa: F401  (creates the handler we remove)

    logging.getLogger("lightning").handlers.clear()
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdvertisements())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def check_sweep_has_multirun() -> None:
    """A config of the `sweep` group lists jobs for Hydra's sweeper: without -m Hydra would run one default job."""
    from hydra.core.hydra_config import HydraConfig

    from vitcls.config import in_multirun

    sweep = HydraConfig.get().runtime.choices.get("sweep")
    if sweep and not in_multirun():
        raise ConfigError(
            f"sweep={sweep} runs a sweep of jobs: add -m (python train.py -m sweep={sweep} ...); without it "
            "Hydra would run a single default job"
        )


def _user_error_message(error: Exception) -> str | None:
    """One line for errors the user can fix (bad folder, bad setting), None for anything else."""
    if isinstance(error, VitclsError):
        return str(error)
    if isinstance(error, MissingMandatoryValue):
        key = error.full_key
        hint = " (the image folder to train on; or try experiment=demo)" if key == "data.root" else ""
        return f"missing setting {key}{hint}: pass {key}=VALUE on the command line"
    return None


def run_job(run: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run one job: end its result loggers' runs in every case and record a failure in its run directory.

    A failed job of a multirun is logged and skipped when `continue_on_failure` is on (the default), so the
    remaining jobs still run. A single run exits non-zero: code 2 with one line for errors the user can fix,
    the traceback otherwise. A run directory that holds another run is refused before anything is written
    into it: no FAILED.json there, and a multirun stops (exit code 2), as every job would be refused.
    """
    from hydra.core.hydra_config import HydraConfig
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from vitcls.callbacks.ctrl_c import ctrl_c_received
    from vitcls.config import in_multirun
    from vitcls.loggers import finish_runs
    from vitcls.run.layout import clear_failure, record_failure
    from vitcls.run.plan import JobSkipped, RunDirInUse, resume_hint

    route_lightning_logs_through_hydra()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    sweep_dir = Path(HydraConfig.get().sweep.dir) if in_multirun() else None
    try:
        check_sweep_has_multirun()
        result = run(cfg)
    except JobSkipped as skipped:
        log.info("%s: %s", run_dir, skipped)
        return None
    except (SIGTERMException, KeyboardInterrupt) as stop:
        # A stopped job must not look finished to the scheduler or the sweep: exit as a process killed by the
        # signal would (the whole sweep stops), and say how to go on.
        by_ctrl_c = isinstance(stop, KeyboardInterrupt) or ctrl_c_received()
        code = CTRL_C_EXIT_CODE if by_ctrl_c else SIGTERM_EXIT_CODE
        finish_runs(exit_code=code)
        log.warning("stopped by %s; %s", "Ctrl+C" if by_ctrl_c else "SIGTERM", resume_hint(run_dir, sweep_dir))
        sys.exit(code)
    except RunDirInUse as refused:
        log.error("%s", refused)
        sys.exit(USER_ERROR_EXIT_CODE)
    except Exception as error:
        finish_runs(exit_code=1)
        record_failure(run_dir, error, HydraConfig.get().overrides.task)
        message = _user_error_message(error)
        if in_multirun() and cfg.get("continue_on_failure", True):
            if message is None:
                log.exception("job failed; continuing with the next job (continue_on_failure=true)")
            else:
                log.error("job failed: %s; continuing with the next job", message)
            return None
        if message is None:
            raise
        log.error("%s", message)
        sys.exit(USER_ERROR_EXIT_CODE)
    finish_runs(exit_code=0)
    clear_failure(run_dir)
    return result


# Hydra sweepers that are plugins: option -> (module, the vitcls extra that installs it)
SWEEPER_PLUGINS = {"optuna": ("hydra_plugins.hydra_optuna_sweeper", "optuna")}


def sweeper_asked_for(argv: list[str], conf_dir: Path) -> str | None:
    """The sweeper option the command line picks: `hydra/sweeper=X`, or the one a `sweep=NAME` config overrides."""
    import yaml

    for arg in argv:
        key, _, value = arg.lstrip("+").partition("=")
        if key == "hydra/sweeper":
            return value
    for arg in argv:
        key, _, value = arg.partition("=")
        sweep_file = conf_dir / "sweep" / f"{value}.yaml"
        if key == "sweep" and sweep_file.is_file():
            for entry in yaml.safe_load(sweep_file.read_text()).get("defaults") or []:
                if isinstance(entry, dict) and "override /hydra/sweeper" in entry:
                    return entry["override /hydra/sweeper"]
    return None


def check_sweeper_plugin(argv: list[str], conf_dir: Path) -> None:
    """A sweeper plugin that is not installed: one line saying what to install, instead of Hydra's
    'Could not find hydra/sweeper/...'."""
    import importlib.util

    sweeper = sweeper_asked_for(argv, conf_dir)
    if sweeper in SWEEPER_PLUGINS:
        module, extra = SWEEPER_PLUGINS[sweeper]
        if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"the {sweeper} sweeper is a Hydra plugin that is not installed: pip install 'vitcls[{extra}]' "
                f"(or pip install -e '.[{extra}]' in a checkout of vitcls)"
            )


def hydra_entry_point(config_name: str, run: Callable[[DictConfig], Any]) -> Callable[[], Any]:
    """A console script that composes `conf/<config_name>.yaml` with the command line and runs `run(cfg)`."""
    import hydra

    # Nothing heavy (torch, timm, Lightning) before the job starts: --help and a config that does not compose
    # answer in a fraction of the time.
    from vitcls.config import config_dir, register_resolvers

    register_resolvers()
    try:
        check_sweeper_plugin(sys.argv[1:], config_dir())
    except ConfigError as error:
        print(f"{Path(sys.argv[0]).name}: {error}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)
    @functools.wraps(run)
    def main(cfg: DictConfig) -> Any:
        from vitcls.timm_import import import_timm_without_wandb

        import_timm_without_wandb()  # before anything of the job imports timm
        return run_job(run, cfg)

    return main
