"""What a bank run writes about its heads: the table of every head (settings, overrides that train it alone,
parameters, best epoch, val and test metrics), the head selected on validation, and the per-head files.

    <run_dir>/bank.json                 the table, the selection (`selected_on: val/<metric>`), the designs left out
    <run_dir>/bank.csv                  the same table, one row per head
    <run_dir>/bank.png                  every head's validation metric, test beside it, the selected one marked
    <run_dir>/heads/<NN>/               per head: val_predictions.csv, test_predictions.csv,
                                        test_confusion_matrix.csv, head.safetensors (its weights at its best epoch)
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vitcls.io import write_json_atomic, write_text_atomic
from vitcls.metrics import metric_names

BANK_FILE = "bank.json"
BANK_CSV = "bank.csv"
BANK_FIGURE = "bank.png"
HEADS_DIR = "heads"
HEAD_WEIGHTS = "head.safetensors"
STATUS_OK = "ok"


def head_dir_name(index: int, count: int) -> str:
    return f"{index:0{len(str(max(count - 1, 1)))}d}"


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def merge_overrides(*lists: Sequence[str]) -> list[str]:
    """Overrides of several lists, in order; a later one for the same setting replaces an earlier one."""
    merged: dict[str, str] = {}
    for overrides in lists:
        for override in overrides:
            merged.pop(override_key(override), None)
            merged[override_key(override)] = override
    return list(merged.values())


def ordered_metrics(values: dict[str, float] | None) -> dict[str, float]:
    order = {name: i for i, name in enumerate(metric_names())}
    return dict(sorted((values or {}).items(), key=lambda item: order.get(item[0], len(order))))


def rank_heads(heads: Sequence[dict[str, Any]], monitor: str, maximize: bool) -> list[int]:
    """Head indices, best first, by the validation `monitor`; ties go to the lower val/loss, then to bank order.
    Heads that stopped (a non-finite loss) or were never validated come last."""
    name = monitor.removeprefix("val/")

    def key(head: dict[str, Any]) -> tuple:
        val = head.get("val") or {}
        score = val.get(name)
        usable = head["status"] == STATUS_OK and score is not None
        loss = val.get("loss", float("inf")) if name != "loss" else 0.0
        return (not usable, -(score or 0.0) if maximize else (score or 0.0), loss, head["index"])

    return [head["index"] for head in sorted(heads, key=key)]


def select_head(heads: Sequence[dict[str, Any]], monitor: str, maximize: bool) -> int | None:
    order = rank_heads(heads, monitor, maximize)
    first = heads[order[0]] if order else None
    if first is None or first["status"] != STATUS_OK or (first.get("val") or {}).get(monitor.removeprefix("val/")) is None:
        return None
    return first["index"]


def bank_rows(heads: Sequence[dict[str, Any]], selected: int | None) -> list[dict[str, Any]]:
    """bank.csv: one flat row per head, in rank order."""
    names = metric_names()
    rows = []
    for head in heads:
        design = head["design"]
        settings = {k: v for k, v in design["head"].items() if k not in ("name", "module")}
        row = {
            "rank": head["rank"], "index": head["index"], "name": head["name"], "selected": head["index"] == selected,
            "status": head["status"], "head": design["head"]["name"],
            "head_settings": ",".join(f"{k}={v}" for k, v in settings.items()),
            "tap": design["tap"]["features"], "lr": design["lr"], "weight_decay": design["weight_decay"],
            "params_trainable": head["params"]["trainable"], "best_epoch": head["best_epoch"],
        }
        for split in ("val", "test"):
            row.update({f"{split}_{name}": (head.get(split) or {}).get(name) for name in names})
        rows.append(row)
    return sorted(rows, key=lambda row: row["rank"])


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_bank_tables(run_dir: Path, report: dict[str, Any]) -> dict[str, Path]:
    rows = bank_rows(report["heads"], (report.get("selected") or {}).get("index"))
    return {
        "bank_json": write_json_atomic(run_dir / BANK_FILE, report),
        "bank_csv": write_text_atomic(run_dir / BANK_CSV, csv_text(rows)),
    }


def markdown_table(report: dict[str, Any], metrics: Sequence[str] = ("f1_macro", "acc"), limit: int | None = None) -> str:
    """The bank as a markdown table, best first (what the run logs and the README shows)."""
    monitor = report["monitor"].removeprefix("val/")
    shown = [monitor, *[m for m in metrics if m != monitor]]
    header = ["rank", "head", "params_trainable", "best_epoch", *(f"val/{m}" for m in shown),
              *(f"test/{m}" for m in shown)]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in bank_rows(report["heads"], (report.get("selected") or {}).get("index"))[:limit]:
        name = row["name"] + (" **(selected)**" if row["selected"] else "") + ("" if row["status"] == STATUS_OK else " (stopped)")
        cells = [str(row["rank"]), name, f"{row['params_trainable']:,}", str(row["best_epoch"])]
        cells += ["" if row[f"{s}_{m}"] is None else f"{row[f'{s}_{m}']:.3f}" for s in ("val", "test") for m in shown]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
