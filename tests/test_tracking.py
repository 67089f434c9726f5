"""W&B never blocks or fails a run: offline without a key or a server; a resumed run keeps its W&B run."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from conftest import FAST_OVERRIDES, REPO_ROOT, compose_config
from wandb_records import offline_runs

from vitcls.cli.train import run_training as run
from vitcls.loggers.wandb import RUN_ID_FILE, create_wandb_logger, finish_wandb


@pytest.fixture
def wandb_env(monkeypatch, tmp_path):
    """No W&B credentials anywhere, no mode chosen: what a fresh machine looks like."""
    for name in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(
        "WANDB_MODE", ""
    )  # Lightning sets it to dryrun for offline loggers: restored afterwards
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    yield monkeypatch
    finish_wandb(exit_code=0)


def test_without_an_api_key_the_run_is_written_offline(wandb_env, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="vitcls.loggers.wandb"):
        # log_model=True online-only: Lightning refuses it offline, vitcls drops it with a warning instead
        logger = create_wandb_logger(project="vitcls-test", save_dir=str(tmp_path), log_model=True)
    assert "no W&B API key found: logging W&B offline" in caplog.text
    assert "checkpoints are not logged as artifacts" in caplog.text
    assert logger.experiment.offline
    assert logger.experiment.id == (tmp_path / RUN_ID_FILE).read_text().strip()
    assert list((tmp_path / "wandb").glob(f"offline-run-*-{logger.experiment.id}"))


def test_with_a_key_but_no_reachable_server_the_run_is_written_offline(wandb_env, tmp_path, caplog):
    wandb_env.setenv("WANDB_API_KEY", "0" * 40)
    wandb_env.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    with caplog.at_level(logging.WARNING, logger="vitcls.loggers.wandb"):
        logger = create_wandb_logger(project="vitcls-test", save_dir=str(tmp_path))
    assert "the W&B server is not reachable: logging W&B offline" in caplog.text
    assert logger.experiment.offline


WANDB_RUN = """
import logging, sys
logging.basicConfig(level=logging.WARNING)
from vitcls.loggers.wandb import create_wandb_logger, finish_wandb
logger = create_wandb_logger(project="vitcls-test", save_dir=sys.argv[1], quiet=sys.argv[2] == "quiet")
logger.experiment.log({"a": 1.0}, step=5)
logger.experiment.log({"a": 2.0}, step=1)  # W&B ignores it, with a warning
finish_wandb(exit_code=0)
"""


@pytest.mark.parametrize("quiet", [True, False])
def test_wandb_prints_no_banner_or_panels_but_still_its_warnings(wandb_env, tmp_path, quiet):
    """In a process of its own: W&B keeps its output settings for the process once a run has started."""
    wandb_env.delenv("WANDB_SILENT")
    result = subprocess.run([sys.executable, "-c", WANDB_RUN, str(tmp_path), "quiet" if quiet else "verbose"],
                            capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    wandb_lines = [line for line in output.splitlines() if line.startswith("wandb:")]
    assert output.count("logging W&B offline; upload later with `wandb sync`") == 1
    assert any("WARNING Tried to log to step 1 that is less than the current step 5" in line for line in wandb_lines)
    panels = [line for line in wandb_lines if "Tracking run with wandb version" in line or "Run summary:" in line]
    assert bool(panels) != quiet
    if quiet:
        assert len(wandb_lines) <= 4, wandb_lines  # the offline notice (where the run is saved) and the warning


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_a_resumed_run_continues_the_same_wandb_run(wandb_env, image_folder_factory, tmp_path):
    root = image_folder_factory({"a": 4, "b": 4})
    run_dir = tmp_path / "run"
    common = [
        f"paths.output_dir={run_dir}",
        *FAST_OVERRIDES,
        f"data.root={root}",
        "logger=wandb",
        "data.batch_size=4",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.num_sanity_val_steps=0",
    ]
    run(compose_config("train", [*common, "trainer.max_epochs=1"]))
    finish_wandb(exit_code=0)
    first_id = (run_dir / RUN_ID_FILE).read_text().strip()
    run(
        compose_config(
            "train", [*common, "trainer.max_epochs=2", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"]
        )
    )
    finish_wandb(exit_code=0)

    first, second = offline_runs(run_dir)
    assert first.run["run_id"] == second.run["run_id"] == first_id
    assert (run_dir / RUN_ID_FILE).read_text().strip() == first_id
    assert [item["epoch"] for item in first.history if "val/acc" in item] == [0]
    assert [item["epoch"] for item in second.history if "val/acc" in item] == [1]  # continued, not restarted
