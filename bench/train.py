"""Training throughput, evaluation throughput and peak memory: vitcls vs the tutorial vs a bare loop.

    python bench/train.py [--quick | --tiny | --gpu] [--compile] [--vitcls-override KEY=VALUE ...]

Same model shape (ViT-Tiny/16, randomly initialised), images (Fruits-360 subset), batch size and
precision (fp32; `--gpu`: ViT-B/16, bf16-mixed, batch 64 on CUDA) in three variants, each in its own process (so peak memories are separate):
  hf      the tutorial's approach: `datasets` imagefolder + `dataset.map(ViTImageProcessor)` up front,
          `ViTForImageClassification` from a `ViTConfig`, `transformers.Trainer`
  bare    a plain PyTorch loop over the timm model, images decoded in 2 DataLoader workers
  vitcls  `python train.py` as a user runs it, timed by bench.timing.LoopTimer
  vitcls_compile  (--compile) the same with model.compile=true (torch.compile, Inductor; the
          compilation happens in the warm-up steps and the first test batch, outside the timings)
Images/s are steady state (after warm-up steps). FLOP utilisation = 3 x forward FLOPs (torch's
FlopCounterMode) x images/s / a measured matmul peak of the same precision. Writes bench/results/train.json.
"""

from __future__ import annotations

import argparse
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
    matmul_peak_gflops,
    pick_size,
    print_table,
    read_json,
    run_measured,
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
    """Steady-state images/s from the end times of training steps after `warmup` of them."""

    def __init__(self, warmup: int, batch_size: int):
        self.warmup, self.batch_size, self.ends = warmup, batch_size, []

    def tick(self) -> None:
        if device().type == "cuda":
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())

    def images_per_second(self) -> float:
        measured = self.ends[self.warmup - 1 :]
        return (len(measured) - 1) * self.batch_size / (measured[-1] - measured[0])


def run_hf(root: Path, size: Size, work: Path) -> dict:
    """The tutorial: map the whole dataset through the image processor, then transformers.Trainer."""
    from datasets import load_dataset
    from transformers import (
        Trainer,
        TrainerCallback,
        TrainingArguments,
        ViTConfig,
        ViTForImageClassification,
        ViTImageProcessor,
    )

    started = time.perf_counter()
    dataset = load_dataset("imagefolder", data_dir=str(root), cache_dir=str(work / "hf_cache"))
    split = dataset["train"].train_test_split(test_size=0.2, seed=SEED)
    processor = ViTImageProcessor(
        size={"height": size.img_size, "width": size.img_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )

    def preprocess(batch):
        batch["pixel_values"] = processor([image.convert("RGB") for image in batch["image"]])["pixel_values"]
        return batch

    prepared = {
        name: ds.map(preprocess, batched=True, remove_columns=["image"])
        for name, ds in (("train", split["train"]), ("test", dataset["test"]))
    }
    map_s = time.perf_counter() - started
    cache_mb = sum(f.stat().st_size for f in (work / "hf_cache").rglob("*") if f.is_file()) / 2**20

    labels = dataset["train"].features["label"].names
    torch.manual_seed(SEED)
    config = ViTConfig(
        **HF_VIT_CONFIGS[size.model], **HF_VIT_COMMON, image_size=size.img_size, num_labels=len(labels)
    )
    model = ViTForImageClassification(config)
    clock = StepClock(size.warmup_steps, size.batch_size)

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.tick()

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
    )
    trainer = Trainer(model=model, args=arguments, train_dataset=prepared["train"], callbacks=[Clock()])
    trainer.train()
    test = prepared["test"].select(
        range(min(len(prepared["test"]), size.batch_size * (size.measured_steps + 1)))
    )
    metrics = trainer.evaluate(eval_dataset=test)
    return {
        "train_ips": clock.images_per_second(),
        "eval_ips": len(test) / metrics["eval_runtime"],
        "preprocess_s": map_s,
        "preprocess_cache_mb": cache_mb,
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
    clock = StepClock(size.warmup_steps, size.batch_size)
    steps = size.warmup_steps + size.measured_steps
    model.train()
    while len(clock.ends) < steps:
        for images, targets in loader:
            images, targets = images.to(device(), non_blocking=pin), targets.to(device(), non_blocking=pin)
            with autocast(size):
                loss = torch.nn.functional.cross_entropy(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            clock.tick()
            if len(clock.ends) == steps:
                break

    test = ImageFolder(str(root / "test"), transform=transform)
    test = torch.utils.data.Subset(test, range(min(len(test), size.batch_size * (size.measured_steps + 1))))
    model.eval()
    ends = []
    with torch.inference_mode(), autocast(size):
        for images, _ in torch.utils.data.DataLoader(
            test, batch_size=size.batch_size, num_workers=workers, pin_memory=pin
        ):
            model(images.to(device(), non_blocking=pin)).argmax(dim=1).cpu()
            ends.append(time.perf_counter())
    eval_ips = (len(test) - size.batch_size) / (ends[-1] - ends[0])  # after the first batch
    return {"train_ips": clock.images_per_second(), "eval_ips": eval_ips}


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


def compiled_results(runs: dict, bare: dict) -> dict:
    compiled = runs.get("vitcls_compile")
    if compiled is None:
        return {}
    return {
        "vitcls_compile_ips": compiled["train_ips"],
        "vitcls_compile_eval_ips": compiled["eval_ips"],
        "vitcls_compile_vs_bare": compiled["train_ips"] / bare["train_ips"],
        "vitcls_compile_eval_vs_bare": compiled["eval_ips"] / bare["eval_ips"],
    }


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
    parser.add_argument("--variant", choices=("hf", "bare"), help=argparse.SUPPRESS)  # child process mode
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def pick(args: argparse.Namespace) -> Size:
    size = GPU if args.gpu else pick_size(args, FULL, QUICK, TINY)
    if size is GPU and not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device")
    return size


def run_child(args: argparse.Namespace, size: Size) -> Path:
    """Child process mode: measure one baseline variant and write its JSON."""
    from vitcls.io import write_json_atomic

    with tempfile.TemporaryDirectory(prefix="vitcls-bench-") as work:
        measure = run_hf if args.variant == "hf" else run_bare
        return write_json_atomic(args.result, measure(args.data_root, size, Path(work)))


def run_variants(args: argparse.Namespace, size: Size, root: Path, work: Path) -> dict[str, dict]:
    """Every variant in its own process, one after the other: wall time, peak memory and its timings."""
    size_args = [f"--{size.name}"] if size.name != "full" else []
    runs = {}
    for variant in ("hf", "bare"):
        result = work / f"{variant}.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--variant", variant, *size_args,
                   "--data-root", str(root), "--result", str(result)]
        runs[variant] = {**run_measured(command, work / f"{variant}.log"), **read_json(result)}
    variants = {"vitcls": args.vitcls_override}
    if args.compile:
        variants["vitcls_compile"] = [*args.vitcls_override, "model.compile=true"]
    for name, overrides in variants.items():
        command = vitcls_command(root, size, work / name, overrides)
        runs[name] = {**run_measured(command, work / f"{name}.log"), **read_json(work / name / "vitcls.json")}
    return runs


def summarise(runs: dict[str, dict], peak: float, gflops: float, overrides: list[str]) -> dict:
    hf, bare, ours = runs["hf"], runs["bare"], runs["vitcls"]
    return {
        "hf_trainer_ips": hf["train_ips"],
        "bare_ips": bare["train_ips"],
        "vitcls_ips": ours["train_ips"],
        "hf_eval_ips": hf["eval_ips"],
        "bare_eval_ips": bare["eval_ips"],
        "vitcls_eval_ips": ours["eval_ips"],
        "vitcls_vs_hf": ours["train_ips"] / hf["train_ips"],
        "vitcls_vs_bare": ours["train_ips"] / bare["train_ips"],
        "vitcls_eval_vs_hf": ours["eval_ips"] / hf["eval_ips"],
        "matmul_peak_gflops": peak,
        "forward_gflops_per_image": gflops,
        "vitcls_flops_utilisation": 3 * gflops * ours["train_ips"] / peak,
        "bare_flops_utilisation": 3 * gflops * bare["train_ips"] / peak,
        "hf_preprocess_s": hf["preprocess_s"],
        "hf_preprocess_cache_mb": hf["preprocess_cache_mb"],
        "peak_mem_mb": {name: run["peak_mem_mb"] for name, run in runs.items()},
        "vitcls_data_wait_fraction": ours.get("data_wait_fraction"),
        "vitcls_overrides": overrides,
        **compiled_results(runs, bare),
        "runs": runs,
    }


def report(results: dict, size: Size, path: Path) -> None:
    peak, gflops, runs = results["matmul_peak_gflops"], results["forward_gflops_per_image"], results["runs"]
    print_table(
        f"training, {size.model} at {size.img_size}px, batch {size.batch_size}, {size.precision} ({size.name})",
        [
            (
                name,
                f"{run['train_ips']:.1f}",
                f"{run['eval_ips']:.1f}",
                f"{run['peak_mem_mb']:.0f}",
                f"{3 * gflops * run['train_ips'] / peak:.0%}",
            )
            for name, run in runs.items()
        ],
        ("variant", "train img/s", "eval img/s", "peak mem MB (PSS)", "FLOP util."),
    )
    print(
        f"vitcls/hf {results['vitcls_vs_hf']:.2f}x, vitcls/bare {results['vitcls_vs_bare']:.2f}x, "
        f"eval vitcls/hf {results['vitcls_eval_vs_hf']:.2f}x; matmul peak {peak:.0f} GFLOP/s; "
        f"hf preprocessing {results['hf_preprocess_s']:.1f} s, {results['hf_preprocess_cache_mb']:.0f} MB cache"
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
        runs = run_variants(args, size, root, work)
    results = summarise(runs, peak, gflops, args.vitcls_override)
    report(results, size, write_results("train", args.out, size, results))
    return results


if __name__ == "__main__":
    main()
