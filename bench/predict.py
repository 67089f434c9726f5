"""Prediction speed: the tutorial's per-image Hugging Face pipeline against the vitcls Predictor.

    python bench/predict.py --quick       # about a minute on 2 CPU cores
    python bench/predict.py               # more images, steadier numbers
    python bench/predict.py --device cuda --dtype bfloat16 --model vit_base_patch16_224 --batch-size 64

One run, one machine, the same images for every method, all models randomly initialised:
  pipeline   transformers `pipeline('image-classification')` called once per image on a ViT with the
             same width/depth/heads/patch/image size as the timm model (the tutorial's approach)
  predictor  vitcls Predictor (torch backend) from an export directory, batched
  onnx       vitcls Predictor (onnx backend, onnxruntime), batched
  bare       a bare batched loop: timm eval transform + torch.stack + model(batch) under inference_mode
  forward    model(batch) alone on preprocessed tensors (what the matmul peak bounds)
Decoding is EXCLUDED for all: images are decoded to PIL once before timing. Preprocessing (resize,
crop, normalise) is included for every method but `forward`. Writes bench/results/predict.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, matmul_peak_gflops  # noqa: E402
from vitcls.data.images import is_image_file, load_rgb  # noqa: E402
from vitcls.inference.export_dir import export_model  # noqa: E402
from vitcls.inference.predictor import Predictor  # noqa: E402
from vitcls.io import write_json_atomic  # noqa: E402
from vitcls.models.classifier import ImageClassifier  # noqa: E402
from vitcls.preprocessing import build_eval_transform  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
FRUITS_TEST = BENCH_DIR.parent.parent / "shared" / "data" / "fruits360-10" / "test"
NUM_CLASSES = 10


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images (about a minute on 2 CPU cores)")
    parser.add_argument(
        "--tiny", action="store_true", help="smoke test: 32 px, 8 images (numbers mean nothing)"
    )
    parser.add_argument("--model", default="vit_tiny_patch16_224")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--num-images", type=int, help="default: 600, --quick 96, --tiny 8")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtype", default="float32", help="float32 or bfloat16 (pipeline: model cast; predictor, bare: autocast)"
    )
    parser.add_argument(
        "--images", type=Path, default=FRUITS_TEST, help="folder of photos (default: Fruits-360 test)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the best of each method is kept")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "predict.json")
    args = parser.parse_args(argv)
    if args.tiny:
        args.img_size, args.batch_size, args.repeats = 32, 4, 1
    args.num_images = args.num_images or (8 if args.tiny else 96 if args.quick else 600)
    return args


def image_files(folder: Path, count: int, scratch: Path) -> list[str]:
    """`count` photos from `folder` (spread over its classes), or random-noise PNGs when it is absent."""
    if folder.is_dir():
        files = sorted(str(p) for p in folder.rglob("*") if is_image_file(p))
        if files:
            step = max(1, len(files) // count)
            return (files[::step] * count)[:count]
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        paths.append(str(scratch / f"noise_{i:04d}.png"))
        Image.fromarray(rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def hf_equivalent(module: ImageClassifier, data_config: dict, device: str, dtype: torch.dtype):
    """A randomly initialised transformers ViT of the timm backbone's shape, in an image-classification pipeline."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor, pipeline

    backbone = module.backbone
    size = data_config["input_size"][1]
    config = ViTConfig(
        hidden_size=backbone.embed_dim,
        num_hidden_layers=len(backbone.blocks),
        num_attention_heads=backbone.blocks[0].attn.num_heads,
        intermediate_size=backbone.blocks[0].mlp.fc1.out_features,
        patch_size=backbone.patch_embed.patch_size[0],
        image_size=size,
        num_labels=NUM_CLASSES,
        id2label=dict(enumerate(module.class_names)),
        label2id={name: i for i, name in enumerate(module.class_names)},
    )
    model = ViTForImageClassification(config).eval().to(device=device, dtype=dtype)
    processor = ViTImageProcessor(
        size={"height": size, "width": size},
        image_mean=list(data_config["mean"]),
        image_std=list(data_config["std"]),
        resample=Image.Resampling.BICUBIC,
    )
    return pipeline(
        "image-classification", model=model, image_processor=processor, device=torch.device(device)
    )


def measure(methods: dict, batch_size: int, repeats: int) -> dict[str, float]:
    """Best images/s of each `function(inputs)` over `repeats` rounds; the methods take turns within a
    round, so a change of load on a shared machine hits all of them alike. One warm-up batch first."""
    for function, inputs in methods.values():
        function(inputs[:batch_size])
    best = dict.fromkeys(methods, 0.0)
    for _ in range(repeats):
        for name, (function, inputs) in methods.items():
            started = time.perf_counter()
            function(inputs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            best[name] = max(best[name], len(inputs) / (time.perf_counter() - started))
    return best


def gflop_per_image(module: torch.nn.Module, input_size, device: str, dtype: torch.dtype) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        module(torch.zeros(1, *input_size, device=device, dtype=dtype))
    return counter.get_total_flops() / 1e9


def table(results: dict) -> str:
    rows = [
        ("HF pipeline, one image per call", "pipeline_ips"),
        ("vitcls Predictor (torch)", "predictor_ips"),
        ("vitcls Predictor (onnx)", "onnx_ips"),
        ("bare batched loop (transform + model(batch))", "bare_ips"),
        ("model(batch) only, preprocessed", "forward_ips"),
    ]
    base = results["pipeline_ips"]
    lines = ["| method | images/s | vs pipeline |", "| --- | ---: | ---: |"]
    for name, key in rows:
        value = results.get(key)
        lines.append(f"| {name} | {value:.1f} | {value / base:.2f}x |" if value else f"| {name} | n/a | |")
    r = results["ratios"]
    lines += [
        "",
        f"Predictor / bare loop: {r['predictor_vs_bare']:.3f}; matmul peak {results['matmul_peak_gflops']:.0f} "
        f"GFLOP/s; {results['gflop_per_image']:.2f} GFLOP per image; share of the peak reached: Predictor "
        f"{results['peak_fraction']['predictor']:.0%}, model(batch) {results['peak_fraction']['forward']:.0%}.",
    ]
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        paths = image_files(args.images, args.num_images, Path(scratch))
        images = [load_rgb(p) for p in paths]  # decoding is not timed
        module = ImageClassifier(
            backbone={"name": args.model, "img_size": args.img_size, "pretrained": False},
            head={"name": "linear"},
            class_names=[f"class_{i}" for i in range(NUM_CLASSES)],
        ).eval()
        data_config = module.data_config
        export_dir = Path(scratch) / "export"
        with_onnx = onnx_runs_on(args.device)
        export_model(module, export_dir, data_config, onnx=with_onnx, verify_images=paths[:8])

        results: dict = {
            "bench": "predict",
            "size": {"name": "tiny" if args.tiny else "quick" if args.quick else "full"},
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(),
            "model": args.model,
            "img_size": args.img_size,
            "num_images": len(images),
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "device": args.device,
            "dtype": args.dtype,
            "images": args.images.name if args.images.is_dir() else "random noise",
            "decoding": "excluded for all (images decoded to PIL before timing); preprocessing included",
        }

        pipe = hf_equivalent(module, data_config, args.device, dtype)
        predictor = Predictor.from_pretrained(export_dir, device=args.device, dtype=dtype)
        # Like the Predictor: float32 weights, bfloat16/float16 as autocast.
        model = module.to(device=args.device)
        transform = build_eval_transform(data_config)
        tensors = torch.stack([transform(x) for x in images]).to(args.device)
        autocast = torch.autocast(torch.device(args.device).type, dtype=dtype, enabled=dtype != torch.float32)

        @torch.inference_mode()
        def bare(xs):
            for start in range(0, len(xs), args.batch_size):
                batch = torch.stack([transform(x) for x in xs[start : start + args.batch_size]])
                with autocast:
                    model(batch.to(args.device)).float().cpu()

        @torch.inference_mode()
        def forward(xs):
            for start in range(0, len(xs), args.batch_size):
                with autocast:
                    model(xs[start : start + args.batch_size])

        methods = {
            "pipeline": (lambda xs: [pipe(x, top_k=5) for x in xs], images),
            "predictor": (lambda xs: predictor(xs, top_k=5, batch_size=args.batch_size), images),
            "bare": (bare, images),
            "forward": (forward, tensors),
        }
        results["onnx_ips"] = None
        if with_onnx:
            onnx_predictor = Predictor.from_pretrained(export_dir, device=args.device, backend="onnx")
            methods["onnx"] = (lambda xs: onnx_predictor(xs, top_k=5, batch_size=args.batch_size), images)
        results.update(
            {f"{name}_ips": ips for name, ips in measure(methods, args.batch_size, args.repeats).items()}
        )
        results["matmul_peak_gflops"] = matmul_peak_gflops(args.device, dtype)
        results["gflop_per_image"] = gflop_per_image(model, data_config["input_size"], args.device, torch.float32)

    peak = results["matmul_peak_gflops"]
    results["peak_fraction"] = {
        key: results[f"{key}_ips"] * results["gflop_per_image"] / peak
        for key in ("predictor", "bare", "forward")
    }
    results["ratios"] = {
        "predictor_vs_pipeline": results["predictor_ips"] / results["pipeline_ips"],
        "onnx_vs_pipeline": results["onnx_ips"] / results["pipeline_ips"] if results["onnx_ips"] else None,
        "predictor_vs_bare": results["predictor_ips"] / results["bare_ips"],
    }
    results["table"] = table(results)
    write_json_atomic(args.out, results)
    print(json.dumps({k: v for k, v in results.items() if k != "table"}, indent=2))
    print()
    print(results["table"])
    return results


def onnx_runs_on(device: str) -> bool:
    try:
        import onnxruntime
    except ImportError:
        return False
    return device == "cpu" or "CUDAExecutionProvider" in onnxruntime.get_available_providers()


if __name__ == "__main__":
    main()
