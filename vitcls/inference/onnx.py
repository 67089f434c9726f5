"""ONNX export of a classifier, verified against PyTorch on real images, and onnxruntime sessions."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vitcls.errors import ConfigError, VitclsError

ONNX_FILE = "model.onnx"
# The exporter keeps weights beside the graph when they are large (`model.onnx.data`).
ONNX_DATA_FILE = "model.onnx.data"
# ONNX vs PyTorch: |onnx - torch| <= atol + rtol * |torch| on every logit, and the same top-1 class.
ONNX_ATOL = 1e-3
ONNX_RTOL = 1e-3
# Loggers of the torch.export -> ONNX pipeline that print a line per initializer or pass at INFO level.
_CHATTY_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "torch._dynamo", "torch.export")


class ExportError(VitclsError):
    """An export directory cannot be written, read or verified."""


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_onnx(net: nn.Module, path: Path, input_size: tuple[int, int, int]) -> None:
    """torch.export-based ONNX export with a dynamic batch dimension (input `images`, output `logits`)."""
    sample = torch.zeros(2, *input_size)
    with _quiet_exporter():
        torch.onnx.export(
            net.eval(),
            (sample,),
            str(path),
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


def verify_onnx(net: nn.Module, path: Path, images: Tensor) -> dict[str, Any]:
    """Compare onnxruntime with PyTorch on `images` as one batch and one by one; raise on a mismatch."""
    session = onnx_session(path)
    with torch.inference_mode():
        expected = net(images).numpy()
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
