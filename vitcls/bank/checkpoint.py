"""A bank head as the network of a lone run: its checkpoint (the format `ClassifierModule` and eval.py load) and
its `ImageClassifier`, rebuilt from a bank run directory for export.

The selected head's checkpoint (`checkpoints/selected.ckpt`, summary.json's `best_ckpt`) holds the backbone and
that head; every head's weights at its best epoch are in `heads/<NN>/head.safetensors`. Any head is that backbone
with its own head on its own tap, as bank.json describes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vitcls.checkpoints import load_checkpoint
from vitcls.errors import ConfigError
from vitcls.io import atomic_write, read_json
from vitcls.models.classifier import ImageClassifier

SELECTED_CHECKPOINT = "selected.ckpt"


def head_net_config(backbone: dict[str, Any], design: dict[str, Any], class_names: list[str]) -> dict[str, Any]:
    """The ImageClassifier config of one bank head (what its lone run's checkpoint stores)."""
    return {"backbone": dict(backbone), "tap": dict(design["tap"]), "head": dict(design["head"]),
            "class_names": list(class_names)}


def head_checkpoint(
    module: Any, index: int, optimizer: dict[str, Any] | None, data_settings: dict[str, Any], global_step: int,
) -> dict[str, Any]:
    """A checkpoint of head `index` of a `BankModule` (at its current weights) as a ClassifierModule's."""
    import lightning as L

    design = module.hparams.designs[index]
    state = {f"net.backbone.{k}": v for k, v in module.bank.backbone.state_dict().items()}
    state.update({f"net.head.{k}": v for k, v in module.bank.heads[index].state_dict().items()})
    return {
        "epoch": module.best_epoch[index],
        "global_step": global_step,
        "pytorch-lightning_version": L.__version__,
        "state_dict": {k: v.detach().cpu().clone() for k, v in state.items()},
        "hyper_parameters": {
            "net": head_net_config(module.hparams.backbone, design, module.class_names),
            "train_blocks": "none",
            "bitfit": False,
            "compile": False,
            "optimizer": {**(optimizer or {}), "head_lr": design["lr"], "weight_decay": design["weight_decay"]},
            "scheduler": module.hparams.scheduler,
            "loss": module.hparams.loss,
        },
        "datamodule_hyper_parameters": dict(data_settings),
        "bank_head": {"index": index, "name": design["name"]},
    }


def save_checkpoint(checkpoint: dict[str, Any], path: Path) -> Path:
    return atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def save_head_weights(head: torch.nn.Module, path: Path) -> Path:
    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))


def find_head(bank: dict[str, Any], head: str | None) -> dict[str, Any]:
    """The head of bank.json named `head` (its name or index), or the selected one."""
    heads = bank["heads"]
    if head is None:
        if not bank.get("selected"):
            raise ConfigError("this bank selected no head (none finished with a validation metric): pass --bank-head")
        return heads[bank["selected"]["index"]]
    for entry in heads:
        if head in (entry["name"], str(entry["index"])):
            return entry
    shown = ", ".join(f"{e['index']}: {e['name']}" for e in heads[:12]) + (" ..." if len(heads) > 12 else "")
    raise ConfigError(f"--bank-head {head!r}: no head of that name or index in this bank ({shown})")


def bank_head_network(run_dir: Path, bank: dict[str, Any], entry: dict[str, Any]) -> tuple[ImageClassifier, dict]:
    """Head `entry` of the bank in `run_dir` as an ImageClassifier (eval mode), and the selected head's checkpoint
    dict (its data settings apply to every head)."""
    checkpoint_path = Path(bank["checkpoint"])
    if not checkpoint_path.is_absolute():
        checkpoint_path = run_dir / checkpoint_path
    checkpoint = load_checkpoint(checkpoint_path, "the bank's checkpoint")
    selected_config = checkpoint["hyper_parameters"]["net"]
    net = ImageClassifier.from_config(head_net_config(selected_config["backbone"], entry["design"],
                                                      selected_config["class_names"]))
    prefix = "net.backbone."
    net.backbone.load_state_dict({k.removeprefix(prefix): v for k, v in checkpoint["state_dict"].items()
                                  if k.startswith(prefix)})
    net.head.load_state_dict(load_file(run_dir / entry["files"]["weights"]))
    return net.eval(), checkpoint


def read_bank(run_dir: Path) -> dict[str, Any]:
    from vitcls.bank.report import BANK_FILE

    path = Path(run_dir) / BANK_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a head-bank run directory (no {BANK_FILE}); "
                          "to export a single run, pass its checkpoint (RUN_DIR/checkpoints/*.ckpt)")
    return read_json(path)


def export_bank_head(
    run_dir: str | Path, out_dir: str | Path, head: str | None = None, *, onnx: bool = False,
    verify_images: list[str] | None = None,
) -> Path:
    """An export directory (vitcls.inference.export) of one head of a bank run: `head` by name or index, or the
    selected head. The same files as for a lone run's checkpoint; Predictor and ONNX need nothing else."""
    from vitcls.data.transforms import apply_preprocessing_overrides
    from vitcls.inference.export import export_model

    run_dir = Path(run_dir).expanduser()
    bank = read_bank(run_dir)
    entry = find_head(bank, head)
    net, checkpoint = bank_head_network(run_dir, bank, entry)
    data_settings = checkpoint.get("datamodule_hyper_parameters") or {}
    source = {
        "checkpoint": str((run_dir / bank["checkpoint"]).resolve()),
        "bank_run": str(run_dir.resolve()),
        "bank_head": entry["name"],
        "epoch": entry["best_epoch"],
        "global_step": checkpoint.get("global_step"),
        "data_root": data_settings.get("root"),
    }
    return export_model(
        net, out_dir, apply_preprocessing_overrides(net.data_config, data_settings), onnx=onnx,
        verify_images=verify_images, summary={"test": entry.get("test"), "num_samples": bank.get("num_samples")},
        source=source,
    )
