"""A suite directory's results -> the leaderboard (vitcls.compare.leaderboard).

    <suite dir>/suite.json                the manifest: datasets, seeds, shots, draws, the metric (written at launch)
    <suite dir>/<dataset>/cells.json      what the dataset's job ran
    <suite dir>/<dataset>/seed<s>/all/    a run directory per cell (bank.json or summary.json, probes, predictions)
    <suite dir>/<dataset>/FAILED.json     a dataset whose job failed
    <suite dir>/leaderboard.{json,csv,md,png}, few_shot_<dataset>.png

Every row of a cell's table (each trained head, each probe) is a design. Rows trained on all the training data make
the leaderboard (with their per-image predictions, so that intervals and tests are paired); few-shot cells make its
learning curves.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from vitcls.compare.leaderboard import leaderboard
from vitcls.compare.leaderboard_inputs import Entry, FewShotEntry
from vitcls.compare.leaderboard_outputs import write_leaderboard
from vitcls.compare.stats import DEFAULT_RESAMPLES
from vitcls.errors import ConfigError
from vitcls.io import read_json, write_json_atomic
from vitcls.reporting.predictions_csv import read_predictions
from vitcls.run.layout import BANK_FILE, FAILURE_FILE, PROBES_TABLE, SUMMARY_FILE

log = logging.getLogger(__name__)

SUITE_FILE = "suite.json"
CELLS_FILE = "cells.json"
HEAD = "head"


def write_manifest(suite_dir: Path, suite: dict[str, Any], monitor: str) -> Path:
    return write_json_atomic(Path(suite_dir) / SUITE_FILE, {"suite": suite, "metric": monitor.removeprefix("val/")})


def is_suite(directory: Path) -> bool:
    return (Path(directory) / SUITE_FILE).is_file()


def cell_rows(cell_dir: Path, cell: dict[str, Any]) -> list[dict[str, Any]]:
    """Every design of a finished cell: {cell, seed, shots, draw, design, protocol, status, val, test, files,
    class_names}; nothing for an unfinished one."""
    if not (cell_dir / SUMMARY_FILE).is_file():
        return []
    summary = read_json(cell_dir / SUMMARY_FILE)
    base = {key: cell[key] for key in ("seed", "shots", "draw")} | {"cell": cell["name"],
                                                                    "class_names": summary["class_names"]}
    if (cell_dir / BANK_FILE).is_file():
        table = read_json(cell_dir / BANK_FILE)["heads"]
    else:
        table = [{"name": summary.get("design", HEAD), "protocol": HEAD, "status": "ok", "val": summary["val"],
                  "test": summary["test"], "files": summary.get("paths") or {}}]
        if (cell_dir / PROBES_TABLE).is_file():
            table += read_json(cell_dir / PROBES_TABLE)
    rows = []
    for entry in table:
        files = {split: _absolute(cell_dir, (entry.get("files") or {}).get(f"{split}_predictions"))
                 for split in ("val", "test")}
        rows.append({**base, "design": entry["name"], "protocol": entry.get("protocol", HEAD),
                     "status": entry["status"], "val": entry.get("val") or {}, "test": entry.get("test") or {},
                     "files": files})
    return rows


def flat_row(row: dict[str, Any]) -> dict[str, Any]:
    """A cell row as one flat line of plain values (a tracker's table): every metric of val and test."""
    flat = {"cell": row["cell"], "seed": row["seed"], "shots": str(row["shots"]), "draw": row["draw"],
            "design": row["design"], "protocol": row["protocol"], "status": row["status"]}
    flat.update({f"{split}/{name}": value for split in ("val", "test") for name, value in row[split].items()})
    return flat


def _absolute(cell_dir: Path, path: str | None) -> str | None:
    if not path:
        return None
    return str(Path(path) if Path(path).is_absolute() else cell_dir / path)


def collect(suite_dir: Path) -> tuple[list[Entry], list[FewShotEntry], dict[str, str], dict[str, Any]]:
    """(entries, few-shot entries, failed datasets with the reason, the manifest) of a suite directory."""
    suite_dir = Path(suite_dir)
    if not is_suite(suite_dir):
        raise ConfigError(f"{suite_dir} is not a suite directory (no {SUITE_FILE}): run python train.py suite=<name>")
    manifest = read_json(suite_dir / SUITE_FILE)
    metric = manifest["metric"]
    entries, few_shot, failed = [], [], {}
    for dataset in manifest["suite"]["datasets"]:
        job_dir = suite_dir / dataset
        if (job_dir / FAILURE_FILE).is_file():
            failure = read_json(job_dir / FAILURE_FILE)
            failed[dataset] = f"{failure.get('error_type', 'error')}: {failure.get('message', '')}"
            continue
        cells = read_json(job_dir / CELLS_FILE)["cells"] if (job_dir / CELLS_FILE).is_file() else []
        if not cells:
            failed[dataset] = "no finished cell (the job did not run, or was stopped: rerun the suite with resume=true)"
            continue
        for cell in cells:
            for row in cell_rows(job_dir / cell["run_dir"], cell):
                if row["status"] != "ok" or metric not in row["val"] or metric not in row["test"]:
                    continue
                if row["shots"] == "all":
                    entries.append(_entry(dataset, row, metric))
                else:
                    few_shot.append(FewShotEntry(dataset, row["design"], row["protocol"], int(row["shots"]),
                                                 int(row["draw"]), int(row["seed"]), row["val"][metric],
                                                 row["test"][metric]))
    return entries, few_shot, failed, manifest


def _entry(dataset: str, row: dict[str, Any], metric: str) -> Entry:
    names = row["class_names"]
    predictions = {split: read_predictions(Path(path), names) if path and Path(path).is_file() else None
                   for split, path in row["files"].items()}
    return Entry(dataset, row["design"], row["protocol"], int(row["seed"]), row["val"][metric], row["test"][metric],
                 predictions["val"], predictions["test"], len(names))


def write_suite_leaderboard(suite_dir: Path, resamples: int = DEFAULT_RESAMPLES) -> tuple[dict[str, Any], dict[str, Path]]:
    """The leaderboard of a suite directory, written into it."""
    entries, few_shot, failed, manifest = collect(suite_dir)
    if not entries and not failed:
        raise ConfigError(f"{suite_dir}: no finished cell yet")
    board = leaderboard(entries, few_shot, metric=manifest["metric"], resamples=resamples, failed=failed)
    files = write_leaderboard(board, Path(suite_dir))
    log.info("leaderboard: %s\n%s", files.get("markdown"), board.get("verdict", ""))
    return board, files
