#!/usr/bin/env bash
# The GPU benchmark (one CUDA device, under 8 minutes): ViT-B/16 at 224 px, bf16-mixed, batch 64,
# vitcls vs the tutorial's HF Trainer vs a bare loop. Writes bench/results/train_gpu.json.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
timeout 420 python bench/train.py --gpu --out "$out"
cp "$out/train.json" bench/results/train_gpu.json
