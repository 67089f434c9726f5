"""`vitcls-predict MODEL_DIR inputs...`: top-k predictions for image files, folders (recursive) and globs.

Every input file gets one output row; files that cannot be read as images get an `error` instead of
stopping the run. With `--labels-from-folders`, the class of a file is its folder, and accuracy, F1...
and the confusion matrix are written beside the output file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from vitcls.cli.common import add_import_argument, import_modules, run_command

log = logging.getLogger("vitcls.predict")
BACKENDS = ("torch", "onnx")
OUTPUT_FORMATS = (".csv", ".jsonl")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vitcls-predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", help="an export directory (vitcls-export)")
    parser.add_argument("inputs", nargs="+", help="image files, folders (recursive) or globs ('**' recursive)")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", help="predictions file, .csv or .jsonl (default: CSV on stdout)")
    parser.add_argument(
        "--labels-from-folders",
        action="store_true",
        help="inputs are laid out as <class>/*: also report accuracy, F1 and the confusion matrix",
    )
    parser.add_argument("--backend", choices=BACKENDS, default="torch")
    parser.add_argument("--device", help="cpu, cuda, cuda:1... (default: cuda when available)")
    parser.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        default="auto",
        help="torch backend: auto = bfloat16 autocast on CPUs with AMX and GPUs with bf16, else float32",
    )
    parser.add_argument("--num-workers", type=int, help="decoding processes (default: from the CPU count)")
    parser.add_argument("--no-progress", action="store_true")
    add_import_argument(parser)
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> Path | None:
    from vitcls.errors import ConfigError

    output = Path(args.output) if args.output else None
    if output is not None and output.suffix.lower() not in OUTPUT_FORMATS:
        raise ConfigError(f"--output {output}: use a .csv or .jsonl file name")
    if args.labels_from_folders and output is None:
        raise ConfigError("--labels-from-folders writes metrics.json beside the predictions: pass --output FILE")
    if args.top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {args.top_k}")
    return output


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from vitcls.errors import ConfigError
    from vitcls.inference import files as batch
    from vitcls.inference.predictor import Predictor
    from vitcls.io import write_text_atomic

    output = check_args(args)
    import_modules(args.imports)
    files = batch.expand_inputs(args.inputs)
    if not files:
        raise ConfigError(f"no files found in {args.inputs}")
    predictor = Predictor.from_pretrained(
        args.model_dir, device=args.device, backend=args.backend, dtype=args.dtype, num_workers=args.num_workers
    )
    log.info("dtype %s: %s", predictor.dtype, predictor.precision.reason)
    if args.labels_from_folders:
        batch.check_labels(files, predictor.class_names)
    top_k = min(args.top_k, len(predictor.class_names))
    progress = not args.no_progress and len(files) > args.batch_size
    rows, probabilities = batch.predict_files(predictor, files, top_k, args.batch_size, progress)
    if args.labels_from_folders:
        for row, file in zip(rows, files, strict=True):
            row["true_label"] = file.true_label

    if output is None:
        sys.stdout.write(batch.format_csv(rows, top_k, args.labels_from_folders))
    elif output.suffix.lower() == ".jsonl":
        write_text_atomic(output, batch.format_jsonl(rows))
    else:
        write_text_atomic(output, batch.format_csv(rows, top_k, args.labels_from_folders))
    errors = sum(row["error"] is not None for row in rows)
    log.info(
        "%d files, %d predicted, %d unreadable%s",
        len(rows), len(rows) - errors, errors, f"; predictions: {output}" if output else "",
    )
    if args.labels_from_folders:
        report = batch.folder_metrics(predictor, files, probabilities, output.resolve().parent, args.model_dir)
        log.info(
            "acc %.4f  f1_macro %.4f  on %d images; metrics: %s",
            report["test"]["acc"], report["test"]["f1_macro"], report["num_samples"],
            output.resolve().parent / "metrics.json",
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_command("vitcls-predict", lambda: run(args))


if __name__ == "__main__":
    main()
