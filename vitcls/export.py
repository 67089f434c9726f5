"""Export directory: a trained classifier that loads without the training code, Hydra configs or pickle.

    OUT_DIR/model.safetensors  backbone + head tensors
    OUT_DIR/config.json        the module's model-building hyperparameters (verbatim), class names,
                               preprocessing (timm data config at the model's actual size)
    OUT_DIR/README.md          model card: data, test metrics, how to load
    OUT_DIR/model.onnx         with --onnx: dynamic batch, verified against PyTorch on real images

The network is rebuilt through the same constructor as in training (`ImageClassifier(**model)`), so
any backbone/head option a checkpoint records exports without changes here.

    vitcls-export CKPT OUT_DIR [--onnx] [--verify-images PATH ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

import vitcls
from vitcls.data.datamodule import ImageFolderDataModule
from vitcls.data.folder import scan_folder
from vitcls.data.images import load_rgb
from vitcls.data.transforms import build_eval_transform
from vitcls.errors import ConfigError, VitclsError
from vitcls.models.module import ImageClassifier, load_classifier
from vitcls.reports import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

FORMAT = "vitcls-export"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"
CARD_FILE = "README.md"
# Arguments of ImageClassifier that only matter for training; the rest rebuilds the network.
TRAINING_ONLY = ("optimizer", "scheduler", "loss")
# ONNX vs PyTorch: |onnx - torch| <= atol + rtol * |torch| on every logit, and the same top-1 class.
ONNX_ATOL = 1e-3
ONNX_RTOL = 1e-3
NUM_VERIFY_IMAGES = 8


class ExportError(VitclsError):
    """An export directory cannot be written, read or verified."""


# --- building blocks shared with the Predictor ----------------------------------------------------
def model_config(module: ImageClassifier) -> dict[str, Any]:
    """The constructor arguments that define the network, as saved by `save_hyperparameters`."""
    return {k: v for k, v in dict(module.hparams).items() if k not in (*TRAINING_ONLY, "class_names")}


def build_classifier(model: dict[str, Any], class_names: list[str]) -> ImageClassifier:
    """The network of `model` with fresh weights (no download: the exported tensors replace them)."""
    model = dict(model)
    model["backbone"] = {**model["backbone"], "pretrained": False, "weights": None}
    return ImageClassifier(**model, class_names=class_names)


def inference_state_dict(module: ImageClassifier) -> dict[str, Tensor]:
    """Every tensor of the module except the loss's (metrics keep no persistent state)."""
    skipped = tuple(f"{name}." for name, child in module.named_children() if child is module.criterion)
    return {
        k: v.detach().cpu().contiguous() for k, v in module.state_dict().items() if not k.startswith(skipped)
    }


def effective_data_config(
    module: ImageClassifier, datamodule_hparams: dict[str, Any] | None
) -> dict[str, Any]:
    """The preprocessing eval.py applies: the backbone's, as the run's data module adjusts it."""
    if not datamodule_hparams:
        return dict(module.data_config)
    datamodule = ImageFolderDataModule(**datamodule_hparams)
    datamodule.set_data_config(module.data_config)
    return datamodule.data_config


def read_config(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory).expanduser()
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise ExportError(
            f"{directory} is not a vitcls export directory (no {CONFIG_FILE}); "
            "create one with `vitcls-export CKPT OUT_DIR`."
        )
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("format") != FORMAT or config.get("format_version", 0) > FORMAT_VERSION:
        raise ExportError(
            f"{path} is not a {FORMAT} v{FORMAT_VERSION} config (format={config.get('format')!r}, "
            f"version={config.get('format_version')!r}); re-export with this vitcls version."
        )
    return config


def load_exported_module(directory: str | Path) -> tuple[ImageClassifier, dict[str, Any]]:
    """The module of an export directory, in eval mode on CPU, and its config."""
    directory = Path(directory).expanduser()
    config = read_config(directory)
    module = build_classifier(config["model"], config["class_names"])
    try:
        module.load_state_dict(load_file(directory / WEIGHTS_FILE))
    except (RuntimeError, OSError) as error:
        raise ExportError(
            f"{directory / WEIGHTS_FILE} does not fit the model of {CONFIG_FILE}: {error}"
        ) from error
    return module.eval().requires_grad_(False), config


# --- ONNX -----------------------------------------------------------------------------------------
def export_onnx(module: ImageClassifier, path: Path, input_size: tuple[int, int, int]) -> None:
    """torch.export-based ONNX export with a dynamic batch dimension (input `images`, output `logits`)."""
    sample = torch.zeros(2, *input_size)
    module.eval().to_onnx(
        path,
        sample,
        dynamo=True,
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
        verbose=False,
    )


def onnx_session(path: str | Path, device: str = "cpu"):
    try:
        import onnxruntime
    except ImportError as error:
        raise ConfigError("the ONNX backend needs onnxruntime: pip install 'vitcls[onnx]'") from error
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return onnxruntime.InferenceSession(str(path), providers=providers)


def verify_onnx(module: ImageClassifier, path: Path, images: Tensor) -> dict[str, Any]:
    """Compare onnxruntime with PyTorch on `images` as one batch and one by one; raise on a mismatch."""
    session = onnx_session(path)
    with torch.inference_mode():
        expected = module(images).numpy()
    batched = session.run(["logits"], {"images": images.numpy()})[0]
    single = np.concatenate(
        [session.run(["logits"], {"images": images[i : i + 1].numpy()})[0] for i in range(len(images))]
    )
    worst = 0.0
    for name, actual in (("batched", batched), ("one image per call", single)):
        excess = np.abs(actual - expected) - (ONNX_ATOL + ONNX_RTOL * np.abs(expected))
        max_diff = float(np.abs(actual - expected).max())
        worst = max(worst, max_diff)
        if (excess > 0).any() or (actual.argmax(1) != expected.argmax(1)).any():
            raise ExportError(
                f"ONNX verification failed ({name}): onnxruntime logits differ from PyTorch by up to "
                f"{max_diff:.3g} (allowed {ONNX_ATOL} + {ONNX_RTOL} * |logit|) or the top-1 class differs. "
                f"{path.name} was not written. Export without --onnx, or report this with the torch/onnx versions."
            )
    return {
        "num_images": len(images),
        "max_abs_diff_logits": worst,
        "atol": ONNX_ATOL,
        "rtol": ONNX_RTOL,
        "batch_sizes": [len(images), 1],
    }


def verification_images(paths: list[str], data_root: str | None) -> list[str]:
    """The given image files, else a few test images of the training data (one per class, round robin)."""
    if paths:
        return paths
    if data_root and Path(data_root).is_dir():
        scan = scan_folder(data_root)
        split = scan.splits.get("test") or scan.splits["train"]
        per_class = [split.files[name] for name in split.class_names]
        picked = [files[i] for i in range(NUM_VERIFY_IMAGES) for files in per_class if i < len(files)]
        return picked[:NUM_VERIFY_IMAGES]
    raise ConfigError(
        f"--onnx is verified on real images, but the training data folder ({data_root}) is not available: "
        "pass some with --verify-images PATH [PATH ...]"
    )


# --- the export directory ------------------------------------------------------------------------
def model_card(config: dict[str, Any], summary: dict[str, Any] | None) -> str:
    preprocessing = config["preprocessing"]
    lines = [
        f"# {config['timm_model']} image classifier ({config['num_classes']} classes)",
        "",
        f"Exported by vitcls {config['vitcls_version']} from `{config['source'].get('checkpoint')}` "
        f"(epoch {config['source'].get('epoch')}, step {config['source'].get('global_step')}).",
        "",
        "## Data",
        "",
        f"- classes: {', '.join(config['class_names'])}",
        f"- training data: `{config['source'].get('data_root')}`",
    ]
    if summary and summary.get("num_samples"):
        lines.append("- images: " + ", ".join(f"{k} {v}" for k, v in summary["num_samples"].items()))
    lines += [
        f"- input: {preprocessing['input_size'][1]}x{preprocessing['input_size'][2]} px, "
        f"{preprocessing['interpolation']} resize, crop_pct {preprocessing.get('crop_pct')}, "
        f"mean {list(preprocessing['mean'])}, std {list(preprocessing['std'])}",
        "",
        "## Test metrics",
        "",
    ]
    if summary and summary.get("test"):
        lines += ["| metric | value |", "| --- | ---: |"]
        lines += [f"| {name} | {value:.4f} |" for name, value in summary["test"].items()]
    else:
        lines.append("No summary.json was found next to the checkpoint.")
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from vitcls import Predictor",
        "",
        'predictor = Predictor.from_pretrained("path/to/this/folder")  # backend="onnx" for model.onnx',
        "predictor([\"photo.jpg\"], top_k=3)  # [[{'label': ..., 'score': ...}, ...]]",
        "```",
        "",
        "```bash",
        "vitcls-predict path/to/this/folder photos/ --output predictions.csv",
        "```",
        "",
        f"Files: `{WEIGHTS_FILE}` (safetensors), `{CONFIG_FILE}`"
        + (f", `{ONNX_FILE}`" if config["onnx"] else "")
        + ".",
        "",
    ]
    return "\n".join(lines)


def _replace_directory(staging: Path, out_dir: Path) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ConfigError(f"export directory {out_dir} exists and is not a directory")
        if any(out_dir.iterdir()) and not (out_dir / CONFIG_FILE).is_file():
            raise ConfigError(
                f"export directory {out_dir} exists and is not a vitcls export: choose another path"
            )
        shutil.rmtree(out_dir)
    staging.rename(out_dir)


def export_model(
    module: ImageClassifier,
    out_dir: str | Path,
    data_config: dict[str, Any],
    *,
    onnx: bool = False,
    verify_images: list[str] | None = None,
    summary: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
) -> Path:
    """Write the export directory for `module` (built complete in a temporary folder, then moved)."""
    out_dir = Path(out_dir).expanduser().resolve()
    module = module.eval().cpu()
    source = dict(source or {})
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "vitcls_version": vitcls.__version__,
        "timm_model": module.hparams.backbone["name"],
        "num_classes": len(module.class_names),
        "class_names": list(module.class_names),
        "model": model_config(module),
        "preprocessing": {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()},
        "source": source,
        "files": {"weights": WEIGHTS_FILE, "onnx": ONNX_FILE if onnx else None},
        "onnx": None,
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        save_file(inference_state_dict(module), staging / WEIGHTS_FILE, metadata={"format": "pt"})
        if onnx:
            transform = build_eval_transform(data_config)
            paths = verification_images(verify_images or [], source.get("data_root"))
            images = torch.stack([transform(load_rgb(p)) for p in paths])
            export_onnx(module, staging / ONNX_FILE, tuple(data_config["input_size"]))
            config["onnx"] = verify_onnx(module, staging / ONNX_FILE, images)
            log.info(
                "ONNX verified on %d images: max |logit difference| %.2g",
                len(paths),
                config["onnx"]["max_abs_diff_logits"],
            )
        write_json_atomic(staging / CONFIG_FILE, config)
        write_text_atomic(staging / CARD_FILE, model_card(config, summary))
        staging.chmod(0o755)
        _replace_directory(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("export directory: %s", out_dir)
    return out_dir


def _run_summary(checkpoint_path: Path) -> dict[str, Any] | None:
    """summary.json of the training run (the checkpoint sits in <run_dir>/checkpoints/)."""
    path = checkpoint_path.resolve().parent.parent / "summary.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def export_checkpoint(
    checkpoint_path: str | Path,
    out_dir: str | Path,
    *,
    onnx: bool = False,
    verify_images: list[str] | None = None,
    summary: dict[str, Any] | None = None,
) -> Path:
    checkpoint_path = Path(checkpoint_path).expanduser()
    module, checkpoint = load_classifier(checkpoint_path)
    datamodule_hparams = checkpoint.get("datamodule_hyper_parameters") or {}
    source = {
        "checkpoint": str(checkpoint_path.resolve()),
        "epoch": checkpoint.get("epoch"),
        "global_step": checkpoint.get("global_step"),
        "data_root": datamodule_hparams.get("root"),
    }
    return export_model(
        module,
        out_dir,
        effective_data_config(module, datamodule_hparams),
        onnx=onnx,
        verify_images=verify_images,
        summary=summary if summary is not None else _run_summary(checkpoint_path),
        source=source,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vitcls-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a training checkpoint (.ckpt)")
    parser.add_argument("out_dir", help="the export directory to write (replaced if it is an earlier export)")
    parser.add_argument(
        "--onnx", action="store_true", help="also write model.onnx and verify it with onnxruntime"
    )
    parser.add_argument(
        "--verify-images",
        nargs="+",
        default=[],
        metavar="PATH",
        help="images for the ONNX check (default: test images of the training data)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out_dir = export_checkpoint(
            args.checkpoint, args.out_dir, onnx=args.onnx, verify_images=args.verify_images
        )
    except VitclsError as error:
        log.error("%s", error)
        sys.exit(2)
    print(out_dir)


if __name__ == "__main__":
    main()
