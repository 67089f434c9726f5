"""`vitcls-export CKPT OUT_DIR [--onnx]`: a training checkpoint as a self-contained export directory.

`vitcls-export BANK_RUN_DIR OUT_DIR [--bank-head NAME]`: a head of a head-bank run (the one selected on
validation, or any head by its name or index in bank.json), as the same kind of export directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitcls.cli.common import add_import_argument, import_modules, run_command


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vitcls-export",
        description="Write model.safetensors, config.json and a model card (and model.onnx) for a checkpoint.",
    )
    parser.add_argument("checkpoint", help="a training checkpoint (.ckpt), or the run directory of a head bank")
    parser.add_argument("out_dir", help="the export directory to write (replaced if it is an earlier export)")
    parser.add_argument("--onnx", action="store_true", help="also write model.onnx and verify it with onnxruntime")
    parser.add_argument(
        "--verify-images",
        nargs="+",
        default=[],
        metavar="PATH",
        help="images for the ONNX check (default: test images of the training data)",
    )
    parser.add_argument(
        "--bank-head",
        metavar="NAME",
        help="with a head-bank run directory: the head to export, by its name or index in bank.json "
        "(default: the head selected on validation)",
    )
    add_import_argument(parser)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> Path:
    from vitcls.inference.export_dir import export_checkpoint

    import_modules(args.imports)
    source = Path(args.checkpoint).expanduser()
    if source.is_dir() or args.bank_head is not None:
        from vitcls.run.bank_heads import export_bank_head

        return export_bank_head(source, args.out_dir, args.bank_head, onnx=args.onnx,
                                verify_images=args.verify_images or None)
    return export_checkpoint(args.checkpoint, args.out_dir, onnx=args.onnx, verify_images=args.verify_images)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(run_command("vitcls-export", lambda: run(args)))


if __name__ == "__main__":
    main()
