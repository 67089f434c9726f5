"""Image decoding + preprocessing throughput, and how much of a vitcls training step waits for data.

    python bench/data.py [--quick | --tiny]

1. Per worker: vitcls's dataset (PIL decode, EXIF/mode handling, timm eval transform) in one process.
2. With N DataLoader workers (1, 2, ... up to the CPU count), batch 16, steady state after one batch.
3. In a real vitcls training run (`python train.py`, ViT-Tiny/16 at 224 px, batch 16, fp32, default
   data settings): the time between the end of one training batch and the start of the next, which
   is where Lightning waits for the DataLoader, as a fraction of the step time.
Writes bench/results/data.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    TIMM_MODEL,
    Size,
    add_size_arguments,
    pick_size,
    print_table,
    read_json,
    run_measured,
    subset_folder,
    write_results,
)
from bench.training_speed import FULL as TRAIN_FULL  # noqa: E402
from bench.training_speed import QUICK as TRAIN_QUICK  # noqa: E402
from bench.training_speed import TINY as TRAIN_TINY  # noqa: E402
from bench.training_speed import vitcls_command  # noqa: E402


@dataclass
class DataSize:
    name: str
    img_size: int
    images_per_worker_test: int
    images_loader_test: int
    training: Size


FULL = DataSize("full", 224, 400, 1600, TRAIN_FULL)
QUICK = DataSize("quick", 224, 150, 480, TRAIN_QUICK)
TINY = DataSize("tiny", 32, 8, 16, TRAIN_TINY)


def dataset(root: Path, img_size: int):
    import timm

    from vitcls.data.dataset import ImageFileDataset
    from vitcls.data.folder import scan_folder
    from vitcls.preprocessing import build_eval_transform, resolve_data_config

    model = timm.create_model(TIMM_MODEL, pretrained=False, num_classes=0, img_size=img_size)
    samples = scan_folder(root).samples("train")
    samples = [samples[i] for i in torch.randperm(len(samples), generator=torch.Generator().manual_seed(0))]
    return ImageFileDataset(samples, build_eval_transform(resolve_data_config(model)))


def single_process_ips(images, count: int) -> float:
    count = min(count, len(images))
    start = time.perf_counter()
    for index in range(count):
        images[index]
    return count / (time.perf_counter() - start)


def loader_ips(images, count: int, workers: int, batch_size: int) -> float:
    subset = torch.utils.data.Subset(images, range(min(count, len(images))))
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, num_workers=workers)
    seen, start = 0, None
    for batch, _ in loader:
        if start is None:  # after the first batch: workers are up
            start = time.perf_counter()
            continue
        seen += len(batch)
    return seen / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_size_arguments(parser)
    args = parser.parse_args(argv)
    size = pick_size(args, FULL, QUICK, TINY)
    training = size.training
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    with tempfile.TemporaryDirectory(prefix="vitcls-bench-") as tmp:
        work = Path(tmp)
        root = subset_folder(
            args.data_root, work / "images", training.train_per_class, training.test_per_class
        )
        images = dataset(root, size.img_size)
        per_worker = single_process_ips(images, size.images_per_worker_test)
        worker_counts = sorted({1, 2, cpus})
        with_workers = {
            n: loader_ips(images, size.images_loader_test, n, training.batch_size) for n in worker_counts
        }
        run = run_measured(vitcls_command(root, training, work, []), work / "vitcls.log")
        timer = read_json(work / "vitcls.json")

    results = {
        "decode_transform_ips_per_worker": per_worker,
        "loader_ips": {str(n): ips for n, ips in with_workers.items()},
        "data_wait_fraction": timer["data_wait_fraction"],
        "data_wait_s_per_step": timer["data_wait_s"] / timer["train_measured_steps"],
        "step_s": timer["step_s"],
        "train_ips": timer["train_ips"],
        "vitcls_run": run,
    }
    path = write_results("data", args.out, size, results)
    rows = [("1 process, no DataLoader", f"{per_worker:.0f}")]
    rows += [(f"DataLoader, {n} worker{'s' * (n > 1)}", f"{ips:.0f}") for n, ips in with_workers.items()]
    print_table(f"decode + transform to {size.img_size}px ({size.name})", rows, ("setting", "images/s"))
    print(
        f"vitcls training (ViT-Tiny/16, batch {training.batch_size}): step {timer['step_s']:.3f} s, "
        f"waiting for data {results['data_wait_s_per_step']:.4f} s = {timer['data_wait_fraction']:.1%}\n-> {path}"
    )
    return results


if __name__ == "__main__":
    main()
