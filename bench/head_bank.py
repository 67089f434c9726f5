"""A head bank against one head alone and against the same designs as a multirun, all on cached features.

    python bench/head_bank.py [--quick | --tiny] [--rounds N]

Frozen ViT-Tiny/16 (random weights: nothing is downloaded), Fruits-360-10, the same data, epochs and feature
cache for everything. Each measurement is `python train.py ...` as a user runs it (a fresh process: Python,
Lightning and Hydra start-up included), timed with its peak memory (PSS, DataLoader workers included):
  single_s            one head alone (`head=linear`), feature cache on
  bank_s              a bank of K designs (4 heads x taps x lrs) in one run: `train.py bank=default ...`
  multirun_cached_s   the same K designs as a Hydra multirun (`train.py -m head=... tap.features=... ...`), one
                      process running the K jobs one after another, feature cache on
  imports_s           `python -c "...import vitcls.run.lifecycle, vitcls.run.studies"`: the part of every process's start-up
                      that is Python importing the stack (torch, Lightning, torchmetrics, timm), paid once per process
First the bank runs once on an empty cache (`bank_cold_s`: it computes every tap of every split in one backbone
pass), so that the measured runs all load their features; then the three measurements run `--rounds` times,
interleaved (single, bank, multirun, imports, single, ...); the medians are reported, and the multirun/bank ratio
is also given beyond the imports (both sides minus `imports_s`). Also: the bank's training speed on
cached features (images/s over all its heads, from its bank.json), and how far the bank's heads are from the
multirun's jobs (largest test-accuracy difference, and the share of designs with the same selected epoch).
Full size adds a 48-design bank (`bank48_s`, 4 heads x 3 taps x 4 lrs) to every round; its taps are the ones
the cold bank computes then. Writes bench/results/head_bank.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    REPO_ROOT,
    TIMM_MODEL,
    add_size_arguments,
    pick_size,
    print_table,
    run_measured,
    subset_folder,
    write_results,
)
from bench.targets import recorded_targets  # noqa: E402

HEADS = ["linear", "norm_linear", "cosine", "mlp"]
# What a train.py process imports before its job starts (vitcls.cli.hydra_job's order).
IMPORTS = ("from vitcls.timm_import import import_timm_without_wandb; import_timm_without_wandb(); "
           "import vitcls.run.lifecycle, vitcls.run.studies")


@dataclass
class BankSize:
    name: str
    img_size: int
    batch_size: int
    train_per_class: int | None
    test_per_class: int | None
    epochs: int
    features: tuple[str, ...]  # the bank's taps: 4 heads x taps x lrs designs
    lrs: tuple[float, ...]
    large_lrs: tuple[float, ...] | None  # with the taps of `large_features`: the 48-design bank (full size)
    large_features: tuple[str, ...] = ("cls", "mean", "last_k")


FULL = BankSize("full", 224, 64, None, None, 5, ("cls", "mean"), (1e-3, 1e-2), (3e-4, 1e-3, 3e-3, 1e-2))
QUICK = BankSize("quick", 224, 16, 10, 4, 3, ("cls", "mean"), (1e-3, 1e-2), None)
TINY = BankSize("tiny", 32, 4, 3, 2, 1, ("cls", "mean"), (1e-3,), None)


def listed(values) -> str:
    return "[" + ",".join(str(v) for v in values) + "]"


def common_overrides(root: Path, size: BankSize, cache: Path) -> list[str]:
    return [
        f"data.root={root}",
        f"model.name={TIMM_MODEL}",
        "model.pretrained=false",
        "model.train_blocks=none",
        f"model.img_size={size.img_size}",
        f"data.batch_size={size.batch_size}",
        f"trainer.max_epochs={size.epochs}",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "feature_cache.enabled=true",
        f"feature_cache.dir={cache}",
    ]


def train(args: list[str], log: Path) -> dict:
    return run_measured([sys.executable, str(REPO_ROOT / "train.py"), *args], log)


def bank_args(features, lrs) -> list[str]:
    return ["bank=default", f"bank.heads={listed(HEADS)}", f"bank.features={listed(features)}",
            f"bank.lrs={listed(lrs)}"]


def multirun_results(sweep_dir: Path) -> dict[tuple, dict]:
    """(head, tap, lr) -> {"acc", "best_epoch"} of each job of a multirun."""
    results = {}
    for summary_file in sweep_dir.glob("*/summary.json"):
        overrides = (summary_file.parent / ".hydra" / "overrides.yaml").read_text()
        settings = dict(line.removeprefix("- ").split("=", 1) for line in overrides.splitlines() if "=" in line)
        summary = json.loads(summary_file.read_text())
        key = (settings["head"], settings["tap.features"], float(settings["optim.head_lr"]))
        results[key] = {"acc": summary["test"]["acc"], "best_epoch": summary["best_epoch"]}
    return results


def bank_results(run_dir: Path) -> tuple[dict[tuple, dict], dict]:
    bank = json.loads((run_dir / "bank.json").read_text())
    heads = {(h["design"]["head"]["name"], h["design"]["tap"]["features"], h["design"]["lr"]):
             {"acc": h["test"]["acc"], "best_epoch": h["best_epoch"]} for h in bank["heads"]}
    return heads, bank


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_arguments(parser)
    parser.add_argument("--rounds", type=int, default=None, help="interleaved repetitions (default: 2, tiny 1)")
    args = parser.parse_args(argv)
    size = pick_size(args, FULL, QUICK, TINY)
    rounds = args.rounds or (1 if size.name == "tiny" else 2)
    designs = len(HEADS) * len(size.features) * len(size.lrs)

    with tempfile.TemporaryDirectory(prefix="vitcls-bench-") as tmp:
        work = Path(tmp)
        root = subset_folder(args.data_root, work / "images", size.train_per_class, size.test_per_class)
        common = common_overrides(root, size, work / "feature_cache")
        bank = bank_args(size.features, size.lrs)
        large_bank = bank_args(size.large_features, size.large_lrs) if size.large_lrs else None
        # The cold bank computes every tap that a measured run reads, so that none of them computes features.
        cold = train([*common, *(large_bank or bank), f"hydra.run.dir={work / 'bank_cold'}"], work / "bank_cold.log")
        measured: dict[str, list[dict]] = {"single": [], "bank": [], "multirun_cached": [], "imports": []}
        if large_bank:
            measured["bank48"] = []
        for index in range(rounds):
            measured["single"].append(train([*common, "head=linear", f"hydra.run.dir={work / f'single{index}'}"],
                                            work / f"single{index}.log"))
            measured["bank"].append(train([*common, *bank, f"hydra.run.dir={work / f'bank{index}'}"],
                                          work / f"bank{index}.log"))
            measured["multirun_cached"].append(train(
                ["-m", *common, f"head={','.join(HEADS)}", f"tap.features={','.join(size.features)}",
                 f"optim.head_lr={','.join(repr(lr) for lr in size.lrs)}", f"hydra.sweep.dir={work / f'multi{index}'}"],
                work / f"multi{index}.log"))
            measured["imports"].append(run_measured(
                [sys.executable, "-c", IMPORTS], work / f"imports{index}.log"))
            if large_bank:
                measured["bank48"].append(train([*common, *large_bank, f"hydra.run.dir={work / f'bank48_{index}'}"],
                                                work / f"bank48_{index}.log"))
        large_json = json.loads((work / "bank48_0" / "bank.json").read_text()) if large_bank else None
        in_bank, bank_json = bank_results(work / "bank0")
        alone = multirun_results(work / "multi0")
        cache_entries = len(list((work / "feature_cache").glob("*.safetensors")))

    assert bank_json["num_heads"] == designs and set(alone) == set(in_bank), (sorted(alone), sorted(in_bank))
    median = {name: statistics.median(m["wall_s"] for m in runs) for name, runs in measured.items()}
    peak = {name: max(m["peak_mem_mb"] for m in runs) for name, runs in measured.items()}
    results = {
        "designs": designs,
        "rounds": rounds,
        "bank_cold_s": cold["wall_s"],
        "single_s": median["single"],
        "bank_s": median["bank"],
        "multirun_cached_s": median["multirun_cached"],
        "wall_s": {name: [m["wall_s"] for m in runs] for name, runs in measured.items()},
        "bank_over_single": median["bank"] / median["single"],
        "multirun_over_bank": median["multirun_cached"] / median["bank"],
        "imports_s": median["imports"],
        "multirun_over_bank_beyond_imports": (median["multirun_cached"] - median["imports"])
        / (median["bank"] - median["imports"]),
        "peak_mem_mb": {**peak, "bank_cold": cold["peak_mem_mb"]},
        "bank_fit_s": bank_json["fit_s"],
        "bank_train_images_per_s": bank_json["train_images_per_s"],
        "bank_head_updates_per_s": bank_json["train_images_per_s"] * designs,
        "feature_cache_entries": cache_entries,
        "max_test_acc_difference_bank_vs_multirun": max(abs(in_bank[k]["acc"] - alone[k]["acc"]) for k in alone),
        "same_best_epoch_share": sum(in_bank[k]["best_epoch"] == alone[k]["best_epoch"] for k in alone) / len(alone),
        "num_samples": bank_json["num_samples"],
        "targets": recorded_targets("head_bank", size.name),
    }
    if large_json:
        results.update({"bank48_s": median["bank48"], "bank48_designs": large_json["num_heads"],
                        "bank48_over_single": median["bank48"] / median["single"],
                        "bank48_fit_s": large_json["fit_s"],
                        "bank48_train_images_per_s": large_json["train_images_per_s"]})
    path = write_results("head_bank", args.out, size, results)
    rows = [
        ("single head (cached)", f"{median['single']:.1f}", "1.00x", f"{peak['single']:.0f}"),
        (f"bank of {designs} (cached)", f"{median['bank']:.1f}", f"{results['bank_over_single']:.2f}x",
         f"{peak['bank']:.0f}"),
        (f"multirun of {designs} (cached)", f"{median['multirun_cached']:.1f}",
         f"{median['multirun_cached'] / median['single']:.2f}x", f"{peak['multirun_cached']:.0f}"),
    ]
    rows.append(("imports only (python -c)", f"{median['imports']:.1f}",
                 f"{median['imports'] / median['single']:.2f}x", f"{peak['imports']:.0f}"))
    if large_json:
        rows.append((f"bank of {large_json['num_heads']} (cached)", f"{median['bank48']:.1f}",
                     f"{results['bank48_over_single']:.2f}x", f"{peak['bank48']:.0f}"))
    print_table(
        f"head bank: frozen ViT-Tiny/16 at {size.img_size}px, {size.epochs} epochs ({size.name}, "
        f"{results['num_samples']}), median of {rounds} interleaved rounds",
        rows, ("run", "wall s", "vs single", "peak MB"),
    )
    print(f"multirun / bank: {results['multirun_over_bank']:.1f}x ({results['multirun_over_bank_beyond_imports']:.1f}x "
          f"beyond the {median['imports']:.1f} s of imports each process pays); bank head training "
          f"{results['bank_train_images_per_s']:.0f} images/s ({results['bank_head_updates_per_s']:.0f} head-images/s); "
          f"cold bank (computes the features): {cold['wall_s']:.1f} s\n"
          f"bank vs multirun: largest test-acc difference {results['max_test_acc_difference_bank_vs_multirun']:.3g}, "
          f"same best epoch for {results['same_best_epoch_share']:.0%} of designs\n-> {path}")
    return results


if __name__ == "__main__":
    main()
