"""What cached augmented views buy: a frozen random ViT-Tiny, linear and MLP heads, 3 seeds, on real datasets.

    python bench/augment_views.py [--quick | --tiny] [--data NAME=ROOT ...] [--docs docs/augmentation]

Four ways to train the same two heads (one head bank, `bank.heads=[linear,mlp]`, per seed and way):
  none     the feature cache without augmentation (the plain cache: every epoch sees the same features)
  views4   data.train_augment + feature_cache.views=4: 4 augmented views of every training image, cached
  views8   the same with 8 views
  live     data.train_augment without a cache: a fresh augmentation and a backbone pass at every step (the reference)
Each way is a multirun over seed=1,2,3 in `<out>/<dataset>/<way>/`; vitcls-compare over `<out>/<dataset>` ranks
the eight designs (2 heads x 4 ways) on validation with test intervals (paired over the same test images). Also
recorded per way: the wall time of its runs (their sum over seeds) and the disk its cache holds.
Writes bench/results/augment_views.json and, with --docs, the comparison tables into that folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO_ROOT, add_size_arguments, pick_size, run_measured, subset_folder, write_results  # noqa: E402
from bench.suite import SHARED, SuiteSize  # noqa: E402

AUGMENT = "data.train_augment={scale:[0.35,1.0],hflip:0.5}"
WAYS = {
    "none": ["feature_cache.enabled=true"],
    "views4": ["feature_cache.enabled=true", AUGMENT, "feature_cache.views=4"],
    "views8": ["feature_cache.enabled=true", AUGMENT, "feature_cache.views=8"],
    "live": ["feature_cache.enabled=false", AUGMENT],
}
SEEDS = "1,2,3"
FULL = SuiteSize("full", 64, 64, 15, None, None)
QUICK = SuiteSize("quick", 64, 32, 8, 60, 20)
TINY = SuiteSize("tiny", 32, 8, 2, 10, 4)


def disk_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 1) if path.exists() else 0.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_size_arguments(parser)
    parser.add_argument("--data", nargs="+", default=None, metavar="NAME=ROOT")
    parser.add_argument("--docs", type=Path, default=None, help="copy the comparison tables and figures here")
    parser.add_argument("--runs", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    size = pick_size(args, FULL, QUICK, TINY)
    given = (dict(item.split("=", 1) for item in args.data) if args.data
             else {name: str(SHARED / name) for name in ("eurosat-10", "clothing-10")})
    scratch = Path(tempfile.mkdtemp(prefix="vitcls-bench-views-"))
    out = args.runs or scratch / "runs"
    results: dict = {"ways": {}, "seeds": SEEDS, "epochs": size.epochs, "augment": AUGMENT}
    try:
        for name, root in given.items():
            data = subset_folder(Path(root), scratch / "data" / name, size.train_per_class, size.test_per_class)
            for way, overrides in WAYS.items():
                cache = scratch / "cache" / name / way
                command = [sys.executable, str(REPO_ROOT / "train.py"), "-m", "bank=default", "bank.heads=[linear,mlp]",
                           "bank.features=[cls]", "model.pretrained=false", f"model.img_size={size.img_size}",
                           "model.train_blocks=none", "trainer=cpu", "trainer.enable_progress_bar=false",
                           "trainer.enable_model_summary=false", f"trainer.max_epochs={size.epochs}",
                           f"data.batch_size={size.batch_size}", "optim.head_lr=1e-3", f"data.root={data}",
                           f"seed={SEEDS}", *overrides, f"feature_cache.dir={cache}",
                           f"hydra.sweep.dir={out / name / way}"]
                measured = run_measured(command, scratch / f"{name}_{way}.log")
                results["ways"].setdefault(name, {})[way] = {"wall_s": measured["wall_s"], "cache_mb": disk_mb(cache),
                                                             "peak_mem_mb": measured["peak_mem_mb"]}
            compared = out / name
            run_measured([sys.executable, "-m", "vitcls.cli.compare", str(compared)], scratch / f"{name}_compare.log")
            results["ways"][name]["compare"] = json.loads((compared / "compare.json").read_text())["designs"]
            if args.docs:
                target = args.docs / name
                target.mkdir(parents=True, exist_ok=True)
                for file in ("compare.md", "compare.csv", "compare.png"):
                    shutil.copyfile(compared / file, target / file)
    finally:
        if args.runs is None:
            shutil.rmtree(scratch, ignore_errors=True)
    path = write_results("augment_views", args.out, size, results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
