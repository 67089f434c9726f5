"""The benches' targets, and one table of which the result files meet.

    python bench/targets.py [--results bench/results]

For every <name>.json in the results folder: each target its bench (TARGETS) sets for the file's size, with the
measured value, met, missed or n/a (a target that does not apply on this machine, a file from before the check
the value depends on, a value the file does not hold), and the 1-minute load average and date the file records.
Speed and quality targets are set for the full and --quick sizes; --tiny runs are smoke tests, judged only on
what holds at any size (resume).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
FULL_AND_QUICK = ("full", "quick")


@dataclass(frozen=True)
class Target:
    bench: str  # the `bench` name the result file records
    name: str  # the measured value: a key of the result file ("a.b": nested)
    what: str
    at_least: float | None = None  # neither bound: the value must be true
    at_most: float | None = None
    over: str | None = None  # the measured value is `name` / `over`
    sizes: tuple[str, ...] = FULL_AND_QUICK
    # A key of the result file that must be there and true for the target to apply: a machine condition, or
    # a check the value is only meaningful with (files from before the check stay unjudged).
    applies_if: str | None = None

    @property
    def key(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    def bound(self) -> str:
        if self.at_least is not None:
            return f">= {self.at_least:g}"
        return f"<= {self.at_most:g}" if self.at_most is not None else "true"

    def met(self, value: float | bool) -> bool:
        if self.at_least is not None:
            return value >= self.at_least
        return value <= self.at_most if self.at_most is not None else value is True

    def measure(self, data: dict) -> float | bool | None:
        value = lookup(data, self.name)
        if self.over is None or value is None:
            return value
        denominator = lookup(data, self.over)
        return None if not denominator else value / denominator


ALL_SIZES = ("full", "quick", "tiny", "gpu")
TARGETS = (
    # Every variant ran the same work, checked: `same_work` (files from before the check are not judged).
    Target("train", "vitcls_vs_hf", "vitcls / HF Trainer (tutorial) training images/s", at_least=1.6,
           applies_if="same_work"),
    Target("train", "vitcls_vs_bare", "vitcls / bare loop training images/s", at_least=0.95, applies_if="same_work"),
    Target("train", "vitcls_eval_vs_hf", "vitcls / HF Trainer (tutorial) evaluation images/s", at_least=2.5,
           applies_if="same_work"),
    Target("train", "vitcls_flops_utilisation", "vitcls training FLOPs / matmul peak", at_least=0.55,
           applies_if="same_work"),
    # At --quick HF's preprocessing cache is small: the memory comparison is the full size's.
    Target("train", "peak_mem_mb.vitcls", "vitcls / HF Trainer (tutorial) peak memory", at_most=1.0,
           over="peak_mem_mb.hf", sizes=("full",), applies_if="same_work"),
    Target("predict", "ratios.predictor_vs_pipeline", "Predictor / per-image HF pipeline images/s", at_least=1.3),
    Target("predict", "ratios.predictor_vs_bare", "Predictor / bare batched loop images/s", at_least=0.9),
    Target("precision", "measured.train_preset_vs_bare_fp32", "preset precision training / bare fp32 loop",
           at_least=1.2, applies_if="speed_targets_apply"),
    Target("precision", "measured.predict_bf16_vs_fp32", "Predictor bf16 / fp32 images/s", at_least=2.0,
           applies_if="speed_targets_apply"),
    Target("precision", "measured.acc_difference", "test accuracy difference, bf16 vs fp32", at_most=0.01),
    Target("precision", "measured.top1_agreement", "Predictor top-1 agreement bf16 vs fp32", at_least=0.995),
    Target("head_sweep", "speedup", "uncached / feature-cached sweep wall time", at_least=10, sizes=("full",)),
    Target("head_sweep", "speedup", "uncached / feature-cached sweep wall time", at_least=5, sizes=("quick",)),
    Target("head_sweep", "max_test_metric_difference", "largest test-metric difference, cached vs uncached",
           at_most=1e-5),
    Target("prefix_cache", "speedup", "uncached / cached-token run wall time", at_least=2.5, sizes=("full",)),
    Target("prefix_cache", "speedup", "uncached / cached-token run wall time", at_least=2.0, sizes=("quick",)),
    # bfloat16 tokens: the tolerance tests/test_prefix_cache.py checks
    Target("prefix_cache", "max_test_metric_difference", "largest test-metric difference, cached vs uncached",
           at_most=0.02),
    Target("head_bank", "bank_over_single", "bank of 16 designs / one head wall time", at_most=1.5),
    Target("head_bank", "multirun_over_bank", "16 designs as a multirun / bank wall time", at_least=8.0),
    Target("head_bank", "bank48_over_single", "bank of 48 designs / one head wall time", at_most=2.0,
           sizes=("full",)),
    Target("suite", "suite_over_backbone", "whole suite / its backbone passes alone, wall time", at_most=1.3,
           sizes=("full",), applies_if="same_work"),
    Target("suite", "naive_over_suite", "the naive way (a process per cell and design, extrapolated) / the suite",
           at_least=10, applies_if="same_work"),
    Target("suite", "same_work", "the naive runs trained the same head images as the suite's cells",
           sizes=ALL_SIZES),
    Target("resume", "went_on_from_checkpoint.ok", "the resumed run went on from the killed run's checkpoint",
           sizes=ALL_SIZES),
    Target("resume", "identical", "killed + resumed run equals the uninterrupted run", sizes=ALL_SIZES,
           applies_if="went_on_from_checkpoint"),
)


def targets_of(bench: str, size: str | None = None) -> list[Target]:
    """The targets of `bench`; with `size`, those set for that size."""
    return [t for t in TARGETS if t.bench == bench and (size is None or size in t.sizes)]


def recorded_targets(bench: str, size: str) -> dict[str, str]:
    """What a bench writes into its result file: {measured key: bound} of the targets set for `size`."""
    return {t.key: t.bound() for t in targets_of(bench, size)}


def lookup(data: dict, name: str):
    for part in name.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def shown(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "-"
    return f"{value:.3g}"


def rows_of(name: str, data: dict) -> list[tuple[str, ...]]:
    """One row per target of the file's bench: bench, size, target, measured, verdict, load, date."""
    bench = data.get("bench", name)
    size = lookup(data, "size.name") or "?"
    machine = data.get("machine") if isinstance(data.get("machine"), dict) else {}
    load = machine.get("load_average_1min")
    recorded = (f"{load:g}" if load is not None else "not recorded", machine.get("date") or data.get("date") or "?")
    rows = []
    for target in targets_of(bench, None if size == "?" else size):
        value = target.measure(data)
        if target.applies_if and target.applies_if not in data:
            verdict = f"n/a (no {target.applies_if} in this file: rerun)"
        elif target.applies_if and not data[target.applies_if]:
            verdict = f"n/a ({target.applies_if} is false)"
        elif value is None:
            verdict = "n/a (not in this file)"
        else:
            verdict = "met" if target.met(value) else "missed"
        rows.append((name, size, f"{target.what} {target.bound()}", shown(value), verdict, *recorded))
    if not rows:
        rows.append((name, size, f"no target set{' for this size' if targets_of(bench) else ''}", "-", "-", *recorded))
    return rows


def table(results: Path) -> list[tuple[str, ...]]:
    return [row for path in sorted(Path(results).glob("*.json"))
            for row in rows_of(path.stem, json.loads(path.read_text()))]


HEADER = ("file", "size", "target", "measured", "result", "load (1 min)", "date")


def main(argv: list[str] | None = None) -> list[tuple[str, ...]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS, help="the folder of <name>.json result files")
    args = parser.parse_args(argv)
    rows = table(args.results)
    if not rows:
        raise SystemExit(f"no result files (*.json) in {args.results}")
    print(f"targets of the result files in {args.results}\n")
    for index, row in enumerate((HEADER, *rows)):
        print("| " + " | ".join(row) + " |")
        if index == 0:
            print("|" + " --- |" * len(row))
    met, missed = (sum(row[4] == verdict for row in rows) for verdict in ("met", "missed"))
    print(f"\n{met} met, {missed} missed, {len(rows) - met - missed} not judged")
    return rows


if __name__ == "__main__":
    main()
