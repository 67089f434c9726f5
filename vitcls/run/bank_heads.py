"""The heads of a run with several (a head bank): their table, the one selected on validation, and any head as a
network of its own (its checkpoint, its export).

The selected head's checkpoint (`checkpoints/selected.ckpt`, summary.json's `best_ckpt`) is a one-head
ClassifierModule checkpoint: eval.py and vitcls-export take it as a lone run's. Every head's weights at its best
epoch are in `heads/<NN>/head.safetensors`; any head is that backbone with its own head on its own tap, as bank.json
describes it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vitcls.errors import ConfigError
from vitcls.io import atomic_write, read_json
from vitcls.metrics import metric_names, selection_key
from vitcls.models.classifier import ImageClassifier
from vitcls.models.lightning_module import ClassifierModule
from vitcls.run.layout import BANK_FILE

STATUS_OK = "ok"
HEAD = "head"  # the protocol of a trained head; a probe's is its name (knn, logreg)


def rank_heads(heads: Sequence[dict[str, Any]], monitor: str, maximize: bool) -> list[int]:
    """Head indices, best first, by `vitcls.metrics.selection_key` on validation. Heads that stopped (a
    non-finite loss) or were never validated come last."""
    name = monitor.removeprefix("val/")

    def key(head: dict[str, Any]) -> tuple:
        val = head.get("val") or {}
        score = val.get(name) if head["status"] == STATUS_OK else None
        return selection_key(score, val.get("loss"), head["index"], maximize)

    return [head["index"] for head in sorted(heads, key=key)]


def select_head(heads: Sequence[dict[str, Any]], monitor: str, maximize: bool) -> int | None:
    """The trained head ranked first (probes are ranked beside the heads, never selected: there is no network to
    export)."""
    trained = [head for head in heads if head.get("protocol", HEAD) == HEAD]
    order = rank_heads(trained, monitor, maximize)
    first = next((head for head in trained if head["index"] == order[0]), None) if order else None
    if first is None or first["status"] != STATUS_OK or (first.get("val") or {}).get(monitor.removeprefix("val/")) is None:
        return None
    return first["index"]


def head_rows(heads: Sequence[dict[str, Any]], selected: int | None) -> list[dict[str, Any]]:
    """bank.csv: one flat row per head, in rank order."""
    names = metric_names()
    rows = []
    for head in heads:
        design = head["design"]
        protocol = head.get("protocol", HEAD)
        if protocol == HEAD:
            settings = {k: v for k, v in design["head"].items() if k not in ("name", "module")}
            kind, tap, lr, decay = design["head"]["name"], design["tap"]["features"], design["lr"], design["weight_decay"]
            trainable = head["params"]["trainable"]
        else:
            settings, kind, tap, lr, decay, trainable = design["chosen"], protocol, design["tap"], None, None, None
        row = {
            "rank": head["rank"], "index": head["index"], "name": head["name"], "selected": head["index"] == selected,
            "status": head["status"], "protocol": protocol, "head": kind,
            "head_settings": ",".join(f"{k}={v}" for k, v in settings.items()),
            "tap": tap, "lr": lr, "weight_decay": decay, "params_trainable": trainable, "best_epoch": head["best_epoch"],
        }
        for split in ("val", "test"):
            row.update({f"{split}_{name}": (head.get(split) or {}).get(name) for name in names})
        rows.append(row)
    return sorted(rows, key=lambda row: row["rank"])


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def markdown_table(report: dict[str, Any], metrics: Sequence[str] = ("f1_macro", "acc"), limit: int | None = None) -> str:
    """The heads as a markdown table, best first (what the run logs and the README shows)."""
    monitor = report["monitor"].removeprefix("val/")
    shown = [monitor, *[m for m in metrics if m != monitor]]
    header = ["rank", "head", "params_trainable", "best_epoch", *(f"val/{m}" for m in shown),
              *(f"test/{m}" for m in shown)]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in head_rows(report["heads"], (report.get("selected") or {}).get("index"))[:limit]:
        name = row["name"] + (" **(selected)**" if row["selected"] else "") + ("" if row["status"] == STATUS_OK else " (stopped)")
        params = "" if row["params_trainable"] is None else f"{row['params_trainable']:,}"
        cells = [str(row["rank"]), name, params, "" if row["best_epoch"] is None else str(row["best_epoch"])]
        cells += ["" if row[f"{s}_{m}"] is None else f"{row[f'{s}_{m}']:.3f}" for s in ("val", "test") for m in shown]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --- any head as a network of its own --------------------------------------------------------------------
def head_checkpoint(module: ClassifierModule, index: int, data_settings: dict[str, Any], global_step: int) -> dict:
    """Head `index` (at its current weights) with the backbone, as the checkpoint of a one-head ClassifierModule."""
    import lightning as L

    hparams = dict(module.hparams)
    hparams["net"] = {**hparams["net"], "heads": [hparams["net"]["heads"][index]]}
    if hparams.get("head_optim"):
        hparams["head_optim"] = [hparams["head_optim"][index]]
    prefix = f"net.heads.{index}."
    state = {k: v for k, v in module.state_dict().items() if not k.startswith("net.heads.")}
    state.update({"net.heads.0." + k.removeprefix(prefix): v for k, v in module.state_dict().items()
                  if k.startswith(prefix)})
    return {
        "epoch": module.best_epoch[index],
        "global_step": global_step,
        "pytorch-lightning_version": L.__version__,
        "state_dict": {k: v.detach().cpu().clone() for k, v in state.items()},
        "hyper_parameters": hparams,
        "datamodule_hyper_parameters": dict(data_settings),
        "bank_head": {"index": index, "name": module.names[index]},
    }


def save_checkpoint(checkpoint: dict[str, Any], path: Path) -> Path:
    return atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def save_head_weights(head: torch.nn.Module, path: Path) -> Path:
    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))


def read_bank(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / BANK_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a head-bank run directory (no {BANK_FILE}); "
                          "to export a single run, pass its checkpoint (RUN_DIR/checkpoints/*.ckpt)")
    return read_json(path)


def find_head(bank: dict[str, Any], head: str | None) -> dict[str, Any]:
    """The head of bank.json named `head` (its name or index), or the selected one."""
    heads = bank["heads"]
    if head is None:
        if not bank.get("selected"):
            raise ConfigError("this bank selected no head (none finished with a validation metric): pass --bank-head")
        return heads[bank["selected"]["index"]]
    for entry in heads:
        if head in (entry["name"], str(entry["index"])):
            if entry.get("protocol", HEAD) != HEAD:
                raise ConfigError(f"--bank-head {head!r} is a {entry['protocol']} probe, not a network: export a head")
            return entry
    shown = ", ".join(f"{e['index']}: {e['name']}" for e in heads[:12]) + (" ..." if len(heads) > 12 else "")
    raise ConfigError(f"--bank-head {head!r}: no head of that name or index in this bank ({shown})")


def bank_head_network(run_dir: Path, bank: dict[str, Any], entry: dict[str, Any]) -> tuple[ImageClassifier, dict]:
    """Head `entry` of the bank in `run_dir` as a one-head ImageClassifier (eval mode), and the selected head's
    checkpoint dict (its data settings apply to every head)."""
    checkpoint_path = Path(bank["checkpoint"])
    if not checkpoint_path.is_absolute():
        checkpoint_path = run_dir / checkpoint_path
    net, checkpoint = ImageClassifier.from_checkpoint(checkpoint_path)
    design = entry["design"]
    config = {**net.config, "heads": [{"name": entry["name"], "head": design["head"], "tap": design["tap"]}]}
    head_net = ImageClassifier.from_config(config)
    head_net.load_state_dict({**{k: v for k, v in net.state_dict().items() if not k.startswith("heads.")},
                              **{f"heads.0.{k}": v for k, v in load_file(run_dir / entry["files"]["weights"]).items()}})
    return head_net.eval(), checkpoint


def export_bank_head(
    run_dir: str | Path, out_dir: str | Path, head: str | None = None, *, onnx: bool = False,
    verify_images: list[str] | None = None,
) -> Path:
    """An export directory (vitcls.inference.export_dir) of one head of a bank run: `head` by name or index, or
    the selected head. The same files as for a lone run's checkpoint; Predictor and ONNX need nothing else."""
    from vitcls.inference.export_dir import export_model
    from vitcls.preprocessing import apply_preprocessing_overrides

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

