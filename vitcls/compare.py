"""The jobs of a sweep side by side, without W&B (`vitcls-compare SWEEP_DIR`).

Reads every job directory (one with `summary.json`, `FAILED.json` or Hydra's `.hydra/overrides.yaml`)
under SWEEP_DIR, finds the settings that differ between jobs, sorts the jobs by a metric, prints a
markdown table and writes `compare.md`, `compare.csv` and `compare.png` (the metric per job, best marked).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from vitcls.errors import ConfigError
from vitcls.io import write_text_atomic
from vitcls.metrics import better_is
from vitcls.reports import save_comparison_chart
from vitcls.run_dir import CONFIG_FILE, FAILURE_FILE, OVERRIDES_FILE, SUMMARY_FILE

_ERROR_CHARS = 120
# A finished job tested without a best checkpoint (its validation never ran): its metrics are shown, never ranked.
NO_BEST_CHECKPOINT = "no best checkpoint"


@dataclass
class Job:
    name: str  # the job directory, relative to the sweep directory
    settings: dict[str, str]
    status: str  # "ok", NO_BEST_CHECKPOINT, "failed" or "incomplete" (still running, or killed)
    metrics: dict[str, float] = field(default_factory=dict)
    epochs: int | None = None
    wall_time_s: float | None = None
    error: str = ""


def _flatten(node: object, prefix: str = "") -> dict[str, str]:
    if isinstance(node, dict):
        flat: dict[str, str] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: json.dumps(node) if isinstance(node, list) else str(node)}


def _settings(directory: Path) -> dict[str, str]:
    """The job's command-line overrides (`head=mlp` -> {'head': 'mlp'}), else its flattened config.yaml."""
    overrides_file = directory / OVERRIDES_FILE
    if overrides_file.is_file():
        overrides = OmegaConf.to_container(OmegaConf.load(overrides_file))
        pairs = (override.split("=", 1) for override in overrides if "=" in override)
        return {key.lstrip("+~"): value for key, value in pairs}
    config_file = directory / CONFIG_FILE
    if config_file.is_file():
        config = OmegaConf.to_container(OmegaConf.load(config_file))
        return {k: v for k, v in _flatten(config).items() if not k.startswith("paths.")}
    return {}


def load_job(directory: Path, sweep_dir: Path) -> Job:
    name = str(directory.relative_to(sweep_dir)) if directory != sweep_dir else directory.name
    job = Job(name=name, settings=_settings(directory), status="incomplete")
    summary_file, failure_file = directory / SUMMARY_FILE, directory / FAILURE_FILE
    if summary_file.is_file():  # finished: a FAILED.json beside it is from an earlier attempt
        summary = json.loads(summary_file.read_text())
        job.status = "ok" if summary.get("best_ckpt") else NO_BEST_CHECKPOINT
        job.metrics = {k: float(v) for k, v in summary.get("test", {}).items() if v is not None}
        job.epochs = summary.get("epochs_trained")
        job.wall_time_s = summary.get("wall_time_s")
    elif failure_file.is_file():
        failure = json.loads(failure_file.read_text())
        job.status = "failed"
        job.error = f"{failure.get('error_type', 'error')}: {failure.get('message', '')}".strip()
    return job


def find_jobs(sweep_dir: Path) -> list[Job]:
    markers = (SUMMARY_FILE, FAILURE_FILE, str(OVERRIDES_FILE))
    directories = {path.parent for marker in markers for path in sweep_dir.rglob(marker)}
    directories = {d.parent if d.name == ".hydra" else d for d in directories}
    return [load_job(d, sweep_dir) for d in sorted(directories, key=_natural_key)]


def _natural_key(path: Path) -> list[tuple[int, str]]:
    # 2 before 10; names with letters ("3_1", a resumed sweep's new job) after numbers, never compared to them
    return [(int(part), "") if part.isdigit() else (sys.maxsize, part) for part in path.parts]


def varied_keys(jobs: Sequence[Job]) -> list[str]:
    """Settings whose value is not the same in every job, in first-seen order."""
    keys = list(dict.fromkeys(key for job in jobs for key in job.settings))
    return [key for key in keys if len({job.settings.get(key) for job in jobs}) > 1]


def rank_jobs(jobs: Sequence[Job], metric: str, minimize: bool) -> list[Job]:
    """Finished jobs best first (those without the metric after them), then the others: jobs without a best
    checkpoint, failed and incomplete ones."""
    scored = [job for job in jobs if job.status == "ok" and metric in job.metrics]
    scored.sort(key=lambda job: job.metrics[metric], reverse=not minimize)
    return scored + [job for job in jobs if job not in scored]


def table_rows(jobs: Sequence[Job], keys: Sequence[str], metric: str) -> list[list[str]]:
    # summary.json order: acc, f1_macro, ..., loss
    names = dict.fromkeys(name for job in jobs for name in job.metrics)
    metric_columns = [metric, *(name for name in names if name != metric)]
    header = ["rank", "job", *keys, "status", *metric_columns, "epochs", "wall_time_s"]
    with_errors = any(job.error for job in jobs)
    if with_errors:
        header.append("error")
    rows = [header]
    for rank, job in enumerate(jobs, start=1):
        row = [
            str(rank) if job.status == "ok" else "",
            job.name,
            *(job.settings.get(k, "") for k in keys),
            job.status,
            *(f"{job.metrics[m]:.4f}" if m in job.metrics else "" for m in metric_columns),
            "" if job.epochs is None else str(job.epochs),
            "" if job.wall_time_s is None else f"{job.wall_time_s:.1f}",
        ]
        if with_errors:
            row.append(job.error[:_ERROR_CHARS])
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in cells) + " |"

    return "\n".join([line(rows[0]), line(["---"] * len(rows[0])), *(line(row) for row in rows[1:])]) + "\n"


def csv_text(rows: Sequence[Sequence[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def compare(
    sweep_dir: Path, metric: str = "f1_macro", minimize: bool | None = None, out_dir: Path | None = None
) -> tuple[str, dict[str, Path]]:
    """Write compare.md/.csv/.png for the sweep; return the markdown table and the file paths."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ConfigError(f"sweep directory not found: {sweep_dir.resolve()}")
    jobs = find_jobs(sweep_dir)
    if not jobs:
        raise ConfigError(
            f"no jobs in {sweep_dir.resolve()}: expected job directories with summary.json "
            "(a `python train.py -m ...` sweep directory)"
        )
    metric = metric.removeprefix("test/")
    known = sorted({name for job in jobs for name in job.metrics})
    if known and metric not in known:
        raise ConfigError(f"--metric {metric}: not in the summaries; choose one of {', '.join(known)}")
    minimize = better_is(metric) == "min" if minimize is None else minimize
    ranked = rank_jobs(jobs, metric, minimize)
    keys = varied_keys(jobs)
    rows = table_rows(ranked, keys, metric)
    table = markdown_table(rows)

    out_dir = Path(out_dir or sweep_dir)
    labels = [",".join(f"{k}={job.settings.get(k, '')}" for k in keys) or job.name for job in ranked]
    values = [job.metrics.get(metric) for job in ranked]
    best = 0 if values and values[0] is not None else None
    files = {
        "markdown": write_text_atomic(out_dir / "compare.md", table),
        "csv": write_text_atomic(out_dir / "compare.csv", csv_text(rows)),
        "png": save_comparison_chart(labels, values, f"test/{metric}", out_dir / "compare.png", best),
    }
    return table, files
