"""Benchmark suites (python train.py suite=...): cells, paired draws, the leaderboard, resume after SIGKILL, a dataset
that fails, W&B and another Hydra launcher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, compose_config, make_image_folder
from omegaconf import open_dict

from vitcls.data.datamodule import ImageFolderDataModule
from vitcls.errors import ConfigError
from vitcls.suite.cells import Cell, suite_cells
from vitcls.suite.job import _cell_config

TESTS_DIR = Path(__file__).resolve().parent
# Two small folders, a bank of two heads on one tap, both probes (a short C grid), one seed, shots 2 x 2 draws.
TINY_SUITE = [
    "model.img_size=32", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
    "data.num_workers=0", "data.batch_size=4", "trainer.max_epochs=2", "bank=default",
    "bank.heads=[linear,mlp]", "bank.features=[cls]", "suite.seeds=[1]", "suite.shots=[2]", "suite.draws=2",
    "probes.logreg.num_Cs=4",
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("suite_data")
    roots = {}
    for name, seed in (("a", 0), ("b", 5)):
        root = base / name
        for index, split in enumerate(("train", "test")):
            make_image_folder(root, {"x": 10, "y": 10, "z": 10}, split, seed=seed + index)
        roots[name] = root
    return roots


def suite_command(suite_dir: Path, datasets: dict[str, Path], *extra: str) -> list[str]:
    listed = ", ".join(f"{name}: {root}" for name, root in datasets.items())
    return [sys.executable, str(REPO_ROOT / "train.py"), "suite=custom", f"suite.datasets={{{listed}}}",
            *TINY_SUITE, f"hydra.sweep.dir={suite_dir}", f"feature_cache.dir={suite_dir.parent / 'cache'}", *extra]


def run_suite(command: list[str], expect_rc: int = 0, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800,
                            env={**os.environ, "PYTHONPATH": str(TESTS_DIR), **(env or {})})
    assert result.returncode == expect_rc, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def finished_suite(folders, tmp_path_factory) -> Path:
    suite_dir = tmp_path_factory.mktemp("suite") / "run"
    run_suite(suite_command(suite_dir, folders))
    return suite_dir


# --- cells and draws -------------------------------------------------------------------------------------
def test_cells_are_all_the_data_then_each_shot_count_and_draw_for_every_seed():
    cells = suite_cells({"seeds": [1, 2], "shots": [10, 5], "draws": 2})
    assert [c.name for c in cells[:5]] == ["seed1/all", "seed1/shots5_draw0", "seed1/shots5_draw1",
                                           "seed1/shots10_draw0", "seed1/shots10_draw1"]
    assert len(cells) == 2 * (1 + 2 * 2)
    with pytest.raises(ConfigError, match="suite.shots: 0"):
        suite_cells({"seeds": [1], "shots": [0], "draws": 1})
    with pytest.raises(ConfigError, match="suite.seeds"):
        suite_cells({"seeds": [], "shots": [], "draws": 1})


def test_a_draw_is_the_same_images_for_every_seed_and_design_and_nested_across_shots(folders, tmp_path):
    """Paired draws: the training subset of a cell depends on the draw alone (not the seed, not the design), and
    a draw's 2 images per class lie inside its 5."""
    cfg = compose_config("train", ["suite=custom", f"suite.datasets={{a: {folders['a']}}}", *TINY_SUITE])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)

    def training_paths(cell: Cell, **changes) -> list[str]:
        cell_cfg = _cell_config(cfg, {"root": str(folders["a"])}, cell, tmp_path, ["csv"], {0: 8, 1: 8, 2: 8})
        data = {k: v for k, v in cell_cfg.data.items() if k not in ("_target_", "source")}
        return [s.path for s in ImageFolderDataModule(**{**data, **changes}).splits["train"]]

    first = training_paths(Cell(1, 2, 0))
    assert len(first) == 3 * 2
    assert training_paths(Cell(2, 2, 0)) == first  # another seed, the same images
    assert training_paths(Cell(1, 2, 1)) != first  # another draw, other images
    assert set(first) <= set(training_paths(Cell(1, 5, 0)))  # nested
    whole = training_paths(Cell(1, None, 0))
    assert set(training_paths(Cell(1, 5, 0))) < set(whole)


# --- a finished suite --------------------------------------------------------------------------------------
def test_a_suite_writes_one_leaderboard_ranked_on_validation(finished_suite):
    board = json.loads((finished_suite / "leaderboard.json").read_text())
    assert board["datasets"] == ["a", "b"] and "val" in board["ranked_by"]
    protocols = {row["protocol"] for row in board["rows"]}
    assert protocols == {"head", "knn", "logreg"}
    for row in board["rows"]:
        assert {"design", "protocol", "datasets", "mean_val", "mean_test", "mean_test_ci", "mean_rank"} <= set(row)
        for cell in row["datasets"].values():
            assert {"val", "test", "test_ci"} <= set(cell)
    means = [row["mean_val"] for row in board["rows"] if row.get("rank")]
    assert means == sorted(means, reverse=True)  # ranked by mean val
    # few-shot: per dataset, design and shot count, over the two draws
    for dataset in ("a", "b"):
        curves = board["few_shot"][dataset]
        assert curves and all(entry["2"]["n"] == 2 for entry in curves.values())
    for name in ("leaderboard.csv", "leaderboard.md", "leaderboard.png", "few_shot_a.png", "few_shot_b.png"):
        assert (finished_suite / name).is_file(), name
    # every cell is a run directory of its own, trained as any run is
    for dataset in ("a", "b"):
        cells = json.loads((finished_suite / dataset / "cells.json").read_text())["cells"]
        assert [c["name"] for c in cells] == ["seed1/all", "seed1/shots2_draw0", "seed1/shots2_draw1"]
        for cell in cells:
            bank = json.loads((finished_suite / dataset / cell["run_dir"] / "bank.json").read_text())
            assert {h["protocol"] for h in bank["heads"]} == {"head", "knn", "logreg"}


def test_compare_writes_the_leaderboard_of_a_suite_directory(finished_suite, tmp_path):
    before = (finished_suite / "leaderboard.json").read_text()
    result = run_suite([sys.executable, "-m", "vitcls.cli.compare", str(finished_suite)])
    assert "Leaderboard" in result.stdout
    assert json.loads((finished_suite / "leaderboard.json").read_text())["rows"] == json.loads(before)["rows"]


# --- failure and resume -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_dataset_that_fails_is_recorded_and_the_suite_goes_on(folders, tmp_path):
    suite_dir = tmp_path / "run"
    run_suite(suite_command(suite_dir, {"a": folders["a"], "broken": tmp_path / "no_such_folder"}))
    board = json.loads((suite_dir / "leaderboard.json").read_text())
    assert "broken" in board["failed"] and "no_such_folder" in board["failed"]["broken"]
    assert (suite_dir / "broken" / "FAILED.json").is_file()
    assert all(row["datasets"]["a"]["test"] is not None for row in board["rows"])
    assert "FAILED" in (suite_dir / "leaderboard.md").read_text()


@pytest.mark.slow
def test_a_suite_killed_mid_cell_resumes_and_skips_the_finished_cells(folders, finished_suite, tmp_path):
    suite_dir, marker = tmp_path / "run", tmp_path / "killed"
    kill = ["+callbacks.kill._target_=fault_injection.SignalAt", "+callbacks.kill.signal_name=SIGKILL",
            "+callbacks.kill.step=3", "+callbacks.kill.job=1", f"+callbacks.kill.marker={marker}"]
    run_suite(suite_command(suite_dir, folders, *kill), expect_rc=-signal.SIGKILL)
    assert marker.is_file() and not (suite_dir / "leaderboard.json").exists()
    finished = {p: p.stat().st_mtime_ns for p in (suite_dir / "a").rglob("summary.json")}
    assert len(finished) == 3  # dataset a done; b killed in its first cell
    resumed = run_suite(suite_command(suite_dir, folders, *kill, "resume=true"))
    assert "finished (summary.json); left as it is" in resumed.stdout + resumed.stderr
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # not run again
    got = json.loads((suite_dir / "leaderboard.json").read_text())
    expected = json.loads((finished_suite / "leaderboard.json").read_text())
    assert [(r["design"], r["mean_val"], r["mean_test"]) for r in got["rows"]] == [
        (r["design"], r["mean_val"], r["mean_test"]) for r in expected["rows"]]


# --- W&B and other launchers ------------------------------------------------------------------------------
@pytest.mark.slow
def test_wandb_gets_a_group_per_suite_a_run_per_dataset_and_a_leaderboard_run(folders, tmp_path):
    from wandb_records import offline_runs

    suite_dir = tmp_path / "run"
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path / "wandb_dir"),
           "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config")}
    run_suite(suite_command(suite_dir, folders, "logger=wandb"), env=env)
    runs = offline_runs(suite_dir)
    assert len(runs) == 3  # one per dataset, one for the leaderboard; no run per cell
    assert len({r.run.get("run_group") for r in runs}) == 1
    board_run = next(r for r in runs if r.run["display_name"] == "leaderboard")
    assert any(key.startswith("suite/leaderboard/") for key in board_run.metric_keys)
    for dataset in ("a", "b"):
        assert any(key.startswith(f"suite/{dataset}/table") for r in runs if r is not board_run for key in r.metric_keys)


@pytest.mark.slow
def test_a_suite_runs_through_submitits_local_launcher(folders, tmp_path):
    suite_dir = tmp_path / "run"
    run_suite(suite_command(suite_dir, {"a": folders["a"]}, "hydra/launcher=submitit_local",
                            "hydra.launcher.timeout_min=30"))
    board = json.loads((suite_dir / "leaderboard.json").read_text())
    assert board["datasets"] == ["a"] and board["rows"]
