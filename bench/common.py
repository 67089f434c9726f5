"""What the bench scripts share: sizes, a subset folder, peak memory of a subprocess, the machine and its
matmul peak, the result file."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import psutil
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
FRUITS_ROOT = Path(os.environ.get("FRUITS360_ROOT", REPO_ROOT.parent / "shared" / "data" / "fruits360-10"))
TIMM_MODEL = "vit_tiny_patch16_224"
# The timm models as Hugging Face transformers' ViTConfig spells them (random init: no weights needed).
HF_VIT_CONFIGS = {
    "vit_tiny_patch16_224": {
        "hidden_size": 192,
        "num_hidden_layers": 12,
        "num_attention_heads": 3,
        "intermediate_size": 768,
    },
    "vit_base_patch16_224": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
}
HF_VIT_COMMON = {"patch_size": 16, "hidden_act": "gelu", "layer_norm_eps": 1e-6, "qkv_bias": True}


@dataclass
class Size:
    """How much of everything a bench run does; `--quick` and `--tiny` pick smaller ones."""

    name: str
    img_size: int
    batch_size: int
    train_per_class: int | None  # images per class taken from train/ (None: all)
    test_per_class: int | None
    warmup_steps: int
    measured_steps: int
    model: str = TIMM_MODEL
    precision: str = "32-true"  # Lightning's names: 32-true, bf16-mixed


def add_size_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a small configuration (about a minute or two)")
    parser.add_argument("--tiny", action="store_true", help="32 px, a few images and steps: a smoke test")
    parser.add_argument("--data-root", type=Path, default=FRUITS_ROOT, help="ROOT/{train,test}/<class>/*")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where <name>.json is written")


def pick_size(args: argparse.Namespace, full, quick, tiny):
    return tiny if args.tiny else quick if args.quick else full


def link_or_copy(source: Path, destination: Path) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copyfile(source, destination)


def subset_folder(
    root: Path, destination: Path, train_per_class: int | None, test_per_class: int | None
) -> Path:
    """ROOT/{train,test[,val]}/<class>/ with the first N files of each class (val/, where ROOT has one, takes
    `test_per_class`), hard-linked where the file system allows, else copied (symlinks leading outside
    data.root count as bad files)."""
    if train_per_class is None and test_per_class is None:
        return root
    limits = {"train": train_per_class, "test": test_per_class, "val": test_per_class}
    for split, limit in limits.items():
        if split == "val" and not (root / split).is_dir():
            continue
        for class_dir in sorted(p for p in (root / split).iterdir() if p.is_dir()):
            target = destination / split / class_dir.name
            target.mkdir(parents=True, exist_ok=True)
            for image in sorted(p for p in class_dir.iterdir() if p.is_file())[:limit]:
                link_or_copy(image.resolve(), target / image.name)
    return destination


def _pss(process: psutil.Process) -> int:
    """Proportional set size: shared pages (torch libraries in forked DataLoader workers) count once."""
    try:
        return process.memory_full_info().pss
    except (AttributeError, psutil.AccessDenied):  # no /proc/<pid>/smaps_rollup: plain RSS
        return process.memory_info().rss


# A child process names the phase it is in (e.g. "preprocess", "train") by writing it to this file; the
# parent keeps a peak memory per phase.
PHASE_FILE_ENV = "VITCLS_BENCH_PHASE_FILE"


def _sampled_file(phase_file: Path) -> Path:
    return phase_file.with_suffix(".sampled")


def mark_phase(name: str, wait_s: float = 10.0) -> None:
    """In a measured child process: memory sampled from now on counts towards phase `name`. First waits (at
    most `wait_s`) until the parent has sampled the phase that ends here, so a phase shorter than the
    sampling interval still gets its reading."""
    path = os.environ.get(PHASE_FILE_ENV)
    if not path:
        return
    phase_file = Path(path)
    ending = phase_file.read_text().strip()
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        sampled = _sampled_file(phase_file)
        if sampled.is_file() and sampled.read_text().strip() == ending:
            break
        time.sleep(0.01)
    phase_file.write_text(name)


def run_measured(command: list[str], log_path: Path, env: dict | None = None, poll_s: float = 0.5) -> dict:
    """Run `command`; return its wall time, its peak memory (PSS summed over it and its worker processes)
    and the peak of each phase the child marked with `mark_phase` (`peak_mem_mb_by_phase`)."""
    started = time.perf_counter()
    phase_file = log_path.with_suffix(".phase")
    phase_file.write_text("setup")
    peaks: dict[str, int] = {}
    with open(log_path, "w") as log:
        process = psutil.Popen(
            command,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {}), PHASE_FILE_ENV: str(phase_file)},
        )
        while True:
            try:
                tree = [process, *process.children(recursive=True)]
                used = sum(_pss(p) for p in tree)
                phase = phase_file.read_text().strip() or "setup"
                peaks[phase] = max(peaks.get(phase, 0), used)
                _sampled_file(phase_file).write_text(phase)
            except (psutil.Error, OSError):
                pass  # a worker ended between listing and reading
            try:  # returns as soon as the command ends: the wall time is not rounded up to the next sample
                process.wait(timeout=poll_s)
                break
            except psutil.TimeoutExpired:
                pass
    if process.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command[:3])}... failed (exit {process.returncode}); see {log_path}:\n"
            + log_path.read_text()[-3000:]
        )
    return {
        "wall_s": round(time.perf_counter() - started, 2),
        "peak_mem_mb": round(max(peaks.values(), default=0) / 2**20, 1),
        "peak_mem_mb_by_phase": {phase: round(peak / 2**20, 1) for phase, peak in peaks.items()},
    }


def spread(values: list[float]) -> dict[str, float]:
    """min, median and max of repeated measurements (and the values, in the order they were taken)."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "values": list(values)}


def matmul_peak_gflops(
    device: str | torch.device, dtype: torch.dtype, repeats: int = 10, n: int | None = None
) -> float:
    """Best GFLOP/s of an n x n matmul (default n = 2048 on CPU, 8192 on CUDA) over `repeats` timed calls,
    all threads."""
    device = torch.device(device)
    n = n or (2048 if device.type == "cpu" else 8192)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write_results(name: str, out_dir: Path, size, results: dict) -> Path:
    from vitcls.io import write_json_atomic

    payload = {"bench": name, "size": asdict(size), "machine": machine(), **results}
    return write_json_atomic(Path(out_dir) / f"{name}.json", payload)


def print_table(title: str, rows: list[tuple], header: tuple) -> None:
    cells = [tuple(str(c) for c in row) for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for index, row in enumerate(cells):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if index == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
