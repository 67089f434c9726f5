"""Export directory: a trained classifier that loads without the training code, Hydra configs or pickle.

    OUT_DIR/model.safetensors  the network's tensors (backbone + head)
    OUT_DIR/config.json        the network's config (timm backbone settings, feature tap, registered head name
                               and settings), class names, preprocessing (timm data config at the model's
                               actual size)
    OUT_DIR/README.md          model card: data, test metrics, how to load
    OUT_DIR/model.onnx         with onnx=True: dynamic batch, verified against PyTorch on real images
                               (plus model.onnx.data when the exporter keeps the weights beside the graph)

The network (one head) is rebuilt with `ImageClassifier.from_config`, the constructor that training used. An
adapter that merges is folded into the backbone's weights before writing (config.json then holds no adapter,
and records the merged one under `source`): loading such an export never needs the adapter's library. Any other
adapter's parameters are saved as the parameters they are (`adapter_module.*`) and the config keeps the adapter,
so its forward is rebuilt.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

import vitcls
from vitcls.data.folder import scan_folder
from vitcls.data.images import load_rgb
from vitcls.errors import ConfigError
from vitcls.inference.onnx import ONNX_DATA_FILE, ONNX_FILE, ExportError, export_onnx, verify_onnx
from vitcls.io import read_json, umask, write_json_atomic, write_text_atomic
from vitcls.models import legacy
from vitcls.models.classifier import ImageClassifier
from vitcls.preprocessing import apply_preprocessing_overrides, build_eval_transform
from vitcls.run.layout import SUMMARY_FILE, run_dir_of_checkpoint

log = logging.getLogger(__name__)

FORMAT = "vitcls-export"
# 3: `model` is an ImageClassifier config with a list of `heads` (one); 2 (one `head` and `tap`, tensors `head.*`,
# `prompts.*`) and 1 (vitcls 0.1) are upgraded on load.
FORMAT_VERSION = 3
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
NUM_VERIFY_IMAGES = 8


def read_config(directory: str | Path) -> dict[str, Any]:
    """config.json of an export directory, in today's format (older exports are upgraded)."""
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
    if config["format_version"] < 2:
        config["model"] = legacy.net_config_of_v01(config["model"], config["class_names"])
    config["model"] = legacy.upgrade_net_config(config["model"])
    return config


def load_exported_network(directory: str | Path) -> tuple[ImageClassifier, dict[str, Any]]:
    """The network of an export directory, in eval mode on CPU without gradients, and its config."""
    directory = Path(directory).expanduser()
    config = read_config(directory)
    net = ImageClassifier.from_config(config["model"])
    try:
        net.load_state_dict(legacy.upgrade_network_state(load_file(directory / WEIGHTS_FILE)))
    except (RuntimeError, OSError) as error:
        raise ExportError(f"{directory / WEIGHTS_FILE} does not fit the model of {CONFIG_FILE}: {error}") from error
    return net.eval().requires_grad_(False), config


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


def _adapter_lines(config: dict[str, Any]) -> list[str]:
    merged, adapter = config["source"].get("merged_adapter"), config["model"].get("adapter")
    settings = merged or adapter
    if not settings:
        return []
    described = ", ".join(f"{k} {v}" for k, v in settings.items() if k != "name")
    if merged:
        return ["", f"Trained with the {settings['name']} adapter ({described}), merged into the weights."]
    return ["", f"Adapter: {settings['name']} ({described}), part of the model."]


def model_card(config: dict[str, Any], summary: dict[str, Any] | None) -> str:
    preprocessing = config["preprocessing"]
    lines = [
        f"# {config['timm_model']} image classifier ({config['num_classes']} classes)",
        "",
        f"Exported by vitcls {config['vitcls_version']} from `{config['source'].get('checkpoint')}` "
        f"(epoch {config['source'].get('epoch')}, step {config['source'].get('global_step')}).",
        *_adapter_lines(config),
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
    onnx_files = f", `{ONNX_FILE}`" + (f" (+ `{ONNX_DATA_FILE}`)" if config["files"].get("onnx_data") else "")
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
        f"Files: `{WEIGHTS_FILE}` (safetensors), `{CONFIG_FILE}`" + (onnx_files if config["onnx"] else "") + ".",
        "",
    ]
    return "\n".join(lines)


def _replace_directory(staging: Path, out_dir: Path) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ConfigError(f"export directory {out_dir} exists and is not a directory")
        if any(out_dir.iterdir()) and not (out_dir / CONFIG_FILE).is_file():
            raise ConfigError(f"export directory {out_dir} exists and is not a vitcls export: choose another path")
        shutil.rmtree(out_dir)
    staging.rename(out_dir)


def _write_onnx(net: ImageClassifier, staging: Path, data_config: dict, verify_images: list[str],
                data_root: str | None) -> dict[str, Any]:
    transform = build_eval_transform(data_config)
    paths = verification_images(verify_images, data_root)
    images = torch.stack([transform(load_rgb(p)) for p in paths])
    export_onnx(net, staging / ONNX_FILE, tuple(data_config["input_size"]))
    report = verify_onnx(net, staging / ONNX_FILE, images)
    log.info("ONNX verified on %d images: max |logit difference| %.2g", len(paths), report["max_abs_diff_logits"])
    return report


def export_model(
    net: ImageClassifier,
    out_dir: str | Path,
    data_config: dict[str, Any],
    *,
    onnx: bool = False,
    verify_images: list[str] | None = None,
    summary: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
) -> Path:
    """Write the export directory for `net` (built complete in a temporary folder, then moved)."""
    out_dir = Path(out_dir).expanduser().resolve()
    merged = net.with_adapter_merged()
    source = dict(source or {})
    if merged is not net:
        source["merged_adapter"] = net.config["adapter"]
    net = merged.eval().cpu()
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "vitcls_version": vitcls.__version__,
        "timm_model": net.config["backbone"]["name"],
        "num_classes": len(net.class_names),
        "class_names": list(net.class_names),
        "model": net.config,
        "preprocessing": {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()},
        "source": source,
        "files": {"weights": WEIGHTS_FILE, "onnx": None, "onnx_data": None},
        "onnx": None,
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        save_file(tensors, staging / WEIGHTS_FILE, metadata={"format": "pt"})
        if onnx:
            config["onnx"] = _write_onnx(net, staging, data_config, verify_images or [], source.get("data_root"))
            config["files"]["onnx"] = ONNX_FILE
            config["files"]["onnx_data"] = ONNX_DATA_FILE if (staging / ONNX_DATA_FILE).is_file() else None
        write_json_atomic(staging / CONFIG_FILE, config)
        write_text_atomic(staging / CARD_FILE, model_card(config, summary))
        # What plain writes under the user's umask give (mkdtemp and some writers make private files).
        for path in staging.iterdir():
            path.chmod(0o666 & ~umask())
        staging.chmod(0o777 & ~umask())
        _replace_directory(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def export_checkpoint(
    checkpoint_path: str | Path,
    out_dir: str | Path,
    *,
    onnx: bool = False,
    verify_images: list[str] | None = None,
    summary: dict[str, Any] | None = None,
) -> Path:
    """The export directory of a training checkpoint, with the preprocessing its run used."""
    checkpoint_path = Path(checkpoint_path).expanduser()
    net, checkpoint = ImageClassifier.from_checkpoint(checkpoint_path)
    data_settings = checkpoint.get("datamodule_hyper_parameters") or {}
    source = {
        "checkpoint": str(checkpoint_path.resolve()),
        "epoch": checkpoint.get("epoch"),
        "global_step": checkpoint.get("global_step"),
        "data_root": data_settings.get("root"),
    }
    if summary is None:
        summary_file = run_dir_of_checkpoint(checkpoint_path) / SUMMARY_FILE
        summary = read_json(summary_file) if summary_file.is_file() else None
    return export_model(
        net,
        out_dir,
        apply_preprocessing_overrides(net.data_config, data_settings),
        onnx=onnx,
        verify_images=verify_images,
        summary=summary,
        source=source,
    )
