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


def test_training_speed_bench(fruits_root, tmp_path):
    pytest.importorskip("transformers")
    from bench import training_speed

    training_speed.main(["--tiny", "--compile", "--data-root", str(fruits_root), "--out", str(tmp_path)])
    data = results(tmp_path, "train")
    keys = {
        "hf_trainer_ips",
        "hf_tuned_ips",
        "bare_ips",
        "vitcls_ips",
        "vitcls_vs_hf",
        "vitcls_vs_hf_tuned",
        "matmul_peak_gflops",
        "vitcls_flops_utilisation",
        "hf_eval_ips",
        "hf_tuned_eval_ips",
        "bare_eval_ips",
        "vitcls_eval_ips",
        "peak_mem_mb",
        "train_peak_mem_mb",
        "hf_preprocess_s",
        "hf_preprocess_peak_mem_mb",
    }
    assert keys <= set(data)
    assert all(data[k] > 0 for k in ("hf_trainer_ips", "hf_tuned_ips", "bare_ips", "vitcls_ips", "matmul_peak_gflops"))
    variants = {"hf", "hf_tuned", "bare", "vitcls", "vitcls_compile"}
    assert set(data["peak_mem_mb"]) == set(data["train_peak_mem_mb"]) == set(data["stats"]) == variants
    assert all(data["train_peak_mem_mb"][name] > 0 for name in variants)
    # the bench checked that every variant did the same work, and says what it was
    assert data["same_work"]["params"] > 0 and data["same_work"]["precision"] == "32-true"
    for name in variants:
        for run in data["runs"][name]:
            assert {key: run[key] for key in data["same_work"]} == data["same_work"], name
        spread = data["stats"][name]["train_ips"]
        assert spread["min"] <= spread["median"] <= spread["max"] and len(spread["values"]) == data["rounds"] == 1
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
    phases = values["phases_mean_s"]
    assert set(phases) == {"uncached", "cached_first", "cached_later"}
    assert phases["cached_first"]["training_batches"] > phases["cached_later"]["training_batches"]  # computed, then loaded
    assert len(values["phases_s"]["uncached"]) == 2


def test_prefix_cache_bench(fruits_root, tmp_path):
    from bench import prefix_cache

    prefix_cache.main(["--tiny", "--data-root", str(fruits_root), "--out", str(tmp_path)])
    values = results(tmp_path, "prefix_cache")
    assert values["cached_s"] > 0 and values["uncached_s"] > 0 and values["cold_cached_s"] > 0
    assert values["speedup"] == pytest.approx(values["uncached_s"] / values["cached_s"])
    assert values["cache_files"] == 3 and values["disk_mb"] > 0 and values["token_dtype"] == "bfloat16"
    assert values["tokens_entering_block"] == 10
    assert 0 <= values["max_test_metric_difference"] <= 1
    assert set(values["phases_mean_s"]) == {"uncached", "cold", "warm"}


def test_precision_bench(fruits_root, tmp_path):
    from bench import precision
    from vitcls.precision import choose_precision, cpu_has_amx_bf16

    precision.main(["--tiny", "--data-root", str(fruits_root), "--out", str(tmp_path)])
    values = results(tmp_path, "precision")
    for key in ("train_bf16_ips", "train_fp32_ips", "predict_bf16_ips", "predict_fp32_ips", "bare_fp32_ips",
                "matmul_fp32_gflops", "matmul_bf16_gflops"):
        assert values[key] > 0, key
    assert 0 <= values["acc_fp32"] <= 1 and 0 <= values["acc_bf16"] <= 1
    assert 0 <= values["top1_agreement"] <= 1 and values["num_images"] == 20
    assert values["preset"] == choose_precision("cpu").precision and values["amx_bf16"] == cpu_has_amx_bf16()
    assert values["quality_runs"]["bf16"]["precision"]["precision"] == "bf16-mixed"
    assert set(values["met"]) == set(values["targets"]) == set(values["measured"])
    assert values["speed_targets_apply"] == cpu_has_amx_bf16() and values["note"]


def test_adaptation_cost_bench(tmp_path):
    from bench import adaptation_cost

    adaptation_cost.main(["--tiny", "--out", str(tmp_path)])
    values = results(tmp_path, "adaptation_cost")
    rungs = values["rungs"]
    assert len(rungs) == 8 and all(r["images_per_s"] > 0 for r in rungs.values())
    assert rungs["lora"]["trainable_params"] == 73_728 + 192 * 10 + 10
    assert rungs["linear_probe"]["step_mem_mb"] < rungs["full_finetune"]["step_mem_mb"]


def test_head_bank_bench(fruits_root, tmp_path):
    from bench import head_bank

    head_bank.main(["--tiny", "--data-root", str(fruits_root), "--out", str(tmp_path)])
    values = results(tmp_path, "head_bank")
    assert values["single_s"] > 0 and values["bank_s"] > 0 and values["multirun_cached_s"] > 0
    assert values["designs"] == 8 and values["bank_train_images_per_s"] > 0
    assert values["max_test_acc_difference_bank_vs_multirun"] <= 0.01
