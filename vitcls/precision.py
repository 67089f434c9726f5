"""Numeric precision chosen from the hardware: the trainer preset (`${vitcls.precision:...}` in conf/trainer),
the Predictor's `dtype="auto"`, and float32 matmuls on tensor cores.

bf16 pays only where the hardware multiplies in bf16: CUDA GPUs that support it (Ampere and newer) and CPUs
with AMX (amx_tile + amx_bf16: Intel Xeon Sapphire Rapids and later), whose bf16 matmuls run about 3x fp32's.
Other CPUs (AVX2, AVX-512 without AMX) convert bf16 to fp32 around every operation, which is slower than
fp32 itself, so they keep fp32. Imports torch only (the Predictor uses it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from vitcls.errors import ConfigError

log = logging.getLogger(__name__)

# Lightning precision name -> the dtype that autocast computes in.
AUTOCAST_DTYPES = {
    "bf16-mixed": "bfloat16", "bf16-true": "bfloat16", "bf16": "bfloat16",
    "16-mixed": "float16", "16-true": "float16", "16": "float16",
    "32-true": "float32", "32": "float32", "64-true": "float64", "64": "float64",
}
INFERENCE_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # Lightning's name: 32-true, bf16-mixed, 16-mixed
    reason: str

    @property
    def dtype(self) -> str:
        """The dtype the matmuls run in (bfloat16, float16 or float32)."""
        return AUTOCAST_DTYPES.get(self.precision, self.precision)


def cpu_capabilities() -> dict[str, Any]:
    """torch's runtime CPU feature detection (cpuinfo): {"avx2": True, "amx_bf16": False, ...}."""
    import torch

    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        return dict(get())
    return {"amx_tile": torch.cpu._is_amx_tile_supported(), "amx_bf16": torch.cpu._is_amx_tile_supported()}


def cpu_has_amx_bf16() -> bool:
    capabilities = cpu_capabilities()
    return bool(capabilities.get("amx_tile") and capabilities.get("amx_bf16"))


def cpu_description() -> str:
    import torch

    capabilities = cpu_capabilities()
    extensions = [name for name in ("amx_tile", "amx_bf16", "avx512_bf16") if capabilities.get(name)]
    return f"CPU capability {torch.backends.cpu.get_cpu_capability()}" + (
        f" with {', '.join(extensions)}" if extensions else ""
    )


def choose_precision(accelerator: str = "auto") -> PrecisionChoice:
    """The preset for `accelerator` (cpu, gpu, cuda, auto) on this machine, and why."""
    import torch

    if str(accelerator) != "cpu" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16-mixed", f"CUDA device {name} computes in bf16")
        return PrecisionChoice("16-mixed", f"CUDA device {name} has no bf16: fp16 with gradient scaling")
    if cpu_has_amx_bf16():
        return PrecisionChoice("bf16-mixed", f"{cpu_description()}: bf16 matmuls in AMX tiles")
    return PrecisionChoice(
        "32-true", f"{cpu_description()}, no AMX bf16: bf16 would be emulated, slower than fp32"
    )


def precision_preset(accelerator: str = "auto") -> str:
    """`${vitcls.precision:<accelerator>}`: bf16-mixed on CPUs with AMX bf16 and on CUDA GPUs with bf16,
    16-mixed on older GPUs, 32-true on every other CPU."""
    return choose_precision(accelerator).precision


def describe_precision(used: str, accelerator: str = "auto") -> dict[str, str]:
    """What summary.json and eval.json record: the precision used, the preset of this machine, and why."""
    preset = choose_precision(accelerator)
    used = str(used)
    reason = preset.reason if used == preset.precision else f"set by trainer.precision (preset: {preset.precision})"
    return {"precision": used, "dtype": AUTOCAST_DTYPES.get(used, used), "preset": preset.precision,
            "reason": reason, "preset_reason": preset.reason}


def log_precision(used: str, accelerator: str = "auto") -> dict[str, str]:
    described = describe_precision(used, accelerator)
    log.info("precision %s: %s", described["precision"], described["reason"])
    return described


def inference_precision(dtype: Any, device_type: str) -> PrecisionChoice:
    """The Predictor's dtype: `auto` is bfloat16 autocast where the hardware computes bf16 (AMX CPUs, CUDA
    with bf16), float32 elsewhere; any other value (a name or a torch.dtype) is used as given."""
    if dtype is None or dtype == "auto":
        choice = choose_precision("cpu" if device_type == "cpu" else "gpu")
        precision = "bf16-mixed" if choice.precision == "bf16-mixed" else "32-true"
        return PrecisionChoice(precision, f"dtype=auto: {choice.reason}")
    name = str(dtype).removeprefix("torch.")  # torch.bfloat16 or "bfloat16"
    by_name = {"float32": "32-true", "bfloat16": "bf16-mixed", "float16": "16-mixed"}
    if name not in by_name:
        raise ConfigError(f"dtype must be one of {list(INFERENCE_DTYPES)} (or that torch.dtype), got {dtype!r}")
    return PrecisionChoice(by_name[name], f"dtype={name} was requested")


def use_tensor_cores_for_float32() -> None:
    """TF32 matmuls for the float32 parts of a run (3-10x faster on Ampere+, ~1e-3 relative error)."""
    import torch

    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
