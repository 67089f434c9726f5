"""One dataset's job of a suite: every cell (seed x training data) through the one run lifecycle.

Cells are run directories `<job dir>/<seed>/<all | shots_draw>/`, trained as any run is (the suite's study: its
bank, its probes) with the cell's seed and training subset. The features are cached once for the whole training
split, val and test (per seed: with random backbone weights the seed changes the backbone), so the cells after
the first train on cached features only. A job run again with `resume=true` skips finished cells, resumes
interrupted ones from their last checkpoint and runs failed or missing ones.

Loggers: the cells log to the suite's plain loggers (CSV); loggers that take results (W&B) get one run per dataset,
with every cell's table, when the job ends.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import hydra.utils
from omegaconf import DictConfig, open_dict

from vitcls.config import to_plain
from vitcls.errors import ConfigError
from vitcls.io import write_json_atomic
from vitcls.loggers import ResultSink, finish_runs
from vitcls.reporting.publish import publish_report
from vitcls.run.lifecycle import build_datamodule, run
from vitcls.run.studies import study_of
from vitcls.suite.board import CELLS_FILE, cell_rows, flat_row
from vitcls.suite.cells import Cell, dataset_settings, suite_cells

log = logging.getLogger(__name__)

def run_dataset(cfg: DictConfig) -> dict[str, Any]:
    """Every cell of `suite.dataset`; returns the job's record (also `<job dir>/cells.json`)."""
    name = cfg.suite.get("dataset")
    datasets = to_plain(cfg.suite.datasets) or {}
    if not name:
        raise ConfigError("suite.dataset is not set: a suite runs one job per dataset of suite.datasets "
                          "(python train.py suite=<name>; the sweep over the datasets is in the suite's config)")
    if name not in datasets:
        raise ConfigError(f"suite.dataset={name!r} is not in suite.datasets ({sorted(datasets)})")
    settings = dataset_settings(name, datasets[name])
    job_dir = Path(cfg.paths.output_dir)
    sinks, plain = _split_loggers(cfg)
    cells = suite_cells(to_plain(cfg.suite))
    pool = _pool_counts(_cell_config(cfg, settings, cells[0], job_dir, plain, {}))
    record: dict[str, Any] = {"dataset": name, "data": settings, "cells": []}
    for cell in cells:
        cell_cfg = _cell_config(cfg, settings, cell, job_dir, plain, pool)
        log.info("suite %s: dataset %s, cell %s", cfg.suite.name, name, cell.name)
        summary = run(cell_cfg, study_of(cell_cfg))
        record["cells"].append({**cell.as_dict(), "run_dir": cell.name, "num_samples": summary.get("num_samples")})
        write_json_atomic(job_dir / CELLS_FILE, record)
    _report(sinks, name, job_dir, record)
    return record


def _split_loggers(cfg: DictConfig) -> tuple[list[ResultSink], list[str]]:
    """(the loggers that take results, the keys of the others): the cells keep the others."""
    nodes = cfg.get("logger") or {}
    sinks, plain = [], []
    for key, node in nodes.items():
        if not (isinstance(node, DictConfig) and "_target_" in node):
            continue
        logger = hydra.utils.instantiate(node, _convert_="all")
        if isinstance(logger, ResultSink):
            sinks.append(logger)
        else:
            plain.append(key)
    return sinks, plain


def _pool_counts(cfg: DictConfig) -> dict[int, int]:
    """Images per class of the dataset's training split before any subset (it bounds a few-shot batch)."""
    datamodule = build_datamodule(cfg)
    return dict(Counter(sample.label for sample in datamodule.train_pool))


def _cell_config(cfg: DictConfig, settings: dict[str, Any], cell: Cell, job_dir: Path, plain_loggers: list[str],
                 pool: dict[int, int]) -> DictConfig:
    cell_cfg = copy.deepcopy(cfg)
    with open_dict(cell_cfg):
        cell_cfg.paths.output_dir = str(job_dir / cell.name)
        cell_cfg.seed = cell.seed
        for key, value in settings.items():
            cell_cfg.data[key] = value
        cell_cfg.data.train_per_class = cell.shots
        cell_cfg.data.subset_seed = int(cfg.suite.draw_seed) + cell.draw
        if cell.shots is not None and pool:
            train_images = sum(min(cell.shots, count) for count in pool.values())
            cell_cfg.data.eval_batch_size = cfg.data.get("eval_batch_size") or cfg.data.batch_size
            cell_cfg.data.batch_size = min(cfg.data.batch_size, train_images)
        if cell_cfg.get("logger"):
            cell_cfg.logger = {key: cell_cfg.logger[key] for key in plain_loggers}
    return cell_cfg


def _report(sinks: list[ResultSink], dataset: str, job_dir: Path, record: dict[str, Any]) -> None:
    """One run per dataset for the loggers that take results: every cell's table (each design's val and test)."""
    if not sinks:
        return
    rows = [flat_row(row) for cell in record["cells"] for row in cell_rows(job_dir / cell["run_dir"], cell)]
    publish_report(sinks, f"suite/{dataset}", rows, {}, {"dataset": dataset, "cells": len(record["cells"])})
    finish_runs(exit_code=0)

