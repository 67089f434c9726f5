"""Numeric precision presets (`${vitcls.precision:...}` in conf/trainer) and float32 matmuls on tensor cores."""

from __future__ import annotations


def precision_preset(accelerator: str = "auto") -> str:
    """`32-true` on CPU; on CUDA `bf16-mixed` where supported (Ampere and newer), else `16-mixed`
    (fp16 autocast with Lightning's gradient scaler).
    """
    import torch

    if str(accelerator) == "cpu" or not torch.cuda.is_available():
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def use_tensor_cores_for_float32() -> None:
    """TF32 matmuls for the float32 parts of a run (3-10x faster on Ampere+, ~1e-3 relative error)."""
    import torch

    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
