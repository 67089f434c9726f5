"""Partial fine-tuning (model.train_blocks=2) with and without the prefix-token cache, end to end through vitcls.

    python bench/prefix_cache.py [--quick | --tiny] [--rounds N] [--data-root ROOT]
    python bench/prefix_cache.py --data-root ../shared/data/eurosat-10   # a test set where accuracy is not 1.0

ViT-Tiny/16 at 224 px, the last 2 blocks + final norm + a linear head training, 3 epochs on Fruits-360-10
(`--quick`: 30 train + 12 test images per class), batch 16, fp32, runs through `vitcls.run.lifecycle.run` in this
process (as a Hydra multirun job does):
  uncached  every epoch decodes every image and runs all 12 blocks (the first 10 without autograd)
  cold      feature_cache.enabled=true on an empty cache: one inference pass stores the tokens entering block
            10 (bfloat16, memory-mapped), then training runs blocks 10-11 only
  warm      the same with the tokens already cached: what every later job of a sweep over heads, lrs, seeds... pays
Runs are interleaved (cold first, which also pays the process's start-up costs, then `--rounds` uncached/warm
pairs); medians are reported.
All runs share one decode-check memo (`data.image_check_cache_dir`, filled before timing), so no side gets
it for free. `speedup` = uncached / warm; `speedup_including_fill` = uncached / cold. Also: the bytes on disk,
where each run's time goes, and per test metric (acc, f1_macro, loss) the largest difference between a cached
and the uncached run, next to the largest difference between repeated uncached runs. On Fruits-360 both reach
accuracy 1.0, so only the loss can differ there: `--data-root` takes any ROOT/{train,test[,val]}/<class>/ folder.
Writes bench/results/prefix_cache.json.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hydra import compose, initialize_config_dir  # noqa: E402

from bench.common import (  # noqa: E402
    TIMM_MODEL,
    add_size_arguments,
    pick_size,
    print_table,
    spread,
    subset_folder,
    write_results,
)
from bench.phases import RunPhases, mean_phases  # noqa: E402
from bench.targets import recorded_targets  # noqa: E402


@dataclass
class PrefixSize:
    name: str
    img_size: int
    batch_size: int
    train_per_class: int | None
    test_per_class: int | None
    epochs: int
    train_blocks: int = 2


FULL = PrefixSize("full", 224, 16, None, None, epochs=3)
QUICK = PrefixSize("quick", 224, 16, 30, 12, epochs=3)
TINY = PrefixSize("tiny", 32, 4, 3, 2, epochs=1)


def fill_check_memo(root: Path, memo_dir: Path) -> None:
    """The decode check of every image, once, untimed: every timed run then reads it from the memo."""
    from vitcls.data.datamodule import ImageFolderDataModule

    ImageFolderDataModule(root, image_check_cache_dir=memo_dir).scan()


def test_metric_differences(summaries: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """Largest absolute difference of each test metric (acc, f1_macro, loss, ...): every cached run (cold and
    warm) against the first uncached run, and the later uncached runs against it (what repeating the same
    uncached run changes: the floor below which a cached-vs-uncached difference means nothing; empty with one
    round)."""
    reference = summaries["uncached"][0]["test"]

    def largest(runs: list[dict]) -> dict[str, float]:
        if not runs:
            return {}
        return {metric: max(abs(run["test"][metric] - value) for run in runs) for metric, value in reference.items()}

    return {"cached_vs_uncached": largest([*summaries["cold"], *summaries["warm"]]),
            "uncached_repeats": largest(summaries["uncached"][1:])}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_arguments(parser)
    parser.add_argument("--rounds", type=int, help="uncached/warm pairs (default 2; --tiny 1)")
    args = parser.parse_args(argv)
    size = pick_size(args, FULL, QUICK, TINY)
    rounds = args.rounds or (1 if size.name == "tiny" else 2)
    logging.getLogger("lightning").setLevel(logging.WARNING)

    from vitcls.config import config_dir, register_resolvers

    register_resolvers()
    with tempfile.TemporaryDirectory(prefix="vitcls-bench-") as tmp:
        work = Path(tmp)
        root = subset_folder(args.data_root, work / "images", size.train_per_class, size.test_per_class)
        fill_check_memo(root, work / "check_memo")
        common = [
            f"data.root={root}",
            f"model.name={TIMM_MODEL}",
            "model.pretrained=false",
            f"model.train_blocks={size.train_blocks}",
            f"model.img_size={size.img_size}",
            f"data.batch_size={size.batch_size}",
            f"trainer.max_epochs={size.epochs}",
            "trainer.precision=32-true",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            f"data.image_check_cache_dir={work / 'check_memo'}",
            f"feature_cache.dir={work / 'cache'}",
        ]
        # The first run of the process also pays one-time start-up costs: it is the cold cached run, so they
        # count against the cache.
        order = ["cold"] + ["uncached", "warm"] * rounds
        summaries: dict[str, list[dict]] = {"uncached": [], "cold": [], "warm": []}
        phases: dict[str, list[dict]] = {"uncached": [], "cold": [], "warm": []}
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"), RunPhases() as timer:
            for index, kind in enumerate(order):
                print(f"run {index + 1}/{len(order)}: {kind}", flush=True)
                overrides = [*common, f"feature_cache.enabled={str(kind != 'uncached').lower()}",
                             f"paths.output_dir={work / 'runs' / f'{index}_{kind}'}"]
                summaries[kind].append(timer.run(compose(config_name="train", overrides=overrides)))
                phases[kind].append(timer.last)
        cache_files = sorted((work / "cache").glob("*.safetensors"))
        disk_mb = sum(p.stat().st_size for p in cache_files) / 2**20

    wall = {kind: spread([p["total"] for p in runs]) for kind, runs in phases.items()}
    uncached_s, cached_s, cold_s = (wall[kind]["median"] for kind in ("uncached", "warm", "cold"))
    differences = test_metric_differences(summaries)
    num_samples = summaries["uncached"][0]["num_samples"]
    results = {
        "cached_s": cached_s,
        "uncached_s": uncached_s,
        "cold_cached_s": cold_s,
        "speedup": uncached_s / cached_s,
        "speedup_including_fill": uncached_s / cold_s,
        "targets": recorded_targets("prefix_cache", size.name),
        "disk_mb": disk_mb,
        "disk_mb_per_image": disk_mb / sum(num_samples.values()),
        "cache_files": len(cache_files),
        "token_dtype": "bfloat16",
        "tokens_entering_block": 12 - size.train_blocks,
        "data_root": str(args.data_root),
        "max_test_metric_difference": max(differences["cached_vs_uncached"].values()),
        "test_metric_differences": differences,
        "test": {kind: [s["test"] for s in runs] for kind, runs in summaries.items()},
        "params": summaries["uncached"][0]["params"],
        "num_samples": num_samples,
        "rounds": rounds,
        "wall_s": wall,
        "phases_mean_s": {kind: mean_phases(runs) for kind, runs in phases.items()},
        "phases_s": phases,
    }
    path = write_results("prefix_cache", args.out, size, results)
    report(results, size, path)
    return results


def report(results: dict, size: PrefixSize, path: Path) -> None:
    wall = results["wall_s"]

    def cell(s: dict) -> str:
        return f"{s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f})" if len(s["values"]) > 1 else f"{s['median']:.1f}"

    print_table(
        f"model.train_blocks={size.train_blocks}, ViT-Tiny/16 at {size.img_size}px, {size.epochs} epochs ({size.name}, "
        f"{results['num_samples']})",
        [
            ("uncached", cell(wall["uncached"]), "1.00x"),
            ("cached, filling the cache", cell(wall["cold"]), f"{results['speedup_including_fill']:.2f}x"),
            ("cached", cell(wall["warm"]), f"{results['speedup']:.2f}x"),
        ],
        ("run", "wall s, median (min-max)", "speed-up"),
    )
    phases = results["phases_mean_s"]
    print_table(
        "where a run's time goes (mean s)",
        [(step, *(f"{phases[kind].get(step, 0.0):.2f}" for kind in ("uncached", "cold", "warm")))
         for step in phases["uncached"]],
        ("step", "uncached", "cold", "warm"),
    )
    differences = results["test_metric_differences"]

    def listed(values: dict) -> str:
        return ", ".join(f"{metric} {value:.2e}" for metric, value in values.items()) or "none (one round)"

    print(f"cache on disk: {results['disk_mb']:.1f} MB ({results['disk_mb_per_image'] * 1024:.1f} KB per image, "
          f"bfloat16)\ntest metrics of the first uncached run: {listed(results['test']['uncached'][0])}\n"
          f"largest difference, cached vs uncached: {listed(differences['cached_vs_uncached'])}\n"
          f"largest difference, uncached repeats: {listed(differences['uncached_repeats'])}\n-> {path}")


if __name__ == "__main__":
    main()
