"""Smoke tests of the bench scripts in their --tiny configuration: they run and write their JSON. And the checks
that keep a bench honest: the same-work check of the training bench, the resume bench's "went on from the
checkpoint", and the targets table read from result files.

Timings are not asserted (they belong in bench/README.md), only the schema of the results.
"""

from __future__ import annotations

import json
import sys

import pytest
from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))


def results(out, name):
    data = json.loads((out / f"{name}.json").read_text())
    assert data["bench"] == name and data["size"]["name"] == "tiny"
    assert {"cpus", "date", "torch"} <= set(data["machine"])
    return data


@pytest.mark.slow
@pytest.mark.data
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


@pytest.mark.slow
@pytest.mark.data
def test_data_bench(fruits_root, tmp_path):
    from bench import data

    data.main(["--tiny", "--data-root", str(fruits_root), "--out", str(tmp_path)])
    values = results(tmp_path, "data")
    assert 0 <= values["data_wait_fraction"] < 1
    assert values["decode_transform_ips_per_worker"] > 0 and "1" in values["loader_ips"]


@pytest.mark.slow
@pytest.mark.data
def test_head_sweep_bench(fruits_root, tmp_path):
    from bench import head_sweep

    head_sweep.main(["--tiny", "--data-root", str(fruits_root), "--out", str(tmp_path)])
    values = results(tmp_path, "head_sweep")
    assert values["cached_s"] > 0 and values["uncached_s"] > 0
    assert values["max_test_metric_difference"] < 1e-4
    assert len(values["test_acc"]["cached"]) == 2
    phases = values["phases_mean_s"]
    assert set(phases) == {"uncached", "cached_first", "cached_later"}
    assert phases["cached_first"]["training_inputs"] > phases["cached_later"]["training_inputs"]  # computed, then loaded
    assert len(values["phases_s"]["uncached"]) == 2
    assert values["job_order"] == ["cached 0", "uncached 0", "uncached 1", "cached 1"]  # interleaved


@pytest.mark.slow
@pytest.mark.data
def test_prefix_cache_bench(fruits_root, tmp_path):
    from bench import prefix_cache

    prefix_cache.main(["--tiny", "--data-root", str(fruits_root), "--out", str(tmp_path)])
    values = results(tmp_path, "prefix_cache")
    assert values["cached_s"] > 0 and values["uncached_s"] > 0 and values["cold_cached_s"] > 0
    assert values["speedup"] == pytest.approx(values["uncached_s"] / values["cached_s"])
    assert values["cache_files"] == 3 and values["disk_mb"] > 0 and values["token_dtype"] == "bfloat16"
    assert values["tokens_entering_block"] == 10
    differences = values["test_metric_differences"]
    assert {"acc", "f1_macro", "loss"} <= set(differences["cached_vs_uncached"])
    assert values["max_test_metric_difference"] == max(differences["cached_vs_uncached"].values())
    assert differences["uncached_repeats"] == {}  # one round: no repeated uncached run
    assert values["targets"] == {} and values["data_root"] == str(fruits_root)  # tiny: no target set
    assert set(values["phases_mean_s"]) == {"uncached", "cold", "warm"}


@pytest.mark.slow
@pytest.mark.data
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


@pytest.mark.slow
def test_adaptation_cost_bench(tmp_path):
    from bench import adaptation_cost

    adaptation_cost.main(["--tiny", "--out", str(tmp_path)])
    values = results(tmp_path, "adaptation_cost")
    rungs = values["rungs"]
    assert len(rungs) == 8 and all(r["images_per_s"] > 0 for r in rungs.values())
    assert rungs["lora"]["trainable_params"] == 73_728 + 192 * 10 + 10
    assert rungs["linear_probe"]["step_mem_mb"] < rungs["full_finetune"]["step_mem_mb"]


@pytest.mark.slow
@pytest.mark.data
def test_head_bank_bench(fruits_root, tmp_path):
    from bench import head_bank

    head_bank.main(["--tiny", "--data-root", str(fruits_root), "--out", str(tmp_path)])
    values = results(tmp_path, "head_bank")
    assert values["single_s"] > 0 and values["bank_s"] > 0 and values["multirun_cached_s"] > 0
    assert values["designs"] == 8 and values["bank_train_images_per_s"] > 0
    assert values["max_test_acc_difference_bank_vs_multirun"] <= 0.01


@pytest.mark.slow
@pytest.mark.data
def test_resume_bench_checks_the_run_went_on_from_its_checkpoint(fruits_root, tmp_path):
    from bench import resume_exact

    work = tmp_path / "work"
    resume_exact.main(["--tiny", "--data-root", str(fruits_root), "--out", str(tmp_path), "--work", str(work)])
    values = results(tmp_path, "resume")
    kill, steps_per_epoch = values["kill"], values["steps_per_epoch"]
    assert kill["died_of_the_signal"] and kill["exit_status"] == -9 and not kill["summary_before_resume"]
    assert kill["global_step"] % steps_per_epoch != 0 and kill["epoch"] >= 1  # inside an epoch after the first
    assert kill["marker"] == f"SIGKILL at step {kill['global_step']}, training batch {kill['batches_done_in_epoch'] - 1}"
    went_on = values["went_on_from_checkpoint"]
    assert went_on["ok"] and went_on["resumed_from"] == str(work / "resumed" / "checkpoints" / "last.ckpt")
    assert went_on["first_logged_step"] == went_on["checkpoint_global_step"] == kill["epoch"] * steps_per_epoch
    assert values["identical"] and values["resumed_steps_compared"] > 0
    # The same check on a run that started from step 0 (the uninterrupted one) fails.
    fresh = resume_exact.went_on_from_checkpoint(work / "reference", 0, values["checkpoints_before_resume"],
                                                 steps_per_epoch, values["size"]["epochs"], 0)
    assert not fresh["ok"] and fresh["resumed_from"] is None and fresh["first_logged_step"] == 0


def test_same_work_check_fails_when_a_variant_counted_other_images():
    from bench.training_speed import check_same_work

    work = {"params": 10, "batch_size": 4, "precision": "32-true", "img_size": 32, "train_measured_images": 8,
            "eval_measured_images": 12}
    runs = {"hf": [dict(work)], "bare": [dict(work)], "vitcls": [dict(work), dict(work)]}
    assert check_same_work(runs) == work
    runs["vitcls"][1]["eval_measured_images"] = 10  # its last test batch was short
    with pytest.raises(AssertionError, match="vitcls run 1"):
        check_same_work(runs)


def write_result(folder, name, data, load=0.42):
    machine = {"load_average_1min": load, "date": "2026-12-01 10:00 UTC"} if load is not None else {}
    (folder / f"{name}.json").write_text(json.dumps({"machine": machine, **data}))


def test_targets_table_judges_the_result_files_and_shows_their_load(tmp_path, capsys):
    from bench import targets

    quick, full = {"name": "quick"}, {"name": "full"}
    write_result(tmp_path, "train", {"bench": "train", "size": quick, "same_work": {"params": 1},
                                     "vitcls_vs_hf": 1.7, "vitcls_vs_bare": 0.9, "vitcls_eval_vs_hf": 2.5,
                                     "vitcls_flops_utilisation": 0.5, "peak_mem_mb": {"vitcls": 1, "hf": 2}})
    write_result(tmp_path, "train_old", {"bench": "train", "size": full, "vitcls_vs_hf": 1.8}, load=1.94)
    write_result(tmp_path, "head_bank", {"bench": "head_bank", "size": full, "bank_over_single": 1.6,
                                         "multirun_over_bank": 9.0, "bank48_over_single": 2.0})
    write_result(tmp_path, "precision", {"bench": "precision", "size": quick, "speed_targets_apply": False,
                                         "measured": {"train_preset_vs_bare_fp32": 0.9, "predict_bf16_vs_fp32": 0.2,
                                                      "acc_difference": 0.02, "top1_agreement": 1.0}})
    write_result(tmp_path, "resume", {"bench": "resume", "size": {"name": "tiny"}, "identical": True,
                                      "went_on_from_checkpoint": {"ok": False}})
    write_result(tmp_path, "data", {"bench": "data", "size": quick, "data_wait_fraction": 0.01}, load=None)

    rows = targets.main(["--results", str(tmp_path)])
    verdict = {(row[0], row[2]): row[4] for row in rows}
    assert verdict[("train", "vitcls / HF Trainer (tutorial) training images/s >= 1.6")] == "met"  # 1.7 >= 1.6
    assert verdict[("train", "vitcls / bare loop training images/s >= 0.95")] == "missed"  # 0.9 < 0.95
    assert verdict[("train", "vitcls / HF Trainer (tutorial) evaluation images/s >= 2.5")] == "met"  # 2.5 >= 2.5
    assert verdict[("train", "vitcls training FLOPs / matmul peak >= 0.55")] == "missed"
    assert ("train", "vitcls / HF Trainer (tutorial) peak memory <= 1") not in verdict  # set for the full size only
    assert verdict[("train_old", "vitcls / HF Trainer (tutorial) training images/s >= 1.6")].startswith("n/a (no same_work")
    assert verdict[("head_bank", "bank of 16 designs / one head wall time <= 1.5")] == "missed"  # 1.6 > 1.5
    assert verdict[("head_bank", "16 designs as a multirun / bank wall time >= 8")] == "met"
    assert verdict[("head_bank", "bank of 48 designs / one head wall time <= 2")] == "met"  # 2.0 <= 2.0
    assert verdict[("precision", "Predictor bf16 / fp32 images/s >= 2")] == "n/a (speed_targets_apply is false)"
    assert verdict[("precision", "test accuracy difference, bf16 vs fp32 <= 0.01")] == "missed"  # 0.02 > 0.01
    assert verdict[("precision", "Predictor top-1 agreement bf16 vs fp32 >= 0.995")] == "met"
    assert verdict[("resume", "the resumed run went on from the killed run's checkpoint true")] == "missed"
    assert verdict[("resume", "killed + resumed run equals the uninterrupted run true")] == "met"
    assert [row[2:5] for row in rows if row[0] == "data"] == [("no target set", "-", "-")]
    loads = {row[0]: row[5] for row in rows}
    assert loads == {"train": "0.42", "train_old": "1.94", "head_bank": "0.42", "precision": "0.42", "resume": "0.42",
                     "data": "not recorded"}
    printed = capsys.readouterr().out
    assert "| train | quick | vitcls / bare loop training images/s >= 0.95 | 0.9 | missed | 0.42 |" in printed
    met = sum(row[4] == "met" for row in rows)
    missed = sum(row[4] == "missed" for row in rows)
    assert (met, missed) == (6, 5) and f"6 met, 5 missed, {len(rows) - 11} not judged" in printed
