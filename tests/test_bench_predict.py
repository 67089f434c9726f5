"""Smoke test of bench/predict.py in its tiny configuration: it runs and writes the expected keys."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO_ROOT


@pytest.mark.slow
def test_predict_bench_writes_its_results(tmp_path):
    pytest.importorskip(
        "transformers", reason="the bench baseline needs transformers (pip install -e '.[bench]')"
    )
    pytest.importorskip("onnxruntime", reason="the ONNX row needs onnxruntime (pip install -e '.[onnx]')")
    out = tmp_path / "predict.json"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "predict.py"), "--tiny", "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    for key in (
        "pipeline_ips",
        "predictor_ips",
        "onnx_ips",
        "bare_ips",
        "forward_ips",
        "matmul_peak_gflops",
        "gflop_per_image",
    ):
        assert results[key] > 0, key
    assert set(results["ratios"]) == {"predictor_vs_pipeline", "onnx_vs_pipeline", "predictor_vs_bare"}
    assert set(results["peak_fraction"]) == {"predictor", "bare", "forward"}
    assert results["img_size"] == 32 and results["num_images"] == 8
    assert results["decoding"].startswith("excluded")
    # vit_tiny at 32 px: 2 FLOP/MAC x 12 blocks x 12*192^2 MACs per token x 5 tokens, plus patch embedding
    assert results["gflop_per_image"] == pytest.approx(0.054, rel=0.05)
    assert "| HF pipeline, one image per call |" in results["table"]
