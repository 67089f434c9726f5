"""Trained models outside training: export directories, ONNX, the Predictor. Imports no training stack."""

import sys

if "timm" not in sys.modules and "wandb" not in sys.modules:
    # timm.utils (imported by timm.data) tries `import wandb` for timm's own training script; inference never
    # logs to W&B, so timm is imported with wandb hidden, saving about half a second. Hidden only for this
    # import: a later `import wandb` works as usual.
    sys.modules["wandb"] = None  # type: ignore[assignment]
    try:
        import timm  # noqa: F401
    finally:
        del sys.modules["wandb"]
