"""A head-design sweep with and without the feature cache, end to end through vitcls.

    python bench/head_sweep.py [--quick | --tiny]

8 head configurations on a frozen ViT-Tiny/16 (224 px, Fruits-360-10, 3 epochs each), run one after
another in this process with `vitcls.run.lifecycle.run`, as a Hydra multirun does. Uncached: every run decodes
and pushes every image through the backbone every epoch. Cached (`feature_cache.enabled=true`, a fresh
cache directory): the first run computes each split's features once, the others load them. Both sweeps
remember the pre-training decode check (`data.image_check_cache_dir`, a fresh directory per sweep), so the
memo is credited to neither. The two sweeps are interleaved (job i of one, then job i of the other, the
first side alternating; the cached sweep starts), so a change of load on a shared machine hits both alike;
each sweep's wall time is the sum of its jobs. Reports both wall times, the speed-up, the largest
test-metric difference between the two sweeps, and where each run's time goes (bench.phases). Writes
bench/results/head_sweep.json.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hydra import compose, initialize_config_dir  # noqa: E402

from bench.common import (  # noqa: E402
    TIMM_MODEL,
    add_size_arguments,
    pick_size,
    print_table,
    subset_folder,
    write_results,
)
from bench.phases import RunPhases, mean_phases  # noqa: E402

HEADS = [
    ["head=linear"],
    ["head=linear", "head.dropout=0.2"],
    ["head=mlp", "head.hidden_dims=[256]"],
    ["head=mlp", "head.hidden_dims=[512]"],
    ["head=mlp", "head.hidden_dims=[512]", "head.dropout=0.2"],
    ["head=mlp", "head.hidden_dims=[512,256]"],
    ["head=mlp", "head.hidden_dims=[512]", "head.norm=layernorm"],
    ["head=mlp", "head.hidden_dims=[1024]", "head.activation=relu"],
]


@dataclass
class SweepSize:
    name: str
    img_size: int
    batch_size: int
    train_per_class: int | None
    test_per_class: int | None
    epochs: int
    runs: int


FULL = SweepSize("full", 224, 16, None, None, epochs=3, runs=8)
QUICK = SweepSize("quick", 224, 16, 10, 4, epochs=3, runs=8)
TINY = SweepSize("tiny", 32, 4, 3, 2, epochs=1, runs=2)


SIDES = ("cached", "uncached")


def sweeps(root: Path, size: SweepSize, work: Path) -> dict[str, dict]:
    """Both sweeps, interleaved: job i of one, then job i of the other, the side that goes first alternating.
    The cached sweep goes first at job 0, so the process's one-time start-up costs count against the cache.
    Per side: wall seconds (the sum of its jobs), summaries and per-run step timings, in job order; and
    `job_order`, the jobs of both sides as they ran."""
    from vitcls.config import config_dir, register_resolvers

    register_resolvers()
    common = [
        f"data.root={root}",
        f"model.name={TIMM_MODEL}",
        "model.pretrained=false",
        "model.train_blocks=none",
        f"model.img_size={size.img_size}",
        f"data.batch_size={size.batch_size}",
        f"trainer.max_epochs={size.epochs}",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        f"feature_cache.dir={work / 'feature_cache'}",
    ]
    done: dict = {side: {"wall_s": 0.0, "summaries": [], "phases": []} for side in SIDES}
    done["job_order"] = []
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"), RunPhases() as phases:
        for index, head in enumerate(HEADS[: size.runs]):
            for side in SIDES if index % 2 == 0 else SIDES[::-1]:
                print(f"job {index + 1}/{size.runs}: {side}", flush=True)
                overrides = [*common, *head, f"feature_cache.enabled={str(side == 'cached').lower()}",
                             f"data.image_check_cache_dir={work / side / 'check_memo'}",
                             f"paths.output_dir={work / side / str(index)}"]
                started = time.perf_counter()
                done[side]["summaries"].append(phases.run(compose(config_name="train", overrides=overrides)))
                done[side]["wall_s"] += time.perf_counter() - started
                done[side]["phases"].append(phases.last)
                done["job_order"].append(f"{side} {index}")
    return done


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_size_arguments(parser)
    args = parser.parse_args(argv)
    size = pick_size(args, FULL, QUICK, TINY)
    logging.getLogger("lightning").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="vitcls-bench-") as tmp:
        work = Path(tmp)
        root = subset_folder(args.data_root, work / "images", size.train_per_class, size.test_per_class)
        done = sweeps(root, size, work)
    uncached_s, uncached, uncached_phases = (done["uncached"][key] for key in ("wall_s", "summaries", "phases"))
    cached_s, cached, cached_phases = (done["cached"][key] for key in ("wall_s", "summaries", "phases"))

    difference = max(
        abs(a["test"][k] - b["test"][k]) for a, b in zip(uncached, cached, strict=True) for k in a["test"]
    )
    results = {
        "cached_s": cached_s,
        "uncached_s": uncached_s,
        "speedup": uncached_s / cached_s,
        "max_test_metric_difference": difference,
        "heads": [" ".join(h) for h in HEADS[: size.runs]],
        "test_acc": {
            "uncached": [s["test"]["acc"] for s in uncached],
            "cached": [s["test"]["acc"] for s in cached],
        },
        "num_samples": uncached[0]["num_samples"],
        "decode_check_memo": "both sweeps (data.image_check_cache_dir, one fresh directory per sweep)",
        "job_order": done["job_order"],
        # Per run, in seconds: the first cached run computes the features, the later ones load them.
        "phases_mean_s": {
            "uncached": mean_phases(uncached_phases),
            "cached_first": mean_phases(cached_phases[:1]),
            "cached_later": mean_phases(cached_phases[1:]),
        },
        "phases_s": {"uncached": uncached_phases, "cached": cached_phases},
    }
    path = write_results("head_sweep", args.out, size, results)
    print_table(
        f"head sweep: {size.runs} heads x {size.epochs} epochs, frozen ViT-Tiny/16 at {size.img_size}px ({size.name}, "
        f"{results['num_samples']})",
        [
            ("uncached", f"{uncached_s:.1f}", "1.0x"),
            ("feature cache", f"{cached_s:.1f}", f"{results['speedup']:.1f}x"),
        ],
        ("sweep", "wall s", "speed-up"),
    )
    phases = results["phases_mean_s"]
    print_table(
        "where a run's time goes (mean s per run)",
        [(step, *(f"{phases[kind].get(step, 0.0):.2f}" for kind in phases)) for step in phases["uncached"]],
        ("step", *phases),
    )
    print(f"largest test-metric difference cached vs uncached: {difference:.2e}\n-> {path}")
    return results


if __name__ == "__main__":
    main()
