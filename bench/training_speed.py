"""Training throughput, evaluation throughput and peak memory: vitcls vs the tutorial vs a tuned HF vs a bare loop.

    python bench/training_speed.py [--quick | --tiny | --gpu] [--compile] [--rounds N] [--vitcls-override KEY=VALUE ...]

Same model shape (ViT-Tiny/16, randomly initialised), images (Fruits-360 subset), batch size and
precision (fp32; `--gpu`: ViT-B/16, bf16-mixed, batch 64 on CUDA) in every variant, each in its own process
(so peak memories are separate):
  hf        the tutorial's approach: `datasets` imagefolder + `dataset.map(ViTImageProcessor)` up front,
            `ViTForImageClassification` from a `ViTConfig`, `transformers.Trainer`, 0 dataloader workers
  hf_tuned  what a user who knows HF would do: the processor applied on the fly (`with_transform`) in
            2 dataloader workers, no preprocessing pass, same Trainer
  bare      a plain PyTorch loop over the timm model, images decoded in 2 DataLoader workers
  vitcls    `python train.py` as a user runs it, timed by bench.timing.LoopTimer
  vitcls_compile  (--compile) the same with model.compile=true (torch.compile, Inductor; the
            compilation happens in the warm-up steps, outside the timings)
Every variant runs `--rounds` times (3), interleaved (each round runs all variants, in a rotated order), so
that load changes on a shared machine hit all of them; min/median/max are reported, ratios on the medians.
The bench checks that every variant ran the same work (parameter count, images measured, batch size,
precision, image size) before it reports. Images/s are steady state: training after the warm-up steps,
evaluation after the first batch (loader start and first batch excluded for all variants). FLOP utilisation =
3 x forward FLOPs (torch's FlopCounterMode) x images/s / a measured matmul peak of the same precision.
Memory: the peak PSS of each variant's whole run, and of its training phase alone (HF's preprocessing pass is
reported apart). Writes bench/results/train.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    HF_VIT_COMMON,
    HF_VIT_CONFIGS,
    REPO_ROOT,
    Size,
    add_size_arguments,
    device,
    mark_phase,
    matmul_peak_gflops,
    pick_size,
    print_table,
    read_json,
    run_measured,
    spread,
    subset_folder,
    write_results,
)

FULL = Size("full", 224, 16, None, None, warmup_steps=5, measured_steps=40)
QUICK = Size("quick", 224, 16, 30, 12, warmup_steps=3, measured_steps=10)
TINY = Size("tiny", 32, 4, 4, 2, warmup_steps=1, measured_steps=2)
# vit_base at 224 px, bf16-mixed, batch 64: 40 batches per epoch of Fruits-360-10's train split.
GPU = Size(
    "gpu",
    224,
    64,
    None,
    None,
    warmup_steps=5,
    measured_steps=30,
    model="vit_base_patch16_224",
    precision="bf16-mixed",
)
SEED = 42


# --- measurements in the parent process ---------------------------------------------------------
def autocast(size: Size):
    return torch.autocast(device().type, dtype=torch.bfloat16, enabled=size.precision == "bf16-mixed")


def precision_dtype(size: Size) -> torch.dtype:
    return torch.bfloat16 if size.precision == "bf16-mixed" else torch.float32


def forward_gflops_per_image(size: Size) -> float:
    import timm
    from torch.utils.flop_counter import FlopCounterMode

    img_size = size.img_size
    model = timm.create_model(size.model, pretrained=False, num_classes=10, img_size=img_size).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, img_size, img_size))
    return counter.get_total_flops() / 1e9


# --- variants, each run in a child process --------------------------------------------------------
class StepClock:
    """Steady-state images/s from the end times of steps after `warmup` of them, over the images those steps
    held (counted batch by batch, not assumed from the batch size). Evaluation uses `warmup=1`: timed after
    its first batch."""

    def __init__(self, warmup: int):
        self.warmup, self.ends, self.images = warmup, [], []

    def tick(self, images: int) -> None:
        if device().type == "cuda":
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())
        self.images.append(images)

    def measured_images(self) -> int:
        return sum(self.images[self.warmup :])

    def images_per_second(self) -> float:
        measured = self.ends[self.warmup - 1 :]
        return self.measured_images() / (measured[-1] - measured[0])


def hf_model(size: Size, num_labels: int):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(SEED)
    config = ViTConfig(
        **HF_VIT_CONFIGS[size.model], **HF_VIT_COMMON, image_size=size.img_size, num_labels=num_labels
    )
    return ViTForImageClassification(config)


def hf_processor(size: Size):
    from transformers import ViTImageProcessor

    return ViTImageProcessor(
        size={"height": size.img_size, "width": size.img_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )


def run_hf_trainer(
    model, size: Size, work: Path, train_dataset, test_dataset, training_arguments: dict | None = None, **trainer_kwargs
) -> dict:
    """transformers.Trainer: train `max_steps`, then evaluate; images/s of both, timed like the other variants
    (training after the warm-up steps, evaluation after its first batch)."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    train_clock, eval_clock = StepClock(size.warmup_steps), StepClock(warmup=1)

    class CountingTrainer(Trainer):
        """Notes the images of the batch each step and prediction step gets; the clock reads them."""

        batch_images = 0

        def training_step(self, model, inputs, *args, **kwargs):
            self.batch_images = len(inputs["pixel_values"])
            return super().training_step(model, inputs, *args, **kwargs)

        def prediction_step(self, model, inputs, *args, **kwargs):
            self.batch_images = len(inputs["pixel_values"])
            return super().prediction_step(model, inputs, *args, **kwargs)

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            train_clock.tick(trainer.batch_images)

        def on_prediction_step(self, args, state, control, **kwargs):
            eval_clock.tick(trainer.batch_images)

    arguments = TrainingArguments(
        output_dir=str(work / "hf_out"),
        per_device_train_batch_size=size.batch_size,
        per_device_eval_batch_size=size.batch_size,
        max_steps=size.warmup_steps + size.measured_steps,
        learning_rate=2e-4,
        weight_decay=0.01,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        logging_steps=10,
        seed=SEED,
        use_cpu=device().type == "cpu",
        bf16=size.precision == "bf16-mixed",
        disable_tqdm=True,
        **(training_arguments or {}),
    )
    trainer = CountingTrainer(
        model=model, args=arguments, train_dataset=train_dataset, callbacks=[Clock()], **trainer_kwargs
    )
    mark_phase("train")
    trainer.train()
    mark_phase("eval")
    trainer.evaluate(eval_dataset=test_dataset)
    return {
        "train_ips": train_clock.images_per_second(),
        "eval_ips": eval_clock.images_per_second(),
        **same_work(model, size, train_clock.measured_images(), eval_clock.measured_images()),
    }


def hf_splits(root: Path, work: Path):
    from datasets import load_dataset

    dataset = load_dataset("imagefolder", data_dir=str(root), cache_dir=str(work / "hf_cache"))
    split = dataset["train"].train_test_split(test_size=0.2, seed=SEED)
    return dataset, split["train"], dataset["test"]


def eval_subset(dataset, size: Size):
    """The images every variant evaluates: the first batch (not timed) and `measured_steps` more."""
    return dataset.select(range(min(len(dataset), size.batch_size * (size.measured_steps + 1))))


def run_hf(root: Path, size: Size, work: Path) -> dict:
    """The tutorial: map the whole dataset through the image processor, then transformers.Trainer."""
    mark_phase("preprocess")
    started = time.perf_counter()
    dataset, train, test = hf_splits(root, work)
    processor = hf_processor(size)

    def preprocess(batch):
        batch["pixel_values"] = processor([image.convert("RGB") for image in batch["image"]])["pixel_values"]
        return batch

    prepared = {
        name: ds.map(preprocess, batched=True, remove_columns=["image"]) for name, ds in (("train", train), ("test", test))
    }
    map_s = time.perf_counter() - started
    cache_mb = sum(f.stat().st_size for f in (work / "hf_cache").rglob("*") if f.is_file()) / 2**20
    model = hf_model(size, len(dataset["train"].features["label"].names))
    results = run_hf_trainer(model, size, work, prepared["train"], eval_subset(prepared["test"], size))
    return {**results, "preprocess_s": map_s, "preprocess_cache_mb": cache_mb}


def run_hf_tuned(root: Path, size: Size, work: Path) -> dict:
    """HF done well: the processor runs on the fly in 2 dataloader workers (`with_transform`), tensors out."""
    dataset, train, test = hf_splits(root, work)
    processor = hf_processor(size)

    def to_tensors(batch):
        pixels = processor([image.convert("RGB") for image in batch["image"]], return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels, "labels": batch["label"]}

    def collate(examples):
        return {
            "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "labels": torch.tensor([e["labels"] for e in examples]),
        }

    model = hf_model(size, len(dataset["train"].features["label"].names))
    return run_hf_trainer(
        model,
        size,
        work,
        train.with_transform(to_tensors),
        eval_subset(test, size).with_transform(to_tensors),
        data_collator=collate,
        training_arguments={"dataloader_num_workers": 2, "remove_unused_columns": False},
    )


def same_work(model: torch.nn.Module, size: Size, measured_images: int, eval_images: int) -> dict:
    """What must be equal across variants for their images/s to compare."""
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "batch_size": size.batch_size,
        "precision": size.precision,
        "img_size": size.img_size,
        "train_measured_images": measured_images,
        "eval_measured_images": eval_images,
    }


def run_bare(root: Path, size: Size, work: Path) -> dict:
    """The floor of overhead: the timm model, timm's transform, a DataLoader, AdamW, nothing else."""
    import timm
    from timm.data import create_transform, resolve_model_data_config
    from torchvision.datasets import ImageFolder

    from vitcls.data.dataset import default_num_workers

    torch.manual_seed(SEED)
    model = timm.create_model(size.model, pretrained=False, num_classes=10, img_size=size.img_size).to(
        device()
    )
    workers, pin = default_num_workers(), device().type == "cuda"  # as vitcls picks them
    data_config = {**resolve_model_data_config(model), "input_size": (3, size.img_size, size.img_size)}
    transform = create_transform(**data_config, is_training=False)
    train = ImageFolder(str(root / "train"), transform=transform)
    loader = torch.utils.data.DataLoader(
        train,
        batch_size=size.batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=pin,
        drop_last=True,
        persistent_workers=True,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.01)
    clock = StepClock(size.warmup_steps)
    steps = size.warmup_steps + size.measured_steps
    mark_phase("train")
    model.train()
    while len(clock.ends) < steps:
        for images, targets in loader:
            images, targets = images.to(device(), non_blocking=pin), targets.to(device(), non_blocking=pin)
            with autocast(size):
                loss = torch.nn.functional.cross_entropy(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            clock.tick(len(targets))
            if len(clock.ends) == steps:
                break

    test = ImageFolder(str(root / "test"), transform=transform)
    test = torch.utils.data.Subset(test, range(min(len(test), size.batch_size * (size.measured_steps + 1))))
    mark_phase("eval")
    model.eval()
    eval_clock = StepClock(warmup=1)
    with torch.inference_mode(), autocast(size):
        for images, _ in torch.utils.data.DataLoader(
            test, batch_size=size.batch_size, num_workers=workers, pin_memory=pin
        ):
            model(images.to(device(), non_blocking=pin)).argmax(dim=1).cpu()
            eval_clock.tick(len(images))
    return {
        "train_ips": clock.images_per_second(),
        "eval_ips": eval_clock.images_per_second(),
        **same_work(model, size, clock.measured_images(), eval_clock.measured_images()),
    }


CHILD_VARIANTS = {"hf": run_hf, "hf_tuned": run_hf_tuned, "bare": run_bare}


def vitcls_command(root: Path, size: Size, work: Path, overrides: list[str]) -> list[str]:
    return [
        sys.executable,
        str(REPO_ROOT / "train.py"),
        f"data.root={root}",
        f"hydra.run.dir={work / 'vitcls_run'}",
        f"model.name={size.model}",
        "model.pretrained=false",
        f"trainer.precision={size.precision}",
        f"model.img_size={size.img_size}",
        f"data.batch_size={size.batch_size}",
        "trainer.max_epochs=1",
        "trainer.num_sanity_val_steps=0",
        f"trainer.limit_train_batches={size.warmup_steps + size.measured_steps}",
        "trainer.limit_val_batches=2",
        f"trainer.limit_test_batches={size.measured_steps + 1}",
        f"seed={SEED}",
        "+callbacks.timer._target_=bench.timing.LoopTimer",
        f"+callbacks.timer.output={work / 'vitcls.json'}",
        f"+callbacks.timer.warmup={size.warmup_steps}",
        *overrides,
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_arguments(parser)
    parser.add_argument("--gpu", action="store_true", help="vit_base, 224 px, bf16-mixed, batch 64 (needs CUDA)")
    parser.add_argument(
        "--vitcls-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra override for vitcls's train.py (repeatable), e.g. model.compile=true",
    )
    parser.add_argument(
        "--compile", action="store_true", help="also run vitcls with model.compile=true (minutes of compilation)"
    )
    parser.add_argument("--rounds", type=int, help="interleaved repeats of every variant (default 3; --tiny 1)")
    parser.add_argument("--warmup-steps", type=int, help="training steps before timing (default: the size's)")
    parser.add_argument("--measured-steps", type=int, help="timed training steps (default: the size's)")
    parser.add_argument("--precision", choices=("32-true", "bf16-mixed"), help="default: the size's")
    parser.add_argument("--variant", choices=tuple(CHILD_VARIANTS), help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def pick(args: argparse.Namespace) -> Size:
    size = GPU if args.gpu else pick_size(args, FULL, QUICK, TINY)
    if size is GPU and not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device")
    changes = {"warmup_steps": args.warmup_steps, "measured_steps": args.measured_steps, "precision": args.precision}
    return dataclasses.replace(size, **{key: value for key, value in changes.items() if value is not None})


def run_child(args: argparse.Namespace, size: Size) -> Path:
    """Child process mode: measure one baseline variant and write its JSON."""
    from vitcls.io import write_json_atomic

    with tempfile.TemporaryDirectory(prefix="vitcls-bench-") as work:
        return write_json_atomic(args.result, CHILD_VARIANTS[args.variant](args.data_root, size, Path(work)))


def run_variant(name: str, args: argparse.Namespace, size: Size, root: Path, work: Path) -> dict:
    """One variant in its own process: wall time, peak memories and its timings."""
    work.mkdir(parents=True, exist_ok=True)
    if name in CHILD_VARIANTS:
        size_args = [*([f"--{size.name}"] if size.name != "full" else []), "--warmup-steps", str(size.warmup_steps),
                     "--measured-steps", str(size.measured_steps), "--precision", size.precision]
        result = work / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--variant", name, *size_args,
                   "--data-root", str(root), "--result", str(result)]
    else:
        overrides = [*args.vitcls_override, *(["model.compile=true"] if name == "vitcls_compile" else [])]
        command = vitcls_command(root, size, work, overrides)
        result = work / "vitcls.json"
    return {**run_measured(command, work / f"{name}.log"), **read_json(result)}


def run_rounds(args: argparse.Namespace, size: Size, root: Path, work: Path) -> dict[str, list[dict]]:
    """Every variant `rounds` times, interleaved; round r starts at variant r (rotated order)."""
    names = ["hf", "hf_tuned", "bare", "vitcls", *(["vitcls_compile"] if args.compile else [])]
    rounds = args.rounds or (1 if size.name == "tiny" else 3)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for index in range(rounds):
        for name in names[index % len(names) :] + names[: index % len(names)]:
            print(f"round {index + 1}/{rounds}: {name}", flush=True)
            runs[name].append(run_variant(name, args, size, root, work / f"{name}_{index}"))
    return runs


SAME_WORK = ("params", "batch_size", "precision", "img_size", "train_measured_images", "eval_measured_images")


def check_same_work(runs: dict[str, list[dict]]) -> dict:
    """Every run of every variant trained and evaluated the same model size, images, batch and precision."""
    seen = {(name, index): {key: run[key] for key in SAME_WORK} for name, variant in runs.items()
            for index, run in enumerate(variant)}
    reference = next(iter(seen.values()))
    different = {f"{name} run {index}": work for (name, index), work in seen.items() if work != reference}
    assert not different, f"variants did different work: {reference} vs {different}"
    return reference


def summarise(runs: dict[str, list[dict]], peak: float, gflops: float, overrides: list[str]) -> dict:
    """Medians (ratios are of medians), min/median/max per variant, memory by phase, and every run."""
    work = check_same_work(runs)
    stats = {
        name: {
            "train_ips": spread([r["train_ips"] for r in variant]),
            "eval_ips": spread([r["eval_ips"] for r in variant]),
            "peak_mem_mb": spread([r["peak_mem_mb"] for r in variant]),
            "train_peak_mem_mb": spread([r["peak_mem_mb_by_phase"].get("train", 0.0) for r in variant]),
        }
        for name, variant in runs.items()
    }
    train = {name: s["train_ips"]["median"] for name, s in stats.items()}
    evaluation = {name: s["eval_ips"]["median"] for name, s in stats.items()}
    hf_runs = runs["hf"]
    results = {
        "rounds": len(hf_runs),
        "same_work": work,
        "hf_trainer_ips": train["hf"],
        "hf_tuned_ips": train["hf_tuned"],
        "bare_ips": train["bare"],
        "vitcls_ips": train["vitcls"],
        "hf_eval_ips": evaluation["hf"],
        "hf_tuned_eval_ips": evaluation["hf_tuned"],
        "bare_eval_ips": evaluation["bare"],
        "vitcls_eval_ips": evaluation["vitcls"],
        "vitcls_vs_hf": train["vitcls"] / train["hf"],
        "vitcls_vs_hf_tuned": train["vitcls"] / train["hf_tuned"],
        "vitcls_vs_bare": train["vitcls"] / train["bare"],
        "vitcls_eval_vs_hf": evaluation["vitcls"] / evaluation["hf"],
        "vitcls_eval_vs_hf_tuned": evaluation["vitcls"] / evaluation["hf_tuned"],
        "vitcls_eval_vs_bare": evaluation["vitcls"] / evaluation["bare"],
        "matmul_peak_gflops": peak,
        "forward_gflops_per_image": gflops,
        "vitcls_flops_utilisation": 3 * gflops * train["vitcls"] / peak,
        "bare_flops_utilisation": 3 * gflops * train["bare"] / peak,
        "hf_preprocess_s": statistics.median(r["preprocess_s"] for r in hf_runs),
        "hf_preprocess_cache_mb": statistics.median(r["preprocess_cache_mb"] for r in hf_runs),
        "hf_preprocess_peak_mem_mb": statistics.median(r["peak_mem_mb_by_phase"].get("preprocess", 0.0) for r in hf_runs),
        "peak_mem_mb": {name: s["peak_mem_mb"]["median"] for name, s in stats.items()},
        "train_peak_mem_mb": {name: s["train_peak_mem_mb"]["median"] for name, s in stats.items()},
        "vitcls_data_wait_fraction": statistics.median(r.get("data_wait_fraction", 0.0) for r in runs["vitcls"]),
        "vitcls_overrides": overrides,
        "stats": stats,
        "runs": runs,
    }
    if "vitcls_compile" in train:
        results.update(
            vitcls_compile_ips=train["vitcls_compile"],
            vitcls_compile_eval_ips=evaluation["vitcls_compile"],
            vitcls_compile_vs_bare=train["vitcls_compile"] / train["bare"],
            vitcls_compile_vs_vitcls=train["vitcls_compile"] / train["vitcls"],
            vitcls_compile_eval_vs_vitcls=evaluation["vitcls_compile"] / evaluation["vitcls"],
        )
    return results


def report(results: dict, size: Size, path: Path) -> None:
    peak, gflops, stats = results["matmul_peak_gflops"], results["forward_gflops_per_image"], results["stats"]

    def ips(s: dict) -> str:
        return f"{s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f})"

    print_table(
        f"training, {size.model} at {size.img_size}px, batch {size.batch_size}, {size.precision} ({size.name}, "
        f"{results['rounds']} interleaved rounds: median (min-max))",
        [
            (
                name,
                ips(s["train_ips"]),
                ips(s["eval_ips"]),
                f"{s['peak_mem_mb']['median']:.0f}",
                f"{s['train_peak_mem_mb']['median']:.0f}",
                f"{3 * gflops * s['train_ips']['median'] / peak:.0%}",
            )
            for name, s in stats.items()
        ],
        ("variant", "train img/s", "eval img/s", "peak mem MB", "training-phase peak MB", "FLOP util."),
    )
    print(
        f"vitcls/hf {results['vitcls_vs_hf']:.2f}x, vitcls/hf tuned {results['vitcls_vs_hf_tuned']:.2f}x, "
        f"vitcls/bare {results['vitcls_vs_bare']:.2f}x, eval vitcls/hf {results['vitcls_eval_vs_hf']:.2f}x; "
        f"matmul peak {peak:.0f} GFLOP/s; hf preprocessing {results['hf_preprocess_s']:.1f} s, "
        f"{results['hf_preprocess_cache_mb']:.0f} MB cache, {results['hf_preprocess_peak_mem_mb']:.0f} MB peak"
        f"\n-> {path}"
    )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    size = pick(args)
    if args.variant:
        run_child(args, size)
        return {}
    with tempfile.TemporaryDirectory(prefix="vitcls-bench-") as tmp:
        work = Path(tmp)
        root = subset_folder(args.data_root, work / "images", size.train_per_class, size.test_per_class)
        peak = matmul_peak_gflops(device(), precision_dtype(size))
        gflops = forward_gflops_per_image(size)
        runs = run_rounds(args, size, root, work)
    results = summarise(runs, peak, gflops, args.vitcls_override)
    report(results, size, write_results("train", args.out, size, results))
    return results


if __name__ == "__main__":
    main()
