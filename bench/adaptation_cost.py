"""What one training step costs on each rung of the adaptation ladder, apart from data loading.

Each rung is the network and optimizer `train.py ladder=<rung>` builds (conf/ladder, random weights). A step is
forward, loss, backward and the AdamW step on a batch of random images, as in training. The rungs take turns:
every round times `measured_steps` steps of each rung in turn, so load changes on a shared machine hit all
of them alike; the table shows the median round and the spread. Memory is counted as summary.json counts it
(parameters, gradients, optimizer state, activations saved for backward), plus the CUDA allocator's peak
on a GPU.

    python bench/adaptation_cost.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Size, add_size_arguments, device, pick_size, print_table, write_results  # noqa: E402

RUNGS = ("linear_probe", "attention_probe", "last2_blocks", "bitfit", "lora", "vpt_shallow", "vpt_deep",
         "full_finetune")
NUM_CLASSES = 10
FULL = Size("full", img_size=64, batch_size=64, train_per_class=None, test_per_class=None, warmup_steps=2,
            measured_steps=5)
QUICK = Size("quick", img_size=64, batch_size=64, train_per_class=None, test_per_class=None, warmup_steps=1,
             measured_steps=2)
TINY = Size("tiny", img_size=32, batch_size=4, train_per_class=None, test_per_class=None, warmup_steps=1,
            measured_steps=1)


def compose_rung(rung: str, img_size: int):
    from hydra import compose, initialize_config_dir

    from vitcls.config import config_dir, register_resolvers

    register_resolvers()
    overrides = ["sweep=adaptation_ladder", f"ladder={rung}", "model.pretrained=false", f"model.img_size={img_size}"]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("train", overrides)


def build(rung: str, size: Size, target: torch.device):
    """The rung's LightningModule and optimizer, as train.py builds them (no data, no trainer, no schedule)."""
    from vitcls.distributed import BatchLayout
    from vitcls.run.lifecycle import build_module
    from vitcls.run.studies import study_of

    cfg = compose_rung(rung, size.img_size)
    layout = BatchLayout(per_device=cfg.data.batch_size, devices=1, num_nodes=1, accumulate=1)
    module = build_module(cfg, study_of(cfg).designs(cfg), [f"class_{i}" for i in range(NUM_CLASSES)], layout)
    module = module.to(target).train()
    return module, module.build_optimizer()


def step(module, optimizer, images, targets) -> None:
    optimizer.zero_grad(set_to_none=True)
    module.criterion(module(images), targets).backward()
    optimizer.step()


def measure_memory(module, optimizer, images, targets, target: torch.device) -> dict:
    from vitcls.callbacks.train_cost import MIB, SavedActivations, counted_step_memory

    parameters = list(module.parameters())
    if target.type == "cuda":
        torch.cuda.synchronize(target)
        torch.cuda.reset_peak_memory_stats(target)
    with SavedActivations(parameters) as saved:
        step(module, optimizer, images, targets)
    cuda_peak = None
    if target.type == "cuda":
        torch.cuda.synchronize(target)
        cuda_peak = round(torch.cuda.max_memory_allocated(target) / MIB, 1)
    parts = counted_step_memory(module, [optimizer], saved.nbytes)
    return {
        "step_mem_mb": round(sum(parts.values()) / MIB, 2),
        "step_mem_parts_mb": {k: round(v / MIB, 3) for k, v in parts.items()},
        "cuda_peak_mem_mb": cuda_peak,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_arguments(parser)
    parser.add_argument("--rounds", type=int, default=None, help="rounds of turns (default 5; --quick 3, --tiny 1)")
    args = parser.parse_args(argv)
    size = pick_size(args, FULL, QUICK, TINY)
    rounds = args.rounds or (1 if args.tiny else 3 if args.quick else 5)
    target = device()
    torch.manual_seed(0)
    images = torch.randn(size.batch_size, 3, size.img_size, size.img_size, device=target)
    targets = torch.randint(0, NUM_CLASSES, (size.batch_size,), device=target)

    built = {rung: build(rung, size, target) for rung in RUNGS}
    results = {}
    for rung, (module, optimizer) in built.items():
        for _ in range(size.warmup_steps):
            step(module, optimizer, images, targets)
        results[rung] = {
            "trainable_params": module.parameter_counts["trainable"],
            **measure_memory(module, optimizer, images, targets, target),
            "images_per_s_rounds": [],
        }
    for _ in range(rounds):
        for rung, (module, optimizer) in built.items():
            if target.type == "cuda":
                torch.cuda.synchronize(target)
            started = time.perf_counter()
            for _ in range(size.measured_steps):
                step(module, optimizer, images, targets)
            if target.type == "cuda":
                torch.cuda.synchronize(target)
            rate = size.measured_steps * size.batch_size / (time.perf_counter() - started)
            results[rung]["images_per_s_rounds"].append(round(rate, 2))
    for values in results.values():
        values["images_per_s"] = round(statistics.median(values["images_per_s_rounds"]), 2)

    full_rate = results["full_finetune"]["images_per_s"]
    rows = [
        (rung, f"{r['trainable_params']:,}", f"{r['images_per_s']:.1f}",
         f"{min(r['images_per_s_rounds']):.1f}-{max(r['images_per_s_rounds']):.1f}",
         f"{r['images_per_s'] / full_rate:.2f}x", f"{r['step_mem_mb']:.1f}",
         f"{r['step_mem_parts_mb']['activations']:.1f}")
        for rung, r in results.items()
    ]
    print_table(
        f"training step, {size.model} at {size.img_size} px, batch {size.batch_size}, {rounds} rounds "
        f"x {size.measured_steps} steps, {target.type}",
        rows,
        ("rung", "trainable", "images/s (median)", "range", "vs full", "step mem MiB", "activations MiB"),
    )
    payload = {"device": target.type, "rounds": rounds, "rungs": results}
    path = write_results("adaptation_cost", args.out, size, payload)
    print(f"\nwritten: {path}")
    return payload


if __name__ == "__main__":
    main()
