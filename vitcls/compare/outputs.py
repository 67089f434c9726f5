"""The comparison as tables: rows of plain values, written as CSV, markdown and JSON (the same numbers)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

from vitcls.compare.designs import Design
from vitcls.compare.runs import FACTS, Run
from vitcls.compare.scoring import NONE, OWN, POOLED, DesignScore, GroupResult, Ranking
from vitcls.compare.stats import SIGNIFICANCE
from vitcls.compare.vs_best import CORRECTION, by_label, verdict
from vitcls.config.overrides import design_name

_ERROR_CHARS = 120
STATISTICS = ("mean", "std", "ci_low", "ci_high")
MARKDOWN_FACTS = ("params_trainable", "images_per_s", "peak_mem_mb")  # the facts of runs.FACTS worth a column in the markdown table


def short_error(error: str) -> str | None:
    """The first line of an error message, cut to _ERROR_CHARS characters."""
    line = error.strip().splitlines()[0] if error.strip() else ""
    return (line if len(line) <= _ERROR_CHARS else line[: _ERROR_CHARS - 1] + "…") or None


def _number(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def metric_column(split: str, metric: str, statistic: str) -> str:
    return f"{split}_{metric}_{statistic}"


def design_rows(
    scores: Sequence[DesignScore], ranking: Ranking, x: str | None, tuned: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per design: rank, design, [x], [chosen tuned values], n_seeds, estimates, the test against the best
    (seed_variance, diff_vs_best, p_vs_best_raw, p_vs_best_holm, vs_best), facts."""
    facts = [name for name in FACTS if any(name in run.facts for s in scores for run in s.design.runs)]
    rows = []
    for score in scores:
        design = score.design
        row: dict[str, Any] = {"rank": score.rank, "design": design.name}
        if x:
            row[x] = design.x
        for key in tuned:
            row[key] = design.chosen.tuned.get(key) if design.chosen else None
        row["n_seeds"] = len(design.runs)
        row["n_unfinished"] = len(design.unfinished)
        for split, metric in ranking.reported():
            found = score.estimates[(split, metric)]
            for statistic in STATISTICS:
                row[metric_column(split, metric, statistic)] = _number(getattr(found, statistic))
        row["seed_variance"] = score.seed_variance
        row["diff_vs_best"] = _number(score.diff_vs_best)
        row["p_vs_best_raw"] = _number(score.p_vs_best_raw)
        row["p_vs_best_holm"] = _number(score.p_vs_best_holm)
        row["vs_best"] = score.vs_best
        for name in facts:
            values = [run.facts[name] for run in design.runs if name in run.facts]
            row[name] = sum(values) / len(values) if values else None
        rows.append(row)
    return rows


def job_rows(runs: Sequence[Run], keys: Sequence[str], ranking: Ranking) -> list[dict[str, Any]]:
    """One row per job, best first by the ranking metric (those without it after them)."""
    scored = [run for run in runs if run.status == "ok" and run.metric(*ranking.key) is not None]
    scored.sort(key=lambda run: run.metric(*ranking.key), reverse=not ranking.minimize)
    test_names = list(dict.fromkeys(name for run in runs for name in run.metrics.get("test", {})))
    rows = []
    for rank, run in enumerate([*scored, *(run for run in runs if run not in scored)], start=1):
        row: dict[str, Any] = {"rank": rank if run in scored else None, "job": run.name}
        row.update({key: run.settings.get(key) for key in keys})
        row["status"] = run.status
        row[ranking.name] = run.metric(*ranking.key)
        row.update({f"test/{name}": run.metric("test", name) for name in test_names})
        epochs, wall_time = run.facts.get("epochs"), run.facts.get("wall_time_s")
        row["epochs"] = None if epochs is None else int(epochs)
        row["wall_time_s"] = None if wall_time is None else round(wall_time, 1)
        row["error"] = short_error(run.error)
        rows.append(row)
    if not any(row["error"] for row in rows):
        for row in rows:
            del row["error"]
    return rows


def unfinished_jobs(designs: Sequence[Design], keys: Sequence[str]) -> list[dict[str, Any]]:
    return [
        {"job": run.name, "design": design.name, "status": run.status, "settings": design_name(run.settings, keys),
         "error": short_error(run.error)}
        for design in designs
        for run in design.unfinished
    ]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if rows:
        writer.writerow(list(rows[0]))
        writer.writerows([[_cell(value) for value in row.values()] for row in rows])
    return buffer.getvalue()


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|").replace("\n", " ") for cell in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(row) for row in rows)]) + "\n"


def _interval_cell(row: dict[str, Any], split: str, metric: str, digits: int = 3) -> str:
    mean = row[metric_column(split, metric, "mean")]
    if mean is None:
        return ""
    std, low, high = (row[metric_column(split, metric, s)] for s in ("std", "ci_low", "ci_high"))
    text = f"{mean:.{digits}f}"
    if std is not None:
        text += f" ± {std:.{digits}f}"
    if low is not None:
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text


def _fact_cell(name: str, value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}" if name == "params_trainable" else f"{value:,.1f}"


def _p_cell(p: float | None) -> str:
    if p is None:
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _diff_cell(diff: float | None, rank: int | None) -> str:
    return "" if diff is None or rank == 1 else f"{diff:+.3f}"


def design_markdown(rows: Sequence[dict[str, Any]], ranking: Ranking, x: str | None, tuned: Sequence[str]) -> str:
    """The design table for reading: `mean ± std [95% interval]` per metric (std over seeds), then the test
    against the best: the test difference, raw and Holm-corrected p-values and the label."""
    metrics = ranking.reported()
    facts = [name for name in MARKDOWN_FACTS if rows and name in rows[0]]
    unfinished = any(row["n_unfinished"] for row in rows)
    borrowed = any(row["seed_variance"] not in (None, OWN) for row in rows)
    header = ["rank", "design", *([x] if x else []), *tuned, "n_seeds",
              *(f"{split}/{metric}" for split, metric in metrics), *(["seed_variance"] if borrowed else []),
              "diff_vs_best", "p_vs_best_raw", "p_vs_best_holm", "vs_best", *facts,
              *(["unfinished"] if unfinished else [])]
    body = []
    for row in rows:
        cells = [_cell(row["rank"]), row["design"], *([_cell(row[x])] if x else []),
                 *(_cell(row[key]) for key in tuned), _cell(row["n_seeds"]),
                 *(_interval_cell(row, split, metric) for split, metric in metrics),
                 *([_cell(row["seed_variance"])] if borrowed else []),
                 _diff_cell(row["diff_vs_best"], row["rank"]), _p_cell(row["p_vs_best_raw"]),
                 _p_cell(row["p_vs_best_holm"]), _cell(row["vs_best"]),
                 *(_fact_cell(name, row[name]) for name in facts),
                 *([_cell(row["n_unfinished"] or "")] if unfinished else [])]
        body.append(cells)
    return markdown(header, body)


def verdicts(results: Sequence[GroupResult], ranking: Ranking, x: str | None) -> list[dict[str, Any]]:
    """One verdict per comparison (per value of x): its line of text and the designs under each label."""
    found = []
    for group in results:
        if group.best is None:
            continue
        tested_on = "/".join(ranking.significance)
        text = verdict(group.best.design.name, group.tests,
                       [len(s.design.runs) for s in (group.best, *group.others)],
                       selected_on=ranking.name, tested_on=tested_on)
        found.append({
            **({x: group.x} if x else {}),
            "text": f"{x}={group.x}: {text}" if x else text,
            "best": group.best.design.name,
            "selected_on": ranking.name,
            "tested_on": tested_on,
            "correction": CORRECTION.lower(),
            "alpha": SIGNIFICANCE,
            "tests": sum(not math.isnan(t.p_raw) for t in group.tests),
            **{label.replace(" ", "_"): names for label, names in by_label(group.tests).items()},
        })
    return found


def sweep_counts(scores: Sequence[DesignScore], runs: Sequence[Run], x: str | None) -> dict[str, Any]:
    """Designs, seeds per design (of those with results), jobs, and how many jobs are head-bank runs."""
    seeds = [len(score.design.runs) for score in scores if score.design.runs]
    return {
        "designs": len({score.design.name for score in scores}),
        "x_values": len({score.design.x for score in scores}) if x else None,
        "seeds_min": min(seeds, default=0),
        "seeds_max": max(seeds, default=0),
        "jobs": len({run.directory for run in runs}),
        "head_bank_jobs": len({run.directory for run in runs if run.in_bank}),
    }


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def counts_text(counts: dict[str, Any], x: str | None) -> str:
    """E.g. "4 designs, 3 seeds each, 12 jobs" or "36 designs, 1 seed each, 1 job (a head-bank run)"."""
    designs = _plural(counts["designs"], "design")
    if x:
        designs += f" x {_plural(counts['x_values'], 'value')} of {x}"
    low, high = counts["seeds_min"], counts["seeds_max"]
    seeds = f"{_plural(low, 'seed')} each" if low == high else f"{low}-{high} seeds"
    jobs, banks = counts["jobs"], counts["head_bank_jobs"]
    jobs_text = _plural(jobs, "job")
    if banks and banks == jobs:
        jobs_text += " (a head-bank run)" if jobs == 1 else " (head-bank runs)"
    elif banks:
        jobs_text += f" ({banks} of them head-bank runs)"
    return f"{designs}, {seeds}, {jobs_text}"


def seed_variance_notes(rows: Sequence[dict[str, Any]]) -> list[str]:
    """What the table says about designs whose seed variance was borrowed or is unknown."""
    notes = []
    if any(row["seed_variance"] == POOLED for row in rows):
        notes.append("seed_variance pooled: a design with one seed borrows the seed variance pooled over the "
                     "designs of its comparison with several seeds (assuming seeds vary about as much in every "
                     "design), in its interval and its test.")
    if any(row["seed_variance"] == NONE for row in rows):
        notes.append("seed_variance none: one seed, and no design of its comparison has several, so how much "
                     "seeds vary is unknown: the interval holds the image sampling alone and there is no "
                     "p-value (vs_best unknown). Run several seeds (e.g. seed=1,2,3) to test designs.")
    return notes


def job_markdown(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    header = list(rows[0])
    body = [[f"{value:.4f}" if isinstance(value, float) and name != "wall_time_s" else _cell(value)
             for name, value in row.items()] for row in rows]
    return markdown(header, body)
