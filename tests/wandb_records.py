"""Reading W&B offline runs back with wandb's own reader (`wandb leet inspect --json`)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class OfflineRun:
    directory: Path
    run: dict
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    artifacts: list[dict] = field(default_factory=list)
    exit_code: int | None = None

    @property
    def metric_keys(self) -> set[str]:
        return {key for item in self.history for key in item if not key.startswith("_")}

    def artifact_files(self, name_part: str) -> list[str]:
        """Paths inside the (first) artifact whose name contains `name_part`, e.g. a table's images."""
        artifact = next(a for a in self.artifacts if name_part in a["name"])
        return [entry["path"] for entry in artifact["manifest"]["contents"]]

    def table(self, key: str) -> dict:
        """The logged wandb.Table `key` (e.g. test/predictions), from its file under files/media.

        Media cells (wandb.Image) read "Image" there: the images are in the table's artifact.
        """
        path = next(item[f"{key}.path"] for item in self.history if f"{key}.path" in item)
        return json.loads((self.directory / "files" / path).read_text())


def read_offline_run(run_dir: Path) -> OfflineRun:
    """One offline-run-* directory: its run record, merged config updates, history rows and exit code."""
    (log_file,) = run_dir.glob("run-*.wandb")
    output = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(log_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    records = [json.loads(line) for line in output.splitlines() if line.strip()]
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    result = OfflineRun(directory=run_dir, run=run, config=dict(run.get("config", {}).get("update", {})))
    for record in records:
        if record["type"] == "config":
            result.config.update(record["config"].get("update", {}))
        elif record["type"] == "history":
            result.history.append(record["history"]["item"])
        elif record["type"] == "artifact":
            result.artifacts.append(record["artifact"])
        elif record["type"] == "exit":
            result.exit_code = record["exit"].get("exit_code", 0)
    return result


def offline_runs(directory: Path) -> list[OfflineRun]:
    return [read_offline_run(d) for d in sorted(directory.glob("**/wandb/offline-run-*"))]
