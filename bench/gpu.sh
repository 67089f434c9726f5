#!/usr/bin/env bash
# The GPU benchmark (one CUDA device, about 15 minutes): ViT-B/16 at 224 px, bf16, batch 64.
# Training: vitcls vs the HF Trainer (tutorial and tuned) vs a bare loop, 3 interleaved rounds;
# prediction: the Predictor (bf16 autocast) vs the per-image HF pipeline and a bare batched loop.
# Writes bench/results/train_gpu.json and bench/results/predict_gpu.json.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
timeout 900 python bench/training_speed.py --gpu --out "$out"
cp "$out/train.json" bench/results/train_gpu.json
timeout 300 python bench/predict.py --device cuda --dtype bfloat16 --model vit_base_patch16_224 --batch-size 64 \
    --out bench/results/predict_gpu.json
