"""A benchmark-suite leaderboard: designs x datasets, ranked on validation, tested on test, with intervals.

Inputs (leaderboard_inputs): one `Entry` per (dataset, design, protocol, seed) trained on all of a dataset's
training data, with its per-image predictions; one `FewShotEntry` per few-shot run. `leaderboard` returns plain
JSON-able values (None where a number does not exist); `leaderboard_outputs.write_leaderboard` writes them as
files (figures: leaderboard_figures).

For the metric M, every number comes from the statistics of vitcls-compare (`stats`):
  per dataset   the mean over seeds of M on val and on test. Interval: t * sqrt(bootstrap variance of the
                seed-mean over resampled images + a seed term), never narrower than the Wilson floor. The seed
                term comes from the design's own seeds; a one-seed design borrows the seed variance pooled over
                that dataset's designs with several seeds, has none in a protocol declared seed-free, and with
                nothing to borrow its interval holds the images alone.
  mean          over the datasets that did not fail. Replicate b of a design's mean is the mean over datasets
                of its replicate b on each: the resamples of a dataset's images are keyed by their paths, so
                every design is scored on the same resampled images and the difference of two designs' means
                is resampled in pairs. Seed terms add up divided by D^2 (the datasets are independent); the
                Wilson floors combine the same way (in quadrature, / D).
  rank          by the mean val over datasets (test never ranks); ties by the order the designs are first
                listed in. mean_rank: the average of its rank by val within each dataset (ties the same way).
  vs best       the design ranked first against every other one, on mean test: one paired test each,
                Holm-corrected over the designs. wins / not_distinguishable / losses / unknown: on each
                dataset the paired test on its test images, Holm-corrected over the designs within that
                dataset; the number of datasets where the design is better / not distinguishable / worse than
                the best / untested.
A design lacking a dataset that others have is shown but neither ranked nor tested (its mean would be over
other datasets). Few-shot runs are not ranked: their test metric per shot count, mean and t interval over
draws x seeds.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from vitcls.compare.leaderboard_inputs import (
    PROTOCOLS,
    SPLITS,
    DesignKey,
    Entry,
    FewShotEntry,
    check_entries,
    check_few_shot,
    check_same_images,
)
from vitcls.compare.scoring import NONE, OWN, POOLED, bounds
from vitcls.compare.stats import (
    DEFAULT_RESAMPLES,
    SIGNIFICANCE,
    Resampler,
    SeedTerm,
    SeedVariance,
    half_width,
    image_floor,
    p_value,
    pooled_seed_variance,
    seed_term,
)
from vitcls.compare.vs_best import (
    BEST,
    BETTER,
    CORRECTION,
    NOT_DISTINGUISHABLE,
    UNKNOWN,
    WORSE,
    VsBest,
    against_best,
    verdict,
)
from vitcls.errors import ConfigError, VitclsError
from vitcls.metrics import better_is, metric_names

SEED_FREE = "seed-free"  # seed_variance of a one-seed design whose protocol does not depend on the seed


@dataclass(frozen=True)
class Summary:
    """A design's score on one split (of one dataset, or its mean over datasets) and what its error is made of."""

    mean: float
    replicates: np.ndarray | None  # (resamples,) of the score on resampled images; None without predictions
    seed_terms: tuple[SeedTerm, ...]  # the seed terms that are known
    seeds_measured: bool  # False when some seed term is unknown (one seed and nothing to borrow)
    floor: tuple[float, float] | None  # how far below / above the mean the interval must reach at least
    n_seeds: int


def interval(summary: Summary, limits: tuple[float, float], alpha: float) -> tuple[float, float] | None:
    """The 1 - alpha interval of the score: images + known seed terms, widened to the floor, clipped to `limits`.
    None when nothing measures the error (no predictions and fewer than two seeds)."""
    if summary.replicates is None and summary.n_seeds < 2:
        return None
    image_variance = 0.0 if summary.replicates is None else float(summary.replicates.var(ddof=1))
    half = half_width(image_variance, summary.seed_terms, alpha)
    low, high = summary.mean - half, summary.mean + half
    if summary.floor is not None:
        low, high = min(low, summary.mean - summary.floor[0]), max(high, summary.mean + summary.floor[1])
    return max(limits[0], low), min(limits[1], high)


def paired_p_value(a: Summary, b: Summary) -> float:
    """Two-sided p-value of a.mean != b.mean, the images resampled in pairs. nan when the error is not measured
    (a side without predictions, or with an unknown seed term)."""
    if a.replicates is None or b.replicates is None or not (a.seeds_measured and b.seeds_measured):
        return math.nan
    image_variance = float((a.replicates - b.replicates).var(ddof=1))
    return p_value(a.mean - b.mean, image_variance, a.seed_terms + b.seed_terms)


def mean_over_datasets(summaries: Sequence[Summary]) -> Summary:
    """The summary of the mean of the scores on D datasets: replicate b is the mean of their replicates b."""
    d = len(summaries)
    replicates = None
    if all(s.replicates is not None for s in summaries):
        replicates = np.mean([s.replicates for s in summaries], axis=0)
    floor = None
    if all(s.floor is not None for s in summaries):
        floor = tuple(math.sqrt(sum(s.floor[side] ** 2 for s in summaries)) / d for side in (0, 1))
    return Summary(
        mean=float(np.mean([s.mean for s in summaries])),
        replicates=replicates,
        seed_terms=tuple((variance / d**2, df) for s in summaries for variance, df in s.seed_terms),
        seeds_measured=all(s.seeds_measured for s in summaries),
        floor=floor,
        n_seeds=min(s.n_seeds for s in summaries),
    )


def design_names(keys: Iterable[DesignKey]) -> dict[DesignKey, str]:
    """A design's name, or design/protocol where the same design runs under several protocols."""
    keys = list(dict.fromkeys(keys))
    protocols: dict[str, int] = {}
    for design, _ in keys:
        protocols[design] = protocols.get(design, 0) + 1
    return {key: key[0] if protocols[key[0]] == 1 else f"{key[0]}/{key[1]}" for key in keys}


def _group(entries: Sequence[Entry]) -> dict[str, dict[DesignKey, list[Entry]]]:
    """dataset -> (design, protocol) -> entries sorted by seed, both in the order first listed."""
    grouped: dict[str, dict[DesignKey, list[Entry]]] = {}
    for entry in entries:
        grouped.setdefault(entry.dataset, {}).setdefault((entry.design, entry.protocol), []).append(entry)
    for designs in grouped.values():
        for runs in designs.values():
            runs.sort(key=lambda entry: entry.seed)
    return grouped


@dataclass(frozen=True)
class _Cell:
    summary: Summary
    seed_variance: str  # OWN, POOLED, SEED_FREE or NONE


def _cells(
    designs: Mapping[DesignKey, list[Entry]], split: str, metric: str, resampler: Resampler,
    seed_free: Collection[str], alpha: float,
) -> dict[DesignKey, _Cell]:
    """Each design's summary on one split of one dataset."""
    pooled = pooled_seed_variance(
        [getattr(entry, split) for entry in runs] for (_, protocol), runs in designs.items()
        if protocol not in seed_free
    )
    scored = [entry for runs in designs.values() for entry in runs if getattr(entry, f"{split}_predictions")]
    # One draw of the resamples for every run on the dataset's images (check_same_images holds them equal).
    replicated = resampler.replicates_of_runs([getattr(entry, f"{split}_predictions") for entry in scored],
                                              [metric], scored[0].num_classes) if scored else []
    replicates_of = {id(entry): found[metric] for entry, found in zip(scored, replicated, strict=True)}
    cells = {}
    for key, runs in designs.items():
        points = [getattr(entry, split) for entry in runs]
        mean = float(np.mean(points))
        found = [getattr(entry, f"{split}_predictions") for entry in runs]
        replicates = floor = None
        if all(p is not None for p in found):
            replicates = np.mean([replicates_of[id(entry)] for entry in runs], axis=0)
            accuracy = float(np.mean([np.mean(p.true == p.pred) for p in found]))
            limits = image_floor(metric, mean, accuracy, min(len(p) for p in found), alpha)
            floor = None if limits is None else (mean - limits[0], limits[1] - mean)
        free = key[1] in seed_free
        term = seed_term(points, SeedVariance(0.0, math.inf) if free else pooled)
        source = OWN if len(points) >= 2 else SEED_FREE if free else POOLED if pooled else NONE
        summary = Summary(mean, replicates, () if term is None else (term,), term is not None, floor, len(points))
        cells[key] = _Cell(summary, source)
    return cells


def _number(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _pair(found: tuple[float, float] | None) -> list[float] | None:
    return None if found is None else [float(found[0]), float(found[1])]


def _ranks(keys: Sequence[DesignKey], score: Mapping[DesignKey, float], minimize: bool) -> dict[DesignKey, int]:
    """1 = best; `keys` in listed order, so that ties keep it (sorted is stable)."""
    ordered = sorted(keys, key=lambda key: score[key] if minimize else -score[key])
    return {key: rank for rank, key in enumerate(ordered, start=1)}


def _few_shot(
    few_shot: Sequence[FewShotEntry], names: Mapping[DesignKey, str], limits: tuple[float, float], alpha: float
) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """dataset -> design -> shots -> test mean, t interval over draws x seeds, n; val mean beside it."""
    check_few_shot(few_shot)
    grouped: dict[str, dict[DesignKey, dict[int, list[FewShotEntry]]]] = {}
    for entry in few_shot:
        grouped.setdefault(entry.dataset, {}).setdefault((entry.design, entry.protocol), {}).setdefault(
            entry.shots, []).append(entry)
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for dataset, designs in grouped.items():
        for key, by_shots in designs.items():
            curve = out.setdefault(dataset, {}).setdefault(names[key], {})
            for shots in sorted(by_shots):
                runs = by_shots[shots]
                values = np.array([entry.test for entry in runs], dtype=np.float64)
                n, mean = len(values), float(values.mean())
                ci = None
                if n >= 2:
                    half = float(scipy_stats.t.ppf(1 - alpha / 2, n - 1)) * float(values.std(ddof=1)) / math.sqrt(n)
                    ci = [max(limits[0], mean - half), min(limits[1], mean + half)]
                curve[str(shots)] = {
                    "mean": mean, "ci": ci, "n": n,
                    "draws": len({entry.draw for entry in runs}), "seeds": len({entry.seed for entry in runs}),
                    "val_mean": float(np.mean([entry.val for entry in runs])),
                }
    return out


def _seed_variance_of_row(labels: Iterable[str]) -> str:
    found = list(dict.fromkeys(labels))
    return found[0] if len(found) == 1 else "mixed"


METHOD = (
    "Per dataset: the mean over seeds of {metric}; {confidence:.0%} interval = mean ± t·SE with SE² = variance "
    "of the seed-mean over {resamples} bootstrap resamples of the dataset's images + a seed term (the design's "
    "own seeds: variance / n; one seed: the variance pooled over that dataset's designs with several seeds, none "
    "for a seed-free protocol, or, with nothing to borrow, images only: see seed_variance), Welch-Satterthwaite "
    "df, never narrower than the Wilson interval of acc on those images. Mean over the {datasets} datasets that "
    "did not fail: bootstrap replicate b of a design's mean is the mean over datasets of its replicate b on "
    "each; every design is scored on the same resampled images of each dataset, so the difference of two "
    "designs' means is resampled in pairs (a paired test); seed terms add as variances / D². Ranked by mean "
    "val/{metric} (test never ranks; ties by the order listed). mean_rank: the average over datasets of the "
    "design's rank by val/{metric} within each dataset. vs_best: the two-sided paired test of its mean "
    "test/{metric} minus that of the design ranked first, {correction}-corrected over the {tests} designs "
    "tested. W/N/L: on each dataset the same paired test on that dataset's test images, {correction}-corrected "
    "over the designs within the dataset; the number of datasets where the design is better / not "
    "distinguishable / worse than the design ranked first (corrected p < {alpha:g}, the sign of the "
    "difference). 'Not distinguishable': the test found no difference at alpha {alpha:g}; that is not evidence "
    "that the designs are equal. Few-shot: mean test/{metric} over draws x seeds, t interval with n - 1 df."
)


def _against_best(
    ranked: Sequence[DesignKey], summaries: Mapping[DesignKey, Summary], names: Mapping[DesignKey, str],
    minimize: bool, alpha: float,
) -> tuple[dict[DesignKey, dict[str, Any]], list[VsBest]]:
    """Every design but the first of `ranked` tested against it on `summaries` (paired): one family,
    Holm-corrected. Returns each design's columns (diff_vs_best, p_vs_best_raw, p_vs_best_holm, vs_best) and the
    tests."""
    best, others = ranked[0], ranked[1:]
    differences = [summaries[key].mean - summaries[best].mean for key in others]
    sign = -1.0 if minimize else 1.0
    results = against_best([names[key] for key in others], [sign * d for d in differences],
                           [paired_p_value(summaries[key], summaries[best]) for key in others], alpha)
    columns = {best: {"diff_vs_best": 0.0, "p_vs_best_raw": None, "p_vs_best_holm": None, "vs_best": BEST}}
    for key, difference, result in zip(others, differences, results, strict=True):
        columns[key] = {"diff_vs_best": difference, "p_vs_best_raw": _number(result.p_raw),
                        "p_vs_best_holm": _number(result.p_holm), "vs_best": result.label}
    return columns, results


_UNRANKED = ("mean_val", "mean_val_ci", "mean_test", "mean_test_ci", "mean_rank", "wins", "not_distinguishable",
             "losses", "unknown", "diff_vs_best", "p_vs_best_raw", "p_vs_best_holm", "vs_best")


def leaderboard(
    entries: Sequence[Entry],
    few_shot: Sequence[FewShotEntry] = (),
    metric: str = "f1_macro",
    resamples: int = DEFAULT_RESAMPLES,
    alpha: float = SIGNIFICANCE,
    *,
    failed: Mapping[str, str] | None = None,
    seed_free_protocols: Collection[str] = (),
) -> dict[str, Any]:
    """The leaderboard as JSON-able values (see the module's docstring for every definition).

    `failed`: dataset -> why it failed; it is listed, and its entries, if any, are left out of every number.
    `seed_free_protocols`: protocols whose result does not depend on the seed (e.g. knn on frozen features):
    a one-seed design of these has no seed variance, rather than a borrowed or an unknown one.
    """
    failed = dict(failed or {})
    if metric not in metric_names():
        raise ConfigError(f"metric {metric!r}: not a metric; choose one of {', '.join(metric_names())}")
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha {alpha}: must lie between 0 and 1 (e.g. {SIGNIFICANCE})")
    unknown = sorted(set(seed_free_protocols) - set(PROTOCOLS))
    if unknown:
        raise ConfigError(f"seed_free_protocols {unknown}: not protocols; choose from {', '.join(PROTOCOLS)}")
    if not entries and not failed:
        raise VitclsError("no leaderboard entries and no failed dataset: nothing to rank")
    used = [entry for entry in entries if entry.dataset not in failed]
    check_entries(used, metric)
    minimize = better_is(metric) == "min"
    limits = bounds(metric)
    resampler = Resampler(resamples)
    seed_free = frozenset(seed_free_protocols)

    grouped = _group(used)
    included = list(grouped)
    datasets = list(dict.fromkeys([*(entry.dataset for entry in entries), *failed]))
    keys = list(dict.fromkeys((entry.design, entry.protocol) for entry in used))
    names = design_names([*keys, *((e.design, e.protocol) for e in few_shot)])
    cells: dict[str, dict[str, dict[DesignKey, _Cell]]] = {}
    for dataset in included:
        for split in SPLITS:
            check_same_images([e for runs in grouped[dataset].values() for e in runs], dataset, split)
        cells[dataset] = {split: _cells(grouped[dataset], split, metric, resampler, seed_free, alpha)
                          for split in SPLITS}

    complete = [key for key in keys if all(key in grouped[d] for d in included)]
    means = {key: {split: mean_over_datasets([cells[d][split][key].summary for d in included]) for split in SPLITS}
             for key in complete}
    rank = _ranks(complete, {key: means[key]["val"].mean for key in complete}, minimize)
    ranked = sorted(complete, key=rank.__getitem__)
    dataset_ranks = {d: _ranks(complete, {key: cells[d]["val"][key].summary.mean for key in complete}, minimize)
                     for d in included}
    on_mean, results, per_dataset = {}, [], {d: {} for d in included}
    if ranked:
        on_mean, results = _against_best(ranked, {key: means[key]["test"] for key in ranked}, names, minimize, alpha)
        for d in included:
            per_dataset[d] = _against_best(ranked, {key: cells[d]["test"][key].summary for key in ranked}, names,
                                           minimize, alpha)[0]

    rows = []
    for key in [*ranked, *(key for key in keys if key not in complete)]:
        row: dict[str, Any] = {"rank": rank.get(key), "name": names[key], "design": key[0], "protocol": key[1]}
        present = [d for d in included if key in grouped[d]]
        row["n_seeds"] = min(cells[d]["test"][key].summary.n_seeds for d in present)
        row["seed_variance"] = _seed_variance_of_row(cells[d]["test"][key].seed_variance for d in present)
        row["datasets"] = {}
        for d in present:
            val, test = cells[d]["val"][key], cells[d]["test"][key]
            row["datasets"][d] = {
                "val": val.summary.mean, "val_ci": _pair(interval(val.summary, limits, alpha)),
                "test": test.summary.mean, "test_ci": _pair(interval(test.summary, limits, alpha)),
                "n_seeds": test.summary.n_seeds, "seed_variance": test.seed_variance,
                "val_rank": dataset_ranks[d].get(key), **per_dataset[d].get(key, {}),
            }
        row["missing"] = [d for d in included if d not in present]
        row.update(dict.fromkeys(_UNRANKED))
        if key in means:
            row["mean_val"] = means[key]["val"].mean
            row["mean_val_ci"] = _pair(interval(means[key]["val"], limits, alpha))
            row["mean_test"] = means[key]["test"].mean
            row["mean_test_ci"] = _pair(interval(means[key]["test"], limits, alpha))
            row["mean_rank"] = float(np.mean([dataset_ranks[d][key] for d in included]))
            if key != ranked[0]:
                labels = [per_dataset[d][key]["vs_best"] for d in included]
                row.update(wins=labels.count(BETTER), not_distinguishable=labels.count(NOT_DISTINGUISHABLE),
                           losses=labels.count(WORSE), unknown=labels.count(UNKNOWN))
            row.update(on_mean[key])
        rows.append(row)

    if ranked:
        line = verdict(names[ranked[0]], results, [means[key]["test"].n_seeds for key in ranked],
                       selected_on=f"mean val/{metric} over {len(included)} dataset{'s' * (len(included) != 1)}",
                       tested_on=f"mean test/{metric}", alpha=alpha)
    else:
        line = "no design has results on every dataset that did not fail: nothing is ranked"
    seeds = [row["n_seeds"] for row in rows]
    lacking = {names[key]: [f"{d} ({split})" for d in included for split in SPLITS
                            if key in cells[d][split] and cells[d][split][key].summary.replicates is None]
               for key in keys}
    return {
        "metric": metric,
        "ranked_by": f"val/{metric}, mean over datasets",
        "tested_on": f"test/{metric}, paired against the design ranked first",
        "minimize": minimize,
        "datasets": datasets,
        "datasets_in_means": included,
        "failed": failed,
        "best": names[ranked[0]] if ranked else None,
        "verdict": line,
        "counts": {"designs": len(keys), "ranked": len(ranked), "datasets": len(datasets),
                   "datasets_in_means": len(included), "failed": len(failed),
                   "seeds": [min(seeds), max(seeds)] if seeds else None},
        "confidence": 1.0 - alpha,
        "alpha": alpha,
        "multiple_testing": CORRECTION.lower(),
        "bootstrap_resamples": resamples,
        "seed_free_protocols": sorted(seed_free),
        "method": METHOD.format(metric=metric, confidence=1.0 - alpha, resamples=resamples, datasets=len(included),
                                correction=CORRECTION, tests=max(len(ranked) - 1, 0), alpha=alpha),
        "notes": _notes(rows, failed, lacking),
        "rows": rows,
        "few_shot": _few_shot(few_shot, names, limits, alpha),
    }


def _notes(rows: Sequence[dict[str, Any]], failed: Mapping[str, str], lacking: Mapping[str, list[str]]) -> list[str]:
    """`lacking`: design name -> the dataset splits where it has no per-image predictions."""
    notes = []
    if failed:
        notes.append("Failed datasets, left out of every mean, rank and count: "
                     + "; ".join(f"{d}: {reason}" for d, reason in failed.items()))
    incomplete = [row["name"] for row in rows if row["missing"]]
    if incomplete:
        notes.append("Not ranked nor tested, for lack of results on some dataset (its mean would be over other "
                     "datasets): " + ", ".join(f"{row['name']} (missing {', '.join(row['missing'])})"
                                               for row in rows if row["missing"]))
    by_source: dict[str, list[str]] = {}
    for row in rows:
        for d, cell in row["datasets"].items():
            by_source.setdefault(cell["seed_variance"], []).append(f"{row['name']} on {d}")
    if by_source.get(POOLED):
        notes.append("One seed, seed variance borrowed from the designs of the same dataset with several seeds: "
                     + ", ".join(by_source[POOLED]))
    if by_source.get(NONE):
        notes.append("One seed and no seed variance to borrow: the interval holds the image sampling alone and "
                     "there is no p-value (unknown): " + ", ".join(by_source[NONE]))
    if any(lacking.values()):
        notes.append("No per-image predictions (the interval comes from the seeds alone, none with one seed; "
                     "no p-value): " + "; ".join(f"{name} on {', '.join(where)}"
                                                 for name, where in lacking.items() if where))
    return notes
