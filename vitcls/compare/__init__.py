"""vitcls-compare: which design of a sweep is best on validation, and is it really better.

Data flow, one module per step:
  runs.read_sweep(SWEEP_DIR)        a `Run` per job: settings, val/test metrics, facts, prediction files, status
  designs.group_designs             a `Design` per combination of the varied settings (seeds pooled, paths
                                    ignored; `--tune` values as candidates; one group per `--x` value)
  designs.choose_candidates         each design's tuned values: best mean validation metric
  scoring.score_designs             `DesignScore`s: estimates with intervals (stats), rank by the validation
                                    metric, p-value against the best on the test split, Holm-corrected and
                                    labelled (vs_best), one `GroupResult` per comparison
  outputs.verdicts                  one line per comparison: the best and what the tests say of the others
  outputs.design_rows / job_rows    plain rows -> compare.csv, compare.md, compare.json; compare_jobs.csv/.md
  figures                           compare.png (designs with intervals, or learning curves with `--x`)
  vitcls.reporting.publish          with `--wandb`: the table and figure in one run of the sweep's W&B group

A head-bank run (bank.json) is one `Run` per head (`runs.load_runs`): another run directory that holds several
designs would be read the same way. A number every run reports (peak memory, images/s) is one entry of `runs.FACTS` and
becomes a column of the design table (its mean over seeds).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vitcls.compare.designs import choose_candidates, design_keys, group_designs, job_keys, varied_keys
from vitcls.compare.outputs import (
    counts_text,
    csv_text,
    design_markdown,
    design_rows,
    job_markdown,
    job_rows,
    seed_variance_notes,
    sweep_counts,
    unfinished_jobs,
    verdicts,
)
from vitcls.compare.runs import Run, Sweep, read_sweep
from vitcls.compare.scoring import Ranking, score_designs
from vitcls.compare.stats import CONFIDENCE, DEFAULT_RESAMPLES, SIGNIFICANCE, Resampler
from vitcls.config.overrides import REPETITION_KEYS
from vitcls.errors import ConfigError
from vitcls.io import write_text_atomic
from vitcls.metrics import DEFAULT_SELECTION_METRIC, better_is, metric_names

METHOD = (
    "mean ± std over seeds [{confidence:.0%} interval]. Interval: mean ± t·SE with SE² = variance of the "
    "seed-mean over {resamples} bootstrap resamples of the images + variance over seeds / n_seeds "
    "(Welch-Satterthwaite df); it always contains the Wilson score interval of acc on the split's images "
    "(other count metrics: as far on each side of their mean), so 0 or n errors do not give a zero-width "
    "interval. Against the best design, on test/{metric}: diff_vs_best = its mean minus the best's; "
    "p_vs_best_raw = the two-sided test of that difference with the same SE, the images resampled in pairs "
    "(every design is scored on the same test images); p_vs_best_holm = those p-values Holm-corrected for "
    "the {tests} designs tested against the same best{per_x}. vs_best: better or worse when p_vs_best_holm "
    "< {alpha:g} (the sign of diff_vs_best), 'not distinguishable' otherwise: the test found no difference at "
    "{alpha:g}, which is not evidence that the designs are equal (that would need an equivalence margin, which "
    "depends on the task); unknown: no p-value."
)


def parse_ranking(metric: str, minimize: bool | None, allow_test_selection: bool, known: Sequence[str]) -> Ranking:
    """`val/f1_macro` (a bare name means val/); `test/...` only with allow_test_selection."""
    split, _, name = metric.rpartition("/")
    split = split or "val"
    if split == "test" and not allow_test_selection:
        raise ConfigError(
            f"--metric {metric} would select on the test split: the winner's test score is then biased upward "
            "(it was picked for being high on those very images) and no longer estimates how it does on new "
            f"data. Rank by a validation metric (--metric val/{name}; every design's test numbers are shown "
            "beside it), or pass --allow-test-selection to rank on test anyway (the output then says "
            "'selected on test')."
        )
    names = list(dict.fromkeys([*metric_names(), *known]))
    if split not in ("val", "test") or name not in names:
        raise ConfigError(f"--metric {metric}: not a metric; choose one of {', '.join(f'val/{n}' for n in names)}")
    return Ranking(split, name, better_is(name) == "min" if minimize is None else minimize)


def _check_keys(option: str, keys: Sequence[str], runs: Sequence[Run], sweep_dir: Path) -> None:
    varied = varied_keys(runs)
    for key in keys:
        if key not in varied:
            raise ConfigError(
                f"{option} {key}: not a setting that varies between the jobs of {sweep_dir} "
                f"(those that do: {', '.join(varied) or 'none'})"
            )


def _mean_score(split: str, metric: str):
    def score(runs: list[Run]) -> float | None:
        values = [v for run in runs if (v := run.metric(split, metric)) is not None]
        return sum(values) / len(values) if values else None

    return score


def _load(sweep_dir: Path) -> Sweep:
    if not sweep_dir.is_dir():
        raise ConfigError(f"sweep directory not found: {sweep_dir.resolve()}")
    sweep = read_sweep(sweep_dir)
    if not sweep.runs:
        raise ConfigError(
            f"no jobs in {sweep_dir.resolve()}: expected job directories with summary.json "
            "(a `python train.py -m ...` sweep directory)"
        )
    return sweep


def compare(
    sweep_dir: Path,
    metric: str = f"val/{DEFAULT_SELECTION_METRIC}",
    minimize: bool | None = None,
    out_dir: Path | None = None,
    *,
    allow_test_selection: bool = False,
    tune: Sequence[str] = (),
    x: str | None = None,
    repeat: Sequence[str] = (),
    per_job: bool = False,
    resamples: int = DEFAULT_RESAMPLES,
    wandb: bool = False,
) -> tuple[str, dict[str, Path]]:
    """Write compare.csv/.md/.json/.png and compare_jobs.csv/.md; return the text to print and the files."""
    sweep_dir = Path(sweep_dir)
    sweep = _load(sweep_dir)
    runs = sweep.runs
    known = sorted({name for run in runs for split in run.metrics.values() for name in split})
    ranking = parse_ranking(metric, minimize, allow_test_selection, known)
    _check_keys("--tune", tune, runs, sweep_dir)
    _check_keys("--x", [x] if x else [], runs, sweep_dir)
    repetitions = (*REPETITION_KEYS, *repeat)
    keys = design_keys(runs, repetitions, tune, x)
    tuned = list(tune)
    if sweep.sweeper == "optuna":  # a search, not a grid: whatever it varied is a hyperparameter
        tuned += [key for key in keys if key not in tuned]
        keys = []
    designs = group_designs(runs, keys, tuned, x)
    choose_candidates(designs, _mean_score(*ranking.key), ranking.minimize)
    scores, results = score_designs(designs, ranking, Resampler(resamples))

    rows = design_rows(scores, ranking, x, tuned)
    per_job_keys = job_keys(runs)
    jobs = job_rows(runs, per_job_keys, ranking)
    unfinished = unfinished_jobs(designs, per_job_keys)
    found = verdicts(results, ranking, x)
    selected_on_test = ranking.split == "test"
    tests = sorted({v["tests"] for v in found}) or [0]
    method = METHOD.format(
        confidence=CONFIDENCE, resamples=resamples, metric=ranking.metric, alpha=SIGNIFICANCE,
        tests=f"{tests[0]}" if len(tests) == 1 else f"{tests[0]}-{tests[-1]}",
        per_x=f" (within each value of {x})" if x else "",
    )
    lacking = sorted({run.name for s in scores for run in s.design.runs
                      if not all(split in run.predictions for split in ("val", "test"))})
    counts = sweep_counts(scores, runs, x)
    title = (
        f"Designs of {sweep_dir} ({counts_text(counts, x)}), "
        + (f"SELECTED ON TEST by {ranking.name}" if selected_on_test
           else f"ranked by {ranking.name} (selection on validation; test metrics are shown, never ranked by)")
        + (f"; tuned within each design on {ranking.name}: {', '.join(tuned)}" if tuned else "")
        + (f"; one ranking per {x}" if x else "")
    )
    notes = [method, *seed_variance_notes(rows)]
    if lacking:
        notes.append(f"No per-image predictions in jobs {', '.join(lacking)}: their designs' intervals come from "
                     "the seeds alone (none with one seed), and they are not tested against the best (p-values "
                     "blank, vs_best unknown): without the predictions the images' share of the error is not "
                     "measured and the test cannot pair the images.")
    table = design_markdown(rows, ranking, x, tuned)
    text = (f"{title}\n\n{table}\n" + "".join(f"Verdict: {v['text']}\n" for v in found) + "\n"
            + "\n".join(notes) + "\n")
    if unfinished:
        text += "\nJobs without results (not in the table):\n" + "".join(
            f"- {job['job']} ({job['settings']}): {job['status']}" + (f": {job['error']}" if job["error"] else "")
            + "\n" for job in unfinished)

    out_dir = Path(out_dir or sweep_dir)
    report: dict[str, Any] = {
        "sweep_dir": str(sweep_dir.resolve()),
        "sweeper": sweep.sweeper,
        "ranking_metric": ranking.name,
        "selected_on": ranking.split,
        "significance_metric": f"test/{ranking.metric}",
        "confidence": CONFIDENCE,
        "alpha": SIGNIFICANCE,
        "multiple_testing": "holm",
        "counts": counts,
        "verdicts": found,
        "bootstrap_resamples": resamples,
        "method": method,
        "design_keys": keys,
        "tuned_keys": tuned,
        "x": x,
        "repetition_keys": list(repetitions),
        "designs": [
            {**row, "jobs": [run.name for run in score.design.runs],
             "candidates": [{"tuned": c.tuned, "n_seeds": len(c.runs), f"{ranking.name}_mean": c.score}
                            for c in score.design.candidates] if tuned else []}
            for row, score in zip(rows, scores, strict=True)
        ],
        "jobs": jobs,
        "unfinished": unfinished,
    }
    from vitcls.compare.figures import save_design_chart, save_learning_curves

    files = {
        "csv": write_text_atomic(out_dir / "compare.csv", csv_text(rows)),
        "markdown": write_text_atomic(out_dir / "compare.md", text),
        "json": write_text_atomic(out_dir / "compare.json", json.dumps(report, indent=2) + "\n"),
        "png": (save_learning_curves(rows, ranking, x, out_dir / "compare.png") if x
                else save_design_chart(rows, ranking, out_dir / "compare.png", selected_on_test)),
        "jobs_csv": write_text_atomic(out_dir / "compare_jobs.csv", csv_text(jobs)),
        "jobs_markdown": write_text_atomic(out_dir / "compare_jobs.md", job_markdown(jobs)),
    }
    if wandb:
        from vitcls.reporting.publish import publish_comparison

        files.update(publish_comparison(["wandb"], sweep_dir, out_dir, rows, files["png"], title))
    printed = job_markdown(jobs) if per_job else text
    return printed, files
