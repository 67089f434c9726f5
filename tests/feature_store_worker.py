"""A process that fills a FeatureStore, started by tests/test_feature_store.py to test concurrent and killed fills.

    python tests/feature_store_worker.py DIR KEY[,KEY...] --counter FILE [--ready FILE --go FILE] [--out FILE]
        [--compute-seconds S] [--started FILE] [--hang-while-writing]

The computation appends the keys it computes to --counter (one line per computation). --hang-while-writing
makes the write of the tensors file stop half-way (a process killed while writing).
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import safetensors.torch
import torch

from vitcls.data.feature_store import FeatureStore


def tensors_of(key: str) -> dict[str, torch.Tensor]:
    """What the computation makes of `key`: the same in every process."""
    generator = torch.Generator().manual_seed(int(hashlib.sha256(key.encode()).hexdigest()[:8], 16))
    return {"features": torch.randn(6, 4, generator=generator), "labels": torch.arange(6)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory", type=Path)
    parser.add_argument("keys")
    parser.add_argument("--counter", type=Path, required=True)
    parser.add_argument("--ready", type=Path)
    parser.add_argument("--go", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--started", type=Path)
    parser.add_argument("--compute-seconds", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--hang-while-writing", action="store_true")
    args = parser.parse_args()
    save_file = safetensors.torch.save_file

    def compute(keys: list[str]) -> dict:
        with open(args.counter, "a") as counter:
            counter.write(" ".join(keys) + "\n")
        if args.started and not args.hang_while_writing:
            args.started.touch()
        time.sleep(args.compute_seconds)
        return {key: (tensors_of(key), {"split": key}) for key in keys}

    if args.hang_while_writing:
        def hang(tensors: dict, path: str) -> None:
            Path(path).write_bytes(b"half of a safetensors file")
            args.started.touch()
            time.sleep(600)

        safetensors.torch.save_file = hang
    if args.go:
        args.ready.touch()
        while not args.go.exists():
            time.sleep(0.01)
    result = FeatureStore(args.directory).fill(args.keys.split(","), compute, timeout_s=args.timeout)
    if args.out:
        save_file({f"{key}/{name}": tensor for key, tensors in result.items() for name, tensor in tensors.items()},
                  args.out)


if __name__ == "__main__":
    main()
