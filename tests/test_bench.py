"""Smoke tests of the bench scripts in their --tiny configuration: they run and write their JSON.

Timings are not asserted (they belong in bench/README.md), only the schema of the results.
"""

from __future__ import annotations

import json
import sys

import pytest
from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))

pytestmark = [pytest.mark.slow, pytest.mark.data]


def results(out, name):
    data = json.loads((out / f"{name}.json").read_text())
    assert data["bench"] == name and data["size"]["name"] == "tiny"
    assert {"cpus", "date", "torch"} <= set(data["machine"])
    return data


def test_train_bench(fruits_root, tmp_path):
    pytest.importorskip("transformers")
    from bench import train

    train.main(["--tiny", "--compile", "--data-root", str(fruits_root), "--out", str(tmp_path)])
    data = results(tmp_path, "train")
    keys = {
        "hf_trainer_ips",
        "bare_ips",
        "vitcls_ips",
        "matmul_peak_gflops",
        "vitcls_flops_utilisation",
        "hf_eval_ips",
        "bare_eval_ips",
        "vitcls_eval_ips",
        "peak_mem_mb",
        "hf_preprocess_s",
    }
    assert keys <= set(data)
    assert all(data[k] > 0 for k in ("hf_trainer_ips", "bare_ips", "vitcls_ips", "matmul_peak_gflops"))
    assert set(data["peak_mem_mb"]) == {"hf", "bare", "vitcls", "vitcls_compile"}
    assert data["vitcls_compile_ips"] > 0 and data["vitcls_compile_vs_bare"] > 0


def test_data_bench(fruits_root, tmp_path):
    from bench import data

    data.main(["--tiny", "--data-root", str(fruits_root), "--out", str(tmp_path)])
    values = results(tmp_path, "data")
    assert 0 <= values["data_wait_fraction"] < 1
    assert values["decode_transform_ips_per_worker"] > 0 and "1" in values["loader_ips"]


def test_head_sweep_bench(fruits_root, tmp_path):
    from bench import head_sweep

    head_sweep.main(["--tiny", "--data-root", str(fruits_root), "--out", str(tmp_path)])
    values = results(tmp_path, "head_sweep")
    assert values["cached_s"] > 0 and values["uncached_s"] > 0
    assert values["max_test_metric_difference"] < 1e-4
    assert len(values["test_acc"]["cached"]) == 2


def test_adaptation_cost_bench(tmp_path):
    from bench import adaptation_cost

    adaptation_cost.main(["--tiny", "--out", str(tmp_path)])
    values = results(tmp_path, "adaptation_cost")
    rungs = values["rungs"]
    assert len(rungs) == 8 and all(r["images_per_s"] > 0 for r in rungs.values())
    assert rungs["lora"]["trainable_params"] == 73_728 + 192 * 10 + 10
    assert rungs["linear_probe"]["step_mem_mb"] < rungs["full_finetune"]["step_mem_mb"]
