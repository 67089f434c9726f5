"""Reading a sweep directory: one `Run` record per job, whatever launched it (basic sweeper, Optuna, SLURM).

A job directory is one with `summary.json`, `FAILED.json` or Hydra's `.hydra/overrides.yaml`. Its settings
are its Hydra overrides (or, without them, its flattened config.yaml); its metrics, the `val` and `test`
objects of summary.json; its per-image predictions, `val_predictions.csv` and `test_predictions.csv`.

A head-bank run (`bank.json` beside summary.json) is one `Run` per head: its settings the overrides that train
that head alone (the job's own overrides included, so a multirun of banks over seeds pools each head's seeds),
its metrics and prediction files those of the head at its own best validation epoch.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from vitcls.config.overrides import parse_overrides
from vitcls.config.sweeps import OVERRIDES_FILE
from vitcls.run.layout import BANK_FILE, CONFIG_FILE, FAILURE_FILE, PREDICTIONS_FILES, SUMMARY_FILE

HYDRA_FILE = Path(".hydra") / "hydra.yaml"
OPTUNA_RESULTS_FILE = "optimization_results.yaml"
SPLITS = ("val", "test")
# A finished job tested without a best checkpoint (its validation never ran): its metrics are shown, never ranked.
NO_BEST_CHECKPOINT = "no best checkpoint"

# Facts of a finished run shown per design (their mean over seeds): name -> f(summary.json) -> number or None.
FACTS: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "params_trainable": lambda summary: (summary.get("params") or {}).get("trainable"),
    "epochs": lambda summary: summary.get("epochs_trained"),
    "wall_time_s": lambda summary: summary.get("wall_time_s"),
    "images_per_s": lambda summary: (summary.get("train") or {}).get("images_per_s"),
    "peak_mem_mb": lambda summary: (summary.get("train") or {}).get("peak_mem_mb"),
}


@dataclass
class Run:
    """One trained model: its settings, metrics per split, and where its per-image predictions are."""

    name: str  # the job directory, relative to the sweep directory
    directory: Path
    settings: dict[str, str]
    status: str  # "ok", NO_BEST_CHECKPOINT, "failed" or "incomplete" (still running, or killed)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> metric -> value
    facts: dict[str, float] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    predictions: dict[str, Path] = field(default_factory=dict)  # split -> CSV
    num_samples: dict[str, int] = field(default_factory=dict)  # split -> images, from summary.json
    error: str = ""
    in_bank: bool = False  # one head of a head-bank run (its job directory holds other designs too)

    def metric(self, split: str, name: str) -> float | None:
        return self.metrics.get(split, {}).get(name)


@dataclass
class Sweep:
    directory: Path
    runs: list[Run]
    sweeper: str  # "basic", "optuna", or the class name of another Hydra sweeper


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
        return parse_overrides(OmegaConf.to_container(OmegaConf.load(overrides_file)))
    config_file = directory / CONFIG_FILE
    if config_file.is_file():
        return _flatten(OmegaConf.to_container(OmegaConf.load(config_file)))
    return {}


def _split_metrics(summary: dict[str, Any]) -> dict[str, dict[str, float]]:
    metrics = {split: {k: float(v) for k, v in (summary.get(split) or {}).items() if v is not None}
               for split in SPLITS}
    monitor, score = summary.get("monitor"), summary.get("best_val_score")
    if not metrics["val"] and monitor and score is not None:  # runs from before summary.json had `val`
        metrics["val"] = {monitor.removeprefix("val/"): float(score)}
    return metrics


def load_run(directory: Path, sweep_dir: Path) -> Run:
    name = str(directory.relative_to(sweep_dir)) if directory != sweep_dir else directory.name
    run = Run(name=name, directory=directory, settings=_settings(directory), status="incomplete")
    summary_file, failure_file = directory / SUMMARY_FILE, directory / FAILURE_FILE
    if summary_file.is_file():  # finished: a FAILED.json beside it is from an earlier attempt
        summary = json.loads(summary_file.read_text())
        run.status = "ok" if summary.get("best_ckpt") else NO_BEST_CHECKPOINT
        run.metrics = _split_metrics(summary)
        run.facts = {name: float(value) for name, fact in FACTS.items() if (value := fact(summary)) is not None}
        run.class_names = list(summary.get("class_names") or [])
        run.num_samples = {split: int(n) for split, n in (summary.get("num_samples") or {}).items()
                           if split in SPLITS and n is not None}
        run.predictions = {split: directory / file for split, file in PREDICTIONS_FILES.items()
                           if (directory / file).is_file()}
    elif failure_file.is_file():
        failure = json.loads(failure_file.read_text())
        run.status = "failed"
        run.error = f"{failure.get('error_type', 'error')}: {failure.get('message', '')}".strip()
    return run


def load_bank_heads(run: Run, bank: dict[str, Any]) -> list[Run]:
    """A finished bank run as one `Run` per head (a head that stopped on a non-finite loss as failed)."""
    heads = []
    for head in bank.get("heads") or []:
        files = head.get("files") or {}
        heads.append(Run(
            name=f"{run.name}[{head['name']}]",
            directory=run.directory,
            settings=({**run.settings, **parse_overrides(head.get("overrides") or [])}
                      if head.get("protocol", "head") == "head" else {**run.settings, "protocol": head["protocol"]}),
            status="ok" if head.get("status") == "ok" else "failed",
            metrics={split: {k: float(v) for k, v in (head.get(split) or {}).items() if v is not None}
                     for split in SPLITS},
            facts={**{k: v for k, v in run.facts.items() if k != "params_trainable"},
                   **({"params_trainable": float(head["params"]["trainable"])} if head.get("params") else {})},
            class_names=run.class_names,
            num_samples=run.num_samples,
            in_bank=True,
            predictions={split: run.directory / files[f"{split}_predictions"] for split in SPLITS
                         if f"{split}_predictions" in files and (run.directory / files[f"{split}_predictions"]).is_file()},
            error="" if head.get("status") == "ok" else str(head.get("status")),
        ))
    return heads


def load_runs(directory: Path, sweep_dir: Path) -> list[Run]:
    """The `Run` of a job directory, or one per head of a finished head-bank run."""
    run = load_run(directory, sweep_dir)
    bank_file = directory / BANK_FILE
    if run.status != "ok" or not bank_file.is_file():
        return [run]
    run.settings = {k: v for k, v in run.settings.items() if not (k == "bank" or k.startswith("bank."))}
    return load_bank_heads(run, json.loads(bank_file.read_text()))


def _sweeper(job_dirs: list[Path], sweep_dir: Path) -> str:
    if (sweep_dir / OPTUNA_RESULTS_FILE).is_file():
        return "optuna"
    for directory in job_dirs:
        hydra_file = directory / HYDRA_FILE
        if hydra_file.is_file():
            target = str(OmegaConf.select(OmegaConf.load(hydra_file), "hydra.sweeper._target_", default="") or "")
            if "optuna" in target.lower():
                return "optuna"
            return "basic" if target.endswith("BasicSweeper") or not target else target.rsplit(".", 1)[-1]
    return "basic"


def _natural_key(path: Path) -> list[tuple[int, str]]:
    # 2 before 10; names with letters ("3_1", a resumed sweep's new job) after numbers, never compared to them
    return [(int(part), "") if part.isdigit() else (sys.maxsize, part) for part in path.parts]


def read_sweep(sweep_dir: Path) -> Sweep:
    markers = (SUMMARY_FILE, FAILURE_FILE, str(OVERRIDES_FILE))
    directories = {path.parent for marker in markers for path in sweep_dir.rglob(marker)}
    directories = sorted({d.parent if d.name == ".hydra" else d for d in directories}, key=_natural_key)
    runs = [run for directory in directories for run in load_runs(directory, sweep_dir)]
    return Sweep(sweep_dir, runs, _sweeper(directories, sweep_dir))
