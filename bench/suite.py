"""A benchmark suite against its backbone passes alone and against the naive way (a process per cell and design).

    python bench/suite.py [--quick | --tiny] [--naive-designs N] [--data NAME=ROOT ...]

The dev suite with a frozen random ViT-Tiny (nothing is downloaded): a 24-design bank (4 heads x taps cls, mean x
3 head lrs), k-NN and logistic regression, shots {5, 10, all} x 3 draws, one seed, on every dataset (default: the
three shared folders; --quick and --tiny take a few images per class of each). Measured:
  backbone_s   the backbone passes alone: per dataset, the features of both taps for the whole training split, val
               and test into an empty cache, timed in one process (imports excluded)
  suite_s      the whole suite, `python train.py suite=custom ...` on an empty cache (a fresh process: start-up,
               every backbone pass, every cell)
  naive_s      the naive way: every cell and design its own `python train.py` process, the head trained without a
               cache (the backbone runs on every batch), each probe in a process of its own that computes its
               features. Measured for --naive-designs designs on two cells of the first dataset (all the data, and
               5 shots), then EXTRAPOLATED to every cell, design and probe of the suite (per-cell means times counts)
Same work, counted from each run's outputs, not computed: the head-training images (epochs x training images,
per head) of the measured naive runs equal those of the same cells and designs in the suite.
Targets (bench/targets.py): suite_s <= 1.3 x backbone_s at full size; naive_s >= 10 x suite_s.
Writes bench/results/suite.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    REPO_ROOT,
    add_size_arguments,
    pick_size,
    print_table,
    run_measured,
    subset_folder,
    write_results,
)

HEADS = ["linear", "norm_linear", "cosine", "mlp"]
TAPS = ["cls", "mean"]
LRS = [1e-3, 3e-3, 1e-2]
SHOTS = [5, 10]
DRAWS = 3
PROBES = ["knn", "logreg"]
SHARED = REPO_ROOT.parent / "shared" / "data"
DATASETS = ("fruits360-10", "eurosat-10", "clothing-10")


@dataclass
class SuiteSize:
    name: str
    img_size: int
    batch_size: int
    epochs: int
    train_per_class: int | None
    test_per_class: int | None


FULL = SuiteSize("full", 64, 64, 10, None, None)
QUICK = SuiteSize("quick", 64, 32, 5, 40, 15)
TINY = SuiteSize("tiny", 32, 8, 2, 12, 4)


def common_overrides(size: SuiteSize) -> list[str]:
    return ["model.pretrained=false", f"model.img_size={size.img_size}", "model.train_blocks=none",
            "trainer=cpu", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
            f"trainer.max_epochs={size.epochs}", "trainer.num_sanity_val_steps=0", f"data.batch_size={size.batch_size}"]


def bank_overrides() -> list[str]:
    return ["bank=default", f"bank.heads=[{','.join(HEADS)}]", f"bank.features=[{','.join(TAPS)}]",
            f"bank.lrs=[{','.join(map(str, LRS))}]"]


def backbone_passes(datasets: dict[str, Path], size: SuiteSize, cache: Path) -> dict[str, float]:
    """Seconds of the feature pass of each dataset (both taps, every split), in this process."""
    from hydra import compose, initialize_config_dir

    from vitcls.config import config_dir, register_resolvers
    from vitcls.distributed import BatchLayout
    from vitcls.run.inputs import training_inputs
    from vitcls.run.lifecycle import build_datamodule, build_module, build_trainer
    from vitcls.run.studies import HeadBank

    register_resolvers()
    seconds = {}
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        for name, root in datasets.items():
            cfg = compose("train", [*common_overrides(size), *bank_overrides(), f"data.root={root}",
                                    "feature_cache.enabled=true", f"feature_cache.dir={cache}",
                                    f"paths.output_dir={cache.parent / 'backbone' / name}", "seed=1"])
            study = HeadBank()
            datamodule = build_datamodule(cfg)
            trainer = build_trainer(cfg, study)
            layout = BatchLayout(size.batch_size, 1, 1, 1)
            module = build_module(cfg, study.designs(cfg), datamodule.class_names, layout)
            datamodule.set_data_config(module.data_config)
            started = time.perf_counter()
            training_inputs(cfg, datamodule, module, trainer)
            seconds[name] = round(time.perf_counter() - started, 2)
    return seconds


def suite_command(datasets: dict[str, Path], size: SuiteSize, suite_dir: Path, cache: Path) -> list[str]:
    listed = ", ".join(f"{name}: {root}" for name, root in datasets.items())
    return [sys.executable, str(REPO_ROOT / "train.py"), "suite=custom", f"suite.datasets={{{listed}}}",
            *common_overrides(size), *bank_overrides(), "suite.seeds=[1]", f"suite.shots=[{','.join(map(str, SHOTS))}]",
            f"suite.draws={DRAWS}", f"hydra.sweep.dir={suite_dir}", f"feature_cache.dir={cache}"]


def head_images(run_dir: Path) -> dict[str, int]:
    """Head-training images of a finished run, per design: epochs x training images (counted from its files)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    images = summary["epochs_trained"] * summary["num_samples"]["train"]
    bank = run_dir / "bank.json"
    if bank.is_file():
        return {h["name"]: images for h in json.loads(bank.read_text())["heads"] if h.get("protocol", "head") == "head"}
    return {summary["design"]: images}


def naive_runs(root: Path, size: SuiteSize, out: Path, designs: int) -> list[dict]:
    """Each of the first `designs` designs of the bank, alone and uncached, on two cells (all data; 5 shots draw 0),
    and each probe alone in its own process on those cells."""
    runs = []
    combos = [(h, t, lr) for h in HEADS for t in TAPS for lr in LRS][:designs]
    classes = len([p for p in (root / "train").iterdir() if p.is_dir()])
    for shots in (None, SHOTS[0]):
        # as the suite's cells: a few-shot cell's batch is at most its training images, evaluated in full batches
        cell = ["data.train_per_class=null"] if shots is None else [
            f"data.train_per_class={shots}", "data.subset_seed=1000", f"data.eval_batch_size={size.batch_size}",
            f"data.batch_size={min(size.batch_size, shots * classes)}"]
        base = [o for o in common_overrides(size) if shots is None or not o.startswith("data.batch_size=")]
        for index, (head, tap, lr) in enumerate(combos):
            run_dir = out / f"naive_{shots or 'all'}_{index}"
            command = [sys.executable, str(REPO_ROOT / "train.py"), *base, f"data.root={root}", *cell, f"head={head}", f"tap.features={tap}", f"optim.head_lr={lr}", "seed=1",
                       "feature_cache.enabled=false", f"hydra.run.dir={run_dir}"]
            measured = run_measured(command, run_dir.with_suffix(".log"))
            runs.append({"cell": shots or "all", "kind": "head", "design": f"{head}/{tap}/{lr}",
                         "wall_s": measured["wall_s"], "head_images": sum(head_images(run_dir).values())})
        for probe in PROBES:
            run_dir = out / f"naive_{shots or 'all'}_{probe}"
            command = [sys.executable, str(REPO_ROOT / "train.py"), *base, f"data.root={root}", *cell,
                       "trainer.max_epochs=0", "seed=1", f"+probe@probes.{probe}={probe}",
                       "feature_cache.enabled=true", f"feature_cache.dir={run_dir}_cache", f"hydra.run.dir={run_dir}"]
            measured = run_measured(command, run_dir.with_suffix(".log"))
            runs.append({"cell": shots or "all", "kind": probe, "design": probe, "wall_s": measured["wall_s"]})
    return runs


def extrapolate(runs: list[dict], cells_per_dataset: dict[str, int], datasets: int) -> float:
    """Every cell x (24 designs + 2 probes), from the measured per-process means of each kind of cell."""
    total = 0.0
    for cell, count in cells_per_dataset.items():
        heads = [r["wall_s"] for r in runs if r["cell"] == cell and r["kind"] == "head"]
        probes = {p: [r["wall_s"] for r in runs if r["cell"] == cell and r["kind"] == p] for p in PROBES}
        per_cell = sum(heads) / len(heads) * len(HEADS) * len(TAPS) * len(LRS) + sum(sum(v) / len(v) for v in probes.values())
        total += per_cell * count * datasets
    return round(total, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_size_arguments(parser)
    parser.add_argument("--data", nargs="+", default=None, metavar="NAME=ROOT",
                        help="the datasets (default: the three shared folders beside the repository)")
    parser.add_argument("--naive-designs", type=int, default=2, help="designs measured the naive way (per cell)")
    args = parser.parse_args(argv)
    size = pick_size(args, FULL, QUICK, TINY)
    given = dict(item.split("=", 1) for item in args.data) if args.data else {n: str(SHARED / n) for n in DATASETS}
    with tempfile.TemporaryDirectory(prefix="vitcls-bench-suite-") as scratch:
        scratch = Path(scratch)
        datasets = {name: subset_folder(Path(root), scratch / "data" / name, size.train_per_class, size.test_per_class)
                    for name, root in given.items()}
        backbone = backbone_passes(datasets, size, scratch / "backbone_cache")
        suite_dir = scratch / "suite"
        suite = run_measured(suite_command(datasets, size, suite_dir, scratch / "suite_cache"), scratch / "suite.log")
        first = next(iter(datasets))
        naive = naive_runs(datasets[first], size, scratch, args.naive_designs)
        cells = {"all": 1, SHOTS[0]: len(SHOTS) * DRAWS}  # 5-shot cells stand in for every few-shot cell
        naive_s = extrapolate(naive, cells, len(datasets))
        suite_images = {}
        for cell_dir in (suite_dir / first / "seed1" / "all", suite_dir / first / "seed1" / f"shots{SHOTS[0]}_draw0"):
            suite_images.update({(cell_dir.name, k): v for k, v in head_images(cell_dir).items()})
        counted = [(("all" if r["cell"] == "all" else f"shots{SHOTS[0]}_draw0"), r) for r in naive if r["kind"] == "head"]
        same_work = all(r["head_images"] == next(v for (c, _), v in suite_images.items() if c == cell)
                        for cell, r in counted)
        board = json.loads((suite_dir / "leaderboard.json").read_text())
    backbone_s = round(sum(backbone.values()), 2)
    results = {
        "datasets": list(given),
        "designs": len(HEADS) * len(TAPS) * len(LRS), "probes": PROBES, "shots": [*SHOTS, "all"], "draws": DRAWS,
        "backbone_s": backbone_s, "backbone_s_per_dataset": backbone,
        "suite_s": suite["wall_s"], "suite_peak_mem_mb": suite["peak_mem_mb"],
        "suite_over_backbone": round(suite["wall_s"] / backbone_s, 2),
        "naive_s": naive_s, "naive_extrapolated": True, "naive_measured": naive,
        "naive_over_suite": round(naive_s / suite["wall_s"], 1),
        "same_work": same_work, "leaderboard_rows": len(board["rows"]),
    }
    write_results("suite", args.out, size, results)
    print_table(f"suite bench ({size.name})", [
        ("backbone passes alone", backbone_s, "1.00x"),
        ("whole suite", suite["wall_s"], f"{results['suite_over_backbone']}x the backbone passes"),
        ("naive (extrapolated)", naive_s, f"{results['naive_over_suite']}x the suite"),
    ], ("what", "seconds", "ratio"))


if __name__ == "__main__":
    main()
