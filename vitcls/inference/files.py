"""Predicting many files: expanding folders and globs, one output row per file, metrics from class folders.

What `vitcls-predict` does. Every input file gets one output row; files that cannot be read as images get
an `error` instead of stopping the run. With labels from folders, the class of a file is its folder (see
`true_label`), and accuracy, F1... and the confusion matrix are written beside the output file.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from vitcls.errors import ConfigError
from vitcls.inference.predictor import Predictor
from vitcls.io import write_json_atomic


@dataclass(frozen=True)
class InputFile:
    path: str
    true_label: str | None  # its class folder, when labels come from folders


def _files_under(directory: Path) -> list[str]:
    found = []
    for current, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(current, name) for name in sorted(filenames) if not name.startswith(".")]
    return found


def _folder_label(path: str, root: Path | None) -> str | None:
    """The class folder of `path`: the first folder below `root`, or the parent folder of a single file."""
    if root is None:
        return Path(path).parent.name or None
    parts = Path(path).relative_to(root).parts
    return parts[0] if len(parts) > 1 else None


def expand_inputs(inputs: list[str]) -> list[InputFile]:
    """Files as given, folders recursively (hidden entries skipped), globs (`**` recursive); a path that
    matches nothing is kept, so that it is reported as missing."""
    files: list[InputFile] = []
    for given in inputs:
        path = Path(given).expanduser()
        if path.is_dir():
            files += [InputFile(p, _folder_label(p, path)) for p in _files_under(path)]
        elif path.exists() or not glob.has_magic(given):
            files.append(InputFile(str(path), _folder_label(str(path), None)))
        else:
            for match in sorted(glob.glob(os.path.expanduser(given), recursive=True)):
                if Path(match).is_dir():
                    files += [InputFile(p, _folder_label(p, Path(match))) for p in _files_under(Path(match))]
                else:
                    files.append(InputFile(match, _folder_label(match, None)))
    return files


def predict_files(
    predictor: Predictor, files: list[InputFile], top_k: int, batch_size: int, progress: bool
) -> tuple[list[dict[str, Any]], Tensor]:
    """One row per file (top-k or error) and the (N, C) probabilities (NaN rows for errors)."""
    probabilities = torch.full((len(files), len(predictor.class_names)), float("nan"))
    rows: list[dict[str, Any]] = [{"path": f.path, "predictions": [], "error": None} for f in files]
    with tqdm(total=len(files), unit="img", disable=not progress, file=sys.stderr) as bar:
        for batch, batch_probabilities in predictor.batches([f.path for f in files], batch_size):
            for index, error in batch.errors.items():
                rows[index]["error"] = error
            if batch_probabilities is not None:
                probabilities[batch.indices] = batch_probabilities
                for index, p in zip(batch.indices, batch_probabilities, strict=True):
                    rows[index]["predictions"] = predictor.top_k(p, top_k)
            bar.update(len(batch.indices) + len(batch.errors))
    return rows, probabilities


def format_csv(rows: list[dict[str, Any]], top_k: int, with_labels: bool) -> str:
    columns = ["path", "label", "score"]
    for k in range(2, top_k + 1):
        columns += [f"label_{k}", f"score_{k}"]
    columns += ["true_label", "correct"] if with_labels else []
    columns.append("error")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        line = {"path": row["path"], "error": row["error"] or ""}
        for k, prediction in enumerate(row["predictions"], start=1):
            suffix = "" if k == 1 else f"_{k}"
            line[f"label{suffix}"] = prediction["label"]
            line[f"score{suffix}"] = f"{prediction['score']:.6f}"
        if with_labels:
            line["true_label"] = row.get("true_label") or ""
            line["correct"] = (
                ""
                if row["error"] or not row.get("true_label")
                else int(row["predictions"][0]["label"] == row["true_label"])
            )
        writer.writerow(line)
    return buffer.getvalue()


def format_jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def folder_metrics(
    predictor: Predictor, files: list[InputFile], probabilities: Tensor, out_dir: Path, model_dir: str
) -> dict[str, Any]:
    """eval.py's metrics (same torchmetrics collection) over the readable files that have a class folder.

    torchmetrics (which imports matplotlib, and transformers where installed) and the figure are imported
    here, not at the top: predicting without labels needs neither."""
    from vitcls.metrics import classification_metrics, confusion_matrix_metric, per_class_report
    from vitcls.reporting.plots import save_confusion_matrix

    class_index = {name: i for i, name in enumerate(predictor.class_names)}
    scored = [
        i for i, f in enumerate(files) if f.true_label is not None and not probabilities[i].isnan().any()
    ]
    if not scored:
        raise ConfigError(
            "--labels-from-folders: no readable image lies in a class folder (expected DIR/<class>/*)"
        )
    targets = torch.tensor([class_index[files[i].true_label] for i in scored])
    collection = classification_metrics(len(class_index))
    confusion = confusion_matrix_metric(len(class_index))
    collection.update(probabilities[scored], targets)
    confusion.update(probabilities[scored], targets)
    metrics = {name: float(value) for name, value in collection.compute().items()}
    matrix = confusion.compute()
    files_written = save_confusion_matrix(
        matrix, predictor.class_names, out_dir, stem="confusion_matrix", title="confusion matrix"
    )
    report = {
        "model_dir": str(Path(model_dir).resolve()),
        "class_names": predictor.class_names,
        "num_samples": len(scored),
        "num_unscored": len(files) - len(scored),
        "dtype": predictor.dtype,
        "dtype_reason": predictor.precision.reason,
        # the same layout as eval.json, so one reader handles both
        "test": metrics,
        "per_class": per_class_report(matrix, predictor.class_names),
        "paths": {f"confusion_matrix_{k}": str(v) for k, v in files_written.items()},
    }
    write_json_atomic(out_dir / "metrics.json", report)
    return report


def check_labels(files: list[InputFile], class_names: list[str]) -> None:
    unknown = sorted({f.true_label for f in files if f.true_label is not None} - set(class_names))
    if unknown:
        raise ConfigError(
            f"--labels-from-folders: folders {unknown} are not classes of the model "
            f"(its classes: {class_names}); point at a folder laid out as <class>/<images>"
        )
