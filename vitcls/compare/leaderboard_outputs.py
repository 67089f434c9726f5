"""The leaderboard as files: leaderboard.json (every number), .csv (one row per design), .md (the table, the
verdict, the method), .png (designs x datasets) and few_shot_<dataset>.png (learning curves)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vitcls.compare.leaderboard_figures import (
    dataset_header,
    save_few_shot_chart,
    save_leaderboard_chart,
    wins_text,
)
from vitcls.compare.outputs import csv_text, markdown
from vitcls.io import write_text_atomic

_DIGITS = 3


def _value(value: float | None) -> str:
    return "" if value is None else f"{value:.{_DIGITS}f}"


def _with_interval(value: float | None, ci: Sequence[float] | None) -> str:
    if value is None:
        return ""
    return _value(value) + ("" if ci is None else f" [{_value(ci[0])}, {_value(ci[1])}]")


def csv_rows(board: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per design, in rank order; the columns of a failed dataset are empty."""
    found = []
    for row in board["rows"]:
        flat: dict[str, Any] = {key: row[key] for key in ("rank", "name", "design", "protocol", "n_seeds",
                                                           "seed_variance")}
        for dataset in board["datasets"]:
            cell = row["datasets"].get(dataset) or {}
            test_ci = cell.get("test_ci") or [None, None]
            flat.update({f"{dataset}/val": cell.get("val"), f"{dataset}/test": cell.get("test"),
                         f"{dataset}/test_ci_low": test_ci[0], f"{dataset}/test_ci_high": test_ci[1],
                         f"{dataset}/vs_best": cell.get("vs_best")})
        for name in ("mean_val", "mean_test"):
            ci = row[f"{name}_ci"] or [None, None]
            flat.update({name: row[name], f"{name}_ci_low": ci[0], f"{name}_ci_high": ci[1]})
        flat.update({key: row[key] for key in ("mean_rank", "wins", "not_distinguishable", "losses", "unknown",
                                               "diff_vs_best", "p_vs_best_raw", "p_vs_best_holm", "vs_best")})
        flat["missing"] = " ".join(row["missing"])
        found.append(flat)
    return found


def title(board: dict[str, Any]) -> str:
    counts = board["counts"]
    failed = f" ({counts['failed']} failed)" if counts["failed"] else ""
    return (f"Leaderboard: {counts['designs']} designs on {counts['datasets']} datasets{failed}, ranked by "
            f"{board['ranked_by']} (validation ranks; test is shown, never ranked by)")


def table_markdown(board: dict[str, Any]) -> str:
    metric, confidence = board["metric"], board["confidence"]
    header = ["rank", "design", "protocol", *(dataset_header(board, d) for d in board["datasets"]),
              f"mean val/{metric}", f"mean test/{metric} [{confidence:.0%}]", "mean rank", "W/N/L", "vs best"]
    lines = []
    for row in board["rows"]:
        cells = [str(row["rank"] or "–"), row["design"], row["protocol"]]
        for dataset in board["datasets"]:
            cell = row["datasets"].get(dataset)
            cells.append("–" if cell is None else _with_interval(cell["test"], cell["test_ci"]))
        cells += [_value(row["mean_val"]), _with_interval(row["mean_test"], row["mean_test_ci"]),
                  "" if row["mean_rank"] is None else f"{row['mean_rank']:.2f}", wins_text(row),
                  row["vs_best"] or f"not ranked (missing {', '.join(row['missing'])})"]
        lines.append(cells)
    return markdown(header, lines)


def few_shot_markdown(board: dict[str, Any]) -> str:
    if not board["few_shot"]:
        return ""
    text = (f"\n## Few-shot: test/{board['metric']}, mean over draws x seeds [{board['confidence']:.0%} t "
            "interval] (n)\n")
    for dataset, curves in board["few_shot"].items():
        shots = sorted({int(s) for curve in curves.values() for s in curve})
        rows = [[name, *(_with_interval(curve[str(s)]["mean"], curve[str(s)]["ci"]) + f" ({curve[str(s)]['n']})"
                         if str(s) in curve else "–" for s in shots)]
                for name, curve in curves.items()]
        text += f"\n### {dataset}\n\n" + markdown(["design", *(f"{s} shots" for s in shots)], rows)
    return text


def markdown_text(board: dict[str, Any]) -> str:
    failed = "".join(f"- {dataset}: {reason}\n" for dataset, reason in board["failed"].items())
    return (
        f"# {title(board)}\n\n"
        f"Cells: test/{board['metric']}, mean over seeds [{board['confidence']:.0%} interval]. W/N/L: the "
        "datasets where the design is better / not distinguishable from / worse than the design ranked first, "
        "on that dataset's test images.\n\n"
        + table_markdown(board)
        + f"\n**Verdict:** {board['verdict']}\n"
        + (f"\nFailed datasets (left out of every mean, rank and count):\n{failed}" if failed else "")
        + f"\n**Method.** {board['method']}\n"
        + "".join(f"\n{note}\n" for note in board["notes"] if not note.startswith("Failed datasets"))
        + few_shot_markdown(board)
    )


def few_shot_filename(dataset: str) -> str:
    return "few_shot_" + re.sub(r"[^A-Za-z0-9._-]+", "_", dataset) + ".png"


def write_leaderboard(board: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write leaderboard.json/.csv/.md/.png and few_shot_<dataset>.png per dataset with few-shot results;
    return {kind: path} (few-shot figures as `few_shot/<dataset>`)."""

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "json": write_text_atomic(out_dir / "leaderboard.json", json.dumps(board, indent=2, allow_nan=False) + "\n"),
        "csv": write_text_atomic(out_dir / "leaderboard.csv", csv_text(csv_rows(board))),
        "markdown": write_text_atomic(out_dir / "leaderboard.md", markdown_text(board)),
        "png": save_leaderboard_chart(board, out_dir / "leaderboard.png"),
    }
    for dataset in board["few_shot"]:
        files[f"few_shot/{dataset}"] = save_few_shot_chart(board, dataset, out_dir / few_shot_filename(dataset))
    return files
